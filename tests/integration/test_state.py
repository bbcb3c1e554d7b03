"""The state store, on both backends: every method, idempotency under replay, concurrency.

The same tests run on SQLite (a file in ``tmp_path``) and on the real PostgreSQL server at
127.0.0.1:5432 (database ``test``, user ``postgres``, trust auth; override with
``DPS_TEST_POSTGRES_DSN``), each test in a fresh schema dropped afterwards. PostgreSQL being
unreachable fails the tests: a skipped backend would hide a broken scale-out deployment.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from dps.core import registry
from dps.core.errors import ConfigError, TransientError
from dps.core.record import Quality, encode, new_record
from dps.state import open_state
from dps.state import sql as state_sql
from dps.state.base import DedupeCandidate, DeliveryOutcome, DlqEntry, ValidationFailure
from dps.state.sql import SqlStateStore

PG_DSN = os.environ.get("DPS_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]

MANUAL_TABLES = {
    "validation_failures",
    "delivery_log",
    "validation_cache",
    "duplicates",
    "dlq_entries",
    "source_offsets",
    "audit_log",
    "audit_log_archive",
    "lineage",
    "job_runs",
    "config_versions",
    "schema_version",
}

OpenStore = Callable[..., SqlStateStore]
T = TypeVar("T")


def _admin_engine() -> sa.Engine:
    return sa.create_engine(
        PG_DSN.replace("postgresql://", "postgresql+psycopg://", 1), poolclass=NullPool
    )


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings(backend: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    if backend == "sqlite":
        yield {"backend": "sqlite", "path": str(tmp_path / "state.db")}
        return
    schema = f"dps_test_{uuid.uuid4().hex[:12]}"
    yield {"backend": "postgresql", "dsn": PG_DSN, "schema": schema}
    engine = _admin_engine()
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        engine.dispose()


@pytest.fixture
def open_store(backend: str, settings: dict[str, Any], tmp_path: Path) -> Iterator[OpenStore]:
    """Opens stores on the test's database (each with its own engine, like another process)."""
    stores: list[SqlStateStore] = []

    def make(*, migrate: bool = True) -> SqlStateStore:
        if migrate:
            store = open_state(backend, settings, tmp_path)
        else:
            store = registry.get("states", backend)(settings, tmp_path).open()
        assert isinstance(store, SqlStateStore)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def store(open_store: OpenStore) -> SqlStateStore:
    return open_store()


class Clock:
    """Replaces the store's clock so expiry and time windows are tested without sleeping."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = datetime.now(UTC)
        monkeypatch.setattr(state_sql, "_utcnow", lambda: self.now)

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


def cand(key: str, origin: str, source: str = "src") -> DedupeCandidate:
    return DedupeCandidate(key=key, origin=origin, record_id=f"rec-{key}", source_id=source)


def dlq(module: str, record_id: str, **kw: Any) -> DlqEntry:
    fields: dict[str, Any] = {
        "source_id": "src",
        "origin": f"file:{record_id}",
        "reason": "parse_error",
        "error": "bad json",
        "body": b"\x00raw\xff" + record_id.encode(),
    }
    fields.update(kw)
    return DlqEntry(module=module, record_id=record_id, **fields)


def run_together(*calls: Callable[[], T]) -> list[T]:
    """Run the calls in threads released at the same moment; re-raise the first error."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def count(store: SqlStateStore, table: str) -> int:
    with store.engine.connect() as conn:
        return int(conn.scalar(sa.text(f"SELECT count(*) FROM {table}")) or 0)


# -- backends and migrations -----------------------------------------------------------------
def test_migrate_creates_the_tables_and_twice_is_a_noop(open_store: OpenStore) -> None:
    store = open_store(migrate=False)
    assert store.schema_version() == 0
    assert store.migrate() == state_sql.LATEST_VERSION
    assert store.migrate() == state_sql.LATEST_VERSION
    assert store.schema_version() == state_sql.LATEST_VERSION
    assert count(store, "schema_version") == len(state_sql.MIGRATIONS)
    assert set(sa.inspect(store.engine).get_table_names()) >= MANUAL_TABLES
    # Another process opening the migrated database changes nothing either.
    assert open_store().schema_version() == state_sql.LATEST_VERSION
    assert count(store, "schema_version") == len(state_sql.MIGRATIONS)


def test_two_processes_migrating_at_once_both_succeed(open_store: OpenStore) -> None:
    stores = [open_store(migrate=False) for _ in range(3)]
    assert run_together(*(s.migrate for s in stores)) == [state_sql.LATEST_VERSION] * 3
    assert count(stores[0], "schema_version") == len(state_sql.MIGRATIONS)


