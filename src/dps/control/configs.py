"""Configuration management: stored versions, their history and diffs, and drift (runbook J.2).

Every module stores the configuration it loads or reloads as a version in the state store
(``config_versions``: checksum, time, actor, and the files' text), and appends an audit entry
with the checksum. ``dps config history`` lists them, ``dps config diff`` compares two versions
file by file, and :func:`detect_drift` compares what each running module exports with what the
files on disk would load to (the manual's ``diff -u baseline current``, done by the system).
"""

from __future__ import annotations

import difflib
import json
import re
from typing import Any

from dps.config import PipelineConfig, load_config
from dps.config.models import config_files
from dps.control.modules import MODULES, ModuleClient, ModuleUnreachable
from dps.core.errors import ConfigError
from dps.state import StateStore


def snapshot(config: PipelineConfig) -> str:
    """The configuration files as one JSON object ``{relative path: text}`` (what is stored)."""
    root = config.root
    files = {
        p.relative_to(root).as_posix(): p.read_text(errors="replace") for p in config_files(root)
    }
    return json.dumps(files, sort_keys=True, indent=1)


_HEADER = re.compile(r"^#\s*([A-Z][A-Za-z ]+?):\s*(.+?)\s*$")


def config_headers(text: str) -> dict[str, str]:
    """The manual's configuration header (``# Module: alpha``, ``# Change ID: ...``) of a file.

    Read from the leading comment lines; keys as written (``Change ID``, ``Modified By``).
    """
    headers: dict[str, str] = {}
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        match = _HEADER.match(line)
        if match:
            headers[match.group(1)] = match.group(2)
    return headers


def version_headers(store: StateStore, module: str, version: int) -> dict[str, dict[str, str]]:
    """The headers of every file of a stored version that has one: ``{path: {key: value}}``."""
    getter = getattr(store, "get_config_version", None)
    content = getter(module, version) if getter else None
    if content is None:
        return {}
    files: dict[str, str] = json.loads(content)
    found = {path: config_headers(text) for path, text in files.items()}
    return {path: h for path, h in found.items() if h}


def parse_version(spec: str, default_module: str = "control") -> tuple[str, int]:
    """``3`` or ``alpha:3`` -> (module, version)."""
    module, _, number = spec.rpartition(":")
    try:
        return (module or default_module, int(number))
    except ValueError:
        raise ValueError(
            f"Configuration version {spec!r} is not valid; expected a number such as 3 or "
            "<module>:<number> such as alpha:3 (see dps config history)."
        ) from None


def diff_versions(store: StateStore, a: str, b: str, default_module: str = "control") -> str:
    """A unified diff, file by file, between two stored versions (empty when identical)."""
    texts = []
    for spec in (a, b):
        module, version = parse_version(spec, default_module)
        getter = getattr(store, "get_config_version", None)
        content = getter(module, version) if getter else None
        if content is None:
            raise ValueError(f"No stored configuration version {module}:{version}.")
        texts.append((f"{module}:{version}", json.loads(content)))
    (name_a, files_a), (name_b, files_b) = texts
    out: list[str] = []
    for path in sorted(set(files_a) | set(files_b)):
        before = files_a.get(path, "").splitlines(keepends=True)
        after = files_b.get(path, "").splitlines(keepends=True)
        out.extend(difflib.unified_diff(before, after, f"{name_a}/{path}", f"{name_b}/{path}"))
    return "".join(line if line.endswith("\n") else line + "\n" for line in out)


def _differences(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in a:
                out.append(f"{sub}: only in the running configuration")
            elif key not in b:
                out.append(f"{sub}: only in the files on disk")
            else:
                out.extend(_differences(a[key], b[key], sub))
        return out
    if a != b:
        return [
            f"{path}: files on disk {json.dumps(a, default=str)[:120]}, running "
            f"{json.dumps(b, default=str)[:120]}"
        ]
    return []


def detect_drift(config_dir: Any, modules: ModuleClient) -> dict[str, Any]:
    """Compare each module's running configuration with what the files on disk load to.

    ``{"drift": bool, "checksum_on_disk", "modules": {name: {"in_sync", "differences"}}}``;
    a module that does not answer is reported as ``unreachable`` (and counts as drift).
    """
    try:
        on_disk = load_config(config_dir)
    except ConfigError as exc:
        return {
            "drift": True,
            "error": "The configuration on disk is not valid.",
            "issues": [str(i) for i in exc.issues],
            "modules": {},
        }
    expected = on_disk.export()
    expected.pop("root", None)
    report: dict[str, Any] = {"checksum_on_disk": on_disk.checksum(), "modules": {}}
    for module in MODULES:
        try:
            running = modules.get_json(module, "/admin/config/export")
        except (ModuleUnreachable, RuntimeError) as exc:
            report["modules"][module] = {"in_sync": False, "unreachable": True, "error": str(exc)}
            continue
        running.pop("root", None)
        diffs = _differences(expected, running)
        report["modules"][module] = {"in_sync": not diffs, "differences": diffs}
    report["drift"] = not all(m["in_sync"] for m in report["modules"].values())
    return report
