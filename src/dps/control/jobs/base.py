"""The job contract: what a scheduled job receives and returns.

A job is a function ``run(ctx) -> JobResult``. It reaches the modules only through
``ctx.modules`` (their admin APIs) and shared state through ``ctx.store``; it writes what it wants
an operator to read with ``ctx.log(...)`` (kept with the run, ``/admin/jobs/<job>/logs``) and its
files under ``ctx.data_dir``. It raises to fail: the scheduler records the run as ``FAILED``
with the exception's message. A job must be safe to run again at any time (a manual trigger, a
retry after a crash): each one either reads, or writes files named after its run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dps.config import PipelineConfig
from dps.control.modules import ModuleClient
from dps.state import StateStore


@dataclass(slots=True)
class JobResult:
    """What a run did: ``records`` it handled, a one-line ``message``, ``ok`` False to fail."""

    records: int = 0
    message: str = ""
    ok: bool = True
    outputs: list[str] = field(default_factory=list)


@dataclass(slots=True)
class JobContext:
    """What a job may use (see the module docstring)."""

    job_name: str
    run_id: str
    store: StateStore
    modules: ModuleClient
    config: PipelineConfig
    config_dir: Path
    data_dir: Path
    started_at: float = field(default_factory=time.time)
    lines: list[str] = field(default_factory=list)

    def log(self, message: str, **data: Any) -> None:
        """Add a line to the run's log (``/admin/jobs/<job>/logs``)."""
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        extra = " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in data.items())
        self.lines.append(f"{stamp} {message}" + (f" {extra}" if extra else ""))

    def write_report(self, title: str, data: dict[str, Any]) -> list[str]:
        """Write ``data`` as ``<data_dir>/reports/<job>/<stamp>.json`` and a Markdown twin."""
        folder = self.data_dir / "reports" / self.job_name
        folder.mkdir(parents=True, exist_ok=True)
        stamp = datetime.fromtimestamp(self.started_at, UTC).strftime("%Y%m%dT%H%M%SZ")
        json_path = folder / f"{stamp}.json"
        md_path = folder / f"{stamp}.md"
        document = {
            "job": self.job_name,
            "run_id": self.run_id,
            "generated_at": datetime.now(UTC).isoformat(),
            **data,
        }
        json_path.write_text(json.dumps(document, indent=2, default=str) + "\n")
        md_path.write_text(markdown_report(title, document))
        self.log("Report written.", json=str(json_path), markdown=str(md_path))
        return [str(json_path), str(md_path)]


def markdown_report(title: str, document: dict[str, Any]) -> str:
    """A Markdown rendering of a report: one section per top-level key, tables for mappings."""
    lines = [f"# {title}", ""]
    for key, value in document.items():
        if (
            isinstance(value, dict)
            and value
            and all(not isinstance(v, dict | list) for v in value.values())
        ):
            lines += [f"## {key}", "", "| key | value |", "|---|---|"]
            lines += [f"| {k} | {v} |" for k, v in value.items()]
            lines.append("")
        elif isinstance(value, dict | list):
            lines += [
                f"## {key}",
                "",
                "```json",
                json.dumps(value, indent=2, default=str),
                "```",
                "",
            ]
        else:
            lines.append(f"- **{key}**: {value}")
    if lines[-1] != "":
        lines.append("")
    return "\n".join(lines)


JobFunction = Callable[[JobContext], JobResult]


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One job of the catalog: name, default schedule, what it is for and how long it may take.

    ``run`` is None for a job that has no meaning in this system or whose module capability is
    not built yet; ``inactive_reason`` says which. Such a job is listed with status ``inactive``
    and cannot be triggered.
    """

    name: str
    schedule: str
    description: str
    module: str
    expected_minutes: float
    run: JobFunction | None = None
    inactive_reason: str | None = None

    @property
    def active(self) -> bool:
        return self.run is not None
