"""Backups of the embedded deployment: ``dps backup create | verify | restore``.

A backup is a folder ``backup-<UTC time>`` in the target directory (``<data_dir>/backups`` by
default) holding:

- ``data/``: every SQLite database of the data directory (the stage queues, gamma's spools, the
  state store with the dedupe cache, offsets, DLQs, delivery log, audit log, and an SQLite
  destination kept there), each copied with SQLite's online backup API, so a file being written
  is copied consistently; plus the other files of the data directory (a file destination's
  output), except logs, reports, exports and backups;
- ``config/``: the configuration directory's files, as loaded (its checksum is in the manifest);
- ``cache/enrichment-cache.json``: beta's enrichment cache (``GET /admin/cache/export``) when
  beta answers; the manifest's ``enrichment_cache`` says whether it is included and, if not, why.
  ``restore`` loads it into a running beta (``POST /admin/cache/import``) when given one, and
  :func:`import_enrichment_cache` does so later (entries keep their fetch time, so their age);
- ``manifest.json``: each file's size and sha256, the configuration checksum, the state schema
  version and the time. ``verify`` checks every checksum and runs ``PRAGMA integrity_check`` on
  every database.

Consistency across files (the manual's state backup pauses ingestion): when the modules answer,
``create`` pauses alpha, beta and gamma — each finishes its batch in flight — copies, and resumes
them in the reverse order, so no record is between two files during the copy. Every stage's
writes are idempotent, so a restored pipeline replays whatever was in flight and delivers each
record once. A backup is written to ``<name>.partial`` and renamed when complete: a full or
read-only target leaves no half backup behind and changes nothing in the data directory.

The target may also be an S3-compatible bucket (``s3://bucket/prefix``): the backup is written
to a local staging folder, the modules are resumed, and it is uploaded with its manifest last;
verify and restore download it first (:mod:`dps.control.backup_storage`, the one interface
over a directory and a bucket).

SQLite's online backup is used (not a file copy) because a WAL-mode database's committed pages
may still be in its ``-wal`` file; ``sqlite3.Connection.backup`` reads them through SQLite.
PostgreSQL state is dumped with ``pg_dump -Fc`` of its schema (and restored with ``pg_restore
--clean`` into the schema of the backup's configuration); NATS queues are not covered: ``create``
refuses them with a message.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dps.config import PipelineConfig
from dps.config.models import BackupS3, config_files
from dps.control.backup_storage import (
    MANIFEST,
    BackupStorage,
    LocalStorage,
    open_backup,
    storage_for,
)
from dps.control.backup_storage import BackupError as BackupError  # callers catch it here
from dps.control.modules import MODULES, ModuleClient, ModuleUnreachable

#: Folders of the data directory that are not pipeline data.
SKIPPED_DIRS = frozenset({"backups", "logs", "reports", "exports"})
#: Where a backup keeps beta's enrichment cache export (manifest kind ``enrichment_cache``).
CACHE_EXPORT = "cache/enrichment-cache.json"
FORMAT_VERSION = 1


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _is_sqlite(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


def _data_files(data_dir: Path, backup_root: Path | None) -> list[Path]:
    files = []
    for path in sorted(data_dir.rglob("*")):
        rel = path.relative_to(data_dir)
        if not path.is_file() or rel.parts[0] in SKIPPED_DIRS:
            continue
        if backup_root is not None and path.is_relative_to(backup_root):
            continue
        if path.name.endswith(("-wal", "-shm", "-journal")) or ".partial" in path.name:
            continue
        files.append(path)
    return files


class PgTarget:
    """Where a PostgreSQL state store lives, for ``pg_dump`` and ``pg_restore``."""

    def __init__(self, url: str, schema: str, password: str | None) -> None:
        self.url, self.schema, self.password = url, schema, password

    @classmethod
    def from_settings(cls, settings: dict[str, Any], data_dir: Path) -> PgTarget:
        from dps.core import registry

        backend = registry.get("states", "postgresql")(settings, data_dir)
        config = backend.config
        password = config.password_ref.resolve() if config.password_ref is not None else None
        url = "postgresql://" + str(config.dsn).split("://", 1)[1]
        return cls(url, str(config.db_schema), password)

    def run(self, tool: str, *args: str) -> None:
        env = {**os.environ, **({"PGPASSWORD": self.password} if self.password else {})}
        if shutil.which(tool) is None:
            raise BackupError(f"{tool} is not installed; it is needed for PostgreSQL state.")
        done = subprocess.run(
            [tool, f"--dbname={self.url}", *args],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if done.returncode != 0:
            raise BackupError(f"{tool} failed: {done.stderr.strip()[:500]}")

    def has_tables(self) -> bool:
        import sqlalchemy as sa
        from sqlalchemy.pool import NullPool

        url = sa.make_url(self.url.replace("postgresql://", "postgresql+psycopg://", 1))
        if self.password:
            url = url.set(password=self.password)
        engine = sa.create_engine(url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                count = conn.scalar(
                    sa.text(
                        "SELECT count(*) FROM information_schema.tables WHERE table_schema = :s"
                    ),
                    {"s": self.schema},
                )
        finally:
            engine.dispose()
        return bool(count)


def _pause_all(modules: ModuleClient | None, log: list[str]) -> list[str]:
    paused: list[str] = []
    if modules is None:
        return paused
    for module in MODULES:
        try:
            modules.post_json(module, "/admin/pause")
            paused.append(module)
            log.append(f"Paused {module}.")
        except (ModuleUnreachable, RuntimeError) as exc:
            log.append(f"{module} not paused (not running?): {exc}")
    return paused


def _resume(modules: ModuleClient | None, paused: list[str], log: list[str]) -> None:
    if modules is None:
        return
    for module in reversed(paused):
        try:
            modules.post_json(module, "/admin/resume")
            log.append(f"Resumed {module}.")
        except (ModuleUnreachable, RuntimeError) as exc:
            log.append(f"{module} could not be resumed: {exc}")


def _export_enrichment_cache(
    modules: ModuleClient | None, partial: Path, log: list[str]
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Beta's cache export written into the backup: (its file entry or None, manifest note)."""
    if modules is None:
        return None, {"included": False, "reason": "no module client given"}
    try:
        export = modules.get_json("beta", "/admin/cache/export")
    except (ModuleUnreachable, RuntimeError) as exc:
        log.append(f"Enrichment cache not exported (beta not reachable?): {exc}")
        return None, {"included": False, "reason": f"beta did not export its cache: {exc}"}
    dest = partial / CACHE_EXPORT
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(export) + "\n")
    entries = int(export.get("entries", 0)) if isinstance(export, dict) else 0
    log.append(f"Exported the enrichment cache ({entries} entries).")
    entry = {
        "path": CACHE_EXPORT,
        "kind": "enrichment_cache",
        "size": dest.stat().st_size,
        "sha256": _sha256(dest),
    }
    return entry, {"included": True, "entries": entries, "path": CACHE_EXPORT}


