"""``dps config history|diff|drift``: stored configuration versions and drift (runbook J.2)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from dps.cli.audit import ConfigDir, DataDir, open_store

app = typer.Typer(help="Configuration versions, diffs and drift.", no_args_is_help=True)


@app.command()
def history(
    config_dir: ConfigDir,
    data_dir: DataDir = None,
    module: Annotated[str | None, typer.Option(help="Only this module's versions.")] = None,
) -> None:
    """Every stored version: module, version, checksum, time, actor, and the change IDs of the
    manual's configuration headers (``# Change ID: ...``) found in its files."""
    from dps.control.configs import version_headers

    store = open_store(config_dir, data_dir)
    try:
        versions = store.list_config_versions(module)
        changes = [
            sorted(
                {
                    h["Change ID"]
                    for h in version_headers(store, v["module"], v["version"]).values()
                    if "Change ID" in h
                }
            )
            for v in versions
        ]
    finally:
        store.close()
    for v, change_ids in zip(versions, changes, strict=True):
        at = datetime.fromtimestamp(v["created_at"], UTC).strftime("%Y-%m-%d %H:%M:%S")
        typer.echo(
            f"{v['module']}:{v['version']}\t{v['checksum'][:12]}\t{at}Z\t{v['actor']}\t"
            + ",".join(change_ids)
        )


@app.command()
def diff(
    config_dir: ConfigDir,
    a: Annotated[str, typer.Argument(help="A version: 3 (control's) or alpha:3.")],
    b: Annotated[str, typer.Argument(help="The other version.")],
    data_dir: DataDir = None,
) -> None:
    """A unified diff, file by file, between two stored versions."""
    from dps.control.configs import diff_versions

    store = open_store(config_dir, data_dir)
    try:
        text = diff_versions(store, a, b)
    except ValueError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc
    finally:
        store.close()
    typer.echo(text or f"{a} and {b} are identical.", nl=not text)


@app.command()
def drift(
    config_dir: ConfigDir,
    data_dir: DataDir = None,
    admin_port_base: Annotated[
        int | None, typer.Option(help="Admin ports as dps run: control=N, alpha=N+1, ...")
    ] = None,
) -> None:
    """Compare the files on disk with what each running module uses; exit 1 on drift."""
    import os

    from dps.config import load_config
    from dps.control.configs import detect_drift
    from dps.control.modules import client_for
    from dps.runtime.module import resolve_data_dir

    config = load_config(config_dir)
    # Loaded as the modules load it: ${DPS_DATA_DIR} in the files is their data directory.
    os.environ["DPS_DATA_DIR"] = str(resolve_data_dir(config, data_dir))
    client = client_for(config, admin_port_base)
    try:
        report = detect_drift(Path(config_dir), client)
    finally:
        client.close()
    typer.echo(json.dumps(report, indent=2))
    if report["drift"]:
        raise typer.Exit(1)
