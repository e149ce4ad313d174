"""The `run` subcommand's job flags, generated from the spec model: one flag per `JobSpec` field.

A field's flag is ``--`` + its name with dashes (``n_clusters`` -> ``--n-clusters``); its type
comes from the annotation (``Optional[X]`` -> X), ``choices`` from a ``Literal`` or ``Enum``, a
``bool`` becomes ``--x/--no-x``, and the help is the field's description plus its default.
`SPECIAL` lists the few flags whose name or parsing differ (the names the README documents).
Every flag's argparse default is None, so a flag that was not given leaves the manifest's value.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Literal, Optional, Union, get_args, get_origin

import yaml
from pydantic.fields import FieldInfo

from .spec import JobSpec, KMeansPartitionSpec, SpecError

Fields = dict[str, Any]


def _set(fields: Fields, name: str, value: Any) -> None:
    fields[name] = value


def _set_input(fields: Fields, name: str, paths: list[str]) -> None:
    fields[name] = paths if len(paths) > 1 else paths[0]


def _set_comma_list(fields: Fields, name: str, text: str) -> None:
    fields[name] = [item for item in text.split(",") if item]


def parse_storage_value(raw: str) -> Any:
    """`--storage-option` values: YAML scalars (true, 3, null) or strings."""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    return value if isinstance(value, (bool, int, float, type(None), str)) else raw


def parse_storage_options(items: list[str], name: str = "storage_options") -> dict[str, Any]:
    """`--storage-option KEY=VALUE` flags as a dict (values parsed by `parse_storage_value`)."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SpecError(name, f"--storage-option needs KEY=VALUE, got {item!r}")
        options[key] = parse_storage_value(raw)
    return options


def _merge_storage_options(fields: Fields, name: str, items: list[str]) -> None:
    """Each KEY=VALUE is added to (or replaces one key of) the manifest's options."""
    fields[name] = {**(fields.get(name) or {}), **parse_storage_options(items, name)}


@dataclass(frozen=True)
class Special:
    """How one field's flag differs from the generic rule."""

    flag: Optional[str] = None  # another flag name
    apply: Callable[[Fields, str, Any], None] = _set  # puts the parsed value into the fields
    argparse: dict[str, Any] = field(default_factory=dict)  # added; with a special `apply`, replaces type/choices
    help_suffix: str = ""


SPECIAL: dict[str, Special] = {
    "input_path": Special("--input", _set_input, {"action": "append", "metavar": "PATH"}, "repeatable"),
    "output_path": Special("--output"),
    "metadata_fields": Special(apply=_set_comma_list, argparse={"metavar": "A,B"}, help_suffix="comma-separated"),
    "storage_options": Special(
        "--storage-option", _merge_storage_options, {"action": "append", "metavar": "KEY=VALUE"}, "repeatable"
    ),
    "scheduler_address": Special("--scheduler", argparse={"metavar": "ADDRESS"}),
}


@dataclass(frozen=True)
class FieldFlag:
    """One model field's command-line flag."""

    name: str  # the field (also the argparse dest)
    flag: str
    kwargs: dict[str, Any]
    apply: Callable[[Fields, str, Any], None]


def _type_kwargs(name: str, annotation: Any) -> dict[str, Any]:
    """argparse type/choices/action for a field's annotation."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Union:
        present = [arg for arg in args if arg is not type(None)]
        if len(present) == 1:
            return _type_kwargs(name, present[0])
    elif origin is Literal:
        return {"type": type(args[0]), "choices": list(args)}
    elif isinstance(annotation, type) and issubclass(annotation, Enum):
        return {"type": str, "choices": [member.value for member in annotation]}
    elif annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    elif annotation in (int, float, str):
        return {"type": annotation}
    raise TypeError(f"field {name!r}: no command-line rule for {annotation!r}; add it to cli_flags.SPECIAL")


def _default_text(info: FieldInfo) -> str:
    if info.is_required():
        return "required unless set by -f"
    default = info.get_default(call_default_factory=True)
    if isinstance(default, Enum):
        default = default.value
    if isinstance(default, bool):
        default = str(default).lower()
    return "" if default in (None, {}, []) else f"default: {default}"


def _help(info: FieldInfo, suffix: str) -> str:
    notes = ", ".join(note for note in (suffix, _default_text(info)) if note)
    text = (info.description or "").rstrip(".")
    return (f"{text} ({notes})" if notes else text).replace("%", "%%")


def field_flag(name: str, info: FieldInfo) -> FieldFlag:
    """The flag of model field `name`: generic unless `SPECIAL` says otherwise."""
    special = SPECIAL.get(name, Special())
    flag = special.flag or "--" + name.replace("_", "-")
    kwargs = {} if special.apply is not _set else _type_kwargs(name, info.annotation)
    if "type" in kwargs and "choices" not in kwargs:
        kwargs["metavar"] = flag[2:].upper().replace("-", "_")
    kwargs.update(special.argparse, dest=name, default=None, help=_help(info, special.help_suffix))
    return FieldFlag(name, flag, kwargs, special.apply)


#: The `run` flags of every JobSpec field, in the model's order.
JOB_FLAGS: tuple[FieldFlag, ...] = tuple(field_flag(name, info) for name, info in JobSpec.model_fields.items())
#: `--engine`: a field of the resource (how to run), not of the job itself.
ENGINE_FLAG = field_flag("engine", KMeansPartitionSpec.model_fields["engine"])


def add_job_flags(parser: argparse.ArgumentParser) -> None:
    for flag in (*JOB_FLAGS, ENGINE_FLAG):
        parser.add_argument(flag.flag, **flag.kwargs)


def apply_job_flags(args: argparse.Namespace, fields: Fields) -> Fields:
    """`fields` with every job flag that was given applied on top."""
    for flag in JOB_FLAGS:
        value = getattr(args, flag.name)
        if value is not None:
            flag.apply(fields, flag.name, value)
    return fields
