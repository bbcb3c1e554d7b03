"""The audit log's hash chain on both backends: appends chain, verify finds edits and deletions.

Tampering is done as an intruder would: SQL straight against the tables. PostgreSQL is the real
server at 127.0.0.1:5432 and fails (not skips) when it is down.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool
from tests.integration.test_state import PG_DSN

from dps.state import open_state
from dps.state.sql import LATEST_VERSION, SqlStateStore, audit_entry_hash, audit_log

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlStateStore]:
    backend = str(request.param)
    schema = f"dps_audit_{uuid.uuid4().hex[:10]}"
    settings: dict[str, Any] = (
        {"path": str(tmp_path / "state.db")}
        if backend == "sqlite"
        else {"dsn": PG_DSN, "schema": schema}
    )
    opened = open_state(backend, settings, tmp_path)
    assert isinstance(opened, SqlStateStore)
    yield opened
    opened.close()
    if backend == "postgresql":
        engine = sa.create_engine(
            PG_DSN.replace("postgresql://", "postgresql+psycopg://", 1), poolclass=NullPool
        )
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


def fill(store: SqlStateStore, n: int = 5) -> None:
    for i in range(n):
        store.append_audit(f"user{i}", "admin/pause", "alpha", {"client": "127.0.0.1", "i": i})


def sql(store: SqlStateStore, statement: str) -> None:
    with store.engine.begin() as conn:
        conn.execute(sa.text(statement))


def test_schema_is_at_version_4_with_chain_columns(store: SqlStateStore) -> None:
    assert store.schema_version() == LATEST_VERSION >= 4
    columns = {c["name"] for c in sa.inspect(store.engine).get_columns("audit_log")}
    assert {"prev_hash", "entry_hash"} <= columns
    archive = [c["name"] for c in sa.inspect(store.engine).get_columns("audit_log_archive")]
    assert archive == [c["name"] for c in sa.inspect(store.engine).get_columns("audit_log")]


def test_entries_chain_and_verify(store: SqlStateStore) -> None:
    fill(store)
    entries = store.export_audit()
    assert [e["actor"] for e in entries] == [f"user{i}" for i in range(5)]
    assert entries[0]["prev_hash"] == ""
    for before, after in itertools.pairwise(entries):
        assert after["prev_hash"] == before["entry_hash"]
    result = store.verify_audit()
    assert result == {"ok": True, "entries": 5, "chained": 5, "unchained": 0, "problems": []}


def test_an_edited_entry_is_found(store: SqlStateStore) -> None:
    fill(store)
    sql(store, "UPDATE audit_log SET actor = 'mallory' WHERE id = 3")
    result = store.verify_audit()
    assert not result["ok"]
    assert any("Entry 3 was modified" in p for p in result["problems"])


def test_an_edit_with_a_recomputed_hash_breaks_the_next_link(store: SqlStateStore) -> None:
    fill(store)
    with store.engine.begin() as conn:
        row = conn.execute(sa.select(audit_log).where(audit_log.c.id == 2)).mappings().one()
        forged = audit_entry_hash(
            row["prev_hash"],
            2,
            row["timestamp"],
            "mallory",
            row["action"],
            row["target"],
            row["details"],
        )
        conn.execute(
            sa.update(audit_log)
            .where(audit_log.c.id == 2)
            .values(actor="mallory", entry_hash=forged)
        )
    problems = store.verify_audit()["problems"]
    assert not any("Entry 2 was modified" in p for p in problems)
    assert any("broken before entry 3" in p for p in problems)


def test_a_deleted_middle_entry_is_found(store: SqlStateStore) -> None:
    fill(store)
    sql(store, "DELETE FROM audit_log WHERE id = 3")
    problems = store.verify_audit()["problems"]
    assert any("broken before entry 4" in p and "entry 2" in p for p in problems)


def test_deleting_the_newest_entries_is_found(store: SqlStateStore) -> None:
    fill(store)
    sql(store, "DELETE FROM audit_log WHERE id >= 4")
    problems = store.verify_audit()["problems"]
    assert any("newest entry should be 5, found 3" in p for p in problems)


def test_archiving_keeps_the_chain(store: SqlStateStore) -> None:
    fill(store, 3)
    moved = store.archive_audit(time.time() + 1)
    assert moved == 3
    assert store.list_audit() == []
    store.append_audit("after", "admin/resume", "alpha")
    assert store.verify_audit()["ok"]
    assert [e["actor"] for e in store.export_audit()] == ["user0", "user1", "user2", "after"]
    # The manual's own maintenance statement is equivalent (same columns, same order).
    sql(store, "INSERT INTO audit_log_archive SELECT * FROM audit_log WHERE id = 4")
    sql(store, "DELETE FROM audit_log WHERE id = 4")
    assert store.verify_audit()["ok"]


def test_concurrent_appends_form_one_line(store: SqlStateStore) -> None:
    def work(n: int) -> None:
        for i in range(10):
            store.append_audit(f"t{n}", "x", str(i))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = store.verify_audit()
    assert result["ok"], result["problems"]
    assert result["chained"] == 40


def test_job_runs_keep_their_log(store: SqlStateStore) -> None:
    run_id = store.start_job_run("gamma_dest_health", "manual")
    store.finish_job_run(run_id, "SUCCESS", 2, "2 of 2 healthy.", "line one\nline two")
    (run,) = store.list_job_runs("gamma_dest_health")
    assert run["log"] == "line one\nline two"
    assert run["status"] == "SUCCESS"


def test_a_version_3_database_is_migrated_to_4(
    store: SqlStateStore, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # Turn the fresh database back into a version-3 one, with an audit entry of that time.
    store.append_audit("old", "config.load", "alpha")
    for table in ("audit_log", "audit_log_archive"):
        sql(store, f"ALTER TABLE {table} DROP COLUMN prev_hash")
        sql(store, f"ALTER TABLE {table} DROP COLUMN entry_hash")
    sql(store, "ALTER TABLE job_runs DROP COLUMN log")
    sql(store, "DROP TABLE audit_chain_head")
    sql(store, "DELETE FROM schema_version WHERE version >= 4")
    assert store.schema_version() == 3
    assert store.migrate() == LATEST_VERSION
    store.append_audit("new", "config.reload", "alpha")
    result = store.verify_audit()
    assert result["ok"], result["problems"]
    assert (result["unchained"], result["chained"]) == (1, 1)
    run_id = store.start_job_run("daily_audit_export", "manual")
    store.finish_job_run(run_id, "SUCCESS", log="done")
    assert store.list_job_runs()[0]["log"] == "done"