def import_enrichment_cache(path: Path, modules: ModuleClient) -> dict[str, Any]:
    """Load a backup's enrichment cache into a running beta (``POST /admin/cache/import``).

    Answers ``{"imported": True, "per_source", "skipped_sources", "entries"}`` (beta's answer;
    ``entries``: its cache size after), or ``{"imported": False, "reason"}`` (no cache export in
    the backup, beta unreachable or refusing).
    """
    file = path / CACHE_EXPORT
    if not file.is_file():
        return {"imported": False, "reason": "the backup holds no enrichment cache export"}
    try:
        export = json.loads(file.read_text())
        response = modules.post_json("beta", "/admin/cache/import", export)
    except (ModuleUnreachable, RuntimeError, OSError, ValueError) as exc:
        return {"imported": False, "reason": f"beta did not import the cache: {exc}"}
    answer = response if isinstance(response, dict) else {}
    return {
        "imported": True,
        "per_source": answer.get("imported", {}),
        "skipped_sources": answer.get("skipped_sources", []),
        "entries": answer.get("entries"),
    }


def create_backup(
    config: PipelineConfig,
    data_dir: Path,
    target: Path | str | BackupStorage | None = None,
    *,
    modules: ModuleClient | None = None,
    keep: int | None = None,
    schema_version: int | None = None,
) -> dict[str, Any]:
    """Create a backup (see the module docstring); its manifest with ``path`` and ``log``.

    ``target`` is a directory, an ``s3://bucket/prefix`` URL (reached with ``backup.s3``) or a
    :class:`~dps.control.backup_storage.BackupStorage`; default ``<data_dir>/backups``.
    """
    if config.pipeline.transport.backend != "sqlite":
        raise BackupError(
            "dps backup covers sqlite queues only; back up NATS JetStream streams with "
            "JetStream's own stream backups."
        )
    state_backend = config.pipeline.state.backend
    data_dir = data_dir.resolve()
    if isinstance(target, BackupStorage):
        storage = target
    else:
        storage = storage_for(target or data_dir / "backups", config.pipeline.backup.s3)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    name = f"backup-{stamp}"
    log: list[str] = []
    partial = storage.stage(name)
    paused = _pause_all(modules, log)
    try:
        entries = []
        for path in _data_files(data_dir, storage.local_root):
            rel = path.relative_to(data_dir)
            dest = partial / "data" / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if _is_sqlite(path):
                src = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
                out = sqlite3.connect(dest)
                try:
                    src.backup(out)
                finally:
                    out.close()
                    src.close()
                kind = "sqlite"
            else:
                shutil.copy2(path, dest)
                kind = "file"
            entries.append(
                {
                    "path": f"data/{rel.as_posix()}",
                    "kind": kind,
                    "size": dest.stat().st_size,
                    "sha256": _sha256(dest),
                }
            )
        if state_backend == "postgresql":
            dump = partial / "state" / "state.dump"
            dump.parent.mkdir(parents=True)
            pg = PgTarget.from_settings(config.pipeline.state.backend_settings(), data_dir)
            pg.run("pg_dump", "--format=custom", f"--schema={pg.schema}", f"--file={dump}")
            entries.append(
                {
                    "path": "state/state.dump",
                    "kind": "pg_dump",
                    "size": dump.stat().st_size,
                    "sha256": _sha256(dump),
                    "schema": pg.schema,
                }
            )
        cache_entry, cache_note = _export_enrichment_cache(modules, partial, log)
        if cache_entry is not None:
            entries.append(cache_entry)
        for path in config_files(config.root):
            rel = path.relative_to(config.root)
            dest = partial / "config" / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
            entries.append(
                {
                    "path": f"config/{rel.as_posix()}",
                    "kind": "config",
                    "size": dest.stat().st_size,
                    "sha256": _sha256(dest),
                }
            )
        manifest = {
            "format": FORMAT_VERSION,
            "created_at": datetime.now(UTC).isoformat(),
            "config_checksum": config.checksum(),
            "state_schema_version": schema_version,
            "state_backend": state_backend,
            "paused_modules": paused,
            "enrichment_cache": cache_note,
            "files": entries,
        }
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        # The modules run again as soon as the copy is complete; an upload does not need them
        # paused.
        _resume(modules, paused, log)
        paused = []
        ref = storage.publish(partial, name)
    except BackupError:
        storage.discard(partial)
        raise
    except (OSError, sqlite3.Error) as exc:
        storage.discard(partial)
        raise BackupError(
            f"The backup could not be written to {storage.location}: {exc}. Nothing was "
            "changed in the data directory; free space or fix permissions and run it again."
        ) from exc
    finally:
        _resume(modules, paused, log)
    removed = storage.prune(keep) if keep else []
    if storage.local_root is None:
        log.append(f"Uploaded to {ref}.")
    return {**manifest, "path": ref, "log": log, "pruned": removed}


