"""The state store in SQL: one implementation, written with SQLAlchemy Core, for both dialects.

The ``sqlite`` (embedded) and ``postgresql`` (scale-out) backends only build an
:class:`~sqlalchemy.Engine` and hand it to :class:`SqlStateStore`; every query lives here, so the
two backends cannot drift apart. The dialects differ in three places only, each kept in one
helper: the upsert construct (``INSERT ... ON CONFLICT``, see :meth:`SqlStateStore._insert`),
``IN`` over a batch of keys (an array on PostgreSQL, ``json_each`` on SQLite, see
:meth:`SqlStateStore._in`) and the lock that serialises
migrations and config snapshots (a PostgreSQL advisory lock; on SQLite every write transaction is
``BEGIN IMMEDIATE``, set up by the backend, see :data:`WRITE_OPTION`). One more is a matter of
speed, not of SQL: the accounting's counts are kept by triggers, as counters on SQLite (see
:data:`_SQLITE_COUNTS_DDL`) and as deltas summed when read on PostgreSQL (see :data:`_PG_DELTAS`).

Idempotency (see :mod:`dps.state.base` for why): every write is an upsert on its natural key, so a
replayed batch changes nothing it already changed:

- ``validation_cache``: ``INSERT ... ON CONFLICT (key) DO UPDATE ... WHERE expires_at <= now``;
  one statement inserts a new key or takes over an expired one, and on PostgreSQL the conflicting
  row is locked and the guard re-checked, so of two instances racing for a key exactly one wins.
  The owners are then read back and compared with each candidate's origin.
- ``duplicates``, ``validation_failures``, ``lineage``: ``ON CONFLICT DO NOTHING``.
- ``delivery_log``: upsert guarded by ``status <> 'delivered'`` (never downgraded).
- ``source_offsets``: upsert guarded by ``excluded.offset > offset``; the records read are added
  only when the offset moves, so a replayed commit adds nothing.
- ``dlq_entries``: the entry id is a hash of the natural key, so the primary key *is* the natural
  key (including a NULL ``destination_id``, which a composite unique constraint would not catch).

Migrations: :data:`MIGRATIONS` is the ordered list of versioned steps. A fresh database gets
``metadata.create_all`` (the metadata always describes the newest schema) and is stamped with every
step; an existing one runs the steps after its version through alembic's ``Operations`` API. So a
new step changes :data:`metadata` *and* appends a step that makes the same change to an existing
database (SQLite alters little in place: use ``op.batch_alter_table`` there). ``migrate`` runs in
one transaction under a lock, so two processes starting at once are safe, and it is a no-op when
the database is current.

All timestamps are computed in Python (UTC), never by the server, so SQLite and PostgreSQL behave
the same and tests can move the clock (:func:`_utcnow`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import operator
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects import sqlite as sqlite_dialect

from dps.core.errors import ConfigError, TransientError
from dps.core.record import decode, lineage_summary
from dps.state.base import (
    DedupeCandidate,
    DeliveryError,
    DeliveryOutcome,
    DlqEntry,
    DlqFilter,
    JobRunConflict,
    StateStore,
    StoredDlqEntry,
    ValidationFailure,
)

if TYPE_CHECKING:
    from alembic.operations import Operations

_T = TypeVar("_T")
#: A result row of any width.
_Row = sa.Row[*tuple[Any, ...]]

#: Execution option set on write transactions; the SQLite backend's ``begin`` listener turns it
#: into ``BEGIN IMMEDIATE`` so that a writer takes the file's write lock up front (waiting up to
#: ``busy_timeout``) instead of failing when a read transaction has to be upgraded.
WRITE_OPTION = "dps_write"

#: DLQ entry statuses.
DLQ_STATUSES = ("open", "replayed", "purged")

#: The first key of PostgreSQL advisory locks taken by the state store ("DPS" in ASCII).
_LOCK_CLASS = 0x445053

#: PostgreSQL deadlock and serialization failures: the transaction is retried this many times.
_MAX_ATTEMPTS = 4
_RETRY_SQLSTATES = frozenset({"40P01", "40001"})


def _utcnow() -> datetime:
    """The current time; the one clock of the state store (tests replace it)."""
    return datetime.now(UTC)


def _from_epoch(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _epoch(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def json_dumps(value: Any) -> str:
    """The JSON serializer the backends give the engine: details may hold datetimes or paths."""
    return json.dumps(value, default=str, separators=(",", ":"), ensure_ascii=False)


def _json_array(values: list[Any]) -> str:
    """A batch as a JSON array bound as one parameter (read with ``json_each`` by SQLite)."""
    return _json_encode(values).decode()


_json_encode = msgspec.json.Encoder().encode


@functools.lru_cache(maxsize=64)
def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@functools.lru_cache(maxsize=64)
def _sqlite_text(value: datetime) -> str:
    # SQLAlchemy's own SQLite DATETIME format: fixed width, so text order is time order.
    return _utc(value).strftime("%Y-%m-%d %H:%M:%S.%f")


class UtcDateTime(sa.TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on both dialects.

    PostgreSQL stores ``timestamp with time zone`` (so the manual's ``timestamp > now() -
    interval '1 hour'`` works). SQLite has no time zones: values are stored as naive UTC text in
    SQLAlchemy's DATETIME format (which sorts and compares correctly, also against SQLite's
    ``datetime('now')``) and read back as aware UTC datetimes. The conversion is cached because a
    batch binds the same timestamp on every row: formatting it once per row was the largest
    cost of a 1000-record dedupe claim on SQLite.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.String(26))
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        return _sqlite_text(value) if dialect.name == "sqlite" else _utc(value)

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        assert isinstance(value, datetime)
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


# SQLite only makes a column an alias of the rowid (auto-increment) when it is INTEGER, not BIGINT.
_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# JSONB on PostgreSQL so operators can query details (``details->>'rule'``) with indexes.
_Json = sa.JSON().with_variant(pg.JSONB(), "postgresql")

metadata = sa.MetaData()

schema_version_table = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("applied_at", UtcDateTime, nullable=False),
)

# Alpha's dedupe cache. The constraint and index names are the ones the manual's "Database
# Maintenance" section re-indexes (REINDEX INDEX idx_validation_cache_key / _timestamp).
validation_cache = sa.Table(
    "validation_cache",
    metadata,
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("origin", sa.Text, nullable=False),
    sa.Column("record_id", sa.Text, nullable=False),
    sa.Column("source_id", sa.Text, nullable=False),
    sa.Column("timestamp", UtcDateTime, nullable=False),
    sa.Column("expires_at", UtcDateTime, nullable=False),
    sa.PrimaryKeyConstraint("key", name="idx_validation_cache_key"),
    # On expires_at, not timestamp: it is what purging expired keys scans.
    sa.Index("idx_validation_cache_timestamp", "expires_at"),
)

duplicates = sa.Table(
    "duplicates",
    metadata,
    sa.Column("source_id", sa.Text, nullable=False),
    sa.Column("origin", sa.Text, nullable=False),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("record_id", sa.Text, nullable=False),
    sa.Column("timestamp", UtcDateTime, nullable=False),
    sa.PrimaryKeyConstraint("source_id", "origin", name="pk_duplicates"),
)

validation_failures = sa.Table(
    "validation_failures",
    metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("source_id", sa.Text, nullable=False),
    sa.Column("record_id", sa.Text, nullable=False),
    sa.Column("origin", sa.Text, nullable=False),
    sa.Column("error_code", sa.Text, nullable=False),
    sa.Column("field", sa.Text, nullable=True),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("timestamp", UtcDateTime, nullable=False),
    sa.Index("idx_validation_failures_timestamp", "timestamp"),
)
# One row per failed check of one record read at one position; ``field`` is part of the key
# (a record missing two required fields fails twice) and NULL-safe through coalesce, because a
# unique constraint never sees two NULLs as equal.
sa.Index(
    "uq_validation_failures_natural",
    validation_failures.c.record_id,
    validation_failures.c.origin,
    validation_failures.c.error_code,
    sa.func.coalesce(validation_failures.c.field, ""),
    unique=True,
)


def _dlq_v3_columns() -> list[sa.Column[Any]]:
    # Schema version 3: what saw the entry, and its attempt history (see DlqEntry).
    return [
        sa.Column("stage", sa.Text, nullable=True),
        sa.Column("correlation_id", sa.Text, nullable=True),
        sa.Column("attempt_history", _Json, nullable=True),
        sa.Column("config_version", sa.Text, nullable=True),
        sa.Column("rule_versions", _Json, nullable=True),
    ]


dlq_entries = sa.Table(
    "dlq_entries",
    metadata,
    sa.Column("entry_id", sa.String(32), primary_key=True),
    sa.Column("module", sa.Text, nullable=False),
    sa.Column("record_id", sa.Text, nullable=False),
    sa.Column("source_id", sa.Text, nullable=False),
    sa.Column("origin", sa.Text, nullable=False),
    sa.Column("destination_id", sa.Text, nullable=True),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("error", sa.Text, nullable=False),
    sa.Column("error_class", sa.Text, nullable=False),
    sa.Column("retry_eligible", sa.Boolean, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    *_dlq_v3_columns(),
    sa.Index("idx_dlq_entries_status", "status", "module", "created_at"),
)

# Entries past DLQ_RETENTION_DAYS, moved here by the gamma_dlq_cleanup job: the same columns,
# plus when they were archived.
dlq_entries_archive = sa.Table(
    "dlq_entries_archive",
    metadata,
    *[
        sa.Column(c.name, c.type, nullable=c.nullable, primary_key=c.primary_key)
        for c in dlq_entries.columns
    ],
    sa.Column("archived_at", UtcDateTime, nullable=False),
    sa.Index("idx_dlq_entries_archive_created", "module", "created_at"),
)

# Failed delivery attempts, for /admin/destinations/<id>/errors?since=1h (Runbook C.3).
delivery_errors = sa.Table(
    "delivery_errors",
    metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("destination_id", sa.Text, nullable=False),
    sa.Column("error_class", sa.Text, nullable=False),
    sa.Column("error", sa.Text, nullable=False),
    sa.Column("records", sa.Integer, nullable=False),
    sa.Column("timestamp", UtcDateTime, nullable=False),
    sa.Index("idx_delivery_errors_destination", "destination_id", "timestamp"),
)


def _delivery_v5_columns() -> list[sa.Column[Any]]:
    # Schema version 5: the record's lineage summary, written with its delivery outcome (see
    # dps.core.record.lineage_summary). Comma-separated ids (rule ids and enrichment source names
    # are identifiers: no commas), NULL when none; the score as a 4-byte REAL on PostgreSQL.
    return [
        sa.Column("rules", sa.Text, nullable=True),
        sa.Column("enrichment", sa.Text, nullable=True),
        sa.Column("quality_score", sa.REAL, nullable=True),
    ]


# Gamma's delivery tracking; idx_delivery_record_id / idx_delivery_destination are the manual's
# index names (its "Index Maintenance" REINDEX commands). Each row also carries the record's
# lineage summary (schema version 5): one row per record and destination is what lineage costs.
delivery_log = sa.Table(
    "delivery_log",
    metadata,
    sa.Column("record_id", sa.Text, nullable=False),
    sa.Column("destination_id", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("timestamp", UtcDateTime, nullable=False),
    *_delivery_v5_columns(),
    sa.PrimaryKeyConstraint("record_id", "destination_id", name="idx_delivery_record_id"),
    sa.Index("idx_delivery_destination", "destination_id", "status"),
)
#: Schema version 5: the lineage export (``/api/export?start=&end=``, a time range in time
#: order), delivery-log retention and the manual's D.2 "last hour" counts read by time. A batch
#: shares one timestamp, so PostgreSQL's B-tree deduplication keeps it at ~8 bytes a row.
idx_delivery_timestamp = sa.Index("idx_delivery_timestamp", delivery_log.c.timestamp)

source_offsets = sa.Table(
    "source_offsets",
    metadata,
    sa.Column("source_id", sa.Text, nullable=False),
    sa.Column("position_key", sa.Text, nullable=False),
    sa.Column("offset", sa.BigInteger, nullable=False),
    sa.Column("records_read", sa.BigInteger, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.PrimaryKeyConstraint("source_id", "position_key", name="pk_source_offsets"),
)


#: Small named values a source keeps between runs: an incremental-fetch watermark, a cursor.
source_state = sa.Table(
    "source_state",
    metadata,
    sa.Column("source_id", sa.Text, nullable=False),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.PrimaryKeyConstraint("source_id", "key", name="pk_source_state"),
)


def _audit_columns(*, autoincrement: bool) -> list[sa.Column[Any]]:
    # audit_log_archive has the same columns in the same order, so the manual's
    # ``INSERT INTO audit_log_archive SELECT * FROM audit_log WHERE ...`` works verbatim.
    return [
        sa.Column("id", _BigId, primary_key=True, autoincrement=autoincrement),
        sa.Column("timestamp", UtcDateTime, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("target", sa.Text, nullable=False),
        sa.Column("details", _Json, nullable=True),
        # Since schema version 4: the hash chain (see SqlStateStore.append_audit).
        *_audit_chain_columns(),
    ]


def _audit_chain_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("prev_hash", sa.String(64), nullable=True),
        sa.Column("entry_hash", sa.String(64), nullable=True),
    ]


#: The newest entry of the audit hash chain (one row, ``id`` 1). Kept in the same transaction as
#: each append, so deleting the newest entries of ``audit_log`` is detected too.
audit_chain_head = sa.Table(
    "audit_chain_head",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("last_id", _BigId, nullable=False),
    sa.Column("last_hash", sa.String(64), nullable=False),
    sa.Column("entries", _BigId, nullable=False),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    *_audit_columns(autoincrement=True),
    sa.Index("idx_audit_log_timestamp", "timestamp"),
)
audit_log_archive = sa.Table("audit_log_archive", metadata, *_audit_columns(autoincrement=False))

lineage = sa.Table(
    "lineage",
    metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("record_id", sa.Text, nullable=False),
    sa.Column("stage", sa.Text, nullable=False),
    sa.Column("action", sa.Text, nullable=False),
    sa.Column("details", _Json, nullable=True),
    # A hash of (stage, action, details): the same event written twice by a replay is kept once.
    sa.Column("event_key", sa.String(32), nullable=False),
    sa.Column("timestamp", UtcDateTime, nullable=False),
    sa.UniqueConstraint("record_id", "event_key", name="uq_lineage_event"),
)

job_runs = sa.Table(
    "job_runs",
    metadata,
    sa.Column("run_id", sa.String(32), primary_key=True),
    sa.Column("job_name", sa.Text, nullable=False),
    sa.Column("trigger", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("started_at", UtcDateTime, nullable=False),
    sa.Column("finished_at", UtcDateTime, nullable=True),
    sa.Column("records", sa.BigInteger, nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    # Since schema version 4: what the job wrote while it ran (``/admin/jobs/<job>/logs``).
    sa.Column("log", sa.Text, nullable=True),
    sa.Index("idx_job_runs_job_name", "job_name", "started_at"),
)
#: At most one RUNNING run per job, whichever control instance starts it (schema version 4).
uq_job_runs_running = sa.Index(
    "uq_job_runs_running",
    job_runs.c.job_name,
    unique=True,
    sqlite_where=sa.text("status = 'RUNNING'"),
    postgresql_where=sa.text("status = 'RUNNING'"),
)

config_versions = sa.Table(
    "config_versions",
    metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("module", sa.Text, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("checksum", sa.Text, nullable=False),
    sa.Column("content", sa.Text, nullable=False),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.UniqueConstraint("module", "version", name="uq_config_versions_module_version"),
)


def audit_entry_hash(
    prev_hash: str,
    entry_id: int,
    timestamp: datetime,
    actor: str,
    action: str,
    target: str,
    details: dict[str, Any] | None,
) -> str:
    """The hash that chains an audit entry to the one before it (sha256, hex)."""
    canonical = json.dumps(
        [entry_id, _sqlite_text(_utc(timestamp)), actor, action, target, details or {}],
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(f"{prev_hash}\n{canonical}".encode()).hexdigest()


def _lineage_columns(row: dict[str, Any]) -> dict[str, Any]:
    """A delivery-log row's lineage summary as the API shows it: lists, and a rounded score.

    (PostgreSQL's 4-byte REAL reads back as ``0.8500000238418579``; six decimals is what it
    holds.)
    """
    row["rules"] = row["rules"].split(",") if row["rules"] else []
    row["enrichment"] = row["enrichment"].split(",") if row["enrichment"] else []
    if row["quality_score"] is not None:
        row["quality_score"] = round(float(row["quality_score"]), 6)
    return row


#: The delivery log's columns as ``record_deliveries`` builds its rows (the timestamp is shared).
_DELIVERY_COLUMNS = (
    "record_id",
    "destination_id",
    "status",
    "attempts",
    "error",
    "rules",
    "enrichment",
    "quality_score",
)


#: PostgreSQL: the delivery log's rows as ``record_deliveries`` copies them, in binary.
_COPY_DELIVERIES_PG = (
    f"COPY delivery_log ({', '.join(_DELIVERY_COLUMNS)}, timestamp) FROM STDIN (FORMAT BINARY)"
)
_DELIVERY_PG_TYPES = (
    *("text", "text", "text", "int4", "text", "text", "text", "float4"),  # _DELIVERY_COLUMNS
    "timestamptz",
)
#: Batches upserted after one whose ``COPY`` found a row already in the delivery log.
_UPSERT_DELIVERIES_AFTER_CONFLICT = 16


def _joined(cache: dict[tuple[str, ...], str | None], ids: Sequence[str]) -> str | None:
    """``ids`` as the delivery log stores them (comma-separated, None when empty), memoised."""
    key = ids if isinstance(ids, tuple) else tuple(ids)
    try:
        return cache[key]
    except KeyError:
        text = cache[key] = ",".join(key) or None
        return text


def _summary_of_body(body: bytes | None) -> dict[str, Any] | None:
    """The lineage summary in the envelope a DLQ entry keeps (None if the body is no record)."""
    try:
        record = decode(body or b"")
    except ValueError:
        return None  # a raw line that never parsed: no rules touched it
    rules, enrichment, score = lineage_summary(record)
    if not rules and not enrichment and score is None:
        return None
    return {"rules": list(rules), "enrichment": list(enrichment), "quality_score": score}


# -- migrations -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step: ``upgrade`` brings a database at ``version - 1`` to ``version``."""

    version: int
    description: str
    upgrade: Callable[[Operations], None]


