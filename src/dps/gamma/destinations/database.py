"""``database``: write records into a PostgreSQL or SQLite table, idempotent on the record id.

The record-id column is the table's primary key and every write is ``INSERT ... ON CONFLICT DO
NOTHING`` (``format.type: insert``) or ``DO UPDATE`` (``upsert``), so retries and replays never
duplicate a row. On PostgreSQL a batch is ``COPY``-ed straight into the table when the key column
has a unique index: a batch of new ids, the common case, costs the database half of a merge. A
batch holding an id the table has (a redelivery, an update) fails that ``COPY`` at once and is
``COPY``-ed into a temporary staging table and merged in one statement instead, as are the next
few batches; either way one transaction (psycopg 3, pooled). On SQLite it is one ``executemany``
in one transaction. A batch the database refuses for its data (a value that does not fit a column)
is retried row by row so that only the bad rows go to the DLQ.

Errors are classified by SQLSTATE (:func:`~dps.gamma.destinations.base.classify_sqlstate`): a
lost or refused connection, a server shutting down (57P01) or a pool timeout is ``retryable``;
too many connections (53300) is ``throttle``; data and constraint errors (22*, 23*) are
``permanent`` per row; a missing table or column (42*) is ``permanent`` for the batch. SQLite's
"database is locked" is ``retryable``, its other operational errors (no such table) ``permanent``.

``column_mapping`` maps a record field to a column. The record fields are the envelope's
(``record_id``, ``source_id``, ``correlation_id``, ``ingested_at``, ``event_time``,
``timestamp`` — the event time, else the ingest time —, ``quality_score``, ``payload`` — the whole
payload as JSON) and any dotted path into the payload. A payload path the record lacks is
written as NULL, or, with ``format.on_missing_field: dlq``, sends the record to the DLQ as
``poison`` with reason ``missing_field`` (a mapping that names a field the data does not have
is then seen at once instead of filling a column with NULLs).
"""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, Literal

import msgspec
from pydantic import Field, field_validator, model_validator

from dps.config.secrets import SecretRef
from dps.core.errors import TransientError
from dps.core.model import StrictModel
from dps.core.record import Record, get_path
from dps.core.registry import register
from dps.gamma.destinations.base import (
    DeliveryError,
    Destination,
    RecordError,
    Rejected,
    classify_sqlstate,
)

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: What a payload-path extractor returns for a path the record does not have.
MISSING: Any = object()
_json = msgspec.json.Encoder()


class DatabaseConnection(StrictModel):
    """``connection:`` of a ``database`` destination."""

    type: Literal["postgresql", "sqlite"] = Field(description="The database engine.")
    host: str = Field(default="127.0.0.1", description="PostgreSQL host.")
    port: int = Field(default=5432, ge=1, le=65535, description="PostgreSQL port.")
    database: str | None = Field(default=None, description="PostgreSQL database name.")
    username: str | None = Field(default=None, description="User name, when not a secret.")
    username_ref: SecretRef | None = Field(default=None, description="User name reference.")
    password_ref: SecretRef | None = Field(default=None, description="Password reference.")
    ssl_mode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = Field(
        default="prefer", description="PostgreSQL sslmode."
    )
    pool_size: int = Field(default=5, ge=1, le=1000, description="Pooled connections.")
    path: str | None = Field(default=None, description="SQLite database file.")

    @model_validator(mode="after")
    def _engine_fields(self) -> DatabaseConnection:
        if self.type == "sqlite" and not self.path:
            raise ValueError("a sqlite connection needs path")
        if self.type == "postgresql" and not self.database:
            raise ValueError("a postgresql connection needs database")
        return self


