"""Backup jobs: weekly_full_backup, daily_backup_verify, monthly_dr_validation.

They work on ``backup.directory`` whether it is a directory or an ``s3://`` bucket (with
``backup.s3``), through :mod:`dps.control.backup_storage`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from dps.control.backup import (
    BackupError,
    create_backup,
    restore_backup,
    verify_backup,
)
from dps.control.backup_storage import BackupStorage, storage_for
from dps.control.jobs.base import JobContext, JobResult


def _storage(ctx: JobContext) -> BackupStorage:
    settings = ctx.config.pipeline.backup
    return storage_for(settings.location(ctx.data_dir), settings.s3)


def _name(ref: str) -> str:
    return ref.rstrip("/").rsplit("/", 1)[-1]


def weekly_full_backup(ctx: JobContext) -> JobResult:
    """``dps backup create`` with the modules paused during the copy; keeps ``backup.keep``."""
    manifest = create_backup(
        ctx.config,
        ctx.data_dir,
        _storage(ctx),
        modules=ctx.modules,
        keep=ctx.config.pipeline.backup.keep,
        schema_version=ctx.store.schema_version(),
    )
    for line in manifest["log"]:
        ctx.log(line)
    ctx.log("Backup created.", path=manifest["path"], files=len(manifest["files"]))
    return JobResult(
        len(manifest["files"]), f"Backup {manifest['path']} created.", outputs=[manifest["path"]]
    )


def daily_backup_verify(ctx: JobContext) -> JobResult:
    """Verify the newest backup (checksums and database integrity); fails when there is none."""
    storage = _storage(ctx)
    backups = storage.backups()
    if not backups:
        return JobResult(0, f"No backup found in {storage.location}.", ok=False)
    result = verify_backup(backups[-1], s3=ctx.config.pipeline.backup.s3)
    for problem in result["problems"]:
        ctx.log("Backup problem.", problem=problem)
    message = f"Backup {_name(backups[-1])} " + ("verified." if result["ok"] else "is damaged.")
    return JobResult(int(result.get("files", 0)), message, ok=bool(result["ok"]))


def monthly_dr_validation(ctx: JobContext) -> JobResult:
    """Restore the newest backup into a scratch directory and check every database opens."""
    storage = _storage(ctx)
    backups = storage.backups()
    if not backups:
        return JobResult(0, f"No backup found in {storage.location}.", ok=False)
    with tempfile.TemporaryDirectory(prefix="dps-dr-") as scratch:
        try:
            result = restore_backup(
                backups[-1],
                Path(scratch) / "data",
                config_dir=Path(scratch) / "config",
                s3=ctx.config.pipeline.backup.s3,
            )
        except BackupError as exc:
            ctx.log("Restore failed.", error=str(exc))
            return JobResult(0, str(exc), ok=False)
        ctx.log("Backup restored into a scratch directory.", files=result["restored"])
    return JobResult(int(result["restored"]), f"Backup {_name(backups[-1])} restores.")
