"""Backup and Recovery: ``dps backup create`` mid-run, wipe the data directory, ``dps backup
restore``, and the pipeline finishes the interrupted run with every record delivered once.
Also: a corrupted backup is refused by verify and restore, an unwritable target fails cleanly,
and a restore never overwrites a data directory that holds data unless told to.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from tests.integration.pipeline_harness import (
    PG_DSN,
    copy_quickstart,
    dps,
    free_port_base,
    last_json_line,
    start_pipeline,
    wait_until,
)
from tests.integration.test_pipeline_faults import add_bulk_orders

from dps.state import open_state

BULK = 20_000


def ports() -> tuple[str, str]:
    return "--admin-port-base", str(free_port_base(4))


def warehouse_ids(data_dir: Path) -> tuple[int, set[str]]:
    with sqlite3.connect(data_dir / "warehouse.db") as conn:
        ids = [r[0] for r in conn.execute("SELECT event_id FROM pipeline_events")]
    return len(ids), set(ids)


def test_backup_wipe_restore_finishes_the_run_once(tmp_path: Path) -> None:
    config_dir = copy_quickstart(tmp_path / "config")
    add_bulk_orders(config_dir, BULK)
    data_dir = tmp_path / "data"
    backups = tmp_path / "backups"
    pipeline = start_pipeline(config_dir, data_dir)
    try:
        pipeline.wait_ready()
        wait_until(
            lambda: pipeline.get("control", "/api/accounting").json()["delivered_records"] > 1000,
            120,
            "nothing delivered",
        )
        done = dps(
            "backup",
            "create",
            str(config_dir),
            "--data-dir",
            str(data_dir),
            "--target",
            str(backups),
            "--admin-port-base",
            str(pipeline.port_base),
        )
        assert done.returncode == 0, done.stderr
        backup = Path(done.stdout.strip())
        assert "Paused alpha." in done.stderr and "Resumed alpha." in done.stderr
    finally:
        pipeline.stop()
    manifest = json.loads((backup / "manifest.json").read_text())
    assert manifest["paused_modules"] == ["alpha", "beta", "gamma"]
    paths = {f["path"] for f in manifest["files"]}
    assert {"data/state.db", "data/warehouse.db", "config/pipeline.yaml"} <= paths
    assert any(p.startswith("data/queues/") for p in paths)
    done = dps("backup", "verify", str(backup))
    assert done.returncode == 0, done.stdout
    # The data directory is lost.
    shutil.rmtree(data_dir)
    done = dps("backup", "restore", str(backup), "--data-dir", str(data_dir))
    assert done.returncode == 0, done.stderr
    restored_rows, _ = warehouse_ids(data_dir)
    assert restored_rows > 0
    # The pipeline picks up where the backup left it and finishes.
    done = dps(
        "run",
        str(config_dir),
        "--data-dir",
        str(data_dir),
        "--once",
        "--json",
        *ports(),
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = last_json_line(done.stdout)
    rows, ids = warehouse_ids(data_dir)
    assert rows == len(ids), "a record was delivered twice"
    bulk = {f"orders_file:BULK-{n:07d}" for n in range(BULK)}
    missing = {i for i in bulk if i not in ids}
    assert not missing, f"{len(missing)} records lost, e.g. {sorted(missing)[:3]}"
    acc = summary.get("accounting", summary)
    assert (
        acc["ingested"] == acc["duplicates"] + sum(acc["dlq"].values()) + acc["delivered_records"]
    )


def test_corrupted_backup_is_refused_and_restore_protects_data(tmp_path: Path) -> None:
    config_dir = copy_quickstart(tmp_path / "config")
    data_dir = tmp_path / "data"
    done = dps(
        "run",
        str(config_dir),
        "--data-dir",
        str(data_dir),
        "--once",
        "--json",
        *ports(),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    # Offline backup: no module answers, nothing to pause.
    done = dps("backup", "create", str(config_dir), "--data-dir", str(data_dir), "--keep", "1")
    assert done.returncode == 0, done.stderr
    backup = Path(done.stdout.strip())
    assert backup.parent == data_dir / "backups"
    # A restore over a data directory holding data is refused.
    done = dps("backup", "restore", str(backup), "--data-dir", str(data_dir))
    assert done.returncode == 1 and "already holds pipeline data" in done.stderr
    # One flipped byte in the state database.
    state = backup / "data" / "state.db"
    raw = bytearray(state.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    state.write_bytes(bytes(raw))
    done = dps("backup", "verify", str(backup))
    assert done.returncode == 1
    assert "data/state.db does not match its checksum" in done.stdout
    target = tmp_path / "empty"
    done = dps("backup", "restore", str(backup), "--data-dir", str(target))
    assert done.returncode == 1 and "failed verification, nothing was restored" in done.stderr
    assert not target.exists() or not any(target.iterdir())
    # A target that cannot be written: a clear error, no partial backup, the data untouched.
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    before = sorted(p.name for p in data_dir.iterdir())
    done = dps(
        "backup",
        "create",
        str(config_dir),
        "--data-dir",
        str(data_dir),
        "--target",
        str(blocker / "backups"),
    )
    assert done.returncode == 1 and "is not writable" in done.stderr
    assert sorted(p.name for p in data_dir.iterdir()) == before
    # --keep 1 keeps only the newest backup.
    dps("backup", "create", str(config_dir), "--data-dir", str(data_dir), "--keep", "1")
    listed = dps("backup", "list", str(config_dir), "--data-dir", str(data_dir)).stdout.split()
    assert len(listed) == 1 and listed[0] != str(backup)


@pytest.mark.postgres
def test_postgresql_state_is_dumped_and_restored(tmp_path: Path) -> None:
    schema = f"dps_backup_{uuid.uuid4().hex[:10]}"
    config_dir = copy_quickstart(tmp_path / "config")
    pipeline_yaml = config_dir / "pipeline.yaml"
    pipeline_yaml.write_text(
        pipeline_yaml.read_text().split("state:")[0]
        + f"state:\n  backend: postgresql\n  dsn: {PG_DSN}\n  schema: {schema}\n"
    )
    data_dir = tmp_path / "data"
    engine = sa.create_engine(PG_DSN.replace("postgresql://", "postgresql+psycopg://", 1))
    settings = {"dsn": PG_DSN, "schema": schema}
    try:
        done = dps(
            "run", str(config_dir), "--data-dir", str(data_dir), "--once", *ports(), timeout=300
        )
        assert done.returncode == 0, done.stderr[-2000:]
        store = open_state("postgresql", settings, data_dir)
        before, audit_before = store.accounting(), store.verify_audit()
        store.close()
        assert before["ingested"] > 0 and audit_before["ok"]
        done = dps("backup", "create", str(config_dir), "--data-dir", str(data_dir))
        assert done.returncode == 0, done.stderr
        backup = Path(done.stdout.strip())
        kinds = {
            f["path"]: f["kind"]
            for f in json.loads((backup / "manifest.json").read_text())["files"]
        }
        assert kinds["state/state.dump"] == "pg_dump" and "data/state.db" not in kinds
        assert dps("backup", "verify", str(backup)).returncode == 0
        # The database schema is lost, and the data directory with it.
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        restored_dir = tmp_path / "restored"
        done = dps("backup", "restore", str(backup), "--data-dir", str(restored_dir))
        assert done.returncode == 0, done.stderr
        store = open_state("postgresql", settings, restored_dir)
        after, audit_after = store.accounting(), store.verify_audit()
        store.close()
        assert after == before
        assert audit_after["ok"] and audit_after["chained"] == audit_before["chained"]
        # A second restore over the restored schema is refused without --force.
        done = dps("backup", "restore", str(backup), "--data-dir", str(tmp_path / "again"))
        assert done.returncode == 1 and "already holds tables" in done.stderr
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


def test_a_full_backup_target_fails_cleanly(tmp_path: Path) -> None:
    config_dir = copy_quickstart(tmp_path / "config")
    data_dir = tmp_path / "data"
    done = dps("run", str(config_dir), "--data-dir", str(data_dir), "--once", *ports(), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    full = tmp_path / "full"
    full.mkdir()
    # A 64 KiB file system: the state database alone does not fit.
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(full)], check=True)
    try:

        def contents() -> dict[Path, bytes]:
            # Databases and files as they are (SQLite's -wal/-shm companions come and go).
            return {
                p: p.read_bytes()
                for p in data_dir.rglob("*")
                if p.is_file() and not p.name.endswith(("-wal", "-shm"))
            }

        before = contents()
        done = dps(
            "backup", "create", str(config_dir), "--data-dir", str(data_dir), "--target", str(full)
        )
        assert done.returncode == 1
        assert "could not be written" in done.stderr and "Nothing was changed" in done.stderr
        assert list(full.iterdir()) == []  # no partial backup left behind
        assert contents() == before
    finally:
        subprocess.run(["umount", str(full)], check=True)