class DatabaseFormat(StrictModel):
    """``format:`` of a ``database`` destination."""

    type: Literal["insert", "upsert"] = Field(
        default="insert", description="insert keeps the first row of a record; upsert replaces it."
    )
    table: str = Field(description="Target table (optionally schema-qualified).")
    column_mapping: dict[str, str] = Field(
        default_factory=lambda: {"record_id": "record_id", "payload": "payload"},
        description=(
            "Record field -> column. record_id is always written (as 'record_id' if unmapped)."
        ),
    )
    create_table: bool = Field(default=True, description="Create the table when it is missing.")
    on_missing_field: Literal["null", "dlq"] = Field(
        default="null",
        description=(
            "A mapped payload field the record lacks: null writes NULL; dlq sends the record to "
            "the DLQ (poison, reason missing_field) naming the field."
        ),
    )

    @field_validator("table")
    @classmethod
    def _table_name(cls, value: str) -> str:
        if not all(_IDENT.match(part) for part in value.split(".")):
            raise ValueError(f"{value!r} is not a plain table name")
        return value

    @field_validator("column_mapping")
    @classmethod
    def _columns(cls, value: dict[str, str]) -> dict[str, str]:
        for column in value.values():
            if not _IDENT.match(column):
                raise ValueError(f"{column!r} is not a plain column name")
        return value


class DatabaseDestinationConfig(StrictModel):
    """The type-specific sections of a ``database`` destination."""

    connection: DatabaseConnection
    format: DatabaseFormat


Extractor = Callable[[Record], Any]


def _timestamp(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC)


def extractor(field: str) -> tuple[Extractor, str]:
    """A reader for one mapped record field, and the column's SQL kind."""
    envelope: dict[str, tuple[Extractor, str]] = {
        "record_id": (lambda r: r.record_id, "key"),
        "source_id": (lambda r: r.source_id, "text"),
        "correlation_id": (lambda r: r.correlation_id, "text"),
        "ingested_at": (lambda r: _timestamp(r.ingested_at), "timestamp"),
        "event_time": (lambda r: r.event_time, "text"),
        "timestamp": (lambda r: r.event_time or _timestamp(r.ingested_at).isoformat(), "text"),
        "quality_score": (lambda r: r.quality.score if r.quality else None, "float"),
        "payload": (lambda r: _json.encode(r.payload).decode(), "json"),
    }
    if field in envelope:
        return envelope[field]

    def payload_value(r: Record) -> Any:
        value = get_path(r.payload, field, MISSING)
        if isinstance(value, dict | list):
            return _json.encode(value).decode()
        return value

    return payload_value, "text"


Column = Callable[[Sequence[Record]], list[Any]]


def column_reader(field: str) -> Column:
    """A reader of one mapped record field for a whole batch: the column's values, in order.

    The same values as :func:`extractor`'s reader applied to each record, read with one list
    comprehension per column instead of a call per record and column.
    """
    if field == "record_id":
        return lambda rs: [r.record_id for r in rs]
    if field == "source_id":
        return lambda rs: [r.source_id for r in rs]
    if field == "correlation_id":
        return lambda rs: [r.correlation_id for r in rs]
    if field == "ingested_at":
        return lambda rs: [_timestamp(r.ingested_at) for r in rs]
    if field == "event_time":
        return lambda rs: [r.event_time for r in rs]
    if field == "timestamp":
        return lambda rs: [r.event_time or _timestamp(r.ingested_at).isoformat() for r in rs]
    if field == "quality_score":
        return lambda rs: [q.score if (q := r.quality) else None for r in rs]
    if field == "payload":
        encode = _json.encode
        return lambda rs: [encode(r.payload).decode() for r in rs]
    if "." in field:
        get: Extractor = extractor(field)[0]
        return lambda rs: [get(r) for r in rs]

    encode = _json.encode

    def payload_values(rs: Sequence[Record]) -> list[Any]:
        return [
            encode(v).decode() if isinstance(v := r.payload.get(field, MISSING), _NESTED) else v
            for r in rs
        ]

    return payload_values


_NESTED = (dict, list)


