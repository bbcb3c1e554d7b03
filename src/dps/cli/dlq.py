"""``dps dlq --module alpha|beta|gamma stats|list|analysis|replay|export|purge|cleanup``.

The same operations as Gamma's ``/admin/dlq/...`` (Runbook C.2), for any module's DLQ, working
directly on the state store and the queues of a CONFIG_DIR (no running module needed). Replay
and purge are audited with the actor ``cli:<user>``.
"""

from __future__ import annotations

import getpass
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(help="Inspect, replay, export and purge a module's dead letter queue.")

_state: dict[str, Any] = {}


@app.callback()
def main(
    module: Annotated[str, typer.Option("--module", "-m", help="alpha, beta or gamma.")] = "gamma",
    config_dir: Annotated[
        Path, typer.Option("--config", "-c", help="The configuration directory.")
    ] = Path("."),
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", envvar="DPS_DATA_DIR", help="Queues and state.")
    ] = None,
) -> None:
    """Work on the DLQ of ``--module`` in the pipeline of ``--config``."""
    _state.update(module=module, config_dir=config_dir, data_dir=data_dir)


def _service() -> Any:
    from dps.config import load_config
    from dps.gamma.dlq import DlqService, stage_queue_opener
    from dps.runtime.module import resolve_data_dir
    from dps.state import open_state

    config = load_config(_state["config_dir"])
    data_dir = resolve_data_dir(config, _state["data_dir"])
    state = open_state(
        config.pipeline.state.backend, config.pipeline.state.backend_settings(), data_dir
    )
    service = DlqService(
        state, _state["module"], stage_queue_opener(config, data_dir), actor=f"cli:{_user()}"
    )
    return service, config


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


def _print(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def _body(entry_ids: list[str] | None, filter_json: str | None, all_: bool) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if entry_ids:
        body["entry_ids"] = entry_ids
    if filter_json:
        body["filter"] = json.loads(filter_json)
    if all_:
        body["all"] = True
    return body


def _run(fn: Any) -> None:
    from dps.core.errors import DpsError

    service, config = _service()
    try:
        _print(fn(service, config))
    except (ValueError, DpsError) as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        service.state.close()


EntryIds = Annotated[list[str] | None, typer.Option("--entry-id", "-e", help="An entry id.")]
FilterOpt = Annotated[
    str | None, typer.Option("--filter", "-f", help="JSON, e.g. '{\"retry_eligible\": true}'.")
]
AllOpt = Annotated[bool, typer.Option("--all", help="Every open entry.")]


@app.command()
def stats() -> None:
    """Size, per reason, class and destination, retry-eligible count, oldest entry."""
    _run(lambda s, _c: s.stats())


@app.command(name="list")
def list_(
    limit: Annotated[int, typer.Option(help="Entries to list.")] = 100,
    offset: Annotated[int, typer.Option(help="Entries to skip.")] = 0,
    status: Annotated[str, typer.Option(help="open, replayed, purged or all.")] = "open",
) -> None:
    """List entries, oldest first."""
    _run(lambda s, _c: s.entries(limit, offset, status))


@app.command()
def analysis() -> None:
    """Open entries grouped by failure reason, error class, destination, stage, source and rule,
    each group with its first and last seen."""
    _run(lambda s, _c: s.analysis())


@app.command()
def replay(
    entry_id: EntryIds = None,
    filter_json: FilterOpt = None,
    all_: AllOpt = False,
    target: Annotated[str, typer.Option(help="original or beta.")] = "original",
) -> None:
    """Put entries back into the flow (audited)."""
    body = _body(entry_id, filter_json, all_) | {"target": target}
    _run(lambda s, _c: s.replay(body))


@app.command()
def export(
    fmt: Annotated[str, typer.Option("--format", help="json or ndjson.")] = "json",
) -> None:
    """Write every open entry to standard output."""
    service, _config = _service()
    try:
        if fmt == "ndjson":
            for line in service.export_ndjson():
                sys.stdout.buffer.write(line)
        elif fmt == "json":
            _print(service.export())
        else:
            typer.echo(f"Error: --format {fmt!r} is not json or ndjson.", err=True)
            raise typer.Exit(2)
    finally:
        service.state.close()


@app.command()
def purge(entry_id: EntryIds = None, filter_json: FilterOpt = None, all_: AllOpt = False) -> None:
    """Mark entries purged (audited)."""
    body = _body(entry_id, filter_json, all_)
    _run(lambda s, _c: s.purge(body))


@app.command()
def cleanup(
    retention_days: Annotated[
        int | None, typer.Option(help="Default: gamma.yaml DLQ_RETENTION_DAYS.")
    ] = None,
) -> None:
    """Archive entries older than the retention (the gamma_dlq_cleanup job)."""
    _run(
        lambda s, c: s.cleanup(
            c.gamma.settings.DLQ_RETENTION_DAYS if retention_days is None else retention_days
        )
    )