def test_upgrade_steps_run_through_alembic_operations(
    open_store: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database at the newest version gets a new step only, once."""
    store = open_store()
    nxt = state_sql.LATEST_VERSION + 1

    def upgrade(op: Any) -> None:
        op.add_column("job_runs", sa.Column("note", sa.Text, nullable=True))

    step = state_sql.Migration(nxt, "Add job_runs.note.", upgrade)
    monkeypatch.setattr(state_sql, "MIGRATIONS", (*state_sql.MIGRATIONS, step))
    monkeypatch.setattr(state_sql, "LATEST_VERSION", nxt)
    assert store.migrate() == nxt
    assert store.migrate() == nxt
    assert store.schema_version() == nxt
    columns = {c["name"] for c in sa.inspect(store.engine).get_columns("job_runs")}
    assert "note" in columns
    assert count(store, "schema_version") == nxt


def test_a_database_newer_than_the_code_is_refused(store: SqlStateStore) -> None:
    with store.engine.begin() as conn:
        conn.execute(
            state_sql.schema_version_table.insert(),
            {"version": 999, "description": "future", "applied_at": datetime.now(UTC)},
        )
    with pytest.raises(ConfigError, match="newer than this dps supports"):
        store.migrate()


def test_describe(store: SqlStateStore, backend: str) -> None:
    info = store.describe()
    assert info["backend"] == backend
    assert info["schema_version"] == state_sql.LATEST_VERSION


def test_sqlite_connection_settings(tmp_path: Path) -> None:
    store = open_state("sqlite", {"busy_timeout_ms": 1234, "cache_size_mb": 3}, tmp_path)
    assert isinstance(store, SqlStateStore)
    try:
        assert (tmp_path / "state.db").exists()  # the default path is data_dir/state.db
        with store.engine.connect() as conn:
            pragma = {
                name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in (
                    "journal_mode", "synchronous", "busy_timeout", "foreign_keys", "cache_size"
                )
            }  # fmt: skip
        assert pragma == {
            "journal_mode": "wal",
            "synchronous": 2,
            "busy_timeout": 1234,
            "foreign_keys": 0,
            "cache_size": -3 * 1024,  # negative: KiB, not pages
        }
    finally:
        store.close()


@pytest.mark.parametrize(
    ("name", "bad", "key"),
    [
        ("sqlite", {"paht": "x.db"}, "state.paht"),
        ("sqlite", {"busy_timeout_ms": -1}, "state.busy_timeout_ms"),
        ("sqlite", {"cache_size_mb": 0}, "state.cache_size_mb"),
        ("postgresql", {"dsn": "mysql://x@y/z"}, "state.dsn"),
        ("postgresql", {"dsn": PG_DSN, "schema": "Bad-Name"}, "state.schema"),
        ("postgresql", {"dsn": PG_DSN, "pool_size": 0}, "state.pool_size"),
        ("postgresql", {}, "state.dsn"),
    ],
)
def test_bad_settings_name_the_key(
    name: str, bad: dict[str, Any], key: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as info:
        registry.get("states", name)(bad, tmp_path)
    assert f"pipeline.yaml: {key}:" in str(info.value)


@pytest.mark.postgres
def test_postgresql_dsn_forms_and_unreachable_server(tmp_path: Path) -> None:
    backend_cls = registry.get("states", "postgresql")
    for dsn in ("postgresql://u@h/db", "postgres://u@h/db", "postgresql+psycopg://u@h/db"):
        assert backend_cls({"dsn": dsn}, tmp_path).config.url == "postgresql+psycopg://u@h/db"
    with pytest.raises(TransientError, match="unavailable"):
        open_state("postgresql", {"dsn": "postgresql://postgres@127.0.0.1:1/test"}, tmp_path)


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgresql"])
def test_postgresql_creates_its_schema_and_sets_search_path(
    store: SqlStateStore, settings: dict[str, Any]
) -> None:
    with store.engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT current_schema()")) == settings["schema"]
        # The manual's index maintenance names these indexes.
        for index in (
            "idx_validation_cache_key",
            "idx_validation_cache_timestamp",
            "idx_delivery_record_id",
            "idx_delivery_destination",
        ):
            conn.execute(sa.text(f"REINDEX INDEX {index}"))
        for table in ("validation_cache", "delivery_log", "audit_log"):
            conn.execute(sa.text(f"ANALYZE {table}"))


# -- alpha: dedupe ---------------------------------------------------------------------------
def test_claim_dedupe_semantics(store: SqlStateStore) -> None:
    assert store.claim_dedupe_keys([], 60) == []
    assert store.claim_dedupe_keys([cand("a", "f:1"), cand("b", "f:2")], 60) == [False, False]
    # A replay of the same positions (a restart after a crash) is not a duplicate.
    assert store.claim_dedupe_keys([cand("a", "f:1"), cand("b", "f:2")], 60) == [False, False]
    # The same key read at another position is.
    assert store.claim_dedupe_keys([cand("a", "f:9"), cand("c", "f:3")], 60) == [True, False]
    # Within one batch: the first claims, a later one from another origin is its duplicate,
    # the same origin twice is not.
    batch = [cand("d", "f:4"), cand("d", "f:5"), cand("d", "f:4"), cand("a", "f:1")]
    assert store.claim_dedupe_keys(batch, 60) == [False, True, False, False]
    assert store.claim_dedupe_keys(batch, 60) == [False, True, False, False]


def test_expired_keys_are_taken_over(store: SqlStateStore, clock: Clock) -> None:
    assert store.claim_dedupe_keys([cand("k", "f:1")], 10) == [False]
    clock.advance(9)
    assert store.claim_dedupe_keys([cand("k", "f:2")], 10) == [True]
    clock.advance(2)  # the first claim has expired
    assert store.claim_dedupe_keys([cand("k", "f:2")], 10) == [False]
    assert store.claim_dedupe_keys([cand("k", "f:1")], 10) == [True]
    clock.advance(11)
    assert store.purge_expired_dedupe_keys() == 1
    assert count(store, "validation_cache") == 0


def test_claim_large_batches(store: SqlStateStore) -> None:
    batch = [cand(f"k{i}", f"f:{i}") for i in range(1500)]
    assert store.claim_dedupe_keys(batch, 60) == [False] * 1500
    other = [cand(f"k{i}", f"g:{i}") for i in range(1500)]
    assert store.claim_dedupe_keys(other, 60) == [True] * 1500


def test_claim_batches_of_every_size_spanning_several_statements(store: SqlStateStore) -> None:
    """SQLite claims a batch in statements of 100 rows and then powers of two: sizes around
    those edges, with keys claimed before scattered through them, answer each key right."""
    claimed_before = {f"s{i}" for i in range(0, 400, 7)}
    store.claim_dedupe_keys([cand(k, "first:" + k) for k in sorted(claimed_before)], 60)
    start = 0
    for size in (1, 63, 64, 99, 100, 101, 227):
        keys = [f"s{i}" for i in range(start, start + size)]
        start += size
        flags = store.claim_dedupe_keys([cand(k, "again:" + k) for k in keys], 60)
        assert flags == [k in claimed_before for k in keys], size
        assert store.claim_dedupe_keys([cand(k, "again:" + k) for k in keys], 60) == [
            k in claimed_before for k in keys
        ]
    assert count(store, "validation_cache") == start


@pytest.mark.parametrize("expired", [False, True], ids=["fresh", "expired"])
def test_concurrent_claims_have_exactly_one_winner(
    open_store: OpenStore, clock: Clock, expired: bool
) -> None:
    """Two instances (own engines, own connections) race for the same keys in random order."""
    instances = [open_store(), open_store()]
    keys = [f"key-{i}" for i in range(300)]
    if expired:
        instances[0].claim_dedupe_keys([cand(k, "old") for k in keys], 1)
        clock.advance(5)
    for round_ in range(3):
        round_keys = [f"{k}-{round_}" for k in keys] if not expired or round_ else keys
        verdicts = run_together(
            *(
                functools.partial(claim_all, instances[n], f"instance-{n}", round_keys)
                for n in (0, 1)
            )
        )
        for key in round_keys:
            winners = [n for n in (0, 1) if not verdicts[n][key]]
            assert len(winners) == 1, (key, winners)


def test_two_processes_claiming_have_exactly_one_winner(
    backend: str, settings: dict[str, Any], tmp_path: Path, open_store: OpenStore
) -> None:
    """Two Alpha instances as real processes, each with its own store, racing for the keys."""
    open_store()  # migrated before the race, as the supervisor does
    keys = [f"key-{i}" for i in range(400)]
    start_at = time.time() + 3  # after both processes have imported and connected
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        verdicts = pool.starmap(
            claim_in_process,
            [(backend, settings, str(tmp_path), f"process-{n}", keys, start_at) for n in (0, 1)],
        )
    for key in keys:
        assert [v[key] for v in verdicts].count(False) == 1, key


def claim_in_process(
    backend: str, settings: dict[str, Any], data_dir: str, origin: str, keys: list[str], at: float
) -> dict[str, bool]:
    store = open_state(backend, settings, Path(data_dir))
    assert isinstance(store, SqlStateStore)
    try:
        store.schema_version()  # connect now, not in the race
        time.sleep(max(0.0, at - time.time()))
        return claim_all(store, origin, keys)
    finally:
        store.close()


def claim_all(store: SqlStateStore, origin: str, keys: list[str]) -> dict[str, bool]:
    """Claim ``keys`` in a random order, in several batches so two racers interleave."""
    order = list(keys)
    random.Random(origin).shuffle(order)
    verdict: dict[str, bool] = {}
    for start in range(0, len(order), 50):
        chunk = order[start : start + 50]
        got = store.claim_dedupe_keys([cand(k, origin) for k in chunk], 60)
        verdict.update(zip(chunk, got, strict=True))
    return verdict


def test_record_duplicates_is_idempotent(store: SqlStateStore) -> None:
    dups = [cand("a", "f:9"), cand("b", "f:10")]
    store.record_duplicates(dups)
    store.record_duplicates(dups)
    store.record_duplicates([cand("a", "f:11"), cand("a", "f:11")])
    store.record_duplicates([])
    assert store.accounting()["duplicates"] == 3


def test_validation_failures_are_idempotent(store: SqlStateStore, backend: str) -> None:
    def vf(
        record_id: str, code: str, field: str | None, source: str = "orders"
    ) -> ValidationFailure:
        return ValidationFailure(
            source_id=source,
            record_id=record_id,
            origin=f"file:{record_id}",
            error_code=code,
            field=field,
            message="nope",
        )

    failures = [
        vf("r1", "REQUIRED_FIELD", "id"),
        vf("r1", "REQUIRED_FIELD", "amount"),  # another field of the same record counts
        vf("r2", "SCHEMA", None),
        vf("r3", "SCHEMA", None, source="users"),
    ]
    store.add_validation_failures(failures)
    store.add_validation_failures(failures)  # replay
    store.add_validation_failures([vf("r2", "SCHEMA", None)])  # NULL field replay
    store.add_validation_failures([])
    assert count(store, "validation_failures") == 4


# -- offsets -----------------------------------------------------------------------------------
def test_offsets_move_forward_and_count_once(store: SqlStateStore) -> None:
    assert store.get_offset("orders", "/in/a.json") == 0
    store.commit_offset("orders", "/in/a.json", 100, 10)
    store.commit_offset("orders", "/in/a.json", 100, 10)  # replayed commit
    store.commit_offset("orders", "/in/a.json", 50, 5)  # stale commit
    store.commit_offset("orders", "/in/a.json", 250, 15)
    store.commit_offset("orders", "/in/b.json", 7, 1)
    store.commit_offset("users", "/in/u.json", 3, 3)
    assert store.get_offset("orders", "/in/a.json") == 250
    assert store.offsets("orders") == {("orders", "/in/a.json"): 250, ("orders", "/in/b.json"): 7}
    assert len(store.offsets()) == 3
    acc = store.accounting()
    assert acc["ingested"] == 29
    assert acc["ingested_by_source"] == {"orders": 26, "users": 3}


# -- DLQ -------------------------------------------------------------------------------------
def test_dlq_entries(store: SqlStateStore, clock: Clock) -> None:
    entries = [
        dlq("alpha", "r1"),
        dlq("beta", "r2", reason="rule_error", error_class="transient", attempts=2),
        dlq("gamma", "r3", reason="http_500", destination_id="warehouse", error_class="transient"),
        dlq("gamma", "r3", reason="http_500", destination_id="archive"),  # same record, other dest
    ]
    store.add_dlq_entries(entries[:2])
    clock.advance(1)
    store.add_dlq_entries(entries[2:])
    clock.advance(1)
    store.add_dlq_entries(entries)  # replay: nothing new, nothing changed
    store.add_dlq_entries([])

    listed = store.list_dlq()
    # Oldest first (the two gamma entries share a timestamp; their order is the id's).
    assert [(e.module, e.record_id) for e in listed] == [
        ("alpha", "r1"),
        ("beta", "r2"),
        ("gamma", "r3"),
        ("gamma", "r3"),
    ]
    assert {e.destination_id for e in listed[2:]} == {"warehouse", "archive"}
    first = listed[0]
    assert first.body == b"\x00raw\xffr1"
    assert first.status == "open" and first.error_class == "terminal" and not first.retry_eligible
    assert abs(first.created_at - (clock.now.timestamp() - 2)) < 0.001
    beta = store.list_dlq("beta")
    assert len(beta) == 1 and beta[0].retry_eligible and beta[0].attempts == 2
    assert [e.record_id for e in store.list_dlq(limit=2, offset=1)] == ["r2", "r3"]

    # Ids are short, deterministic and the same in every process.
    assert all(len(e.entry_id) <= 32 for e in listed)
    assert first.entry_id == SqlStateStore.dlq_entry_id("alpha", "r1", "file:r1", None)

    ids = [e.entry_id for e in listed]
    got = store.get_dlq_entries([ids[2], "nope", ids[0], ids[2]])
    assert [e.entry_id for e in got] == [ids[2], ids[0]]
    assert store.get_dlq_entries([]) == []

    assert store.dlq_counts() == {"alpha": 1, "beta": 1, "gamma": 2}
    assert store.dlq_reasons() == {"parse_error": 1, "rule_error": 1, "http_500": 2}
    assert store.dlq_reasons("gamma") == {"http_500": 2}

    assert store.set_dlq_status([ids[0], ids[1], "nope"], "replayed") == 2
    assert store.set_dlq_status([ids[0], ids[1]], "replayed") == 0  # replayed twice: no change
    assert store.set_dlq_status([ids[2]], "purged") == 1
    assert store.set_dlq_status([], "purged") == 0
    with pytest.raises(ValueError, match="not valid"):
        store.set_dlq_status([ids[3]], "deleted")
    assert store.dlq_counts() == {"gamma": 1}
    assert store.dlq_counts("replayed") == {"alpha": 1, "beta": 1}
    assert store.dlq_counts("all") == {"alpha": 1, "beta": 1, "gamma": 2}
    assert [e.entry_id for e in store.list_dlq(status="replayed")] == ids[:2]
    assert len(store.list_dlq(status="all")) == 4
    assert store.dlq_reasons() == {"http_500": 1}

    # The replayed record fails again: its entry reopens with the new error.
    store.add_dlq_entries([dlq("alpha", "r1", error="still bad", attempts=3)])
    reopened = store.get_dlq_entries([ids[0]])[0]
    assert (reopened.status, reopened.error, reopened.attempts) == ("open", "still bad", 3)
    assert count(store, "dlq_entries") == 4

    # Accounting counts every entry once, whatever its status.
    assert store.accounting()["dlq"] == {"alpha": 1, "beta": 1, "gamma": 2}


def test_dlq_many_ids(store: SqlStateStore) -> None:
    store.add_dlq_entries([dlq("gamma", f"r{i}") for i in range(1200)])
    ids = [e.entry_id for e in store.list_dlq(limit=2000)]
    assert len(ids) == 1200
    assert len(store.get_dlq_entries(ids)) == 1200
    assert store.set_dlq_status(ids, "purged") == 1200


# -- gamma: deliveries -------------------------------------------------------------------------
def test_deliveries_are_never_downgraded(store: SqlStateStore) -> None:
    store.record_deliveries(
        [
            DeliveryOutcome("r1", "warehouse", "failed", attempts=1, error="timeout"),
            DeliveryOutcome("r2", "warehouse", "delivered"),
            DeliveryOutcome("r1", "archive", "delivered"),
        ]
    )
    store.record_deliveries([DeliveryOutcome("r1", "warehouse", "delivered", attempts=2)])
    store.record_deliveries([DeliveryOutcome("r1", "warehouse", "failed", attempts=3, error="x")])
    # Within one batch too, and a replay of the whole batch.
    batch = [
        DeliveryOutcome("r3", "warehouse", "delivered"),
        DeliveryOutcome("r3", "warehouse", "failed", error="late"),
        DeliveryOutcome("r4", "warehouse", "failed", error="e1"),
        DeliveryOutcome("r4", "warehouse", "failed", attempts=2, error="e2"),
    ]
    store.record_deliveries(batch)
    store.record_deliveries(batch)
    store.record_deliveries([])

    assert store.delivered_records(["r1", "r2", "r3", "r4", "r9"], "warehouse") == {
        "r1",
        "r2",
        "r3",
    }
    assert store.delivered_records(["r1", "r2"], "archive") == {"r1"}
    assert store.delivered_records([], "archive") == set()
    assert store.delivery_counts() == {
        "warehouse": {"delivered": 3, "failed": 1},
        "archive": {"delivered": 1},
    }
    with store.engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT status, attempts, error FROM delivery_log WHERE record_id = 'r4'")
        ).one()
        assert tuple(row) == ("failed", 2, "e2")
        row = conn.execute(
            sa.text(
                "SELECT status, attempts FROM delivery_log "
                "WHERE record_id = 'r1' AND destination_id = 'warehouse'"
            )
        ).one()
        assert tuple(row) == ("delivered", 2)
    acc = store.accounting()
    assert acc["delivered"] == {"warehouse": 3, "archive": 1}
    assert acc["delivered_records"] == 3


@pytest.mark.parametrize("backend", ["postgresql"])
def test_postgresql_copies_new_deliveries_and_upserts_a_batch_that_overlaps(
    store: SqlStateStore,
) -> None:
    """New rows go in by COPY; a batch with a row already logged fails its COPY on the unique
    key, rolls back to its savepoint and is upserted (never downgrading a delivered row), and so
    are the next few batches. The accounting's triggers count either way."""

    def logged() -> dict[tuple[str, str], tuple[str, int]]:
        with store.engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT record_id, destination_id, status, attempts FROM delivery_log")
            ).all()
        return {(r[0], r[1]): (r[2], r[3]) for r in rows}

    first = [
        DeliveryOutcome(f"r{i}", "warehouse", "delivered", quality_score=0.5) for i in range(5)
    ]
    first.append(DeliveryOutcome("f1", "warehouse", "failed", attempts=1, error="timeout"))
    store.record_deliveries(first)
    assert store._upsert_deliveries_next == 0  # copied
    assert logged() == {
        **{(f"r{i}", "warehouse"): ("delivered", 1) for i in range(5)},
        ("f1", "warehouse"): ("failed", 1),
    }
    assert store.accounting()["delivered"] == {"warehouse": 5}

    # f1 delivered on its retry, r0 replayed as failed, r9 new: the COPY meets f1 and r0.
    store.record_deliveries(
        [
            DeliveryOutcome("f1", "warehouse", "delivered", attempts=2),
            DeliveryOutcome("r0", "warehouse", "failed", attempts=3, error="late"),
            DeliveryOutcome("r9", "warehouse", "delivered"),
        ]
    )
    assert store._upsert_deliveries_next == state_sql._UPSERT_DELIVERIES_AFTER_CONFLICT
    log = logged()
    assert log[("f1", "warehouse")] == ("delivered", 2)
    assert log[("r0", "warehouse")] == ("delivered", 1)
    assert log[("r9", "warehouse")] == ("delivered", 1)
    assert store.accounting()["delivered"] == {"warehouse": 7}
    assert store.accounting()["delivered"] == _counted(store)["delivered"]

    # The next batch is upserted without trying the COPY; the hint counts down.
    store.record_deliveries([DeliveryOutcome("r10", "archive", "delivered")])
    assert store._upsert_deliveries_next == state_sql._UPSERT_DELIVERIES_AFTER_CONFLICT - 1
    assert store.accounting()["delivered"] == {"warehouse": 7, "archive": 1}


