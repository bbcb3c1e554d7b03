"""The ``database`` destination on SQLite and the real PostgreSQL, and the ``file`` destination.

PostgreSQL is the server at 127.0.0.1:5432 (database ``test``, user ``postgres``, trust auth;
override with ``DPS_TEST_POSTGRES_DSN``); each test works in a fresh schema dropped afterwards.
PostgreSQL being unreachable fails the tests: a skipped backend would hide a broken deployment.
"""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest

from dps.config import load_file
from dps.config.models import DestinationConfig
from dps.core.errors import TerminalError, TransientError
from dps.core.record import Quality, Record
from dps.gamma.destinations.base import DeliveryError
from dps.gamma.destinations.database import DatabaseDestination, DatabaseDestinationConfig
from dps.gamma.destinations.file import FileDestination, FileDestinationConfig

PG_DSN = os.environ.get("DPS_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")

ENGINES = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]

FULL_MAPPING = {
    "record_id": "event_id",
    "source_id": "source_id",
    "timestamp": "event_timestamp",
    "quality_score": "quality_score",
    "payload": "event_data",
    "customer.id": "customer_id",
    "customer.address": "customer_address",
    "amount": "amount",
}


def _record(
    number: int,
    payload: dict[str, Any] | None = None,
    *,
    source_id: str = "orders_file",
    score: float | None = 0.9,
    event_time: str | None = None,
) -> Record:
    return Record(
        record_id=f"{source_id}:{number}",
        source_id=source_id,
        correlation_id=f"corr{number}",
        ingested_at=1_764_234_000.0 + number,  # 2025-11-27T09:00:00Z + n seconds
        payload=payload if payload is not None else {"n": number},
        event_time=event_time,
        quality=Quality(score=score) if score is not None else None,
    )


def _order(number: int, amount: Any = 10) -> Record:
    payload = {"customer": {"id": f"C-{number}", "address": {"city": "Oslo"}}, "amount": amount}
    return _record(number, payload, event_time=f"2026-11-27T10:00:{number:02d}Z")


# -- the two databases --------------------------------------------------------------------------


@dataclass
class Database:
    """One test database: how to point a destination at it and how to look inside."""

    engine: str
    connection: dict[str, Any]
    schema: str | None
    run: Callable[[str], list[tuple[Any, ...]]]

    def table(self, name: str) -> str:
        return f"{self.schema}.{name}" if self.schema else name

    def rows(self, table: str, columns: str, order: str) -> list[tuple[Any, ...]]:
        return self.run(f"SELECT {columns} FROM {self.table(table)} ORDER BY {order}")


def _sqlite(tmp_path: Path) -> Iterator[Database]:
    path = tmp_path / "warehouse.db"

    def run(sql: str) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(path)
        try:
            with conn:
                return conn.execute(sql).fetchall()
        finally:
            conn.close()

    yield Database("sqlite", {"type": "sqlite", "path": str(path)}, None, run)


