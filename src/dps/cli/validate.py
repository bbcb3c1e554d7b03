"""``dps validate CONFIG_DIR``: load a whole configuration directory and summarise it.

The same checks a module runs before it accepts a configuration (every file, then the cross-file
checks); prints what would run, or every issue as ``file:line: key: message``.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from dps.config.loader import check_directory
from dps.config.models import PipelineConfig


def validate_command(config_dir: Path, console: Console | None = None) -> int:
    """Validate ``config_dir``; print a summary or the issues. Returns the exit status.

    0: valid; 1: issues were printed; 2: ``config_dir`` is not a directory.
    """
    out = console or Console(soft_wrap=True, highlight=False, markup=False)
    if not config_dir.is_dir():
        out.print(
            f"error: {config_dir} is not a directory; expected a CONFIG_DIR.",
            style="red",
            markup=False,
        )
        return 2
    result = check_directory(config_dir)
    if result.config is None:
        for issue in result.issues:
            shown = issue.file if Path(issue.file).is_absolute() else str(config_dir / issue.file)
            where = shown if issue.line is None else f"{shown}:{issue.line}"
            key = f" {issue.key}:" if issue.key else ""
            out.print(Text.assemble((f"{where}:", "bold red"), (key, "bold"), f" {issue.message}"))
        files = len({issue.file for issue in result.issues})
        noun = "issue" if len(result.issues) == 1 else "issues"
        out.print(
            f"{len(result.issues)} {noun} in {files} of {max(len(result.files), files)} files; "
            "the configuration is refused.",
            style="red",
        )
        return 1
    out.print(summary_table(result.config))
    out.print(
        Text.assemble(
            ("Configuration is valid", "bold green"),
            f": {len(result.files)} files, checksum {result.config.checksum()[:16]}.",
        )
    )
    return 0


def summary_table(config: PipelineConfig) -> Table:
    """Counts of what the configuration defines, and the backends it runs on."""
    table = Table(title=f"Pipeline {config.pipeline.name} ({config.root})", title_justify="left")
    table.add_column("What")
    table.add_column("Defined", justify="right")
    table.add_column("Enabled", justify="right")
    table.add_column("Ids")
    sources = list(config.alpha.sources.values())
    rules = config.beta.rules
    destinations = list(config.gamma.destinations.values())
    routes = config.gamma.routes
    table.add_row(
        "Sources",
        str(len(sources)),
        str(sum(s.enabled for s in sources)),
        ", ".join(s.source_id for s in sources),
    )
    table.add_row(
        "Rules",
        str(len(rules)),
        str(sum(r.enabled for r in rules)),
        ", ".join(r.rule_id for r in rules),
    )
    table.add_row(
        "Destinations",
        str(len(destinations)),
        str(sum(d.enabled for d in destinations)),
        ", ".join(d.destination_id for d in destinations),
    )
    table.add_row(
        "Routes",
        str(len(routes)),
        str(sum(r.enabled for r in routes)),
        ", ".join(r.rule_id for r in routes),
    )
    scoring = config.beta.scoring
    table.add_row(
        "Quality scoring",
        "1" if scoring else "0",
        "1" if scoring else "0",
        ", ".join(scoring.active_dimensions) if scoring else "(defaults)",
    )
    pipeline = config.pipeline
    table.caption = (
        f"transport {pipeline.transport.backend}, state {pipeline.state.backend}, "
        f"admin on {pipeline.admin.bind}"
    )
    return table