def test_a_large_delivery_batch_overlapping_logged_rows_counts_only_new_ones(
    store: SqlStateStore,
) -> None:
    """A batch of 237 outcomes (SQLite writes it in statements of 100, 100, 32, 4 and 1 rows)
    of which some are logged already: the new rows are inserted, the logged ones upserted
    without a downgrade, and the delivered count equals the rows."""
    store.record_deliveries(
        [DeliveryOutcome(f"r{i}", "warehouse", "delivered") for i in range(0, 237, 10)]
        + [DeliveryOutcome(f"r{i}", "warehouse", "failed", error="x") for i in range(5, 237, 10)]
    )
    store.record_deliveries(
        [DeliveryOutcome(f"r{i}", "warehouse", "delivered", attempts=2) for i in range(237)]
    )
    with store.engine.connect() as conn:
        rows = {
            r[0]: r[1]
            for r in conn.execute(sa.text("SELECT record_id, attempts FROM delivery_log"))
        }
    assert len(rows) == 237
    assert rows["r0"] == 1  # delivered before: left as it was
    assert rows["r5"] == 2 and rows["r1"] == 2  # failed before, then new: the latest outcome
    assert store.accounting()["delivered"] == {"warehouse": 237}
    assert store.accounting()["delivered"] == _counted(store)["delivered"]