def _postgresql() -> Iterator[Database]:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        admin = psycopg.connect(PG_DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {PG_DSN} is unreachable: {exc}")
    schema = f"dps_test_{uuid.uuid4().hex[:12]}"
    admin.execute(f"CREATE SCHEMA {schema}")

    def run(sql: str) -> list[tuple[Any, ...]]:
        cursor = admin.execute(sql)
        return cursor.fetchall() if cursor.description else []

    params = conninfo_to_dict(PG_DSN)
    connection = {
        "type": "postgresql",
        "host": params.get("host", "127.0.0.1"),
        "port": int(str(params.get("port") or 5432)),
        "database": params.get("dbname", "test"),
        "username": params.get("user", "postgres"),
        "ssl_mode": "disable",
        "pool_size": 2,
    }
    try:
        yield Database("postgresql", connection, schema, run)
    finally:
        admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        admin.close()


@pytest.fixture(params=ENGINES)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    yield from _sqlite(tmp_path) if request.param == "sqlite" else _postgresql()


@pytest.fixture
def pg() -> Iterator[Database]:
    yield from _postgresql()


OpenDatabase = Callable[..., DatabaseDestination]


@pytest.fixture
def open_database() -> Iterator[OpenDatabase]:
    """Builds and opens database destinations from their config sections; closes them after."""
    opened: list[DatabaseDestination] = []

    def make(db: Database, table: str, **format_settings: Any) -> DatabaseDestination:
        spec = DatabaseDestinationConfig.model_validate(
            {"connection": db.connection, "format": {"table": db.table(table), **format_settings}}
        )
        destination = DatabaseDestination("warehouse", spec)
        destination.open()
        opened.append(destination)
        return destination

    yield make
    for destination in opened:
        destination.close()


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


# -- database: both engines ---------------------------------------------------------------------


def test_column_mapping_writes_envelope_fields_and_payload_paths(
    db: Database, open_database: OpenDatabase
) -> None:
    destination = open_database(db, "events", column_mapping=FULL_MAPPING)
    unscored = _record(3, {"customer": {"id": "C-3"}}, score=None)

    assert destination.deliver([_order(1), _order(2, amount=12.5), unscored]) == []

    rows = db.rows(
        "events",
        "event_id, source_id, event_timestamp, quality_score, event_data, customer_id, "
        "customer_address, amount",
        "event_id",
    )
    assert [row[0] for row in rows] == ["orders_file:1", "orders_file:2", "orders_file:3"]
    first = rows[0]
    assert first[1:4] == ("orders_file", "2026-11-27T10:00:01Z", 0.9)
    assert _json(first[4]) == {
        "customer": {"id": "C-1", "address": {"city": "Oslo"}},
        "amount": 10,
    }
    assert first[5] == "C-1"
    assert _json(first[6]) == {"city": "Oslo"}
    assert str(rows[1][7]) == "12.5"
    # No event time: the ingest time; no score: NULL; missing payload paths: NULL.
    assert rows[2][2] == "2025-11-27T09:00:03+00:00"
    assert rows[2][3] is None and rows[2][6] is None and rows[2][7] is None


def test_the_default_mapping_is_the_record_id_and_the_payload(
    db: Database, open_database: OpenDatabase
) -> None:
    destination = open_database(db, "plain")

    destination.deliver([_record(1, {"a": [1, 2]})])

    assert [(rid, _json(p)) for rid, p in db.rows("plain", "record_id, payload", "1")] == [
        ("orders_file:1", {"a": [1, 2]})
    ]


def test_the_record_id_column_is_always_written(db: Database, open_database: OpenDatabase) -> None:
    destination = open_database(db, "no_id", column_mapping={"amount": "amount"})

    destination.deliver([_order(1, amount=5)])

    assert [(r[0], str(r[1])) for r in db.rows("no_id", "record_id, amount", "1")] == [
        ("orders_file:1", "5")
    ]


def test_the_same_batch_delivered_twice_leaves_one_row_per_record(
    db: Database, open_database: OpenDatabase
) -> None:
    destination = open_database(db, "events", column_mapping=FULL_MAPPING)
    batch = [_order(n) for n in range(1, 6)]

    assert destination.deliver(batch) == []
    assert destination.deliver(batch) == []
    assert destination.deliver(batch[2:4]) == []

    assert db.rows("events", "count(*), count(DISTINCT event_id)", "1") == [(5, 5)]


def test_a_record_twice_in_one_batch_leaves_one_row(
    db: Database, open_database: OpenDatabase
) -> None:
    destination = open_database(db, "events", column_mapping=FULL_MAPPING)

    assert destination.deliver([_order(1), _order(2), _order(1)]) == []

    assert db.rows("events", "event_id", "event_id") == [("orders_file:1",), ("orders_file:2",)]


def test_insert_keeps_the_first_row_and_upsert_replaces_it(
    db: Database, open_database: OpenDatabase
) -> None:
    mapping = {"record_id": "event_id", "amount": "amount", "quality_score": "quality_score"}
    insert = open_database(db, "inserted", type="insert", column_mapping=mapping)
    upsert = open_database(db, "upserted", type="upsert", column_mapping=mapping)
    first = _order(1, amount=10)
    second = _order(1, amount=99)
    second.quality = Quality(score=0.5)

    for destination in (insert, upsert):
        destination.deliver([first, _order(2, amount=20)])
        destination.deliver([second])

    assert [(r[0], str(r[1]), r[2]) for r in db.rows("inserted", "*", "event_id")] == [
        ("orders_file:1", "10", 0.9),
        ("orders_file:2", "20", 0.9),
    ]
    assert [(r[0], str(r[1]), r[2]) for r in db.rows("upserted", "*", "event_id")] == [
        ("orders_file:1", "99", 0.5),
        ("orders_file:2", "20", 0.9),
    ]


def test_a_reopened_destination_still_does_not_duplicate(
    db: Database, open_database: OpenDatabase
) -> None:
    batch = [_order(n) for n in range(1, 4)]
    open_database(db, "events", column_mapping=FULL_MAPPING).deliver(batch)

    again = open_database(db, "events", column_mapping=FULL_MAPPING)
    again.deliver([*batch, _order(4)])

    assert db.rows("events", "count(*)", "1") == [(4,)]
    assert again.test() == {"ok": True}


def test_an_empty_batch_is_a_no_op(db: Database, open_database: OpenDatabase) -> None:
    destination = open_database(db, "events")
    assert destination.deliver([]) == []
    assert db.rows("events", "count(*)", "1") == [(0,)]


def test_the_runbook_destination_file_loads_and_delivers(db: Database, tmp_path: Path) -> None:
    path = tmp_path / "gamma" / "destinations" / "warehouse.yaml"
    path.parent.mkdir(parents=True)
    connection = "\n".join(f"  {key}: {value}" for key, value in db.connection.items())
    path.write_text(
        "destination_id: warehouse\n"
        "destination_type: database\n"
        f"connection:\n{connection}\n"
        "format:\n"
        "  type: upsert\n"
        f"  table: {db.table('pipeline_events')}\n"
        "  column_mapping:\n"
        "    record_id: event_id\n"
        "    timestamp: event_timestamp\n"
        "    payload: event_data\n"
    )
    config = load_file(path)
    assert isinstance(config, DestinationConfig)
    destination = DatabaseDestination(config.destination_id, config.spec)
    destination.open()
    try:
        destination.deliver([_order(1), _order(2)])
        destination.deliver([_order(2)])
    finally:
        destination.close()

    assert db.rows("pipeline_events", "event_id, event_timestamp", "event_id") == [
        ("orders_file:1", "2026-11-27T10:00:01Z"),
        ("orders_file:2", "2026-11-27T10:00:02Z"),
    ]


# -- database: SQLite ---------------------------------------------------------------------------


def test_sqlite_rejects_only_the_row_that_breaks_a_constraint(
    tmp_path: Path, open_database: OpenDatabase
) -> None:
    (db,) = _sqlite(tmp_path)
    db.run("CREATE TABLE orders (order_id TEXT PRIMARY KEY, amount INTEGER NOT NULL)")
    destination = open_database(
        db,
        "orders",
        create_table=False,
        column_mapping={"record_id": "order_id", "amount": "amount"},
    )
    bad = _record(2, {"note": "no amount"})

    rejected = destination.deliver([_order(1), bad, _order(3)])

    assert [(record.record_id, error.reason) for record, error in rejected] == [
        ("orders_file:2", "destination_rejected")
    ]
    assert "NOT NULL" in str(rejected[0][1])
    assert db.rows("orders", "order_id", "order_id") == [("orders_file:1",), ("orders_file:3",)]


# -- database: PostgreSQL -------------------------------------------------------------------------


@pytest.mark.postgres
def test_postgresql_creates_typed_columns(pg: Database, open_database: OpenDatabase) -> None:
    mapping = FULL_MAPPING | {"ingested_at": "ingested_at"}
    destination = open_database(pg, "events", column_mapping=mapping)
    destination.deliver([_order(1)])

    types = dict(
        pg.run(
            "SELECT column_name, data_type FROM information_schema.columns "
            f"WHERE table_schema = '{pg.schema}' AND table_name = 'events'"
        )
    )
    assert types == {
        "event_id": "text",
        "source_id": "text",
        "event_timestamp": "text",
        "quality_score": "double precision",
        "event_data": "jsonb",
        "customer_id": "text",
        "customer_address": "text",
        "amount": "text",
        "ingested_at": "timestamp with time zone",
    }
    (ingested,) = pg.rows("events", "ingested_at", "1")[0]
    assert ingested.isoformat() == "2025-11-27T09:00:01+00:00"
    primary_key = pg.run(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a "
        "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
        f"WHERE i.indrelid = '{pg.table('events')}'::regclass AND i.indisprimary"
    )
    assert primary_key == [("event_id",)]


@pytest.mark.postgres
def _staged(destination: DatabaseDestination) -> bool:
    """Whether the destination's connection has merged a batch through the staging table."""
    with destination._pool.connection() as conn:  # one connection: the test is single-threaded
        return conn.execute("SELECT to_regclass('pg_temp._dps_stage')").fetchone()[0] is not None


def test_postgresql_copies_new_ids_straight_and_merges_a_batch_that_overlaps(
    pg: Database, open_database: OpenDatabase
) -> None:
    mapping = {"record_id": "event_id", "amount": "amount"}
    destination = open_database(pg, "events", type="upsert", column_mapping=mapping)

    destination.deliver([_order(1, amount=10), _order(2, amount=20)])
    destination.deliver([_order(3, amount=30)])
    assert not _staged(destination)  # new ids only: COPY straight into the table

    destination.deliver([_order(2, amount=22), _order(4, amount=40)])
    assert _staged(destination)  # the COPY met id 2 and stopped; the batch was merged instead
    destination.deliver([_order(5, amount=50), _order(5, amount=55)])  # merged: one row

    rows = pg.rows("events", "event_id, amount::text", "event_id")
    assert rows[:4] == [
        ("orders_file:1", "10"),
        ("orders_file:2", "22"),
        ("orders_file:3", "30"),
        ("orders_file:4", "40"),
    ]
    assert len(rows) == 5 and rows[4][0] == "orders_file:5"


@pytest.mark.parametrize(
    "key",
    ["", "UNIQUE DEFERRABLE INITIALLY DEFERRED"],
    ids=["no-unique-key", "deferred-unique-key"],
)
def test_postgresql_never_copies_straight_without_an_immediate_unique_key(
    pg: Database, open_database: OpenDatabase, key: str
) -> None:
    pg.run(f"CREATE TABLE {pg.table('events')} (event_id TEXT {key}, amount TEXT)")
    mapping = {"record_id": "event_id", "amount": "amount"}
    destination = open_database(pg, "events", create_table=False, column_mapping=mapping)

    # ON CONFLICT needs an immediate unique index: the merge refuses the batch, as it did
    # before COPY went straight; a straight COPY would have written it, duplicates and all.
    with pytest.raises(DeliveryError):
        destination.deliver([_order(1), _order(1)])
    assert pg.rows("events", "count(*)", "1") == [(0,)]


def test_postgresql_rejects_only_the_bad_row_of_a_batch(
    pg: Database, open_database: OpenDatabase
) -> None:
    pg.run(
        f"CREATE TABLE {pg.table('orders')} "
        "(order_id TEXT PRIMARY KEY, amount INTEGER, customer_id TEXT, data JSONB)"
    )
    mapping = {
        "record_id": "order_id",
        "amount": "amount",
        "customer.id": "customer_id",
        "payload": "data",
    }
    destination = open_database(pg, "orders", create_table=False, column_mapping=mapping)
    batch = [_order(1, amount=10), _order(2, amount="not a number"), _order(3, amount="30")]

    rejected = destination.deliver(batch)

    assert len(rejected) == 1
    record, error = rejected[0]
    assert record is batch[1]
    assert isinstance(error, TerminalError) and error.reason == "destination_rejected"
    assert "integer" in str(error) and "not a number" in str(error)
    assert pg.rows("orders", "order_id, amount, customer_id", "order_id") == [
        ("orders_file:1", 10, "C-1"),
        ("orders_file:3", 30, "C-3"),
    ]

    # Redelivered (a retry): the good rows stay single, the bad one is refused again.
    again = destination.deliver(batch)
    assert [r.record_id for r, _ in again] == ["orders_file:2"]
    assert pg.rows("orders", "count(*)", "1") == [(2,)]

    # A clean batch on the same pooled connection is not affected by the earlier failure.
    assert destination.deliver([_order(4, amount=40)]) == []
    assert pg.rows("orders", "count(*)", "1") == [(3,)]


def test_postgresql_unreachable_server_is_a_transient_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import psycopg_pool

    # The pool waits up to 30 s for its first connection; nothing listens on port 1.
    wait = psycopg_pool.ConnectionPool.wait
    monkeypatch.setattr(
        psycopg_pool.ConnectionPool, "wait", lambda pool, timeout=30.0: wait(pool, 0.5)
    )
    spec = DatabaseDestinationConfig.model_validate(
        {
            "connection": {"type": "postgresql", "port": 1, "database": "test"},
            "format": {"table": "events"},
        }
    )
    destination = DatabaseDestination("warehouse", spec)
    try:
        with pytest.raises(TransientError, match=r"Cannot connect to PostgreSQL at 127\.0\.0\.1:1"):
            destination.open()
    finally:
        destination.close()


# -- file ---------------------------------------------------------------------------------------


def _file_destination(path: Path, **format_settings: Any) -> FileDestination:
    spec = FileDestinationConfig.model_validate(
        {"connection": {"path": str(path)}, "format": format_settings}
    )
    destination = FileDestination("review_file", spec)
    destination.open()
    return destination


def _lines(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n")
    return [msgspec.json.decode(line) for line in data.splitlines()]


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "out" / "review" / "low_quality.jsonl"


def test_file_writes_one_json_line_per_record_with_the_envelope(out: Path) -> None:
    destination = _file_destination(out)
    try:
        assert destination.deliver([_order(1), _record(2, score=None)]) == []
    finally:
        destination.close()

    assert _lines(out) == [
        {
            "record_id": "orders_file:1",
            "source_id": "orders_file",
            "quality_score": 0.9,
            "payload": {"customer": {"id": "C-1", "address": {"city": "Oslo"}}, "amount": 10},
        },
        {
            "record_id": "orders_file:2",
            "source_id": "orders_file",
            "quality_score": None,
            "payload": {"n": 2},
        },
    ]


def test_file_without_envelope_writes_the_payload_with_the_record_id(out: Path) -> None:
    destination = _file_destination(out, envelope=False)
    try:
        destination.deliver([_record(1, {"a": 1, "b": [2]})])
    finally:
        destination.close()
    assert _lines(out) == [{"record_id": "orders_file:1", "a": 1, "b": [2]}]


def test_file_without_envelope_keeps_the_envelope_id_when_the_payload_has_one(
    out: Path,
) -> None:
    record = _record(1, {"record_id": "upstream-77", "a": 1})
    destination = _file_destination(out, envelope=False)
    try:
        destination.deliver([record])
    finally:
        destination.close()

    reopened = _file_destination(out, envelope=False)
    try:
        reopened.deliver([record])
    finally:
        reopened.close()

    assert _lines(out) == [{"record_id": "orders_file:1", "a": 1}]


def test_file_fsyncs_the_batch_before_returning(out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(len(out.read_bytes()))  # what is written when fsync is called
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)  # the destination calls os.fsync
    destination = _file_destination(out)
    try:
        destination.deliver([_order(1), _order(2)])
        size_after_first = out.stat().st_size
        destination.deliver([_order(1)])  # nothing new: nothing to sync
        destination.deliver([_order(3)])
    finally:
        destination.close()

    assert synced == [size_after_first, out.stat().st_size]


def test_file_is_idempotent_within_a_batch_and_across_batches(out: Path) -> None:
    destination = _file_destination(out)
    try:
        destination.deliver([_order(1), _order(2), _order(1)])
        destination.deliver([_order(2), _order(3)])
    finally:
        destination.close()

    assert [line["record_id"] for line in _lines(out)] == [
        "orders_file:1",
        "orders_file:2",
        "orders_file:3",
    ]


def test_file_is_idempotent_across_reopen(out: Path) -> None:
    first = _file_destination(out)
    try:
        first.deliver([_order(1), _order(2)])
    finally:
        first.close()

    second = _file_destination(out)
    try:
        second.deliver([_order(1), _order(2), _order(3)])
    finally:
        second.close()

    assert [line["record_id"] for line in _lines(out)] == [
        "orders_file:1",
        "orders_file:2",
        "orders_file:3",
    ]


def test_a_torn_last_line_is_cut_off_and_its_record_rewritten(out: Path) -> None:
    first = _file_destination(out)
    try:
        first.deliver([_order(1), _order(2)])
    finally:
        first.close()
    whole = out.read_bytes()
    with out.open("ab") as fh:  # a crash in the middle of writing record 3
        fh.write(b'{"record_id":"orders_file:3","source_id":"orders_fi')

    second = _file_destination(out)
    try:
        assert out.read_bytes() == whole  # truncated on open
        second.deliver([_order(2), _order(3)])  # the unacknowledged batch comes again
    finally:
        second.close()

    lines = _lines(out)
    assert [line["record_id"] for line in lines] == [
        "orders_file:1",
        "orders_file:2",
        "orders_file:3",
    ]
    assert lines[2]["payload"]["customer"]["id"] == "C-3"


def test_a_file_holding_only_a_torn_line_is_emptied(out: Path) -> None:
    out.parent.mkdir(parents=True)
    out.write_bytes(b'{"record_id":"orders_file:1","sou')

    destination = _file_destination(out)
    try:
        assert out.read_bytes() == b""
        destination.deliver([_order(1)])
    finally:
        destination.close()

    assert [line["record_id"] for line in _lines(out)] == ["orders_file:1"]


def test_file_creates_its_folder_and_reports_it_writable(out: Path) -> None:
    destination = _file_destination(out)
    try:
        assert out.parent.is_dir()
        assert destination.test() == {"ok": True, "path": str(out)}
    finally:
        destination.close()
