"""``dps backup create|verify|restore|list`` (the manual's Backup and Recovery)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from dps.cli.audit import ConfigDir, DataDir
from dps.config import load_config

app = typer.Typer(help="Back up and restore queues, state and configuration.", no_args_is_help=True)

Target = Annotated[
    Path | None, typer.Option(help="Where backups go (default: backup.directory in pipeline.yaml).")
]


@app.command()
def create(
    config_dir: ConfigDir,
    data_dir: DataDir = None,
    target: Target = None,
    keep: Annotated[
        int | None, typer.Option(help="Keep only the newest N backups (default: backup.keep).")
    ] = None,
    admin_port_base: Annotated[
        int | None, typer.Option(help="Admin ports of a running pipeline (to pause it).")
    ] = None,
) -> None:
    """Pause the modules (when running), copy queues, state and configuration, resume them."""
    from dps.control.backup import BackupError, create_backup
    from dps.control.modules import client_for
    from dps.runtime.module import resolve_data_dir

    config = load_config(config_dir)
    data = resolve_data_dir(config, data_dir)
    settings = config.pipeline.backup
    client = client_for(config, admin_port_base)
    try:
        manifest = create_backup(
            config,
            data,
            target or settings.target(data),
            modules=client,
            keep=keep or settings.keep,
        )
    except BackupError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from exc
    finally:
        client.close()
    for line in manifest["log"]:
        typer.echo(line, err=True)
    typer.echo(manifest["path"])


@app.command()
def verify(path: Annotated[Path, typer.Argument(help="A backup folder.")]) -> None:
    """Check every file's checksum and every database's integrity; exit 1 when damaged."""
    from dps.control.backup import verify_backup

    result = verify_backup(path)
    typer.echo(json.dumps(result, indent=2))
    if not result["ok"]:
        raise typer.Exit(1)


@app.command()
def restore(
    path: Annotated[Path, typer.Argument(help="A backup folder.")],
    data_dir: Annotated[Path, typer.Option("--data-dir", help="The data directory to restore.")],
    config_dir: Annotated[
        Path | None, typer.Option(help="Also restore the configuration files here.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace a data directory holding data.")] = False,
) -> None:
    """Restore a backup into a stopped pipeline's (empty) data directory."""
    from dps.control.backup import BackupError, restore_backup

    state_settings = None
    if (path / "config" / "pipeline.yaml").is_file():
        from dps.config import ConfigError

        try:
            backed_up = load_config(path / "config")
        except ConfigError as exc:
            typer.echo(f"The backup's configuration does not load: {exc}", err=True)
            raise typer.Exit(1) from exc
        if backed_up.pipeline.state.backend == "postgresql":
            state_settings = backed_up.pipeline.state.backend_settings()
    try:
        result = restore_backup(
            path, data_dir, config_dir=config_dir, force=force, state_settings=state_settings
        )
    except BackupError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"Restored {result['restored']} files from {path} into {result['data_dir']}.")


@app.command("list")
def list_(config_dir: ConfigDir, data_dir: DataDir = None, target: Target = None) -> None:
    """The complete backups, oldest first."""
    from dps.control.backup import list_backups
    from dps.runtime.module import resolve_data_dir

    config = load_config(config_dir)
    data = resolve_data_dir(config, data_dir)
    for path in list_backups(target or config.pipeline.backup.target(data)):
        typer.echo(str(path))