def _v1_initial(op: Operations) -> None:
    # Only reached by a database with no version, which migrate() builds with create_all anyway;
    # kept so the list reads as the schema's history.
    metadata.create_all(op.get_bind())


def _v2_source_state(op: Operations) -> None:
    source_state.create(op.get_bind(), checkfirst=True)


def _v3_dlq_operations(op: Operations) -> None:
    bind = op.get_bind()
    existing = {c["name"] for c in sa.inspect(bind).get_columns("dlq_entries")}
    with op.batch_alter_table("dlq_entries") as batch:
        for column in _dlq_v3_columns():
            if column.name not in existing:
                batch.add_column(column)
    dlq_entries_archive.create(bind, checkfirst=True)
    delivery_errors.create(bind, checkfirst=True)


def _v4_operations_plane(op: Operations) -> None:
    # Written with existence checks, so it applies whatever other step ran before it.
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    for table in ("audit_log", "audit_log_archive"):
        existing = {c["name"] for c in inspector.get_columns(table)}
        with op.batch_alter_table(table) as batch:
            for column in _audit_chain_columns():
                if column.name not in existing:
                    batch.add_column(column)
    if "log" not in {c["name"] for c in inspector.get_columns("job_runs")}:
        with op.batch_alter_table("job_runs") as batch:
            batch.add_column(sa.Column("log", sa.Text, nullable=True))
    audit_chain_head.create(bind, checkfirst=True)
    # Close runs left RUNNING by an older version, then let the index guard new ones.
    op.execute("UPDATE job_runs SET status = 'FAILED' WHERE status = 'RUNNING'")
    uq_job_runs_running.create(bind, checkfirst=True)


def _v5_delivery_lineage(op: Operations) -> None:
    # Nullable columns without a default: a metadata-only change on PostgreSQL (no table
    # rewrite, however big the delivery log), ADD COLUMN on SQLite. Older rows keep NULLs.
    existing = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("delivery_log")}
    missing = [c for c in _delivery_v5_columns() if c.name not in existing]
    if missing:
        with op.batch_alter_table("delivery_log") as batch:
            for column in missing:
                batch.add_column(column)
    # Blocks writes to delivery_log while it builds: on a big PostgreSQL table create it first
    # with CREATE INDEX CONCURRENTLY (docs/operations.md); it is then skipped here.
    idx_delivery_timestamp.create(op.get_bind(), checkfirst=True)


# SQLite's accounting counters: one row per count (``kind``, ``key``), kept in the same
# transaction as the rows they count, so they always equal the COUNT(*) they replace. Those
# counts scan tables that grow with the run (the delivered count took 1.3 s at 10 million rows,
# and the control service reads it every few seconds). Triggers keep them, except for the
# delivery log's inserts, one per delivered record: a trigger there cost as much as the row's
# two secondary indexes, so ``record_deliveries`` counts the rows it inserted and adds them in
# one statement per batch (any other writer's inserts into delivery_log are not counted).
# PostgreSQL keeps counting (in parallel, and without every writer serialising on a hot counter
# row): see ``SqlStateStore.accounting``.
#: Add ``n`` to the count (``kind``, ``key``): the statement of the triggers and of the batch.
_ADD_COUNT = (
    "INSERT INTO accounting_counts (kind, key, n) VALUES ({kind}, {key}, {n})"
    " ON CONFLICT (kind, key) DO UPDATE SET n = n + excluded.n"
)
_SQLITE_COUNTS_DDL: tuple[str, ...] = (
    "CREATE TABLE IF NOT EXISTS accounting_counts ("
    " kind TEXT NOT NULL, key TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (kind, key)"
    ") WITHOUT ROWID",
    *(
        f"CREATE TRIGGER IF NOT EXISTS {name} AFTER {event} BEGIN"
        f" {_ADD_COUNT.format(kind=repr(kind), key=key, n=delta)}; END"
        for name, event, kind, key, delta in (
            (
                "trg_count_delivered_update",
                "UPDATE OF status ON delivery_log"
                " WHEN (OLD.status = 'delivered') <> (NEW.status = 'delivered')",
                "delivered",
                "NEW.destination_id",
                "CASE NEW.status WHEN 'delivered' THEN 1 ELSE -1 END",
            ),
            (
                "trg_count_delivered_delete",
                "DELETE ON delivery_log WHEN OLD.status = 'delivered'",
                "delivered",
                "OLD.destination_id",
                -1,
            ),
            ("trg_count_dlq_insert", "INSERT ON dlq_entries", "dlq", "NEW.module", 1),
            ("trg_count_dlq_delete", "DELETE ON dlq_entries", "dlq", "OLD.module", -1),
            ("trg_count_duplicates_insert", "INSERT ON duplicates", "duplicates", "''", 1),
            ("trg_count_duplicates_delete", "DELETE ON duplicates", "duplicates", "''", -1),
        )
    ),
)
#: The accounting's counts as ``(kind, key, n)`` rows counted from the tables: what the
#: counters (SQLite) and the deltas (PostgreSQL) start from on a database that had rows before.
_COUNTS_FROM_ROWS = (
    "SELECT 'delivered', destination_id, count(*) FROM delivery_log"
    " WHERE status = 'delivered' GROUP BY destination_id"
    " UNION ALL SELECT 'dlq', module, count(*) FROM dlq_entries GROUP BY module"
    " UNION ALL SELECT 'duplicates', '', count(*) FROM duplicates"
)