_SQL_TYPES = {
    "postgresql": {
        "key": "TEXT PRIMARY KEY",
        "text": "TEXT",
        "timestamp": "TIMESTAMPTZ",
        "float": "DOUBLE PRECISION",
        "json": "JSONB",
    },
    "sqlite": {
        "key": "TEXT PRIMARY KEY",
        "text": "",
        "timestamp": "TEXT",
        "float": "REAL",
        "json": "TEXT",
    },
}


#: Batches merged after one whose straight ``COPY`` found an id already in the table.
_MERGE_AFTER_CONFLICT = 16

#: A unique index on exactly the key column, checked per row (not deferrable), not partial.
_UNIQUE_KEY_SQL = """
SELECT 1 FROM pg_index i
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
WHERE i.indrelid = %s::regclass AND i.indisunique AND i.indimmediate AND i.indisvalid
  AND i.indnkeyatts = 1 AND i.indpred IS NULL AND a.attname = %s
LIMIT 1
"""


@register("destinations", "database")
class DatabaseDestination(Destination):
    """Rows in a PostgreSQL or SQLite table; see the module docstring."""

    Config = DatabaseDestinationConfig
    spec: DatabaseDestinationConfig

    def __init__(self, destination_id: str, spec: Any) -> None:
        super().__init__(destination_id, spec)
        mapping = dict(self.spec.format.column_mapping)
        mapping.setdefault("record_id", "record_id")
        self.mapping = mapping
        self.columns = list(mapping.values())
        self.key_column = mapping["record_id"]
        self._extract = [extractor(field) for field in mapping]
        self._columns = [column_reader(field) for field in mapping]
        self.kinds = [kind for _, kind in self._extract]
        self._pool: Any = None
        self._sqlite: sqlite3.Connection | None = None
        #: PostgreSQL: whether the key column has a unique index that COPY is checked against
        #: (None: not looked up yet), and how many batches to merge before trying COPY again.
        self._key_unique: bool | None = None
        self._merge_next = 0

    # -- connection ---------------------------------------------------------------------------
    def _conninfo(self) -> str:
        c = self.spec.connection
        user = c.username_ref.resolve() if c.username_ref else c.username
        parts = {"host": c.host, "port": str(c.port), "dbname": c.database, "sslmode": c.ssl_mode}
        if user:
            parts["user"] = user
        if c.password_ref:
            parts["password"] = c.password_ref.resolve()
        from psycopg.conninfo import make_conninfo

        return make_conninfo(**{k: v for k, v in parts.items() if v is not None})

    def open(self) -> None:
        c = self.spec.connection
        if c.type == "sqlite":
            self._sqlite = sqlite3.connect(str(c.path), timeout=30.0, check_same_thread=False)
            self._sqlite.execute("PRAGMA journal_mode=WAL")
            self._sqlite.execute("PRAGMA synchronous=FULL")
        else:
            import psycopg
            from psycopg_pool import ConnectionPool

            try:
                # A server that is gone must fail a delivery within delivery.timeout_ms (so
                # retries and the breaker react), not after the pool's default 30 s; a pooled
                # connection the server dropped is checked before it is handed out.
                self._pool = ConnectionPool(
                    self._conninfo(),
                    min_size=1,
                    max_size=c.pool_size,
                    open=True,
                    timeout=self.timeout_s,
                    check=ConnectionPool.check_connection,
                    kwargs={"connect_timeout": max(1, round(self.timeout_s))},
                )
                self._pool.wait(timeout=self.timeout_s)
            except (psycopg.Error, Exception) as exc:
                raise TransientError(
                    f"Cannot connect to PostgreSQL at {c.host}:{c.port}: {exc}"
                ) from exc
        if self.spec.format.create_table:
            self._create_table()

    def _create_table(self) -> None:
        engine = self.spec.connection.type
        types = _SQL_TYPES[engine]
        cols = ", ".join(
            f"{col} {types[kind]}".strip()
            for col, kind in zip(self.columns, self.kinds, strict=True)
        )
        sql = f"CREATE TABLE IF NOT EXISTS {self.spec.format.table} ({cols})"
        self._execute_ddl(sql)

    def _execute_ddl(self, sql: str) -> None:
        if self._sqlite is not None:
            with self._sqlite:
                self._sqlite.execute(sql)
            return
        with self._pool.connection() as conn:
            conn.execute(sql)

    # -- delivery -----------------------------------------------------------------------------
    def _rows(self, records: Sequence[Record]) -> list[tuple[Any, ...]]:
        columns = [read(records) for read in self._columns]
        for values in columns:
            if MISSING in values:  # rare (on_missing_field: null); a C-level scan otherwise
                values[:] = [None if v is MISSING else v for v in values]
        return list(zip(*columns, strict=True))

    def _missing_fields(self, records: Sequence[Record]) -> tuple[list[Record], Rejected]:
        """``on_missing_field: dlq``: the records lacking a mapped field, refused as poison."""
        if self.spec.format.on_missing_field == "null":
            return list(records), []
        fields = list(self.mapping.items())
        ok: list[Record] = []
        rejected: Rejected = []
        for record in records:
            lacking = [
                (field, column)
                for (field, column), (get, _) in zip(fields, self._extract, strict=True)
                if get(record) is MISSING
            ]
            if not lacking:
                ok.append(record)
                continue
            names = ", ".join(f"{f} (column {c})" for f, c in lacking)
            rejected.append(
                (
                    record,
                    RecordError(
                        "missing_field",
                        f"The record has no {names}, which format.column_mapping maps "
                        "(format.on_missing_field: dlq).",
                        "poison",
                    ),
                )
            )
        return ok, rejected

    def _conflict_clause(self) -> str:
        if self.spec.format.type == "insert":
            return f"ON CONFLICT ({self.key_column}) DO NOTHING"
        updates = ", ".join(f"{c} = excluded.{c}" for c in self.columns if c != self.key_column)
        return (
            f"ON CONFLICT ({self.key_column}) DO UPDATE SET {updates}"
            if updates
            else (f"ON CONFLICT ({self.key_column}) DO NOTHING")
        )

    def _insert_sql(self, marks: str) -> str:
        cols = ", ".join(self.columns)
        table = self.spec.format.table
        return f"INSERT INTO {table} ({cols}) VALUES ({marks}) {self._conflict_clause()}"

    def deliver(self, records: Sequence[Record]) -> Rejected:
        records, refused = self._missing_fields(records)
        if not records:
            return refused
        if self._sqlite is not None:
            return refused + self._deliver_sqlite(records)
        return refused + self._deliver_postgresql(records)

    def _deliver_sqlite(self, records: Sequence[Record]) -> Rejected:
        assert self._sqlite is not None
        sql = self._insert_sql(", ".join("?" for _ in self.columns))
        rows = [tuple(_sqlite_value(v) for v in row) for row in self._rows(records)]
        try:
            with self._sqlite:
                self._sqlite.executemany(sql, rows)
            return []
        except sqlite3.OperationalError as exc:
            raise _sqlite_error(exc) from exc
        except sqlite3.DatabaseError:
            rejected: Rejected = []
            for record, row in zip(records, rows, strict=True):
                try:
                    with self._sqlite:
                        self._sqlite.execute(sql, row)
                except sqlite3.OperationalError as exc:
                    raise _sqlite_error(exc) from exc
                except sqlite3.DatabaseError as exc:
                    rejected.append((record, RecordError("destination_rejected", str(exc))))
            return rejected

    def _deliver_postgresql(self, records: Sequence[Record]) -> Rejected:
        import psycopg

        table = self.spec.format.table
        cols = ", ".join(self.columns)
        rows = self._rows(records)
        try:
            with self._pool.connection() as conn:
                try:
                    if self._copy_straight(conn):
                        try:
                            with (
                                conn.transaction(),
                                conn.cursor().copy(f"COPY {table} ({cols}) FROM STDIN") as copy,
                            ):
                                for row in rows:
                                    copy.write_row(row)
                            return []
                        except psycopg.errors.UniqueViolation:
                            # Some of these ids are in the table already (a redelivery, an
                            # update): merge this batch, and the next few, which likely overlap.
                            self._merge_next = _MERGE_AFTER_CONFLICT
                    with conn.transaction():
                        conn.execute(
                            f"CREATE TEMP TABLE IF NOT EXISTS _dps_stage (LIKE {table}) "
                            "ON COMMIT DELETE ROWS"
                        )
                        with conn.cursor().copy(f"COPY _dps_stage ({cols}) FROM STDIN") as copy:
                            for row in rows:
                                copy.write_row(row)
                        conn.execute(
                            f"INSERT INTO {table} ({cols}) "
                            f"SELECT DISTINCT ON ({self.key_column}) {cols} "
                            f"FROM _dps_stage {self._conflict_clause()}"
                        )
                    return []
                except (psycopg.errors.DataError, psycopg.errors.IntegrityError):
                    return self._row_by_row(conn, records, rows)
        except psycopg.Error as exc:
            sqlstate = getattr(exc, "sqlstate", None)
            klass = (
                "retryable"
                if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
                and not sqlstate
                else classify_sqlstate(sqlstate)
            )
            raise DeliveryError(
                f"PostgreSQL write failed ({sqlstate or 'connection'}): {str(exc).strip()}", klass
            ) from exc
        except Exception as exc:  # psycopg_pool.PoolTimeout and the like: no connection now
            if type(exc).__module__.startswith("psycopg_pool"):
                raise DeliveryError(f"PostgreSQL pool: {exc}", "retryable") from exc
            raise

    def _copy_straight(self, conn: Any) -> bool:
        """Whether to ``COPY`` this batch straight into the table rather than merge it.

        Only when the key column has a unique index checked row by row (a plain primary key or
        unique constraint, not deferred, not partial): a batch with an id already in the table
        then fails at once and is merged instead, so the result is the merge's. Not for a while
        after such a failure.
        """
        if self._merge_next > 0:
            self._merge_next -= 1
            return False
        if self._key_unique is None:
            with conn.transaction():
                found = conn.execute(_UNIQUE_KEY_SQL, (self.spec.format.table, self.key_column))
                self._key_unique = found.fetchone() is not None
        return self._key_unique

    def _row_by_row(
        self, conn: Any, records: Sequence[Record], rows: list[tuple[Any, ...]]
    ) -> Rejected:
        import psycopg

        sql = self._insert_sql(", ".join("%s" for _ in self.columns))
        rejected: Rejected = []
        with conn.transaction():
            for record, row in zip(records, rows, strict=True):
                try:
                    with conn.transaction():  # a savepoint per row
                        conn.execute(sql, row)
                except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as exc:
                    rejected.append((record, RecordError("destination_rejected", str(exc).strip())))
        return rejected

    def test(self) -> dict[str, Any]:
        try:
            if self._sqlite is not None:
                self._sqlite.execute("SELECT 1")
            else:
                with self._pool.connection() as conn:
                    conn.execute("SELECT 1")
            return {"ok": True}
        except Exception as exc:
            return {"ok": False, "error": str(exc)}

    def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
        if self._pool is not None:
            self._pool.close()


def _sqlite_error(exc: sqlite3.OperationalError) -> DeliveryError:
    message = str(exc)
    locked = "locked" in message or "busy" in message or "disk I/O" in message
    return DeliveryError(f"SQLite write failed: {message}.", "retryable" if locked else "permanent")


def _sqlite_value(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, dict | list):
        return _json.encode(value).decode()
    return value