def test_two_instances_logging_overlapping_deliveries_agree(open_store: OpenStore) -> None:
    """Two Gamma instances (own engines) log overlapping batches at once, as after a replay:
    on PostgreSQL a COPY meets the other's rows (committed, or in flight and then committed)
    and falls back to the upsert. Every row ends up once, a delivered one stays delivered, and
    the accounting counts each delivered row once."""
    instances = [open_store(), open_store()]
    rng = random.Random(11)
    plans: list[list[list[DeliveryOutcome]]] = [[], []]
    for n in (0, 1):
        for round_ in range(8):
            first = rng.randrange(0, 300)
            statuses = rng.choices(["delivered", "failed"], weights=[4, 1], k=150)
            plans[n].append(
                [
                    DeliveryOutcome(f"r{first + i:04d}", "warehouse", status, attempts=round_ + 1)
                    for i, status in enumerate(statuses)
                ]
            )

    def log(n: int) -> None:
        for batch in plans[n]:
            instances[n]._upsert_deliveries_next = 0  # try the COPY every time
            instances[n].record_deliveries(batch)

    run_together(functools.partial(log, 0), functools.partial(log, 1))
    ever_delivered = {
        o.record_id for plan in plans for batch in plan for o in batch if o.status == "delivered"
    }
    every = {o.record_id for plan in plans for batch in plan for o in batch}
    with instances[0].engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT record_id, status FROM delivery_log")).all()
    assert len(rows) == len({r[0] for r in rows}) == len(every)
    assert {r[0] for r in rows if r[1] == "delivered"} == ever_delivered
    assert instances[0].accounting()["delivered"] == {"warehouse": len(ever_delivered)}
    assert instances[0].accounting()["delivered"] == _counted(instances[0])["delivered"]


def test_delivery_log_keeps_ids_texts_and_scores_exactly(store: SqlStateStore) -> None:
    """The batch travels as one JSON array: nothing in it may change on the way."""
    odd_id = 'src:"quoted" back\\slash é中 \t tab'
    error = 'HTTP 500: {"detail": "boom"} \\ \u00e9'
    score = 0.960679  # a REAL column: compared to the 6 digits the store reads back
    store.record_deliveries(
        [
            DeliveryOutcome(odd_id, "warehouse", "failed", attempts=7, error=error),
            DeliveryOutcome("plain", "warehouse", "delivered", quality_score=score),
            DeliveryOutcome("unscored", "warehouse", "delivered", quality_score=None),
        ]
    )
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT record_id, status, attempts, error, quality_score FROM delivery_log"
                " ORDER BY record_id"
            )
        ).all()
    assert [tuple(r)[:4] for r in rows] == [
        ("plain", "delivered", 1, None),
        (odd_id, "failed", 7, error),
        ("unscored", "delivered", 1, None),
    ]
    assert round(rows[0][4], 6) == score and rows[1][4] is None and rows[2][4] is None


def test_delivered_records_large_batch(store: SqlStateStore) -> None:
    ids = [f"r{i}" for i in range(1300)]
    store.record_deliveries([DeliveryOutcome(i, "d", "delivered") for i in ids[::2]])
    assert store.delivered_records(ids, "d") == set(ids[::2])