def _create_sqlite_counts(conn: sa.Connection) -> None:
    """The counters and their triggers, seeded from the rows already there (SQLite only)."""
    if conn.dialect.name != "sqlite":
        return
    for ddl in _SQLITE_COUNTS_DDL:
        conn.exec_driver_sql(ddl)
    conn.exec_driver_sql("DELETE FROM accounting_counts")
    conn.exec_driver_sql(f"INSERT INTO accounting_counts (kind, key, n) {_COUNTS_FROM_ROWS}")


def _v6_accounting_counts(op: Operations) -> None:
    _create_sqlite_counts(op.get_bind())


def _v7_delivered_counted_per_batch(op: Operations) -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS trg_count_delivered_insert")


# PostgreSQL's accounting: the same counts, kept as deltas that statement-level triggers append
# (one row per statement and key, from the statement's transition tables) and that a read sums.
# Only inserts, so writers never wait on a hot counter row, as one row per count would make
# every Gamma instance do; and the read no longer scans the delivery log (33 ms at 100,000
# rows, growing with the log, read every few seconds by the control service). The triggers
# cost the delivery log's writes about 0.5 µs of server CPU per row. ``accounting`` folds the
# deltas into one row per count when they pile up. Unlike SQLite's counters, every writer's
# rows are counted, an operator's included.
_PG_DELTAS = (
    # (trigger, table, event, transition tables, what one statement adds)
    (
        "trg_count_delivered_insert",
        "delivery_log",
        "INSERT",
        "NEW TABLE AS new_rows",
        "SELECT 'delivered', destination_id, count(*) FROM new_rows"
        " WHERE status = 'delivered' GROUP BY destination_id",
    ),
    (
        "trg_count_delivered_update",
        "delivery_log",
        "UPDATE",
        "OLD TABLE AS old_rows NEW TABLE AS new_rows",
        "SELECT 'delivered', key, sum(n) FROM ("
        " SELECT destination_id AS key, 1 AS n FROM new_rows WHERE status = 'delivered'"
        " UNION ALL SELECT destination_id, -1 FROM old_rows WHERE status = 'delivered'"
        ") AS moved GROUP BY key HAVING sum(n) <> 0",
    ),
    (
        "trg_count_delivered_delete",
        "delivery_log",
        "DELETE",
        "OLD TABLE AS old_rows",
        "SELECT 'delivered', destination_id, -count(*) FROM old_rows"
        " WHERE status = 'delivered' GROUP BY destination_id",
    ),
    (
        "trg_count_dlq_insert",
        "dlq_entries",
        "INSERT",
        "NEW TABLE AS new_rows",
        "SELECT 'dlq', module, count(*) FROM new_rows GROUP BY module",
    ),
    (
        "trg_count_dlq_delete",
        "dlq_entries",
        "DELETE",
        "OLD TABLE AS old_rows",
        "SELECT 'dlq', module, -count(*) FROM old_rows GROUP BY module",
    ),
    (
        "trg_count_duplicates_insert",
        "duplicates",
        "INSERT",
        "NEW TABLE AS new_rows",
        "SELECT 'duplicates', '', count(*) FROM new_rows HAVING count(*) > 0",
    ),
    (
        "trg_count_duplicates_delete",
        "duplicates",
        "DELETE",
        "OLD TABLE AS old_rows",
        "SELECT 'duplicates', '', -count(*) FROM old_rows HAVING count(*) > 0",
    ),
)
#: The deltas summed into one row per count, in one statement: rows appended meanwhile by
#: other transactions are not in its snapshot and stay as they are.
_PG_FOLD_DELTAS = (
    "WITH gone AS (DELETE FROM accounting_deltas RETURNING kind, key, n)"
    " INSERT INTO accounting_deltas (kind, key, n)"
    " SELECT kind, key, sum(n) FROM gone GROUP BY kind, key HAVING sum(n) <> 0"
)
#: How many delta rows ``accounting`` lets pile up before it folds them.
_PG_DELTAS_KEPT = 1000


def _v8_postgresql_accounting_deltas(op: Operations) -> None:
    _create_pg_deltas(op.get_bind())


def _create_pg_deltas(conn: sa.Connection) -> None:
    """The deltas table and its triggers, seeded from the rows already there (PostgreSQL)."""
    if conn.dialect.name != "postgresql":
        return
    conn.exec_driver_sql(
        "CREATE TABLE IF NOT EXISTS accounting_deltas"
        " (kind TEXT NOT NULL, key TEXT NOT NULL, n BIGINT NOT NULL)"
    )
    for trigger, table, event, tables, select in _PG_DELTAS:
        function = f"dps_{trigger.removeprefix('trg_')}"
        # SET search_path FROM CURRENT: the function finds accounting_deltas in this schema
        # whatever the search path of the session whose statement fires it (an operator's).
        conn.exec_driver_sql(
            f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql"
            " SET search_path FROM CURRENT AS $$ BEGIN"
            f" INSERT INTO accounting_deltas (kind, key, n) {select}; RETURN NULL; END $$"
        )
        conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {trigger} ON {table}")
        conn.exec_driver_sql(
            f"CREATE TRIGGER {trigger} AFTER {event} ON {table} REFERENCING {tables}"
            f" FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
        )
    # Seeded after the triggers exist: creating them locked the tables against writers until
    # this transaction commits, so no row is counted twice or missed.
    conn.exec_driver_sql("DELETE FROM accounting_deltas")
    conn.exec_driver_sql(f"INSERT INTO accounting_deltas (kind, key, n) {_COUNTS_FROM_ROWS}")


#: The schema's history, oldest first. Append a step (and change ``metadata``) to evolve it.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1, "Initial schema: dedupe cache, DLQ, delivery log, offsets, control tables.", _v1_initial
    ),
    Migration(2, "source_state: watermarks and cursors of sources.", _v2_source_state),
    Migration(
        3,
        "DLQ operations: stage, correlation id, attempt history, config and rule versions; "
        "dlq_entries_archive; delivery_errors.",
        _v3_dlq_operations,
    ),
    Migration(
        4,
        "Operations plane: audit hash chain (prev_hash, entry_hash, audit_chain_head); job run "
        "logs.",
        _v4_operations_plane,
    ),
    Migration(
        5,
        "Lineage: delivery_log.rules, enrichment, quality_score (the record's lineage "
        "summary); idx_delivery_timestamp.",
        _v5_delivery_lineage,
    ),
    Migration(
        6,
        "Accounting counters kept by triggers (SQLite): delivered records per destination, DLQ "
        "entries per module, duplicates.",
        _v6_accounting_counts,
    ),
    Migration(
        7,
        "SQLite: the delivered count of the delivery log's inserts is added once per batch by "
        "record_deliveries, not by a trigger per row.",
        _v7_delivered_counted_per_batch,
    ),
    Migration(
        8,
        "PostgreSQL: accounting counts kept as deltas by statement-level triggers (delivered "
        "records per destination, DLQ entries per module, duplicates), summed when read.",
        _v8_postgresql_accounting_deltas,
    ),
)
LATEST_VERSION = MIGRATIONS[-1].version


