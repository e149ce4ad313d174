"""A realism layer over kmock's `KubernetesEmulator`, enough for kopf and the kubernetes client.

Fixes over kmock 0.8 (each has a test in tests/test_kube_emulator.py):
- `/api/v1/namespaces[/NAME]` is the cluster-scoped Namespace resource (kmock: 500);
- trailing-slash discovery paths (`/apis/`, `/version/`) are served (kmock: 404);
- the server sets `uid`, `resourceVersion` (one global counter), `creationTimestamp`,
  `generation` (1 on create, +1 when anything but metadata/status changes);
- create answers 201; duplicate names 409 `AlreadyExists`; `generateName` works;
- PATCH by content type: JSON patch (a failed `test` op -> 422), merge patch
  (strategic merge is treated as merge: lists replaced); PUT replaces; a stale
  `metadata.resourceVersion` in the body -> 409 `Conflict`; no-op writes bump nothing;
- status subresource: main writes keep the stored status, `/status` writes change only
  status; create drops the status (as the API server does);
- LIST/WATCH honour `labelSelector`, `fieldSelector`; WATCH honours `resourceVersion`
  (replays only later events; no version: ADDED for what exists) and `timeoutSeconds`;
- finalizers: DELETE sets `deletionTimestamp`; the object goes when finalizers are empty;
- garbage collection (background): when an owner is gone, objects whose every
  ownerReference uid is gone are deleted too (`propagationPolicy: Orphan` unlinks instead);
- created CRDs register their served versions in discovery; deleted CRDs drop their objects.
Not emulated: admission/validation, defaulting, conversion between CRD versions,
RBAC, Foreground deletion (treated as Background), 410 Gone for old watch versions.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
import uuid
from typing import Any, AsyncIterator, Optional

import attrs
from kmock import KubernetesEmulator, KubernetesError, ResourceInfo, resource
from kmock._internal import apps, enums, parsing, rendering

from . import semantics as sem

ALL_VERBS = {"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"}
CRD_RESOURCE = resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
NAMESPACES = resource("", "v1", "namespaces")



def _error(status: int, reason: str, message: str, **details: Any) -> KubernetesError:
    return KubernetesError(status=status, reason=reason, message=message, details=details or {})


def _api_version(res: resource) -> str:
    return f"{res.group}/{res.version}" if res.group else res.version


@attrs.define(kw_only=True)
class RealisticKubernetesEmulator(KubernetesEmulator):
    """kmock's emulator with the API server semantics kopf relies on (see module docstring)."""

    _revision: int = attrs.field(default=0, init=False)
    _events: list[tuple[int, resource, dict]] = attrs.field(factory=list, init=False)
    _changed: asyncio.Condition = attrs.field(factory=asyncio.Condition, init=False)
    _closing: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.fallback[enums.method.PUT] << self._serve_replace

    def register_builtin_resources(self) -> None:
        for (group_version, plural), (kind, namespaced, status) in sem.BUILTIN_RESOURCES.items():
            group, _, version = group_version.rpartition("/")
            self.register(resource(group, version, plural), kind, namespaced, status)

    def register(self, res: resource, kind: str, namespaced: bool, status: bool, **extra: Any) -> None:
        self.resources[res] = ResourceInfo(
            kind=kind, namespaced=namespaced, verbs=ALL_VERBS,
            subresources={"status"} if status else set(), **extra,
        )

    async def _serve_version(self, request: rendering.Request) -> Any:
        listing = await super()._serve_version(request)  # kmock says "/v1" for the core group
        return {**listing, "groupVersion": _api_version(request.resource)}

    async def close_watches(self) -> None:
        """End every open watch stream (call before stopping the HTTP server)."""
        async with self._changed:
            self._closing = True
            self._changed.notify_all()

    # --- request parsing: our path rules instead of kmock's (namespaces, trailing slashes) ---

    async def __call__(self, raw_request: Any) -> Any:
        await raw_request.read()
        try:
            request = await self._parse_request(raw_request)
        except Exception as err:
            return await self._render_error(err)
        self._requests.append(request)
        try:
            return await self._handle(request)
        except rendering.StreamingError as err:
            response = err.args[0]
            if response.prepared:
                await self._stream_error(err.__cause__ or err, response)
                return response
            return await self._render_error(err.__cause__ or err)
        except Exception as err:
            return await self._render_error(err)

    async def _parse_request(self, raw_request: Any) -> rendering.Request:
        body = await raw_request.read()
        path = sem.normalise_path(raw_request.path)
        parsed = sem.parse_path(path)
        method = enums.method(raw_request.method)
        res = None if parsed.group is None else resource(group=parsed.group, version=parsed.version, plural=parsed.plural)
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        return rendering.Request(
            id=len(self._requests), raw_request=raw_request,
            url=raw_request.url.with_path(path).with_query(raw_request.query),
            method=method, params=dict(raw_request.query), headers=dict(raw_request.headers),
            cookies=dict(raw_request.cookies), body=body, text=body.decode(errors="replace"), data=data,
            action=parsing.guess_k8s(parsed, method, dict(raw_request.query)), resource=res,
            namespace=parsed.namespace, name=parsed.name, subresource=parsed.subresource,
        )

    async def _handle(self, request: rendering.Request) -> Any:
        # Skip kmock's state-changing interceptor: our fallbacks below own the state.
        return await apps.RawHandler._handle(self, request)

    # --- state helpers (call with self._lock held) ---

    def _info(self, res: Optional[resource]) -> ResourceInfo:
        if res is None or res.plural is None or res not in self.resources:
            raise _error(404, "NotFound", "the server could not find the requested resource")
        return self.resources[res]

    def _get(self, res: resource, namespace: Optional[str], name: str) -> Optional[dict]:
        key = (res, namespace, name)
        if key not in self._objects or self._objects[key].deleted:
            return None
        return copy.deepcopy(self._objects[key].raw)

    def _live(self) -> list[tuple[resource, Optional[str], str, dict]]:
        return [(r, ns, n, obj.raw) for (r, ns, n), obj in self._objects.items() if not obj.deleted]

    def _not_found(self, res: resource, name: str) -> KubernetesError:
        kind = self.resources[res].kind if res in self.resources else res.plural
        return _error(404, "NotFound", f'{res.plural} "{name}" not found', name=name, kind=kind)

    async def _emit(self, res: resource, kind: str, obj: dict) -> None:
        async with self._changed:
            self._events.append((self._revision, res, {"type": kind, "object": copy.deepcopy(obj)}))
            self._changed.notify_all()

    def _bump(self, obj: dict) -> dict:
        self._revision += 1
        obj.setdefault("metadata", {})["resourceVersion"] = str(self._revision)
        return obj

    async def _store(self, res: resource, namespace: Optional[str], name: str, obj: dict, kind: str) -> dict:
        key = (res, namespace, name)
        self._bump(obj)
        if key in self._objects:
            self._objects[key].history.append(obj)
        else:
            self._objects[key] = obj
        await self._emit(res, kind, obj)
        return obj

    async def _remove(self, res: resource, namespace: Optional[str], name: str) -> dict:
        obj = self._bump(self._get(res, namespace, name))
        self._objects[(res, namespace, name)].delete()
        await self._emit(res, "DELETED", obj)
        if res == CRD_RESOURCE:
            await self._unregister_crd(obj)
        if res == NAMESPACES:
            for other, ns, other_name, _ in self._live():
                if ns == name:
                    await self._delete(other, ns, other_name, orphan=False)
        await self._collect_garbage()
        return obj

    async def _delete(self, res: resource, namespace: Optional[str], name: str, orphan: bool) -> dict:
        obj = self._get(res, namespace, name)
        if obj is None:
            raise self._not_found(res, name)
        if orphan:
            await self._orphan_dependents(obj["metadata"]["uid"])
        meta = obj["metadata"]
        if meta.get("finalizers"):
            if not meta.get("deletionTimestamp"):
                meta["deletionTimestamp"] = sem.now_timestamp()
                meta["deletionGracePeriodSeconds"] = 0
                await self._store(res, namespace, name, obj, "MODIFIED")
            return obj
        return await self._remove(res, namespace, name)

    async def _orphan_dependents(self, uid: str) -> None:
        for res, ns, name, raw in self._live():
            refs = raw.get("metadata", {}).get("ownerReferences") or []
            if any(ref.get("uid") == uid for ref in refs):
                obj = copy.deepcopy(raw)
                obj["metadata"]["ownerReferences"] = [r for r in refs if r.get("uid") != uid]
                await self._store(res, ns, name, obj, "MODIFIED")

    async def _collect_garbage(self) -> None:
        """Delete objects whose owners (by uid) are all gone; repeat for chains."""
        while True:
            live = self._live()
            uids = {raw["metadata"]["uid"] for *_, raw in live}
            orphans = [
                (res, ns, name) for res, ns, name, raw in live
                if sem.owner_uids(raw) and not (sem.owner_uids(raw) & uids)
                and not raw["metadata"].get("deletionTimestamp")
            ]
            if not orphans:
                return
            for res, ns, name in orphans:
                await self._delete(res, ns, name, orphan=False)

    def _register_crd(self, crd: dict) -> None:
        for (group, version, plural), info in sem.crd_served_resources(crd):
            self.register(resource(group, version, plural), **info)
        crd["status"] = sem.crd_status(crd)

    async def _unregister_crd(self, crd: dict) -> None:
        spec = crd.get("spec", {})
        for version in spec.get("versions", []):
            res = resource(spec["group"], version["name"], spec["names"]["plural"])
            for key in [key for key in self._objects if key[0] == res]:
                if not self._objects[key].deleted:
                    await self._emit(res, "DELETED", self._bump(self._get(*key)))
                del self._objects[key]
            self.resources.pop(res, None)

    # --- the API verbs (kmock fallbacks: they run when no user reaction matched) ---

    async def _serve_create(self, request: rendering.Request) -> rendering.Response:
        async with self._lock:
            res, info = request.resource, self._info(request.resource)
            obj = copy.deepcopy(request.data) if isinstance(request.data, dict) else None
            if obj is None:
                raise _error(400, "BadRequest", "the request body must be a JSON object")
            meta = obj.setdefault("metadata", {})
            namespace = (request.namespace or meta.get("namespace")) if info.namespaced else None
            if info.namespaced and not namespace:
                raise _error(400, "BadRequest", "a namespace is required for a namespaced resource")
            if request.namespace and meta.get("namespace", request.namespace) != request.namespace:
                raise _error(400, "BadRequest", "the namespace of the object does not match the URL")
            if namespace and self._get(NAMESPACES, None, namespace) is None:
                raise _error(404, "NotFound", f'namespaces "{namespace}" not found', name=namespace, kind="namespaces")
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            name = meta.get("name")
            if not name:
                raise _error(422, "Invalid", "metadata.name: Required value: name or generateName is required")
            if self._get(res, namespace, name) is not None:
                raise _error(409, "AlreadyExists", f'{res.plural} "{name}" already exists', name=name, kind=info.kind)
            obj.setdefault("apiVersion", _api_version(res))
            obj.setdefault("kind", info.kind)
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=sem.now_timestamp(), generation=1)
            meta.pop("deletionTimestamp", None)
            if namespace:
                meta["namespace"] = namespace
            if "status" in info.subresources:
                obj.pop("status", None)
            if res == CRD_RESOURCE:
                self._register_crd(obj)
            created = await self._store(res, namespace, name, obj, "ADDED")
            await self._collect_garbage()
        return rendering.Response(status=201, payload=created)

    async def _serve_update(self, request: rendering.Request) -> Any:
        content_type = request.headers.get("Content-Type", "")
        return await self._write(request, lambda current: sem.apply_patch(current, request.data, content_type))

    async def _serve_replace(self, request: rendering.Request) -> Any:
        if request.resource is None or request.name is None:
            raise _error(405, "MethodNotAllowed", "PUT needs an object URL")
        return await self._write(request, lambda current: copy.deepcopy(request.data))

    async def _write(self, request: rendering.Request, change: Any) -> Any:
        async with self._lock:
            res, info = request.resource, self._info(request.resource)
            namespace = request.namespace if info.namespaced else None
            if request.subresource not in (None, *info.subresources):
                raise _error(404, "NotFound", f"the server could not find the subresource {request.subresource}")
            old = self._get(res, namespace, request.name)
            if old is None:
                raise self._not_found(res, request.name)
            try:
                new = change(copy.deepcopy(old))
            except sem.PatchError as err:
                raise _error(err.status, err.reason, str(err))
            # A resourceVersion in a merge patch or PUT body is a precondition;
            # JSON patches carry theirs as `test` ops.
            body = request.data if isinstance(request.data, dict) else {}
            wanted_version = (body.get("metadata") or {}).get("resourceVersion")
            if wanted_version and wanted_version != old["metadata"]["resourceVersion"]:
                raise _error(409, "Conflict", f'Operation cannot be fulfilled on {res.plural} "{request.name}": '
                             "the object has been modified; please apply your changes to the latest version")
            new = sem.merge_write(old, new, "status" in info.subresources, request.subresource)
            if sem.without_volatile_metadata(new) == sem.without_volatile_metadata(old):
                return old
            if sem.spec_changed(old, new, "status" in info.subresources):
                new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
            stored = await self._store(res, namespace, request.name, new, "MODIFIED")
            if stored["metadata"].get("deletionTimestamp") and not stored["metadata"].get("finalizers"):
                await self._remove(res, namespace, request.name)
            await self._collect_garbage()
            return stored

    async def _serve_delete(self, request: rendering.Request) -> Any:
        options = request.data if isinstance(request.data, dict) else {}
        policy = request.params.get("propagationPolicy") or options.get("propagationPolicy")
        async with self._lock:
            info = self._info(request.resource)
            namespace = request.namespace if info.namespaced else None
            return await self._delete(request.resource, namespace, request.name, orphan=policy == "Orphan")

    async def _serve_fetch(self, request: rendering.Request) -> Any:
        async with self._lock:
            info = self._info(request.resource)
            obj = self._get(request.resource, request.namespace if info.namespaced else None, request.name)
        if obj is None:
            raise self._not_found(request.resource, request.name)
        return obj

    def _selects(self, request: rendering.Request) -> Any:
        labels = sem.parse_label_selector(request.params.get("labelSelector"))
        fields = sem.parse_field_selector(request.params.get("fieldSelector"))

        def check(res: resource, obj: dict) -> bool:
            meta = obj.get("metadata", {})
            return (
                res == request.resource
                and (request.namespace is None or meta.get("namespace") == request.namespace)
                and (request.name is None or meta.get("name") == request.name)
                and labels(meta.get("labels")) and fields(obj)
            )
        return check

    async def _serve_list(self, request: rendering.Request) -> Any:
        check = self._selects(request)
        async with self._lock:
            info = self._info(request.resource)
            items = [copy.deepcopy(raw) for res, _, _, raw in self._live() if check(res, raw)]
            revision = self._revision
        return {
            "apiVersion": _api_version(request.resource), "kind": f"{info.kind}List",
            "metadata": {"resourceVersion": str(revision)}, "items": items,
        }

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[Any]:
        check = self._selects(request)
        since = request.params.get("resourceVersion") or "0"
        timeout = float(request.params.get("timeoutSeconds") or 0) or None
        deadline = time.monotonic() + timeout if timeout else None
        async with self._lock:
            self._info(request.resource)
            async with self._changed:
                if since == "0":
                    initial = [copy.deepcopy(raw) for res, _, _, raw in self._live() if check(res, raw)]
                    position = len(self._events)
                else:
                    initial = []
                    position = next((i for i, (rv, *_) in enumerate(self._events) if rv > int(since)),
                                    len(self._events))
        yield b""  # send the headers now: the stream is open even if nothing happens
        for obj in initial:
            yield {"type": "ADDED", "object": obj}
        while True:
            async with self._changed:
                remaining = None if deadline is None else deadline - time.monotonic()
                if position >= len(self._events) and not self._closing and (remaining is None or remaining > 0):
                    try:
                        await asyncio.wait_for(self._changed.wait(), remaining)
                    except asyncio.TimeoutError:
                        pass
                batch, position = self._events[position:], len(self._events)
                stop = self._closing or (deadline is not None and time.monotonic() >= deadline)
            for _, res, event in batch:
                if check(res, event["object"]):
                    yield event
            if stop:
                return