def test_deliveries_keep_the_lineage_summary(store: SqlStateStore, clock: Clock) -> None:
    """Schema v5: rules, enrichment and quality score ride in the delivery-log row."""
    record = new_record("orders", {"id": "A1"}, id_field="id")
    record.touched("alpha", "ingested")
    record.touched("beta", "TRX_010_RENAME")
    record.touched("beta", "enrichment:crm")
    record.touched("beta", "TRX_200_LOOKUP")
    record.touched("beta", "enrichment:geo:default")
    record.touched("beta", "TRX_010_RENAME")  # replayed through Beta: listed once
    record.touched("gamma", "route:warehouse")
    record.quality = Quality(score=0.85)
    bare = new_record("orders", {"id": "B2"}, id_field="id")
    start = clock.now.timestamp()
    store.record_deliveries(
        [
            DeliveryOutcome.of(record, "warehouse", "failed", error="timeout"),
            DeliveryOutcome.of(record, "archive", "delivered"),
            DeliveryOutcome.of(bare, "warehouse", "delivered"),
        ]
    )
    with store.engine.connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT rules, enrichment, quality_score FROM delivery_log "
                "WHERE record_id = 'orders:A1' AND destination_id = 'archive'"
            )
        ).one()
        assert row[0] == "TRX_010_RENAME,TRX_200_LOOKUP"
        assert row[1] == "crm,geo:default"
        assert row[2] == pytest.approx(0.85)
        # Nothing to say is NULL, not an empty string.
        row = conn.execute(
            sa.text(
                "SELECT rules, enrichment, quality_score FROM delivery_log "
                "WHERE record_id = 'orders:B2'"
            )
        ).one()
        assert tuple(row) == (None, None, None)
    summary = {
        "rules": ["TRX_010_RENAME", "TRX_200_LOOKUP"],
        "enrichment": ["crm", "geo:default"],
        "quality_score": 0.85,
    }
    trace = store.record_trace("orders:A1")
    assert {k: trace[k] for k in summary} == summary
    assert [(d["destination_id"], d["status"]) for d in trace["deliveries"]] == [
        ("archive", "delivered"),
        ("warehouse", "failed"),
    ]
    assert all({k: d[k] for k in summary} == summary for d in trace["deliveries"])
    # The retry that delivers it writes the summary it carries then (re-scored: 0.9).
    record.quality = Quality(score=0.9)
    clock.advance(1)
    store.record_deliveries([DeliveryOutcome.of(record, "warehouse", "delivered", error=None)])
    (row,) = [
        d
        for d in store.record_trace("orders:A1")["deliveries"]
        if d["destination_id"] == "warehouse"
    ]
    assert row["status"] == "delivered" and row["quality_score"] == 0.9
    # A delivered row is never rewritten, lineage summary included.
    record.quality = Quality(score=0.1)
    store.record_deliveries([DeliveryOutcome.of(record, "warehouse", "failed", error="x")])
    (row,) = [
        d
        for d in store.record_trace("orders:A1")["deliveries"]
        if d["destination_id"] == "warehouse"
    ]
    assert row["status"] == "delivered" and row["quality_score"] == 0.9
    bare_trace = store.record_trace("orders:B2")
    assert (bare_trace["rules"], bare_trace["enrichment"], bare_trace["quality_score"]) == (
        [],
        [],
        None,
    )
    # The export carries it per row.
    exported = {
        (r["record_id"], r["destination_id"]): r for r in store.delivered_between(start, None)
    }
    assert set(exported) == {
        ("orders:A1", "warehouse"),
        ("orders:A1", "archive"),
        ("orders:B2", "warehouse"),
    }
    assert exported["orders:A1", "archive"]["rules"] == summary["rules"]
    assert exported["orders:A1", "archive"]["enrichment"] == summary["enrichment"]
    assert exported["orders:A1", "archive"]["quality_score"] == 0.85
    assert exported["orders:B2", "warehouse"]["rules"] == []


def test_trace_finds_the_ingest_position_by_key_or_by_record_id(store: SqlStateStore) -> None:
    store.claim_dedupe_keys(
        [
            # No dedupe key fields: the record id is the key (a primary-key lookup).
            DedupeCandidate("orders:A1", "file:3", "orders:A1", "orders"),
            # Dedupe on payload fields: found by record id.
            DedupeCandidate("crm:x\x1fy", "file:7", "crm:C9", "crm"),
        ],
        3600,
    )
    assert [(c["source_id"], c["origin"]) for c in store.record_trace("orders:A1")["ingested"]] == [
        ("orders", "file:3")
    ]
    assert [(c["source_id"], c["origin"]) for c in store.record_trace("crm:C9")["ingested"]] == [
        ("crm", "file:7")
    ]
    assert store.record_trace("crm:none")["ingested"] == []


def test_trace_of_a_dlq_record_reads_the_summary_from_its_body(store: SqlStateStore) -> None:
    """A record Beta sent to the DLQ was never delivered: its envelope in the entry tells."""
    record = new_record("orders", {"id": "Q1"}, id_field="id")
    record.touched("beta", "TRX_100_TAG_EU")
    record.quality = Quality(score=0.2)
    store.add_dlq_entries(
        [
            dlq("beta", record.record_id, reason="quality_rejected", body=encode(record)),
            dlq("alpha", "orders:RAW", body=b"not a record"),
        ]
    )
    trace = store.record_trace(record.record_id)
    assert (trace["rules"], trace["enrichment"], trace["quality_score"]) == (
        ["TRX_100_TAG_EU"],
        [],
        0.2,
    )
    assert "body" not in trace["dlq"][0]
    raw = store.record_trace("orders:RAW")
    assert (raw["rules"], raw["quality_score"]) == ([], None)


def test_v5_upgrades_a_v4_delivery_log(open_store: OpenStore) -> None:
    """An existing database at version 4 gets the lineage columns; its rows keep NULLs."""
    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    store = open_store()
    with store.engine.begin() as conn:
        # Make it a version 4 database: no lineage columns, no step 5, one old delivery.
        op = Operations(MigrationContext.configure(conn))
        op.drop_index("idx_delivery_timestamp", table_name="delivery_log")
        with op.batch_alter_table("delivery_log") as batch:
            for name in ("rules", "enrichment", "quality_score"):
                batch.drop_column(name)
        conn.execute(sa.text("DELETE FROM schema_version WHERE version >= 5"))
        conn.execute(
            sa.text(
                "INSERT INTO delivery_log (record_id, destination_id, status, attempts, timestamp)"
                " VALUES ('old', 'warehouse', 'delivered', 1, :now)"
            ),
            {"now": datetime.now(UTC)},
        )
    assert store.schema_version() == 4
    assert store.migrate() == state_sql.LATEST_VERSION
    columns = {c["name"] for c in sa.inspect(store.engine).get_columns("delivery_log")}
    assert {"rules", "enrichment", "quality_score"} <= columns
    # The indexes survive the (SQLite batch-mode) alteration.
    indexes = {i["name"] for i in sa.inspect(store.engine).get_indexes("delivery_log")}
    assert {"idx_delivery_destination", "idx_delivery_timestamp"} <= indexes
    old = store.record_trace("old")
    assert old["deliveries"][0]["status"] == "delivered"
    assert (old["rules"], old["enrichment"], old["quality_score"]) == ([], [], None)
    record = new_record("orders", {"id": "N1"}, id_field="id")
    record.touched("beta", "TRX_1")
    store.record_deliveries([DeliveryOutcome.of(record, "warehouse", "delivered")])
    assert store.record_trace("orders:N1")["rules"] == ["TRX_1"]
    assert store.migrate() == state_sql.LATEST_VERSION


# -- control -------------------------------------------------------------------------------------
def test_audit_log(store: SqlStateStore, clock: Clock) -> None:
    start = clock.now.timestamp()
    store.append_audit("alice", "config.reload", "alpha", {"version": 3, "at": clock.now})
    clock.advance(10)
    store.append_audit("bob", "dlq.purge", "gamma")
    entries = store.list_audit()
    assert [(e["actor"], e["action"], e["target"]) for e in entries] == [
        ("bob", "dlq.purge", "gamma"),
        ("alice", "config.reload", "alpha"),
    ]
    assert entries[1]["details"]["version"] == 3
    assert isinstance(entries[1]["details"]["at"], str)  # serialised, not refused
    assert entries[0]["details"] == {}
    assert abs(entries[1]["timestamp"] - start) < 0.001
    assert [e["actor"] for e in store.list_audit(since=start + 5)] == ["bob"]
    assert len(store.list_audit(limit=1)) == 1


def test_lineage(store: SqlStateStore, clock: Clock) -> None:
    events = [
        ("r1", "alpha", "ingested", {"source_id": "orders", "origin": "file:1"}),
        ("r1", "beta", "rule_applied", {"rule": "normalize"}),
        ("r2", "alpha", "ingested", {"source_id": "orders"}),
    ]
    store.add_lineage(events[:1])
    clock.advance(1)
    store.add_lineage(events[1:])
    store.add_lineage(events)  # replay
    clock.advance(1)
    store.add_lineage([("r1", "gamma", "delivered", {"destination_id": "warehouse"})])
    store.add_lineage([])
    history = store.lineage_of("r1")
    assert [(e["stage"], e["action"]) for e in history] == [
        ("alpha", "ingested"),
        ("beta", "rule_applied"),
        ("gamma", "delivered"),
    ]
    assert history[2]["details"] == {"destination_id": "warehouse"}
    assert store.lineage_of("nope") == []
    assert count(store, "lineage") == 4


