"""``dps backup create|verify|restore|list`` (the manual's Backup and Recovery).

A target or backup is a local path or an ``s3://bucket/prefix`` URL. For S3 the endpoint,
region and credentials come from ``backup.s3`` in pipeline.yaml (create, list), overridden by
the ``--s3-*`` options (and their ``DPS_BACKUP_S3_*`` environment variables), which verify and
restore — given no configuration directory — take them from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from dps.cli.audit import ConfigDir, DataDir
from dps.config import load_config
from dps.config.models import BackupS3

app = typer.Typer(help="Back up and restore queues, state and configuration.", no_args_is_help=True)

Target = Annotated[
    str | None,
    typer.Option(
        help="Where backups go: a directory or s3://bucket/prefix (default: backup.directory "
        "in pipeline.yaml)."
    ),
]
Backup = Annotated[str, typer.Argument(help="A backup folder, or s3://bucket/prefix/backup-...")]
S3Endpoint = Annotated[
    str | None,
    typer.Option(envvar="DPS_BACKUP_S3_ENDPOINT_URL", help="S3 endpoint URL (S3-compatible)."),
]
S3Region = Annotated[str | None, typer.Option(envvar="DPS_BACKUP_S3_REGION", help="S3 region.")]
S3AccessKey = Annotated[
    str | None,
    typer.Option(
        envvar="DPS_BACKUP_S3_ACCESS_KEY_REF", help="Access key id as env:NAME or file:/path."
    ),
]
S3SecretKey = Annotated[
    str | None,
    typer.Option(
        envvar="DPS_BACKUP_S3_SECRET_KEY_REF",
        help="Secret access key as env:NAME or file:/path.",
    ),
]


def _s3(
    base: BackupS3 | None,
    endpoint_url: str | None,
    region: str | None,
    access_key_ref: str | None,
    secret_key_ref: str | None,
) -> BackupS3:
    """``backup.s3`` of the configuration with the options given on the command line."""
    from pydantic import ValidationError

    data: dict[str, Any] = (base or BackupS3()).model_dump(mode="json")
    given = {
        "endpoint_url": endpoint_url,
        "region": region,
        "access_key_id_ref": access_key_ref,
        "secret_access_key_ref": secret_key_ref,
    }
    data.update({k: v for k, v in given.items() if v is not None})
    try:
        return BackupS3.model_validate(data)
    except ValidationError as exc:
        typer.echo(f"The S3 options are not valid: {exc}", err=True)
        raise typer.Exit(2) from exc


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
    s3_endpoint_url: S3Endpoint = None,
    s3_region: S3Region = None,
    s3_access_key_ref: S3AccessKey = None,
    s3_secret_key_ref: S3SecretKey = None,
) -> None:
    """Pause the modules (when running), copy queues, state and configuration, resume them."""
    from dps.control.backup import BackupError, create_backup
    from dps.control.backup_storage import storage_for
    from dps.control.modules import client_for
    from dps.runtime.module import resolve_data_dir

    config = load_config(config_dir)
    data = resolve_data_dir(config, data_dir)
    settings = config.pipeline.backup
    s3 = _s3(settings.s3, s3_endpoint_url, s3_region, s3_access_key_ref, s3_secret_key_ref)
    client = client_for(config, admin_port_base)
    try:
        manifest = create_backup(
            config,
            data,
            storage_for(target or settings.location(data), s3),
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
    for removed in manifest["pruned"]:
        typer.echo(f"Deleted the older backup {removed}.", err=True)
    typer.echo(manifest["path"])


@app.command()
def verify(
    path: Backup,
    s3_endpoint_url: S3Endpoint = None,
    s3_region: S3Region = None,
    s3_access_key_ref: S3AccessKey = None,
    s3_secret_key_ref: S3SecretKey = None,
) -> None:
    """Check every file's checksum and every database's integrity; exit 1 when damaged."""
    from dps.control.backup import verify_backup

    s3 = _s3(None, s3_endpoint_url, s3_region, s3_access_key_ref, s3_secret_key_ref)
    result = verify_backup(path, s3=s3)
    typer.echo(json.dumps(result, indent=2))
    if not result["ok"]:
        raise typer.Exit(1)


@app.command()
def restore(
    path: Backup,
    data_dir: Annotated[Path, typer.Option("--data-dir", help="The data directory to restore.")],
    config_dir: Annotated[
        Path | None, typer.Option(help="Also restore the configuration files here.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace a data directory holding data.")] = False,
    s3_endpoint_url: S3Endpoint = None,
    s3_region: S3Region = None,
    s3_access_key_ref: S3AccessKey = None,
    s3_secret_key_ref: S3SecretKey = None,
) -> None:
    """Restore a backup into a stopped pipeline's (empty) data directory."""
    from dps.config import ConfigError
    from dps.control.backup import BackupError, restore_backup
    from dps.control.backup_storage import open_backup

    s3 = _s3(None, s3_endpoint_url, s3_region, s3_access_key_ref, s3_secret_key_ref)
    try:
        # An S3 backup is downloaded once; its pipeline.yaml says where PostgreSQL state goes.
        with open_backup(path, s3) as local:
            state_settings = None
            if (local / "config" / "pipeline.yaml").is_file():
                try:
                    backed_up = load_config(local / "config")
                except ConfigError as exc:
                    typer.echo(f"The backup's configuration does not load: {exc}", err=True)
                    raise typer.Exit(1) from exc
                if backed_up.pipeline.state.backend == "postgresql":
                    state_settings = backed_up.pipeline.state.backend_settings()
            result = restore_backup(
                local,
                data_dir,
                config_dir=config_dir,
                force=force,
                state_settings=state_settings,
                label=path,
            )
    except BackupError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"Restored {result['restored']} files from {path} into {result['data_dir']}.")


@app.command("list")
def list_(
    config_dir: ConfigDir,
    data_dir: DataDir = None,
    target: Target = None,
    s3_endpoint_url: S3Endpoint = None,
    s3_region: S3Region = None,
    s3_access_key_ref: S3AccessKey = None,
    s3_secret_key_ref: S3SecretKey = None,
) -> None:
    """The complete backups, oldest first."""
    from dps.control.backup import BackupError
    from dps.control.backup_storage import storage_for
    from dps.runtime.module import resolve_data_dir

    config = load_config(config_dir)
    data = resolve_data_dir(config, data_dir)
    settings = config.pipeline.backup
    s3 = _s3(settings.s3, s3_endpoint_url, s3_region, s3_access_key_ref, s3_secret_key_ref)
    try:
        refs = storage_for(target or settings.location(data), s3).backups()
    except BackupError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from exc
    for ref in refs:
        typer.echo(ref)