# -- the store --------------------------------------------------------------------------------
class _Prepared:
    """A statement compiled once for the engine's dialect, run as a driver-level ``executemany``.

    For the per-batch writes of the hot path (a dedupe claim, the delivery log: thousands of
    rows a batch) SQLAlchemy's per-row parameter processing cost more than the database's own
    work. Rows are given as dicts; the bind processors of the columns' types (``UtcDateTime``)
    are applied here, so the values stored are those a compiled ``execute`` would store.
    """

    def __init__(self, statement: Any, dialect: sa.Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql: str = compiled.string
        self.positional: bool = bool(compiled.positional)
        #: SQLite: the statement as ``(head, row, tail)`` around its one ``VALUES`` row, for
        #: :meth:`insert_rows`; None when it has no such row.
        self._values = _values_parts(self.sql) if dialect.name == "sqlite" else None
        self.names: list[str] = list(compiled.positiontup or []) if self.positional else []
        binds = compiled.binds
        #: The statement's own values (``WHERE status != 'delivered'``), not given per row.
        self.constants = {name: b.value for name, b in binds.items() if not b.required}
        self.processors: dict[str, Callable[[Any], Any]] = {}
        for name, bind in binds.items():
            processor = bind.type.bind_processor(dialect)
            if processor is None or not bind.required:
                continue
            if dialect.name == "sqlite" and isinstance(bind.type, sa.Float):
                # Only a float() of the value: the hot path's floats (quality scores) are floats
                # already, and a REAL column stores an int as a float anyway. Applying it took a
                # copy of every delivery-log row (0.5 µs each).
                continue
            self.processors[name] = processor

    def params(
        self, rows: Sequence[dict[str, Any]], shared: dict[str, Any] | None = None
    ) -> list[Any]:
        """The driver's parameters: a tuple (positional dialects) or a dict per row.

        ``shared`` holds values that are the same for every row (a batch's timestamp): their
        bind processors run once, not once per row.
        """
        fixed = self._fixed(shared)
        per_row = [(k, p) for k, p in self.processors.items() if k not in fixed]
        if per_row:
            processed = []
            for row in rows:
                row = dict(row)
                for name, processor in per_row:
                    row[name] = processor(row[name])
                processed.append(row)
            rows = processed
        if fixed:
            rows = [fixed | row for row in rows]
        if not self.positional:
            return list(rows)
        names = self.names
        if len(names) == 1:
            return [(row[names[0]],) for row in rows]
        pick = operator.itemgetter(*names)  # the tuple is built in C, not a generator per row
        return [pick(row) for row in rows]

    def tuple_params(
        self,
        rows: Sequence[tuple[Any, ...]],
        columns: Sequence[str],
        shared: dict[str, Any] | None = None,
    ) -> list[Any]:
        """:meth:`params` of rows given as tuples in ``columns`` order: no dict per row, and
        on a positional dialect one C-level pick per row."""
        fixed = self._fixed(shared)
        per_row = [(columns.index(k), p) for k, p in self.processors.items() if k not in fixed]
        if per_row:
            rows = [_processed(row, per_row) for row in rows]
        if not self.positional:
            return [fixed | dict(zip(columns, row, strict=True)) for row in rows]
        tail_names = [name for name in dict.fromkeys(self.names) if name not in columns]
        tail = tuple(fixed[name] for name in tail_names)
        at = {name: i for i, name in enumerate([*columns, *tail_names])}
        order = [at[name] for name in self.names]
        if len(order) == 1:
            return [((row + tail)[order[0]],) for row in rows]
        pick = operator.itemgetter(*order)
        return [pick(row + tail) for row in rows]

    def _fixed(self, shared: dict[str, Any] | None) -> dict[str, Any]:
        """The values that are the same for every row, through their bind processors."""
        fixed = dict(self.constants)
        for name, value in (shared or {}).items():
            processor = self.processors.get(name)
            fixed[name] = processor(value) if processor is not None else value
        return fixed

    def executemany(
        self,
        conn: sa.Connection,
        rows: Sequence[dict[str, Any]],
        shared: dict[str, Any] | None = None,
    ) -> int:
        """Run the statement once per row; the number of rows it changed."""
        return conn.exec_driver_sql(self.sql, self.params(rows, shared)).rowcount

    def executemany_tuples(
        self,
        conn: sa.Connection,
        rows: Sequence[tuple[Any, ...]],
        columns: Sequence[str],
        shared: dict[str, Any] | None = None,
    ) -> int:
        """:meth:`executemany` of rows given as tuples in ``columns`` order."""
        return conn.exec_driver_sql(self.sql, self.tuple_params(rows, columns, shared)).rowcount

    def insert_rows(
        self,
        conn: sa.Connection,
        rows: Sequence[tuple[Any, ...]],
        columns: Sequence[str],
        shared: dict[str, Any] | None = None,
    ) -> int:
        """:meth:`executemany_tuples` of an ``INSERT``, as multi-row ``VALUES`` on SQLite.

        SQLite's ``executemany`` binds and steps the statement once per row; one statement
        over up to :data:`_ROWS_PER_INSERT` rows does the same inserts for about two thirds of
        the CPU (a delivery-log row 4.5 -> 3 µs, measured alone). The number of rows changed is
        the same (rows an ``ON CONFLICT DO NOTHING`` skips do not count).
        """
        params = self.tuple_params(rows, columns, shared)
        if self._values is None or not self.positional:
            return conn.exec_driver_sql(self.sql, params).rowcount
        return sum(result.rowcount for result in _insert_values(conn, self._values, params))


#: Rows in one multi-row ``INSERT ... VALUES`` on SQLite: 100 rows of up to 9 columns stay
#: within the 999 bound variables of SQLite builds before 3.32. Larger ones measured no faster.
_ROWS_PER_INSERT = 100


def _value_chunks(count: int) -> Iterator[tuple[int, int]]:
    """``(start, size)`` pieces of ``count`` rows: full statements, then the rest in powers of
    two, so that a handful of statement texts (each prepared once and kept in the driver's
    statement cache) serve every batch size."""
    start = 0
    while count - start >= _ROWS_PER_INSERT:
        yield start, _ROWS_PER_INSERT
        start += _ROWS_PER_INSERT
    size = 64
    while start < count:
        if count - start >= size:
            yield start, size
            start += size
        size //= 2


def _insert_values(
    conn: sa.Connection, parts: tuple[str, str, str], rows: Sequence[Sequence[Any]]
) -> Iterator[sa.CursorResult[Any]]:
    """Run the statement split as ``parts`` (:func:`_values_parts`) over ``rows``, as multi-row
    ``VALUES`` in the pieces of :func:`_value_chunks`; each piece's result, in order."""
    for start, size in _value_chunks(len(rows)):
        flat = tuple([value for row in rows[start : start + size] for value in row])
        yield conn.exec_driver_sql(_rows_sql(*parts, size), flat)


@functools.lru_cache(maxsize=256)
def _rows_sql(head: str, row: str, tail: str, size: int) -> str:
    """``head`` + ``size`` copies of the ``row`` of placeholders + ``tail`` (built once each)."""
    return head + ", ".join([row] * size) + tail


def _values_parts(sql: str) -> tuple[str, str, str] | None:
    """``INSERT ... VALUES (?, ?) ON CONFLICT ...`` as ``("INSERT ... VALUES ", "(?, ?)",
    " ON CONFLICT ...")``; None for a statement without one row of plain placeholders."""
    at = sql.find(" VALUES (")
    if at < 0:
        return None
    opened = at + len(" VALUES ")
    closed = sql.find(")", opened)
    row = sql[opened : closed + 1]
    if closed < 0 or row.replace("?", "").replace(",", "").replace(" ", "") != "()":
        return None
    return sql[:opened], row, sql[closed + 1 :]


def _processed(
    row: tuple[Any, ...], processors: list[tuple[int, Callable[[Any], Any]]]
) -> tuple[Any, ...]:
    values = list(row)
    for index, processor in processors:
        values[index] = processor(values[index])
    return tuple(values)


class SqlStateStore(StateStore):
    """The :class:`~dps.state.base.StateStore` over an SQLAlchemy engine (SQLite or PostgreSQL).

    Thread-safe: the engine's pool hands each call its own connection, and the store keeps no
    other mutable state but a hint on how to write the delivery log. Each public write is one
    transaction (one ``executemany`` per table for a batch), retried on a PostgreSQL deadlock;
    a lost connection or a lock that could not be had is raised as
    :class:`~dps.core.errors.TransientError` so callers retry the batch.
    """

    def __init__(self, engine: sa.Engine, *, backend: str | None = None) -> None:
        dialect = engine.dialect.name
        if dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"The state store supports sqlite and postgresql, not {dialect!r}.")
        self._engine = engine
        self._pg = dialect == "postgresql"
        #: Delivery-log batches left to upsert rather than copy (``_record_deliveries_postgresql``;
        #: a hint shared by the store's threads, where a lost update only changes the method).
        self._upsert_deliveries_next = 0
        self._backend = backend or dialect
        self._writer = engine.execution_options(**{WRITE_OPTION: True})
        self._build_statements()

    # -- plumbing ---------------------------------------------------------------------------
    def _insert(self, table: sa.Table) -> Any:
        """``INSERT`` with the dialect's ``ON CONFLICT`` support (same API on both)."""
        return pg.insert(table) if self._pg else sqlite_dialect.insert(table)

    def _in(self, column: sa.ColumnElement[Any], name: str) -> sa.ColumnElement[bool]:
        """``column IN (<the list bound as :name>)``, with one parameter whatever the list's size.

        PostgreSQL binds a text array (``= ANY(:name)``); SQLite binds a JSON array and reads it
        with ``json_each``, which is faster than an expanded ``IN (?, ?, ...)`` and is not bound
        by SQLite's limit on parameters. Bind the list with :meth:`_list_param`.
        """
        if self._pg:
            return column == sa.any_(sa.bindparam(name, type_=pg.ARRAY(sa.Text)))
        json_each = sa.func.json_each(sa.bindparam(name, type_=sa.Text))
        return column.in_(sa.select(sa.literal_column("value")).select_from(json_each))

    def _list_param(self, values: Sequence[str]) -> Any:
        """The value to bind to a parameter of :meth:`_in`."""
        return list(values) if self._pg else _json_array(list(values))

    def _build_statements(self) -> None:
        # Built once: these run per batch, and a prebuilt construct skips the statement
        # construction on every call (SQLAlchemy still caches the compiled SQL by structure).
        vc = validation_cache
        ins = self._insert(vc)
        self._claim = ins.on_conflict_do_update(
            index_elements=[vc.c["key"]],
            set_={
                "origin": ins.excluded.origin,
                "record_id": ins.excluded.record_id,
                "source_id": ins.excluded.source_id,
                "timestamp": ins.excluded.timestamp,
                "expires_at": ins.excluded.expires_at,
            },
            # An expired claim is taken over; ``excluded.timestamp`` is this batch's "now".
            where=vc.c.expires_at <= ins.excluded.timestamp,
        )
        self._owners = sa.select(vc.c["key"], vc.c.origin).where(self._in(vc.c["key"], "keys"))
        self._claim_fast = _Prepared(self._claim, self._engine.dialect)
        #: SQLite: the whole claim as multi-row ``VALUES`` statements of the batch's rows
        #: (``_value_chunks``), answering the keys each claimed (inserted, or taken over when
        #: expired); only the others, a batch's few duplicates and replays, have their owner read
        #: back. Same guard as ``_claim``. Bound values cost less than a JSON array that
        #: ``json_each`` splits and ``json_extract`` reads four times a row (3.4 -> 2.3 µs a key,
        #: measured alone).
        claim_values = _values_parts(
            "INSERT INTO validation_cache"
            " (key, origin, record_id, source_id, timestamp, expires_at)"
            " VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (key) DO UPDATE SET origin = excluded.origin,"
            " record_id = excluded.record_id, source_id = excluded.source_id,"
            " timestamp = excluded.timestamp, expires_at = excluded.expires_at"
            " WHERE validation_cache.expires_at <= excluded.timestamp"
            " RETURNING key"
        )
        assert claim_values is not None
        self._claim_values = claim_values
        self._owners_sql = (
            "SELECT key, origin FROM validation_cache WHERE key IN (SELECT value FROM json_each(?))"
        )
        #: PostgreSQL: the same claim over the batch bound as one jsonb array, in key order (so
        #: that two instances claiming overlapping keys lock them in the same order).
        self._claim_returning_pg = (
            "INSERT INTO validation_cache AS v"
            " (key, origin, record_id, source_id, timestamp, expires_at)"
            " SELECT b.e->>0, b.e->>1, b.e->>2, b.e->>3, %s, %s"
            " FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS b(e, n) ORDER BY b.n"
            " ON CONFLICT (key) DO UPDATE SET origin = excluded.origin,"
            " record_id = excluded.record_id, source_id = excluded.source_id,"
            " timestamp = excluded.timestamp, expires_at = excluded.expires_at"
            " WHERE v.expires_at <= excluded.timestamp"
            " RETURNING key"
        )

        self._add_duplicates = self._insert(duplicates).on_conflict_do_nothing(
            index_elements=[duplicates.c.source_id, duplicates.c.origin]
        )
        # No conflict target: the natural key is an expression index (coalesce on field).
        self._add_failures = self._insert(validation_failures).on_conflict_do_nothing()

        ins = self._insert(source_offsets)
        so = source_offsets.c
        state_ins = self._insert(source_state)
        self._set_source_state = state_ins.on_conflict_do_update(
            index_elements=["source_id", "key"],
            set_={"value": state_ins.excluded.value, "updated_at": state_ins.excluded.updated_at},
        )
        self._commit_offset = ins.on_conflict_do_update(
            index_elements=[so.source_id, so.position_key],
            set_={
                "offset": ins.excluded["offset"],
                "records_read": so.records_read + ins.excluded.records_read,
                "updated_at": ins.excluded.updated_at,
            },
            where=ins.excluded["offset"] > so["offset"],
        )

        ins = self._insert(dlq_entries)
        self._add_dlq = ins.on_conflict_do_update(
            index_elements=[dlq_entries.c.entry_id],
            # A record that fails again after a replay (or a purge) reopens its entry with the
            # new error; a replay of the same write while the entry is open changes nothing.
            set_={
                name: ins.excluded[name]
                for name in (
                    "reason",
                    "error",
                    "error_class",
                    "retry_eligible",
                    "attempts",
                    "body",
                    "status",
                    "updated_at",
                    "stage",
                    "correlation_id",
                    "attempt_history",
                    "config_version",
                    "rule_versions",
                )
            },
            where=dlq_entries.c.status != "open",
        )
        self._add_dlq_fast = _Prepared(self._add_dlq, self._engine.dialect)

        ins = self._insert(delivery_log)
        dl = delivery_log.c
        self._record_deliveries = ins.on_conflict_do_update(
            index_elements=[dl.record_id, dl.destination_id],
            set_={
                "status": ins.excluded.status,
                "attempts": ins.excluded.attempts,
                "error": ins.excluded.error,
                "timestamp": ins.excluded.timestamp,
                "rules": ins.excluded.rules,
                "enrichment": ins.excluded.enrichment,
                "quality_score": ins.excluded.quality_score,
            },
            where=dl.status != "delivered",
        )
        self._record_deliveries_fast = _Prepared(self._record_deliveries, self._engine.dialect)
        #: PostgreSQL: the same upsert over the batch bound as one jsonb array of rows in
        #: _DELIVERY_COLUMNS order. An executemany cost ~7 µs of client CPU and ~10 of the
        #: server's per row (a protocol round of its own each); this, 0.6 and 6.
        self._record_deliveries_pg = (
            "INSERT INTO delivery_log AS d"
            f" ({', '.join(_DELIVERY_COLUMNS)}, timestamp)"
            " SELECT e->>0, e->>1, e->>2, (e->>3)::integer, e->>4, e->>5, e->>6,"
            " (e->>7)::double precision, %s"
            " FROM jsonb_array_elements(%s::jsonb) AS e"
            " ON CONFLICT (record_id, destination_id) DO UPDATE SET"
            + ", ".join(
                f" {column} = excluded.{column}" for column in (*_DELIVERY_COLUMNS[2:], "timestamp")
            )
            + " WHERE d.status <> 'delivered'"
        )
        self._add_deliveries_fast = _Prepared(
            ins.on_conflict_do_nothing(index_elements=[dl.record_id, dl.destination_id]),
            self._engine.dialect,
        )
        # One primary-key lookup per id of the batch. Left to themselves, both planners may read
        # the destination's whole log instead. SQLite takes the destination index; CROSS JOIN
        # keeps the batch's ids as the outer loop. PostgreSQL priced 2,000 key lookups above a
        # scan of the log up to a few hundred thousand rows (20 ms a batch at 100,000 rows, a
        # sixth of the server's work in a NATS benchmark), and with the statistics of a log
        # that grows fast it may take the destination index, reading every delivered row. So
        # the destination and the status are compared as expressions, which no index serves, and
        # sequential scans are off for the lookup's transaction: the primary key is all that is
        # left.
        self._delivered = sa.text(
            "SELECT d.record_id FROM delivery_log AS d WHERE d.record_id = ANY(:record_ids)"
            " AND (d.destination_id || '') = :destination_id AND (d.status || '') = 'delivered'"
            if self._pg
            else "SELECT d.record_id FROM json_each(:record_ids) AS j CROSS JOIN delivery_log AS d"
            " WHERE d.record_id = j.value AND d.destination_id = :destination_id"
            " AND d.status = 'delivered'"
        )

        self._add_lineage = self._insert(lineage).on_conflict_do_nothing(
            index_elements=[lineage.c.record_id, lineage.c.event_key]
        )

    def _write(self, work: Callable[[sa.Connection], _T]) -> _T:
        """Run ``work`` in one write transaction, retrying deadlocks; classify failures."""
        attempt = 1
        while True:
            try:
                with self._writer.begin() as conn:
                    return work(conn)
            except sa_exc.DBAPIError as exc:
                sqlstate = getattr(exc.orig, "sqlstate", None)
                if sqlstate in _RETRY_SQLSTATES and attempt < _MAX_ATTEMPTS:
                    # Another instance holds rows this batch needs; back off briefly and retry.
                    time.sleep(0.005 * attempt)
                    attempt += 1
                    continue
                transient = self._transient(exc)
                if transient is None:
                    raise
                raise transient from exc

    @contextmanager
    def _reading(self) -> Iterator[sa.Connection]:
        """A read transaction (one snapshot on SQLite; READ COMMITTED on PostgreSQL)."""
        try:
            with self._engine.connect() as conn:
                yield conn
        except sa_exc.DBAPIError as exc:
            transient = self._transient(exc)
            if transient is None:
                raise
            raise transient from exc

    def _transient(self, exc: sa_exc.DBAPIError) -> TransientError | None:
        # The database being away (connection refused or lost, SQLite lock held past
        # busy_timeout) is transient: the batch is retried. Anything else is a bug: re-raised.
        if exc.connection_invalidated or isinstance(
            exc, sa_exc.OperationalError | sa_exc.InterfaceError
        ):
            return TransientError(f"The {self._backend} state store is unavailable: {exc.orig}")
        return None

    def _advisory_lock(self, conn: sa.Connection, name: str) -> None:
        """Serialise with other processes on ``name`` until the transaction ends (PostgreSQL)."""
        if self._pg:
            conn.execute(
                sa.text("SELECT pg_advisory_xact_lock(:cls, hashtext(:name))"),
                {"cls": _LOCK_CLASS, "name": name},
            )
        # SQLite: the write transaction already holds the database's write lock.

    # -- lifecycle --------------------------------------------------------------------------
    @property
    def engine(self) -> sa.Engine:
        """The engine (for tests and for operators' tools; modules use the methods)."""
        return self._engine

    def migrate(self) -> int:
        """Create or upgrade the schema to :data:`LATEST_VERSION`; a no-op when it is current."""
        return self._write(self._migrate)

    def _migrate(self, conn: sa.Connection) -> int:
        if self._pg:
            # Keyed on the schema, so pipelines sharing a database in their own schemas don't
            # wait for each other. (SQLite: BEGIN IMMEDIATE already serialises.)
            conn.execute(
                sa.text(
                    "SELECT pg_advisory_xact_lock(:cls, hashtext(coalesce(current_schema(), '')))"
                ),
                {"cls": _LOCK_CLASS},
            )
        current = self._read_version(conn)
        if current > LATEST_VERSION:
            raise ConfigError(
                f"state: the database schema is at version {current}, newer than this dps "
                f"supports ({LATEST_VERSION}); upgrade dps before starting it on this database."
            )
        if current == LATEST_VERSION:
            return current
        now = _utcnow()
        if current == 0:
            metadata.create_all(conn)
            # Not in ``metadata``: each dialect's own DDL (counters, triggers).
            _create_sqlite_counts(conn)
            _create_pg_deltas(conn)
            pending = MIGRATIONS
        else:
            from alembic.operations import Operations
            from alembic.runtime.migration import MigrationContext

            pending = tuple(m for m in MIGRATIONS if m.version > current)
            op = Operations(MigrationContext.configure(conn))
            for step in pending:
                step.upgrade(op)
        conn.execute(
            schema_version_table.insert(),
            [
                {"version": m.version, "description": m.description, "applied_at": now}
                for m in pending
            ],
        )
        return LATEST_VERSION

    def _read_version(self, conn: sa.Connection) -> int:
        if not sa.inspect(conn).has_table(schema_version_table.name):
            return 0
        version = conn.scalar(sa.select(sa.func.max(schema_version_table.c.version)))
        return int(version or 0)

    def schema_version(self) -> int:
        """The schema version the database is at (0 when empty)."""
        with self._reading() as conn:
            return self._read_version(conn)

    def close(self) -> None:
        """Close the pooled connections."""
        self._engine.dispose()

    def describe(self) -> dict[str, Any]:
        """Backend, URL (password hidden) and schema version, for ``dps status``."""
        info: dict[str, Any] = {
            "backend": self._backend,
            "url": self._engine.url.render_as_string(hide_password=True),
        }
        try:
            info["schema_version"] = self.schema_version()
        except TransientError as exc:
            info["error"] = str(exc)
        return info

    # -- alpha --------------------------------------------------------------------------------
    def claim_dedupe_keys(
        self, candidates: Sequence[DedupeCandidate], ttl_seconds: float
    ) -> list[bool]:
        """For each candidate, True when it is a duplicate (see the base class)."""
        if not candidates:
            return []
        now = _utcnow()
        expires_at = now + timedelta(seconds=ttl_seconds)
        # The first candidate of a key is the batch's claimant; later ones with another origin
        # are then duplicates of it because they compare against the owner read back below.
        first: dict[str, DedupeCandidate] = {}
        for candidate in candidates:
            first.setdefault(candidate.key, candidate)
        # Sorted so that two instances lock overlapping keys in the same order (no deadlock).
        keys = sorted(first)
        owners = self._write(lambda conn: self._claim_keys(conn, first, keys, now, expires_at))
        return [owners.get(c.key, c.origin) != c.origin for c in candidates]

    def _claim_keys(
        self,
        conn: sa.Connection,
        first: dict[str, DedupeCandidate],
        keys: list[str],
        now: datetime,
        expires_at: datetime,
    ) -> dict[str, str]:
        """The owner (origin) of every key: the batch's for those it claimed, read back for the
        others, a batch's few duplicates and replays (see ``_claim_values``)."""
        stamp = self._claim_fast.processors["timestamp"]
        at, until = stamp(now), stamp(expires_at)
        # The driver's cursor gives the claimed keys as plain tuples: Row objects built one by
        # one cost as much again as the claim's own reading of them (0.3 µs a key).
        claimed: list[Any] = []
        if self._pg:
            batch = _json_array(
                [(k, first[k].origin, first[k].record_id, first[k].source_id) for k in keys]
            )
            params = (at, until, batch)
            claimed = list(conn.exec_driver_sql(self._claim_returning_pg, params).cursor.fetchall())
        else:
            claims = [
                (k, first[k].origin, first[k].record_id, first[k].source_id, at, until)
                for k in keys
            ]
            for result in _insert_values(conn, self._claim_values, claims):
                claimed += result.cursor.fetchall()
        owners = {key: first[key].origin for (key,) in claimed}
        taken = [k for k in keys if k not in owners]
        if taken and self._pg:
            rows = conn.execute(self._owners, {"keys": taken})
            owners.update((key, origin) for key, origin in rows)
        elif taken:
            owners.update(conn.exec_driver_sql(self._owners_sql, (_json_array(taken),)).fetchall())
        return owners

    def purge_expired_dedupe_keys(self) -> int:
        """Delete expired dedupe keys (they are otherwise only replaced when seen again)."""
        now = _utcnow()

        def work(conn: sa.Connection) -> int:
            result = conn.execute(
                sa.delete(validation_cache).where(validation_cache.c.expires_at <= now)
            )
            return int(result.rowcount)

        return self._write(work)

    def record_duplicates(self, candidates: Sequence[DedupeCandidate]) -> None:
        """Count records dropped as duplicates (idempotent on ``(source_id, origin)``)."""
        if not candidates:
            return
        now = _utcnow()
        rows = [
            {
                "source_id": c.source_id,
                "origin": c.origin,
                "key": c.key,
                "record_id": c.record_id,
                "timestamp": now,
            }
            for c in candidates
        ]
        self._write(lambda conn: conn.execute(self._add_duplicates, rows))

    def add_validation_failures(self, failures: Sequence[ValidationFailure]) -> None:
        """Record failures (idempotent on ``(record_id, origin, error_code, field)``)."""
        if not failures:
            return
        now = _utcnow()
        rows = [
            {
                "source_id": f.source_id,
                "record_id": f.record_id,
                "origin": f.origin,
                "error_code": f.error_code,
                "field": f.field,
                "message": f.message,
                "timestamp": now,
            }
            for f in failures
        ]
        self._write(lambda conn: conn.execute(self._add_failures, rows))

    def get_offset(self, source_id: str, position_key: str) -> int:
        """The committed offset of one position of a source; 0 if none."""
        so = source_offsets.c
        stmt = sa.select(so["offset"]).where(
            so.source_id == source_id, so.position_key == position_key
        )
        with self._reading() as conn:
            value = conn.scalar(stmt)
        return int(value or 0)

    def commit_offset(
        self, source_id: str, position_key: str, offset: int, records_read: int
    ) -> None:
        """Move the offset forward and add ``records_read``; a replayed commit changes nothing.

        Offsets only move forward: a commit at or behind the stored offset is ignored, so a
        source that starts a position over (a rotated file) must use a new ``position_key``.
        """
        row = {
            "source_id": source_id,
            "position_key": position_key,
            "offset": offset,
            "records_read": records_read,
            "updated_at": _utcnow(),
        }
        self._write(lambda conn: conn.execute(self._commit_offset, row))

    def offsets(self, source_id: str | None = None) -> dict[tuple[str, str], int]:
        """All committed offsets, keyed by ``(source_id, position_key)``."""
        so = source_offsets.c
        stmt = sa.select(so.source_id, so.position_key, so["offset"])
        if source_id is not None:
            stmt = stmt.where(so.source_id == source_id)
        with self._reading() as conn:
            return {(row[0], row[1]): int(row[2]) for row in conn.execute(stmt)}

    def get_source_state(self, source_id: str, key: str) -> str | None:
        """A value a source stored with :meth:`set_source_state`, or None."""
        st = source_state.c
        stmt = sa.select(st.value).where(st.source_id == source_id, st.key == key)
        with self._reading() as conn:
            return conn.execute(stmt).scalar_one_or_none()

    def set_source_state(self, source_id: str, key: str, value: str) -> None:
        """Store (replace) a named value of a source, e.g. its incremental-fetch watermark."""
        row = {"source_id": source_id, "key": key, "value": value, "updated_at": _utcnow()}
        self._write(lambda conn: conn.execute(self._set_source_state, row))

    # -- DLQ ----------------------------------------------------------------------------------
    @staticmethod
    def dlq_entry_id(module: str, record_id: str, origin: str, destination_id: str | None) -> str:
        """The entry id: a short hash of the natural key, the same in every process."""
        natural = "\x1f".join((module, record_id, origin, destination_id or ""))
        return hashlib.blake2b(natural.encode(), digest_size=10).hexdigest()

    def add_dlq_entries(self, entries: Sequence[DlqEntry]) -> None:
        """Store entries (idempotent on ``(module, record_id, origin, destination_id)``).

        Writing an entry that exists and is ``open`` changes nothing; one that was ``replayed``
        or ``purged`` is reopened with the new reason, error, attempts and body (the record
        failed again).
        """
        if not entries:
            return
        now = _utcnow()
        rows: dict[str, dict[str, Any]] = {}
        for e in entries:
            entry_id = self.dlq_entry_id(e.module, e.record_id, e.origin, e.destination_id)
            # Keyed by id: on PostgreSQL an upsert may not touch one row twice in a statement.
            rows[entry_id] = {
                "entry_id": entry_id,
                "module": e.module,
                "record_id": e.record_id,
                "source_id": e.source_id,
                "origin": e.origin,
                "destination_id": e.destination_id,
                "reason": e.reason,
                "error": e.error,
                "error_class": e.error_class,
                "retry_eligible": e.retry_eligible,
                "attempts": e.attempts,
                "body": e.body,
                "status": "open",
                "stage": e.stage,
                "correlation_id": e.correlation_id,
                "attempt_history": list(e.attempt_history)
                or [{"at": now.timestamp(), "error_class": e.error_class, "error": e.error}],
                "config_version": e.config_version,
                "rule_versions": e.rule_versions,
            }
        batch = list(rows.values())
        d = dlq_entries.c
        closed = sa.select(d.entry_id, d.attempt_history).where(
            self._in(d.entry_id, "ids"), d.status != "open"
        )

        def work(conn: sa.Connection) -> None:
            # An entry that was replayed (or purged) and fails again keeps its earlier attempts.
            for entry_id, history in conn.execute(closed, {"ids": self._list_param(list(rows))}):
                if history:
                    rows[entry_id]["attempt_history"] = [
                        *history,
                        *rows[entry_id]["attempt_history"],
                    ]
            self._add_dlq_fast.executemany(conn, batch, {"created_at": now, "updated_at": now})

        self._write(work)

    @staticmethod
    def _stored(row: _Row) -> StoredDlqEntry:
        m = row._mapping
        return StoredDlqEntry(
            entry_id=m["entry_id"],
            module=m["module"],
            record_id=m["record_id"],
            source_id=m["source_id"],
            origin=m["origin"],
            reason=m["reason"],
            error=m["error"],
            error_class=m["error_class"],
            retry_eligible=bool(m["retry_eligible"]),
            destination_id=m["destination_id"],
            attempts=int(m["attempts"]),
            created_at=m["created_at"].timestamp(),
            status=m["status"],
            body=bytes(m["body"]),
            updated_at=m["updated_at"].timestamp(),
            stage=m["stage"],
            correlation_id=m["correlation_id"],
            attempt_history=list(m["attempt_history"] or []),
            config_version=m["config_version"],
            rule_versions=m["rule_versions"],
        )

    def _dlq_where(self, where: DlqFilter) -> tuple[list[sa.ColumnElement[bool]], dict[str, Any]]:
        d = dlq_entries.c
        clauses: list[sa.ColumnElement[bool]] = []
        params: dict[str, Any] = {}
        if where.status != "all":
            clauses.append(d.status == where.status)
        if where.module is not None:
            clauses.append(d.module == where.module)
        if where.entry_ids is not None:
            clauses.append(self._in(d.entry_id, "entry_ids"))
            params["entry_ids"] = self._list_param(list(where.entry_ids))
        if where.reason is not None:
            clauses.append(d.reason == where.reason)
        if where.error_class is not None:
            clauses.append(d.error_class == where.error_class)
        if where.destination_id is not None:
            clauses.append(d.destination_id == where.destination_id)
        if where.source_id is not None:
            clauses.append(d.source_id == where.source_id)
        if where.retry_eligible is not None:
            clauses.append(
                d.retry_eligible == sa.true()
                if where.retry_eligible
                else d.retry_eligible == sa.false()
            )
        if where.since is not None:
            clauses.append(d.created_at >= _from_epoch(where.since))
        if where.until is not None:
            clauses.append(d.created_at < _from_epoch(where.until))
        return clauses, params

    def query_dlq(
        self, where: DlqFilter, *, limit: int | None = 100, offset: int = 0
    ) -> list[StoredDlqEntry]:
        """Entries matching ``where``, oldest first (``limit=None``: all of them)."""
        d = dlq_entries.c
        clauses, params = self._dlq_where(where)
        stmt = sa.select(dlq_entries).where(*clauses).order_by(d.created_at, d.entry_id)
        if limit is not None:
            stmt = stmt.limit(limit)
        if offset:
            stmt = stmt.offset(offset)
        with self._reading() as conn:
            return [self._stored(row) for row in conn.execute(stmt, params)]

    def count_dlq(self, where: DlqFilter) -> int:
        """How many entries match ``where``."""
        clauses, params = self._dlq_where(where)
        stmt = sa.select(sa.func.count()).select_from(dlq_entries).where(*clauses)
        with self._reading() as conn:
            return int(conn.scalar(stmt, params) or 0)

    def archive_dlq(self, module: str | None, older_than: float) -> int:
        """Move entries created before ``older_than`` to ``dlq_entries_archive``; how many."""
        d = dlq_entries.c
        cutoff = _from_epoch(older_than)
        cond = [d.created_at < cutoff]
        if module is not None:
            cond.append(d.module == module)
        names = [c.name for c in dlq_entries.columns]
        now = _utcnow()

        def work(conn: sa.Connection) -> int:
            rows = [dict(r._mapping) for r in conn.execute(sa.select(dlq_entries).where(*cond))]
            if not rows:
                return 0
            for row in rows:
                row["archived_at"] = now
            conn.execute(
                self._insert(dlq_entries_archive).on_conflict_do_nothing(
                    index_elements=[dlq_entries_archive.c.entry_id]
                ),
                [{n: row[n] for n in [*names, "archived_at"]} for row in rows],
            )
            conn.execute(sa.delete(dlq_entries).where(*cond))
            return len(rows)

        return self._write(work)

    def add_delivery_errors(self, errors: Sequence[DeliveryError]) -> None:
        """Append failed delivery attempts (for ``/admin/destinations/<id>/errors``)."""
        if not errors:
            return
        now = _utcnow()
        rows = [
            {
                "destination_id": e.destination_id,
                "error_class": e.error_class,
                "error": e.error[:4000],
                "records": e.records,
                "timestamp": now,
            }
            for e in errors
        ]
        self._write(lambda conn: conn.execute(delivery_errors.insert(), rows))

    def delivery_errors(
        self, destination_id: str | None, since: float, *, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Failed delivery attempts since a Unix time, newest first."""
        e = delivery_errors.c
        stmt = (
            sa.select(delivery_errors)
            .where(e.timestamp >= _from_epoch(since))
            .order_by(e.id.desc())
            .limit(limit)
        )
        if destination_id is not None:
            stmt = stmt.where(e.destination_id == destination_id)
        with self._reading() as conn:
            return [
                {
                    "destination_id": m["destination_id"],
                    "error_class": m["error_class"],
                    "error": m["error"],
                    "records": int(m["records"]),
                    "timestamp": m["timestamp"].timestamp(),
                }
                for m in conn.execute(stmt).mappings()
            ]

    def list_dlq(
        self, module: str | None = None, *, limit: int = 100, offset: int = 0, status: str = "open"
    ) -> list[StoredDlqEntry]:
        """DLQ entries, oldest first; ``status="all"`` lists every status."""
        d = dlq_entries.c
        stmt = sa.select(dlq_entries)
        if status != "all":
            stmt = stmt.where(d.status == status)
        if module is not None:
            stmt = stmt.where(d.module == module)
        stmt = stmt.order_by(d.created_at, d.entry_id).limit(limit).offset(offset)
        with self._reading() as conn:
            return [self._stored(row) for row in conn.execute(stmt)]

    def get_dlq_entries(self, entry_ids: Sequence[str]) -> list[StoredDlqEntry]:
        """The entries with these ids, in the order asked (unknown ids are left out)."""
        ids = list(dict.fromkeys(entry_ids))
        stmt = sa.select(dlq_entries).where(self._in(dlq_entries.c.entry_id, "ids"))
        if not ids:
            return []
        with self._reading() as conn:
            rows = conn.execute(stmt, {"ids": self._list_param(ids)})
            found = {row.entry_id: self._stored(row) for row in rows}
        return [found[i] for i in ids if i in found]

    def set_dlq_status(self, entry_ids: Sequence[str], status: str) -> int:
        """Mark entries ``open``, ``replayed`` or ``purged``; returns how many changed."""
        if status not in DLQ_STATUSES:
            raise ValueError(f"DLQ status {status!r} is not valid; expected one of {DLQ_STATUSES}.")
        ids = list(dict.fromkeys(entry_ids))
        if not ids:
            return 0
        d = dlq_entries.c
        stmt = (
            sa.update(dlq_entries)
            .where(self._in(d.entry_id, "ids"), d.status != status)
            .values(status=status, updated_at=sa.bindparam("now"))
        )

        params = {"ids": self._list_param(ids), "now": _utcnow()}
        return self._write(lambda conn: int(conn.execute(stmt, params).rowcount))

    def dlq_counts(self, status: str = "open") -> dict[str, int]:
        """Entries per module with this status (``"all"``: any status)."""
        d = dlq_entries.c
        stmt = sa.select(d.module, sa.func.count()).group_by(d.module)
        if status != "all":
            stmt = stmt.where(d.status == status)
        with self._reading() as conn:
            return {row[0]: int(row[1]) for row in conn.execute(stmt)}

    def dlq_reasons(self, module: str | None = None) -> dict[str, int]:
        """Open entries per reason, optionally of one module."""
        d = dlq_entries.c
        stmt = sa.select(d.reason, sa.func.count()).where(d.status == "open").group_by(d.reason)
        if module is not None:
            stmt = stmt.where(d.module == module)
        with self._reading() as conn:
            return {row[0]: int(row[1]) for row in conn.execute(stmt)}

    # -- gamma --------------------------------------------------------------------------------
    def record_deliveries(self, outcomes: Sequence[DeliveryOutcome]) -> None:
        """Upsert outcomes on ``(record_id, destination_id)``; ``delivered`` is never downgraded.

        ``attempts`` and ``error`` are those of the latest outcome written (summing would count
        a replayed write twice), and so is the lineage summary (``rules``, ``enrichment``,
        ``quality_score``), stored in the same row: one ``executemany`` per batch.
        """
        if not outcomes:
            return
        now = _utcnow()
        rows: dict[tuple[str, str], tuple[Any, ...]] = {}  # in _DELIVERY_COLUMNS order
        joined: dict[tuple[str, ...], str | None] = {}  # a batch shares a few rule paths
        for o in outcomes:
            key = (o.record_id, o.destination_id)
            previous = rows.get(key)
            if previous is not None and previous[2] == "delivered":
                continue  # the same rule as in the database, within the batch
            rows[key] = (
                o.record_id,
                o.destination_id,
                o.status,
                o.attempts,
                o.error,
                _joined(joined, o.rules),
                _joined(joined, o.enrichment),
                o.quality_score,
            )
        batch = list(rows.values())
        shared = {"timestamp": now}
        if self._pg:
            self._write(lambda conn: self._record_deliveries_postgresql(conn, batch, now))
        else:
            self._write(lambda conn: self._record_deliveries_sqlite(conn, batch, shared))

    def _record_deliveries_postgresql(
        self, conn: sa.Connection, batch: list[tuple[Any, ...]], now: datetime
    ) -> None:
        """``COPY`` the rows when none of them is in the log yet, else upsert them.

        A record's first outcome for a destination, nearly every row of a steady flow, is a new
        row: a binary ``COPY`` writes it for about half the server's CPU of the upsert (6 µs a
        row against 12, and 1.1 µs of the client's against 1.8). A row already there (a retry
        after a failed delivery, a replayed batch) fails the ``COPY`` with a unique violation:
        its savepoint is rolled back and the batch, and the next few, which likely overlap it,
        take the upsert. The accounting's statement triggers count a ``COPY`` as they count an
        ``INSERT``.
        """
        import psycopg

        if self._upsert_deliveries_next > 0:
            self._upsert_deliveries_next -= 1
        else:
            try:
                driver = conn.connection.driver_connection
                with (
                    conn.begin_nested(),
                    driver.cursor() as cursor,  # type: ignore[union-attr]
                    cursor.copy(_COPY_DELIVERIES_PG) as copy,
                ):
                    copy.set_types(_DELIVERY_PG_TYPES)
                    for row in batch:
                        copy.write_row((*row, now))
                return
            except psycopg.errors.UniqueViolation:
                self._upsert_deliveries_next = _UPSERT_DELIVERIES_AFTER_CONFLICT
            except psycopg.Error as exc:
                # Raised by the driver, not through SQLAlchemy: wrapped as SQLAlchemy would, so
                # that ``_write`` retries a deadlock and reports a lost server as transient.
                raise sa_exc.DBAPIError.instance(
                    _COPY_DELIVERIES_PG, None, exc, psycopg.Error
                ) from exc
        stamp = self._record_deliveries_fast.processors["timestamp"]
        params = (stamp(now), _json_array(batch))
        conn.exec_driver_sql(self._record_deliveries_pg, params)

    def _record_deliveries_sqlite(
        self, conn: sa.Connection, batch: list[tuple[Any, ...]], shared: dict[str, Any]
    ) -> None:
        """Insert the rows that are new and count the delivered ones (the accounting counter);
        upsert the rest. A row already there takes the upsert, whose status change the
        update trigger counts; upserting a row inserted just before changes nothing (a
        delivered one is left as it is, a failed one is written the same)."""
        groups: dict[tuple[str, bool], list[tuple[Any, ...]]] = {}
        for row in batch:
            groups.setdefault((row[1], row[2] == "delivered"), []).append(row)
        for (destination_id, delivered), rows in groups.items():
            inserted = self._add_deliveries_fast.insert_rows(conn, rows, _DELIVERY_COLUMNS, shared)
            if inserted < len(rows):
                self._record_deliveries_fast.executemany_tuples(
                    conn, rows, _DELIVERY_COLUMNS, shared
                )
            if delivered and inserted:
                conn.exec_driver_sql(
                    _ADD_COUNT.format(kind="'delivered'", key="?", n="?"),
                    (destination_id, inserted),
                )

    def delivered_records(self, record_ids: Sequence[str], destination_id: str) -> set[str]:
        """Which of these records are already delivered to the destination."""
        if not record_ids:
            return set()
        with self._reading() as conn:
            return {row[0] for row in self._select_delivered(conn, record_ids, destination_id)}

    def _select_delivered(
        self,
        conn: sa.Connection,
        record_ids: Sequence[str],
        destination_id: str,
        *,
        explain: bool = False,
    ) -> list[Any]:
        """Run the delivered-records lookup on ``conn`` (or, for the tests, its query plan)."""
        params = {"record_ids": self._list_param(record_ids), "destination_id": destination_id}
        statement = self._delivered
        if self._pg:
            # No parallel plan either: under load the planner chose one for a batch's 2,000 key
            # lookups, starting worker processes for each of them.
            conn.exec_driver_sql(
                "SET LOCAL enable_seqscan = off; SET LOCAL max_parallel_workers_per_gather = 0"
            )
        if explain:
            prefix = "EXPLAIN " if self._pg else "EXPLAIN QUERY PLAN "
            statement = sa.text(prefix + statement.text)
        return list(conn.execute(statement, params).all())

    def dead_lettered_records(
        self, record_ids: Sequence[str], destination_id: str, module: str = "gamma"
    ) -> set[str]:
        """Which of these records have an open DLQ entry of ``module`` for the destination."""
        if not record_ids:
            return set()
        d = dlq_entries.c
        stmt = sa.select(d.record_id).where(
            d.module == module,
            d.destination_id == destination_id,
            d.status == "open",
            self._in(d.record_id, "record_ids"),
        )
        with self._reading() as conn:
            rows = conn.execute(stmt, {"record_ids": self._list_param(record_ids)})
            return {row[0] for row in rows}

    def delivery_counts(self) -> dict[str, dict[str, int]]:
        """``{destination_id: {status: count}}``."""
        dl = delivery_log.c
        stmt = sa.select(dl.destination_id, dl.status, sa.func.count()).group_by(
            dl.destination_id, dl.status
        )
        counts: dict[str, dict[str, int]] = {}
        with self._reading() as conn:
            for destination_id, status, count in conn.execute(stmt):
                counts.setdefault(destination_id, {})[status] = int(count)
        return counts

    # -- control ------------------------------------------------------------------------------
    def append_audit(
        self, actor: str, action: str, target: str, details: dict[str, Any] | None = None
    ) -> None:
        """Append one audit log entry, chained to the previous one's hash.

        ``entry_hash`` is sha256 over the previous entry's hash and this entry's id, time, actor,
        action, target and details (:func:`audit_entry_hash`); ``audit_chain_head`` keeps the
        newest id and hash in the same transaction. So editing an entry, deleting one in the
        middle or deleting the newest ones is found by :meth:`verify_audit`. Appends are
        serialised (advisory lock on PostgreSQL, the write lock on SQLite): the chain is a line.
        """
        now = _utcnow()
        # Hashed as it will read back: what JSON makes of it (datetimes become strings, ...).
        details = json.loads(json_dumps(details)) if details else None

        def work(conn: sa.Connection) -> None:
            self._advisory_lock(conn, "audit_log")
            head = conn.execute(
                sa.select(audit_chain_head.c.last_id, audit_chain_head.c.last_hash).where(
                    audit_chain_head.c.id == 1
                )
            ).first()
            max_id = conn.scalar(sa.select(sa.func.max(audit_log.c.id))) or 0
            last_id = max(int(max_id), int(head[0]) if head else 0)
            prev_hash = str(head[1]) if head else ""
            entry_id = last_id + 1
            entry_hash = audit_entry_hash(prev_hash, entry_id, now, actor, action, target, details)
            conn.execute(
                audit_log.insert(),
                {
                    "id": entry_id,
                    "timestamp": now,
                    "actor": actor,
                    "action": action,
                    "target": target,
                    "details": details,
                    "prev_hash": prev_hash,
                    "entry_hash": entry_hash,
                },
            )
            if head is None:
                conn.execute(
                    audit_chain_head.insert(),
                    {"id": 1, "last_id": entry_id, "last_hash": entry_hash, "entries": 1},
                )
            else:
                conn.execute(
                    sa.update(audit_chain_head)
                    .where(audit_chain_head.c.id == 1)
                    .values(
                        last_id=entry_id,
                        last_hash=entry_hash,
                        entries=audit_chain_head.c.entries + 1,
                    )
                )

        self._write(work)

    @staticmethod
    def _audit_row(m: Any) -> dict[str, Any]:
        return {
            "id": int(m["id"]),
            "timestamp": m["timestamp"].timestamp(),
            "actor": m["actor"],
            "action": m["action"],
            "target": m["target"],
            "details": m["details"] or {},
            "prev_hash": m["prev_hash"],
            "entry_hash": m["entry_hash"],
        }

    def list_audit(self, *, limit: int = 100, since: float | None = None) -> list[dict[str, Any]]:
        """Audit entries, newest first; ``since`` is a Unix time."""
        a = audit_log.c
        stmt = sa.select(audit_log).order_by(a.id.desc()).limit(limit)
        if since is not None:
            stmt = stmt.where(a.timestamp >= _from_epoch(since))
        with self._reading() as conn:
            return [self._audit_row(m) for m in conn.execute(stmt).mappings()]

    def export_audit(
        self, since: float | None = None, until: float | None = None
    ) -> list[dict[str, Any]]:
        """Audit entries between two Unix times, oldest first, archived ones included."""
        rows: dict[int, dict[str, Any]] = {}
        with self._reading() as conn:
            for table in (audit_log_archive, audit_log):
                stmt = sa.select(table)
                if since is not None:
                    stmt = stmt.where(table.c.timestamp >= _from_epoch(since))
                if until is not None:
                    stmt = stmt.where(table.c.timestamp < _from_epoch(until))
                for m in conn.execute(stmt).mappings():
                    rows[int(m["id"])] = self._audit_row(m)
        return [rows[k] for k in sorted(rows)]

    def verify_audit(self) -> dict[str, Any]:
        """Walk the hash chain over ``audit_log_archive`` and ``audit_log``; list what is wrong.

        Returns ``{"ok", "entries", "chained", "unchained", "problems": [sentences]}``. Entries
        written before schema version 4 have no hash and are counted as ``unchained``.
        """
        problems: list[str] = []
        entries: dict[int, Any] = {}
        with self._reading() as conn:
            for table in (audit_log_archive, audit_log):
                for m in conn.execute(sa.select(table)).mappings():
                    entry_id = int(m["id"])
                    if entry_id in entries and entries[entry_id]["entry_hash"] != m["entry_hash"]:
                        problems.append(
                            f"Entry {entry_id} differs between audit_log and audit_log_archive."
                        )
                    entries[entry_id] = dict(m)
            head = conn.execute(
                sa.select(audit_chain_head).where(audit_chain_head.c.id == 1)
            ).first()
        prev_hash = ""
        prev_id: int | None = None
        chained = unchained = 0
        for entry_id in sorted(entries):
            m = entries[entry_id]
            if m["entry_hash"] is None:
                if chained:
                    problems.append(f"Entry {entry_id} has no hash after the chain began.")
                else:
                    unchained += 1
                continue
            chained += 1
            expected = audit_entry_hash(
                m["prev_hash"] or "",
                entry_id,
                m["timestamp"],
                m["actor"],
                m["action"],
                m["target"],
                m["details"],
            )
            if expected != m["entry_hash"]:
                problems.append(
                    f"Entry {entry_id} was modified: its hash does not match its content."
                )
            if (m["prev_hash"] or "") != prev_hash:
                where = "the start of the chain" if prev_id is None else f"entry {prev_id}"
                problems.append(
                    f"The chain is broken before entry {entry_id}: it does not follow {where} "
                    "(an entry was deleted or altered)."
                )
            prev_hash = m["entry_hash"]
            prev_id = entry_id
        if head is not None:
            if prev_id != int(head.last_id) or prev_hash != head.last_hash:
                problems.append(
                    f"The newest entry should be {int(head.last_id)}, found {prev_id}: entries at "
                    "the end of the log were deleted or altered."
                )
            elif chained != int(head.entries):
                problems.append(
                    f"The chain should hold {int(head.entries)} entries, found {chained}: "
                    "entries were deleted."
                )
        elif chained:
            problems.append("The chain head (audit_chain_head) is missing.")
        return {
            "ok": not problems,
            "entries": len(entries),
            "chained": chained,
            "unchained": unchained,
            "problems": problems,
        }

    def archive_audit(self, older_than: float) -> int:
        """Move entries older than a Unix time to ``audit_log_archive`` (the chain is kept)."""
        cutoff = _from_epoch(older_than)

        def work(conn: sa.Connection) -> int:
            self._advisory_lock(conn, "audit_log")
            old = sa.select(audit_log).where(audit_log.c.timestamp < cutoff)
            already = sa.select(audit_log_archive.c.id)
            conn.execute(
                audit_log_archive.insert().from_select(
                    [c.name for c in audit_log.columns], old.where(audit_log.c.id.not_in(already))
                )
            )
            result = conn.execute(sa.delete(audit_log).where(audit_log.c.timestamp < cutoff))
            return int(result.rowcount or 0)

        return self._write(work)

    def add_lineage(self, events: Sequence[tuple[str, str, str, dict[str, Any]]]) -> None:
        """Append lineage events ``(record_id, stage, action, details)``.

        The same event (same record, stage, action and details) written again by a replay is
        kept once.
        """
        if not events:
            return
        now = _utcnow()
        rows = []
        for record_id, stage, action, details in events:
            canonical = json.dumps([stage, action, details], sort_keys=True, default=str)
            rows.append(
                {
                    "record_id": record_id,
                    "stage": stage,
                    "action": action,
                    "details": details,
                    "event_key": hashlib.blake2b(canonical.encode(), digest_size=16).hexdigest(),
                    "timestamp": now,
                }
            )
        self._write(lambda conn: conn.execute(self._add_lineage, rows))

    def lineage_of(self, record_id: str) -> list[dict[str, Any]]:
        """A record's lineage events in time order."""
        li = lineage.c
        stmt = (
            sa.select(li.record_id, li.stage, li.action, li.details, li.timestamp)
            .where(li.record_id == record_id)
            .order_by(li.timestamp, li.id)
        )
        with self._reading() as conn:
            return [
                {
                    "record_id": m["record_id"],
                    "stage": m["stage"],
                    "action": m["action"],
                    "details": m["details"] or {},
                    "timestamp": m["timestamp"].timestamp(),
                }
                for m in conn.execute(stmt).mappings()
            ]

    def record_trace(self, record_id: str) -> dict[str, Any]:
        """Everything the store knows of one record's life (the lineage API, runbook L.2).

        Read from what the stages already write per record — the dedupe claim (source and
        position), duplicates, validation failures, DLQ entries, the delivery log with the
        record's lineage summary — plus any ``lineage`` events; no extra row is written per
        record for it. ``rules``, ``enrichment`` and ``quality_score`` are those of the delivery
        log row (a delivered one first), else those in the envelope of a DLQ entry's body.
        """
        vc, du, vf, dq, dl = (
            validation_cache.c,
            duplicates.c,
            validation_failures.c,
            dlq_entries.c,
            delivery_log.c,
        )
        with self._reading() as conn:
            # A source without its own dedupe key fields claims the record id itself as the key:
            # a primary-key lookup. Only when that finds nothing (dedupe ``key`` fields, dedupe
            # off, an unknown record) is the cache scanned by record id (see docs/operations.md).
            claim = sa.select(vc.source_id, vc.origin, vc.timestamp)
            claims = (
                conn.execute(claim.where(vc["key"] == record_id, vc.record_id == record_id))
                .mappings()
                .all()
            ) or conn.execute(claim.where(vc.record_id == record_id)).mappings().all()
            dups = (
                conn.execute(
                    sa.select(du.source_id, du.origin, du.timestamp).where(
                        du.record_id == record_id
                    )
                )
                .mappings()
                .all()
            )
            failures = (
                conn.execute(
                    sa.select(
                        vf.source_id, vf.origin, vf.error_code, vf.field, vf.message, vf.timestamp
                    ).where(vf.record_id == record_id)
                )
                .mappings()
                .all()
            )
            dlq = (
                conn.execute(
                    sa.select(
                        dq.entry_id,
                        dq.module,
                        dq.destination_id,
                        dq.reason,
                        dq.error_class,
                        dq.status,
                        dq.attempts,
                        dq.created_at,
                        dq.body,
                    ).where(dq.record_id == record_id)
                )
                .mappings()
                .all()
            )
            deliveries = (
                conn.execute(
                    sa.select(
                        dl.destination_id,
                        dl.status,
                        dl.attempts,
                        dl.error,
                        dl.timestamp,
                        dl.rules,
                        dl.enrichment,
                        dl.quality_score,
                    )
                    .where(dl.record_id == record_id)
                    .order_by(dl.destination_id)
                )
                .mappings()
                .all()
            )

        def rows(found: Sequence[Any]) -> list[dict[str, Any]]:
            out = []
            for m in found:
                row = dict(m)
                for key, value in row.items():
                    if isinstance(value, datetime):
                        row[key] = value.timestamp()
                out.append(row)
            return out

        delivered = [_lineage_columns(row) for row in rows(deliveries)]
        dead = rows(dlq)
        summaries = [d for d in delivered if d["status"] == "delivered"] + delivered
        summaries += [s for s in map(_summary_of_body, (d.pop("body") for d in dead)) if s]
        summary = (
            {k: summaries[0][k] for k in ("rules", "enrichment", "quality_score")}
            if summaries
            else {"rules": [], "enrichment": [], "quality_score": None}
        )
        return {
            "record_id": record_id,
            **summary,
            "ingested": rows(claims),
            "duplicates": rows(dups),
            "validation_failures": rows(failures),
            "dlq": dead,
            "deliveries": delivered,
            "events": self.lineage_of(record_id),
        }

    def delivered_between(
        self, since: float | None, until: float | None, *, limit: int = 10000
    ) -> list[dict[str, Any]]:
        """Delivery log rows stamped between two Unix times, oldest first (lineage export).

        Each with the record's lineage summary: ``rules``, ``enrichment``, ``quality_score``.
        """
        dl = delivery_log.c
        stmt = sa.select(
            dl.record_id,
            dl.destination_id,
            dl.status,
            dl.attempts,
            dl.timestamp,
            dl.rules,
            dl.enrichment,
            dl.quality_score,
        )
        if since is not None:
            stmt = stmt.where(dl.timestamp >= _from_epoch(since))
        if until is not None:
            stmt = stmt.where(dl.timestamp < _from_epoch(until))
        stmt = stmt.order_by(dl.timestamp, dl.record_id, dl.destination_id).limit(limit)
        with self._reading() as conn:
            return [
                _lineage_columns({**dict(m), "timestamp": m["timestamp"].timestamp()})
                for m in conn.execute(stmt).mappings()
            ]

    def start_job_run(self, job_name: str, trigger: str, owner: str = "") -> str:
        """Record a job run starting (status ``RUNNING``); returns its run id.

        Raises :class:`~dps.state.base.JobRunConflict` when the job already has a RUNNING run
        (another control instance started it): a job never runs twice at once. ``owner``
        (``host:pid`` of the runner) is kept as the message until the run finishes.
        """
        run_id = uuid.uuid4().hex[:16]
        row = {
            "run_id": run_id,
            "job_name": job_name,
            "trigger": trigger,
            "status": "RUNNING",
            "started_at": _utcnow(),
            "finished_at": None,
            "records": 0,
            "message": owner,
        }
        try:
            self._write(lambda conn: conn.execute(job_runs.insert(), row))
        except sa_exc.IntegrityError as exc:
            raise JobRunConflict(f"Job {job_name!r} already has a run in progress.") from exc
        return run_id

    def finish_job_run(
        self, run_id: str, status: str, records: int = 0, message: str = "", log: str = ""
    ) -> None:
        """Record a run's end (and its log); a second call for a finished run changes nothing."""
        j = job_runs.c
        stmt = (
            sa.update(job_runs)
            .where(j.run_id == run_id, j.finished_at.is_(None))
            .values(status=status, records=records, message=message, log=log, finished_at=_utcnow())
        )
        self._write(lambda conn: conn.execute(stmt))

    def list_job_runs(self, job_name: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Job runs, newest first, with start/finish as Unix times and the duration."""
        j = job_runs.c
        stmt = sa.select(job_runs).order_by(j.started_at.desc(), j.run_id).limit(limit)
        if job_name is not None:
            stmt = stmt.where(j.job_name == job_name)
        runs = []
        with self._reading() as conn:
            for m in conn.execute(stmt).mappings():
                started = m["started_at"].timestamp()
                finished = _epoch(m["finished_at"])
                runs.append(
                    {
                        "run_id": m["run_id"],
                        "job_name": m["job_name"],
                        "trigger": m["trigger"],
                        "status": m["status"],
                        "started_at": started,
                        "finished_at": finished,
                        "duration_seconds": None if finished is None else finished - started,
                        "records": int(m["records"]),
                        "message": m["message"],
                        "log": m["log"] or "",
                    }
                )
        return runs

    def save_config_version(self, module: str, checksum: str, content: str, actor: str) -> int:
        """Store a snapshot unless the newest one of the module has this checksum; its version."""
        c = config_versions.c
        newest = (
            sa.select(c.version, c.checksum)
            .where(c.module == module)
            .order_by(c.version.desc())
            .limit(1)
        )

        def work(conn: sa.Connection) -> int:
            # Two processes saving at once would pick the same next version; serialise them.
            self._advisory_lock(conn, f"config_versions:{module}")
            row = conn.execute(newest).first()
            if row is not None and row[1] == checksum:
                return int(row[0])
            version = 1 if row is None else int(row[0]) + 1
            conn.execute(
                config_versions.insert(),
                {
                    "module": module,
                    "version": version,
                    "checksum": checksum,
                    "content": content,
                    "actor": actor,
                    "created_at": _utcnow(),
                },
            )
            return version

        return self._write(work)

    def list_config_versions(self, module: str | None = None) -> list[dict[str, Any]]:
        """Stored configuration versions, newest first (without content)."""
        c = config_versions.c
        stmt = sa.select(c.module, c.version, c.checksum, c.actor, c.created_at).order_by(
            c.created_at.desc(), c.module, c.version.desc()
        )
        if module is not None:
            stmt = stmt.where(c.module == module)
        with self._reading() as conn:
            return [
                {
                    "module": m["module"],
                    "version": int(m["version"]),
                    "checksum": m["checksum"],
                    "actor": m["actor"],
                    "created_at": m["created_at"].timestamp(),
                }
                for m in conn.execute(stmt).mappings()
            ]

    def get_config_version(self, module: str, version: int) -> str | None:
        """The content of one stored configuration version (None if there is none)."""
        c = config_versions.c
        stmt = sa.select(c.content).where(c.module == module, c.version == version)
        with self._reading() as conn:
            value = conn.scalar(stmt)
        return None if value is None else str(value)

    # -- accounting ---------------------------------------------------------------------------
    def accounting(self) -> dict[str, Any]:
        """Durable counts for the run summary, read from one snapshot.

        ``dlq`` counts entries per module whatever their status: a record that went to a DLQ
        and was later replayed or purged still *went* there, so the counts stay monotonic and
        match what the modules reported at the time. A replayed record that is then delivered
        appears under both ``dlq`` and ``delivered``.
        """
        so, dl = source_offsets.c, delivery_log.c
        with self._reading() as conn:
            if self._pg:
                # One snapshot for all the queries, as SQLite's read transaction gives.
                conn.execution_options(isolation_level="REPEATABLE READ")
            by_source = {
                row[0]: int(row[1] or 0)
                for row in conn.execute(
                    sa.select(so.source_id, sa.func.sum(so.records_read)).group_by(so.source_id)
                )
            }
            dlq = {"alpha": 0, "beta": 0, "gamma": 0}
            delta_rows = 0
            # The trigger-kept counts (SQLite: _SQLITE_COUNTS_DDL; PostgreSQL: _PG_DELTAS): the
            # numbers COUNT(*) would give, without scanning the tables.
            counts: dict[str, list[tuple[str, int]]] = {}
            for kind, key, n, rows in conn.exec_driver_sql(
                "SELECT kind, key, sum(n), count(*) FROM accounting_deltas GROUP BY kind, key"
                if self._pg
                else "SELECT kind, key, n, 1 FROM accounting_counts WHERE n <> 0"
            ):
                delta_rows += int(rows)
                if n:
                    counts.setdefault(kind, []).append((key, int(n)))
            duplicate_count = sum(n for _, n in counts.get("duplicates", []))
            dlq.update(counts.get("dlq", []))
            delivered = dict(counts.get("delivered", []))
            delivered_records: int | None
            if len(delivered) <= 1:
                # One destination: a record has at most one row there (the primary key), so the
                # rows are the records. COUNT(DISTINCT) would sort them all: 8 s at 10 million.
                delivered_records = sum(delivered.values())
            else:
                delivered_records = conn.scalar(
                    sa.select(sa.func.count(sa.distinct(dl.record_id))).where(
                        dl.status == "delivered"
                    )
                )
        if self._pg and delta_rows > _PG_DELTAS_KEPT:
            self._write(lambda conn: conn.exec_driver_sql(_PG_FOLD_DELTAS))
        return {
            "ingested": sum(by_source.values()),
            "ingested_by_source": by_source,
            "duplicates": int(duplicate_count or 0),
            "dlq": dlq,
            "delivered": delivered,
            "delivered_records": int(delivered_records or 0),
        }