def test_job_runs(store: SqlStateStore, clock: Clock) -> None:
    first = store.start_job_run("gamma_dlq_cleanup", "schedule")
    clock.advance(5)
    store.finish_job_run(first, "SUCCESS", records=12, message="12 archived")
    clock.advance(60)
    store.finish_job_run(first, "FAILED", message="replayed call")  # already finished: ignored
    second = store.start_job_run("daily_lineage_index", "manual")
    assert first != second
    runs = store.list_job_runs()
    assert [r["run_id"] for r in runs] == [second, first]
    assert runs[0]["status"] == "RUNNING" and runs[0]["finished_at"] is None
    done = runs[1]
    assert (done["status"], done["records"], done["message"]) == ("SUCCESS", 12, "12 archived")
    assert done["duration_seconds"] == pytest.approx(5, abs=0.01)
    assert [r["run_id"] for r in store.list_job_runs("gamma_dlq_cleanup")] == [first]
    assert len(store.list_job_runs(limit=1)) == 1


def test_config_versions(store: SqlStateStore, clock: Clock) -> None:
    assert store.save_config_version("alpha", "c1", "content 1", "alice") == 1
    clock.advance(1)
    assert store.save_config_version("alpha", "c1", "content 1", "alice") == 1  # unchanged
    assert store.save_config_version("alpha", "c2", "content 2", "bob") == 2
    clock.advance(1)
    assert store.save_config_version("beta", "c1", "beta 1", "bob") == 1
    assert store.save_config_version("alpha", "c1", "content 1", "carol") == 3  # back again
    versions = store.list_config_versions()
    assert [(v["module"], v["version"]) for v in versions] == [
        ("alpha", 3),
        ("beta", 1),
        ("alpha", 2),
        ("alpha", 1),
    ]
    assert all("content" not in v for v in versions)
    assert [v["version"] for v in store.list_config_versions("alpha")] == [3, 2, 1]
    assert store.get_config_version("alpha", 2) == "content 2"
    assert store.get_config_version("alpha", 9) is None


def test_config_versions_saved_concurrently(open_store: OpenStore) -> None:
    instances = [open_store() for _ in range(4)]

    def save(n: int) -> None:
        for i in range(5):
            instances[n].save_config_version("alpha", f"{n}-{i}", "x", f"p{n}")

    run_together(*(functools.partial(save, n) for n in range(len(instances))))
    versions = [v["version"] for v in instances[0].list_config_versions("alpha")]
    assert versions == list(range(20, 0, -1))


# -- accounting ----------------------------------------------------------------------------------
def test_accounting_adds_up(store: SqlStateStore) -> None:
    assert store.accounting() == {
        "ingested": 0,
        "ingested_by_source": {},
        "duplicates": 0,
        "dlq": {"alpha": 0, "beta": 0, "gamma": 0},
        "delivered": {},
        "delivered_records": 0,
    }
    # Ten records read; one duplicate, one alpha DLQ, one gamma DLQ, seven delivered to two
    # destinations (so fourteen deliveries).
    store.commit_offset("orders", "f", 10, 10)
    store.record_duplicates([cand("k", "f:9")])
    store.add_dlq_entries([dlq("alpha", "r8"), dlq("gamma", "r7", destination_id="warehouse")])
    outcomes = [DeliveryOutcome(f"r{i}", d, "delivered") for i in range(7) for d in ("a", "b")]
    store.record_deliveries(outcomes)
    for _ in range(2):  # every write replayed: the counts do not move
        store.commit_offset("orders", "f", 10, 10)
        store.record_duplicates([cand("k", "f:9")])
        store.add_dlq_entries([dlq("alpha", "r8"), dlq("gamma", "r7", destination_id="warehouse")])
        store.record_deliveries(outcomes)
    acc = store.accounting()
    assert acc == {
        "ingested": 10,
        "ingested_by_source": {"orders": 10},
        "duplicates": 1,
        "dlq": {"alpha": 1, "beta": 0, "gamma": 1},
        "delivered": {"a": 7, "b": 7},
        "delivered_records": 7,
    }
    assert (
        acc["ingested"] == acc["duplicates"] + sum(acc["dlq"].values()) + acc["delivered_records"]
    )


def test_accounting_with_one_destination_counts_its_delivered_rows(store: SqlStateStore) -> None:
    store.record_deliveries([DeliveryOutcome(f"r{i}", "a", "delivered") for i in range(5)])
    store.record_deliveries([DeliveryOutcome("r9", "a", "failed", error="down")])
    store.record_deliveries([DeliveryOutcome("r0", "a", "delivered")])  # a replayed write
    acc = store.accounting()
    assert acc["delivered"] == {"a": 5} and acc["delivered_records"] == 5


def _counted(store: SqlStateStore) -> dict[str, Any]:
    """What the accounting's counts are by definition: COUNT(*) over the tables."""
    with store.engine.connect() as conn:
        delivered = dict(
            conn.execute(
                sa.text(
                    "SELECT destination_id, count(*) FROM delivery_log"
                    " WHERE status = 'delivered' GROUP BY destination_id"
                )
            ).all()
        )
        dlq = {"alpha": 0, "beta": 0, "gamma": 0}
        dlq.update(
            {
                m: n
                for m, n in conn.execute(
                    sa.text("SELECT module, count(*) FROM dlq_entries GROUP BY 1")
                )
            }
        )
        duplicates = conn.scalar(sa.text("SELECT count(*) FROM duplicates"))
    return {"delivered": delivered, "dlq": dlq, "duplicates": duplicates}


def test_accounting_counts_follow_every_write(store: SqlStateStore) -> None:
    """The counts are kept by triggers (SQLite: counters; PostgreSQL: deltas): inserts, status
    changes both ways (an operator's SQL included), deletes (retention, purges) must all move
    them exactly."""
    rng = random.Random(5)

    def acc() -> dict[str, Any]:
        full = store.accounting()
        return {k: full[k] for k in ("delivered", "dlq", "duplicates")}

    for round_ in range(6):
        store.record_deliveries(
            [
                DeliveryOutcome(f"r{rng.randrange(40)}", rng.choice("ab"), status)
                for status in rng.choices(["delivered", "failed", "pending"], k=30)
            ]
        )
        modules = ("alpha", "beta", "gamma")
        store.add_dlq_entries([dlq(rng.choice(modules), f"d{round_}-{i}") for i in range(3)])
        store.record_duplicates([cand(f"k{rng.randrange(20)}", f"f:{rng.randrange(20)}")])
        assert acc() == _counted(store)
    with store.engine.begin() as conn:  # what an operator or a retention job may do
        conn.execute(sa.text("UPDATE delivery_log SET status = 'failed' WHERE record_id = 'r1'"))
        conn.execute(sa.text("UPDATE delivery_log SET status = 'delivered' WHERE record_id='r2'"))
        conn.execute(sa.text("DELETE FROM delivery_log WHERE record_id IN ('r3', 'r4')"))
        conn.execute(sa.text("DELETE FROM dlq_entries WHERE record_id LIKE 'd1-%'"))
        conn.execute(sa.text("DELETE FROM duplicates WHERE origin = 'f:3'"))
    assert acc() == _counted(store)
    with store.engine.begin() as conn:
        for table in ("delivery_log", "dlq_entries", "duplicates"):
            conn.execute(sa.text(f"DELETE FROM {table}"))
    assert acc() == {"delivered": {}, "dlq": {"alpha": 0, "beta": 0, "gamma": 0}, "duplicates": 0}