def list_backups(target: Path) -> list[Path]:
    """Complete backups in the directory ``target``, oldest first (any storage: ``backups()``)."""
    return [Path(ref) for ref in LocalStorage(target).backups()]


def prune(target: Path, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` backups of a directory; returns what was removed."""
    return LocalStorage(target).prune(keep)


def verify_backup(path: Path | str, *, s3: BackupS3 | None = None) -> dict[str, Any]:
    """Check every file's sha256 and every database's integrity: ``{"ok", "problems", ...}``.

    ``path`` is a backup folder or an ``s3://`` backup (downloaded first, with ``s3``).
    """
    try:
        with open_backup(path, s3) as local:
            result = _verify_local(local)
    except BackupError as exc:
        return {"ok": False, "path": str(path), "problems": [str(exc)]}
    return {**result, "path": str(path)}


def _verify_local(path: Path) -> dict[str, Any]:
    problems: list[str] = []
    manifest_path = path / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError) as exc:
        return {"ok": False, "path": str(path), "problems": [f"No readable manifest: {exc}."]}
    for entry in files:
        file = path / entry["path"]
        if not file.is_file():
            problems.append(f"{entry['path']} is missing.")
            continue
        if _sha256(file) != entry["sha256"]:
            problems.append(f"{entry['path']} does not match its checksum (corrupted).")
            continue
        if entry["kind"] == "pg_dump":
            listed = subprocess.run(
                ["pg_restore", "--list", str(file)], capture_output=True, text=True, check=False
            )
            if listed.returncode != 0:
                problems.append(f"{entry['path']} is not a readable pg_dump archive.")
        if entry["kind"] == "sqlite":
            try:
                conn = sqlite3.connect(f"file:{file}?mode=ro", uri=True)
                try:
                    result = conn.execute("PRAGMA integrity_check").fetchone()
                finally:
                    conn.close()
                if result is None or result[0] != "ok":
                    problems.append(f"{entry['path']} fails the integrity check: {result}.")
            except sqlite3.Error as exc:
                problems.append(f"{entry['path']} is not a readable database: {exc}.")
    return {
        "ok": not problems,
        "path": str(path),
        "created_at": manifest.get("created_at"),
        "files": len(files),
        "problems": problems,
    }


def restore_backup(
    path: Path | str,
    data_dir: Path,
    *,
    config_dir: Path | None = None,
    force: bool = False,
    state_settings: dict[str, Any] | None = None,
    modules: ModuleClient | None = None,
    s3: BackupS3 | None = None,
    label: str | None = None,
) -> dict[str, Any]:
    """Restore a verified backup into ``data_dir`` (and its configuration into ``config_dir``).

    ``path`` is a backup folder or an ``s3://`` backup (downloaded first, with ``s3``). Refuses
    a data directory that already holds pipeline data unless ``force``; the modules must be
    stopped. Files are written beside their final name and renamed into place. The enrichment
    cache export is loaded into the beta that ``modules`` reaches, when given (else, once the
    pipeline runs again, with :func:`import_enrichment_cache`); ``enrichment_cache`` says which.
    ``label`` names the backup in messages (default: ``path``).
    """
    shown = label or str(path)
    with open_backup(path, s3) as local:
        result = _restore_local(
            local,
            data_dir,
            config_dir=config_dir,
            force=force,
            state_settings=state_settings,
            modules=modules,
            shown=shown,
        )
    return {**result, "path": shown}


def _restore_local(
    path: Path,
    data_dir: Path,
    *,
    config_dir: Path | None,
    force: bool,
    state_settings: dict[str, Any] | None,
    modules: ModuleClient | None,
    shown: str,
) -> dict[str, Any]:
    check = _verify_local(path)
    if not check["ok"]:
        raise BackupError(
            f"The backup {shown} failed verification, nothing was restored: "
            + "; ".join(check["problems"])
        )
    data_dir = data_dir.resolve()
    existing = _data_files(data_dir, None) if data_dir.is_dir() else []
    if existing and not force:
        raise BackupError(
            f"{data_dir} already holds pipeline data ({len(existing)} files); restore into an "
            "empty data directory, or pass --force to replace it (stop the pipeline first)."
        )
    manifest = json.loads((path / MANIFEST).read_text())
    pg: PgTarget | None = None
    if any(e["kind"] == "pg_dump" for e in manifest["files"]):
        if state_settings is None:
            raise BackupError(
                "This backup holds a PostgreSQL state dump: give the state settings to restore "
                "it into (dps backup restore reads them from the backup's pipeline.yaml)."
            )
        pg = PgTarget.from_settings(state_settings, data_dir)
        if pg.has_tables() and not force:
            raise BackupError(
                f"The PostgreSQL schema {pg.schema!r} already holds tables; restore into an empty "
                "schema, or pass --force to replace it (stop the pipeline first)."
            )
    restored = []
    for entry in manifest["files"]:
        kind, rel = entry["kind"], entry["path"].split("/", 1)[1]
        if kind == "pg_dump":
            assert pg is not None
            pg.run("pg_restore", "--clean", "--if-exists", "--no-owner", str(path / entry["path"]))
            restored.append(f"postgresql schema {pg.schema}")
            continue
        if kind == "enrichment_cache":
            continue  # not a data file: imported into a running beta (below)
        if kind == "config":
            if config_dir is None:
                continue
            dest = config_dir / rel
        else:
            dest = data_dir / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        for suffix in ("-wal", "-shm"):
            Path(f"{dest}{suffix}").unlink(missing_ok=True)
        tmp = dest.with_name(dest.name + ".restoring")
        shutil.copy2(path / entry["path"], tmp)
        tmp.replace(dest)
        restored.append(str(dest))
    if not any(e["kind"] == "enrichment_cache" for e in manifest["files"]):
        note = manifest.get("enrichment_cache") or {"reason": "not in this backup"}
        cache: dict[str, Any] = {
            "imported": False,
            "reason": "the backup holds no enrichment cache export: "
            + str(note.get("reason", "not in this backup")),
        }
    elif modules is None:
        cache = {
            "imported": False,
            "reason": "no running beta given; import it once the pipeline runs",
        }
    else:
        cache = import_enrichment_cache(path, modules)
    return {
        "restored": len(restored),
        "enrichment_cache": cache,
        "path": str(path),
        "data_dir": str(data_dir),
        "created_at": manifest.get("created_at"),
        "files": restored,
        "at": time.time(),
    }
