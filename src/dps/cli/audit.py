"""``dps audit verify|export``: the audit log's hash chain and its export (runbook L.1)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from dps.config import ConfigError, load_config
from dps.runtime.module import resolve_data_dir
from dps.state import StateStore, open_state

app = typer.Typer(help="The audit log: verify its hash chain, export it.", no_args_is_help=True)

ConfigDir = Annotated[Path, typer.Argument(help="The configuration directory.", exists=True)]
DataDir = Annotated[
    Path | None, typer.Option("--data-dir", envvar="DPS_DATA_DIR", help="Where state lives.")
]


def open_store(config_dir: Path, data_dir: Path | None) -> StateStore:
    """The state store of a configuration directory (for the operations commands)."""
    try:
        config = load_config(config_dir)
    except ConfigError as exc:
        typer.echo(f"The configuration is not valid: {exc}", err=True)
        raise typer.Exit(2) from exc
    data = resolve_data_dir(config, data_dir)
    return open_state(config.pipeline.state.backend, config.pipeline.state.backend_settings(), data)


@app.command()
def verify(config_dir: ConfigDir, data_dir: DataDir = None) -> None:
    """Check the audit hash chain; exit 1 naming every edited or deleted entry."""
    store = open_store(config_dir, data_dir)
    try:
        result = store.verify_audit()
    finally:
        store.close()
    if result["ok"]:
        typer.echo(f"Audit log intact: {result['chained']} chained entries.")
        return
    typer.echo(f"Audit log TAMPERED: {len(result['problems'])} problems.", err=True)
    for problem in result["problems"]:
        typer.echo(f"  {problem}", err=True)
    raise typer.Exit(1)


@app.command()
def export(
    config_dir: ConfigDir,
    data_dir: DataDir = None,
    since: Annotated[str, typer.Option(help="How far back: 24h, 7d, an ISO date.")] = "24h",
) -> None:
    """Print the audit entries since a time as a JSON array (as GET /api/export)."""
    from dps.control.admin import parse_since

    store = open_store(config_dir, data_dir)
    try:
        entries = store.export_audit(parse_since(since))
    finally:
        store.close()
    typer.echo(json.dumps(entries, indent=2, default=str))