def _upgrade_seeds_the_counts(
    store: SqlStateStore, old: int, drop_counting: Callable[[sa.Connection], None], now: str
) -> None:
    """Deliveries, DLQ entries and duplicates written; the database made a version ``old`` one
    (``drop_counting`` takes away what later versions count with; one row written as version
    ``old`` wrote it, stamped with the SQL ``now``): after the upgrade the counts start from
    its rows, and go on from there."""
    store.record_deliveries([DeliveryOutcome(f"r{i}", "a", "delivered") for i in range(4)])
    store.add_dlq_entries([dlq("alpha", "x1"), dlq("gamma", "x2")])
    store.record_duplicates([cand("k", "f:1")])
    with store.engine.begin() as conn:
        drop_counting(conn)
        conn.execute(sa.text(f"DELETE FROM schema_version WHERE version > {old}"))
        conn.execute(
            sa.text(
                "INSERT INTO delivery_log (record_id, destination_id, status, attempts, timestamp)"
                f" VALUES ('r9', 'a', 'delivered', 1, {now})"
            )
        )
    assert store.schema_version() == old
    assert store.migrate() == state_sql.LATEST_VERSION
    expected = {"delivered": {"a": 5}, "dlq": {"alpha": 1, "beta": 0, "gamma": 1}, "duplicates": 1}
    assert _counted(store) == expected
    assert {k: store.accounting()[k] for k in expected} == expected
    store.record_deliveries([DeliveryOutcome("r10", "a", "delivered")])
    assert store.accounting()["delivered"] == {"a": 6}


@pytest.mark.parametrize("backend", ["sqlite"])
def test_v6_seeds_the_counters_from_the_rows_already_there(open_store: OpenStore) -> None:
    """A version 5 database: after the upgrade the trigger-kept counts start from its rows."""

    def no_counters(conn: sa.Connection) -> None:
        for name, _ in conn.execute(
            sa.text("SELECT name, type FROM sqlite_master WHERE name LIKE 'trg_count_%'")
        ).all():
            conn.execute(sa.text(f"DROP TRIGGER {name}"))
        conn.execute(sa.text("DROP TABLE accounting_counts"))

    _upgrade_seeds_the_counts(open_store(), 5, no_counters, "'2026-11-27T00:00:00'")


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgresql"])
def test_v8_seeds_the_deltas_from_the_rows_already_there(open_store: OpenStore) -> None:
    """A version 7 PostgreSQL database (counted by COUNT(*)): after the upgrade the deltas
    start from its rows."""

    def no_deltas(conn: sa.Connection) -> None:
        for trigger, table, *_ in state_sql._PG_DELTAS:
            conn.execute(sa.text(f"DROP TRIGGER {trigger} ON {table}"))
        conn.execute(sa.text("DROP TABLE accounting_deltas"))

    _upgrade_seeds_the_counts(open_store(), 7, no_deltas, "now()")


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgresql"])
def test_deltas_are_folded_when_they_pile_up_and_the_counts_stay(
    store: SqlStateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each writing statement appends a delta row; past the limit a read sums them into one
    row per count, and the counts read before and after are the same."""
    monkeypatch.setattr(state_sql, "_PG_DELTAS_KEPT", 5)
    seeded = count(store, "accounting_deltas")  # the migration's seed (zero duplicates)
    for i in range(8):
        store.record_deliveries([DeliveryOutcome(f"r{i}", "a", "delivered")])
        store.add_dlq_entries([dlq("beta", f"x{i}")])
    assert count(store, "accounting_deltas") == seeded + 16
    first = store.accounting()  # reads them all, then folds them
    assert count(store, "accounting_deltas") == 2
    assert first == store.accounting()
    assert first["delivered"] == {"a": 8} and first["dlq"]["beta"] == 8
    assert {k: first[k] for k in ("delivered", "dlq", "duplicates")} == _counted(store)


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgresql"])
def test_an_operators_writes_from_another_search_path_are_counted(
    store: SqlStateStore, settings: dict[str, Any]
) -> None:
    """The trigger functions find their deltas table whatever the session's search path: an
    operator's psql session on the default path, naming the schema, moves the counts too."""
    store.record_deliveries([DeliveryOutcome(f"r{i}", "a", "delivered") for i in range(3)])
    schema = settings["schema"]
    engine = _admin_engine()
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("SET search_path TO public"))
            conn.execute(sa.text(f"DELETE FROM \"{schema}\".delivery_log WHERE record_id = 'r0'"))
            conn.execute(
                sa.text(
                    f'INSERT INTO "{schema}".delivery_log'
                    " (record_id, destination_id, status, attempts, timestamp)"
                    " VALUES ('r7', 'b', 'delivered', 1, now())"
                )
            )
    finally:
        engine.dispose()
    assert store.accounting()["delivered"] == {"a": 2, "b": 1} == _counted(store)["delivered"]


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgresql"])
def test_docs_recount_after_a_truncate_on_postgresql(store: SqlStateStore) -> None:
    """docs/state.md: TRUNCATE fires no counting trigger; the recount it gives, run as written,
    brings the counts back to the rows."""
    text = (Path(__file__).parents[2] / "docs" / "state.md").read_text()
    recount = text.split("after truncating one of these tables, recount", 1)[1]
    recount = recount.split("```sql\n", 1)[1].split("```", 1)[0]
    store.record_deliveries([DeliveryOutcome(f"r{i}", "a", "delivered") for i in range(3)])
    store.add_dlq_entries([dlq("gamma", "x1")])
    store.record_duplicates([cand("k", "f:1"), cand("k", "f:2")])
    with store.engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE delivery_log"))
    assert store.accounting()["delivered"] == {"a": 3}  # stale, as the docs say
    with store.engine.begin() as conn:
        for statement in filter(str.strip, recount.split(";")):
            conn.exec_driver_sql(statement)
    expected = {"delivered": {}, "dlq": {"alpha": 0, "beta": 0, "gamma": 1}, "duplicates": 2}
    assert {k: store.accounting()[k] for k in expected} == expected == _counted(store)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_docs_recount_after_an_operators_insert(store: SqlStateStore) -> None:
    """docs/state.md: rows an operator inserts into delivery_log by hand are not counted until
    the recount it gives, run as written."""
    text = (Path(__file__).parents[2] / "docs" / "state.md").read_text()
    recount = text.split("recount the\ndelivered records", 1)[1].split("```sql\n", 1)[1]
    recount = recount.split("```", 1)[0]
    store.record_deliveries([DeliveryOutcome("r1", "a", "delivered")])
    with store.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO delivery_log (record_id, destination_id, status, attempts, timestamp)"
                " VALUES ('r2', 'a', 'delivered', 1, '2026-11-27T00:00:00'),"
                " ('r3', 'c', 'delivered', 1, '2026-11-27T00:00:00')"
            )
        )
    assert store.accounting()["delivered"] == {"a": 1}
    with store.engine.begin() as conn:
        for statement in filter(str.strip, recount.split(";")):
            conn.exec_driver_sql(statement)
    assert store.accounting()["delivered"] == {"a": 2, "c": 1} == _counted(store)["delivered"]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_v7_counts_delivered_inserts_per_batch_not_per_row(open_store: OpenStore) -> None:
    """A version 6 database counted the delivery log's inserts with a trigger per row; after
    the upgrade the trigger is gone, the batch adds its count, and nothing is counted twice."""
    store = open_store()
    store.record_deliveries([DeliveryOutcome(f"r{i}", "a", "delivered") for i in range(3)])
    with store.engine.begin() as conn:  # make it a version 6 database
        conn.execute(  # version 6's trigger, as it created it
            sa.text(
                "CREATE TRIGGER trg_count_delivered_insert AFTER INSERT ON delivery_log"
                " WHEN NEW.status = 'delivered' BEGIN INSERT INTO accounting_counts (kind, key, n)"
                " VALUES ('delivered', NEW.destination_id, 1)"
                " ON CONFLICT (kind, key) DO UPDATE SET n = n + excluded.n; END"
            )
        )
        conn.execute(sa.text("DELETE FROM schema_version WHERE version >= 7"))
    store.record_deliveries([DeliveryOutcome("r3", "a", "delivered")])  # trigger + batch count
    assert store.accounting()["delivered"] == {"a": 5}  # the double count the upgrade ends
    with store.engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE accounting_counts SET n = n - 1 WHERE kind = 'delivered' AND key = 'a'")
        )
    assert store.migrate() == state_sql.LATEST_VERSION
    with store.engine.connect() as conn:
        triggers = conn.execute(
            sa.text("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        ).scalars()
        assert "trg_count_delivered_insert" not in set(triggers)
    store.record_deliveries(
        [
            DeliveryOutcome("r4", "a", "delivered"),
            DeliveryOutcome("r5", "b", "failed"),
            DeliveryOutcome("r0", "a", "delivered"),  # already there: left as it is
            DeliveryOutcome("r5", "a", "failed"),
        ]
    )
    store.record_deliveries([DeliveryOutcome("r5", "a", "delivered")])  # failed, then delivered
    assert store.accounting()["delivered"] == {"a": 6} == _counted(store)["delivered"]


# -- the manual's ad-hoc queries (Runbook D.2, Database Maintenance), verbatim ------------------
D2_VALIDATION_FAILURES = """
   SELECT source_id, error_code, count(*)
   FROM validation_failures
   WHERE timestamp > now() - interval '1 hour'
   GROUP BY source_id, error_code
   ORDER BY count(*) DESC;
"""

D2_DELIVERY = """
   SELECT destination_id,
          count(*) FILTER (WHERE status='delivered') as delivered,
          count(*) FILTER (WHERE status='failed') as failed,
          count(*) as total
   FROM delivery_log
   WHERE timestamp > now() - interval '1 hour'
   GROUP BY destination_id;
"""

AUDIT_ARCHIVE = [
    """
   INSERT INTO audit_log_archive
   SELECT * FROM audit_log
   WHERE timestamp < NOW() - INTERVAL '90 days';
""",
    """
   DELETE FROM audit_log
   WHERE timestamp < NOW() - INTERVAL '90 days';
""",
]


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgresql"])
def test_runbook_d2_queries_verbatim(store: SqlStateStore, clock: Clock) -> None:
    def vf(record_id: str, source: str, code: str) -> ValidationFailure:
        return ValidationFailure(source, record_id, f"o:{record_id}", code, "id", "bad")

    clock.now = datetime.now(UTC) - timedelta(hours=2)  # outside the one-hour window
    store.add_validation_failures([vf("old1", "orders", "SCHEMA")])
    store.record_deliveries([DeliveryOutcome("old1", "warehouse", "delivered")])
    store.append_audit("ops", "old", "x")
    clock.now = datetime.now(UTC) - timedelta(days=91)
    store.append_audit("ops", "ancient", "x")
    clock.now = datetime.now(UTC)
    store.add_validation_failures(
        [vf("r1", "orders", "SCHEMA"), vf("r2", "orders", "SCHEMA"), vf("r3", "users", "REQUIRED")]
    )
    store.record_deliveries(
        [
            DeliveryOutcome("r1", "warehouse", "delivered"),
            DeliveryOutcome("r2", "warehouse", "failed", error="timeout"),
            DeliveryOutcome("r3", "warehouse", "delivered"),
            DeliveryOutcome("r1", "archive", "failed", error="503"),
        ]
    )
    with store.engine.begin() as conn:
        rows = [tuple(r) for r in conn.execute(sa.text(D2_VALIDATION_FAILURES))]
        assert rows == [("orders", "SCHEMA", 2), ("users", "REQUIRED", 1)]
        rows = sorted(tuple(r) for r in conn.execute(sa.text(D2_DELIVERY)))
        assert rows == [("archive", 0, 1, 1), ("warehouse", 2, 1, 3)]
        for statement in AUDIT_ARCHIVE:
            conn.execute(sa.text(statement))
    assert [e["action"] for e in store.list_audit()] == ["old"]
    assert count(store, "audit_log_archive") == 1


@pytest.mark.parametrize("backend", ["sqlite"])
def test_runbook_d2_equivalent_counts_on_sqlite(store: SqlStateStore) -> None:
    """The same question on SQLite (no FILTER/interval syntax there): what the docs show."""
    store.record_deliveries(
        [DeliveryOutcome("r1", "w", "delivered"), DeliveryOutcome("r2", "w", "failed")]
    )
    store.add_validation_failures([ValidationFailure("orders", "r1", "o:1", "SCHEMA", None, "bad")])
    deliveries = (
        "SELECT destination_id,"
        " sum(status = 'delivered') AS delivered, sum(status = 'failed') AS failed,"
        " count(*) AS total"
        " FROM delivery_log WHERE timestamp > datetime('now', '-1 hour') GROUP BY destination_id"
    )
    failures = (
        "SELECT source_id, error_code, count(*) FROM validation_failures"
        " WHERE timestamp > datetime('now', '-1 hour')"
        " GROUP BY source_id, error_code ORDER BY count(*) DESC"
    )
    with store.engine.connect() as conn:
        assert [tuple(r) for r in conn.execute(sa.text(deliveries))] == [("w", 1, 1, 2)]
        assert [tuple(r) for r in conn.execute(sa.text(failures))] == [("orders", "SCHEMA", 1)]


def test_source_state_holds_one_value_per_source_and_key(store: SqlStateStore) -> None:
    assert store.get_source_state("api", "watermark") is None
    store.set_source_state("api", "watermark", "2026-11-27T00:00:00Z")
    store.set_source_state("api", "watermark", "2026-11-27T01:00:00Z")
    store.set_source_state("other", "watermark", "x")
    assert store.get_source_state("api", "watermark") == "2026-11-27T01:00:00Z"
    assert store.get_source_state("other", "watermark") == "x"


def test_delivered_records_looks_up_the_batch_by_primary_key_not_the_whole_log(
    store: SqlStateStore, backend: str
) -> None:
    """A batch's lookup must not read the log end to end: PostgreSQL priced 2,000 key lookups
    above a scan of a 100,000-row log, and SQLite's planner would take the destination index."""
    store.record_deliveries(
        [DeliveryOutcome(f"r{i:07d}", "warehouse", "delivered") for i in range(20000)]
        + [DeliveryOutcome("r0000042", "archive", "delivered")]
    )
    batch = [f"new{i}" for i in range(2000)] + ["r0000042"]
    # First with the statistics of the empty table the migration made (as while a log grows
    # fast), then with fresh ones.
    for analyze in (False, True):
        with store.engine.connect() as conn:
            if analyze and backend == "postgresql":
                conn.exec_driver_sql("ANALYZE delivery_log")
                conn.commit()
            elif analyze:
                conn.exec_driver_sql("ANALYZE")
                conn.commit()
            if backend == "postgresql":
                # Parallel plans made as cheap as they go: the lookup must still not start
                # workers (under load the planner chose them for every batch).
                for setting in ("parallel_setup_cost", "parallel_tuple_cost"):
                    conn.exec_driver_sql(f"SET {setting} = 0")
                for setting in ("min_parallel_table_scan_size", "min_parallel_index_scan_size"):
                    conn.exec_driver_sql(f"SET {setting} = 0")
            plan = "\n".join(
                str(row[-1])
                for row in store._select_delivered(conn, batch, "warehouse", explain=True)
            )
            assert store._select_delivered(conn, batch, "warehouse") == [("r0000042",)]
            assert store._select_delivered(conn, ["r0000043"], "archive") == []
        if backend == "postgresql":
            assert "idx_delivery_record_id" in plan, plan
            assert "Seq Scan" not in plan and "idx_delivery_destination" not in plan, plan
            assert "Gather" not in plan, plan
        else:
            assert "SEARCH d USING INDEX" in plan, plan
            assert "(record_id=? AND destination_id=?)" in plan, plan
