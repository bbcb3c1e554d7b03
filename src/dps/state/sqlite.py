"""The embedded state backend: one SQLite file shared by every module's process on the host.

Only the connection set-up lives here; the tables and queries are :mod:`dps.state.sql`. Several
processes (alpha, beta, gamma, control) open the same file, so the file is in WAL mode (readers
never block the writer), ``synchronous=FULL`` (a committed batch survives power loss), and every
connection waits ``busy_timeout_ms`` for another process's write lock instead of failing.

The ``sqlite3`` driver's own transaction handling is turned off (it would not begin a transaction
before DDL, and begins *deferred* ones); SQLAlchemy's ``begin`` event emits the BEGIN instead:
``BEGIN IMMEDIATE`` for the store's write transactions (they take the write lock up front, so a
transaction that reads then writes cannot fail on a lock upgrade), plain ``BEGIN`` for reads.
SQLAlchemy is imported only when the store is opened, because the registry imports every
module of this package to find the backends.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, ValidationError

from dps.core.errors import ConfigError, ConfigIssue
from dps.core.model import StrictModel
from dps.core.registry import register
from dps.core.sqlite import enable_wal
from dps.state.base import StateBackend, StateStore

if TYPE_CHECKING:
    import sqlalchemy as sa


class SqliteStateConfig(StrictModel):
    """``pipeline.yaml`` ``state:`` settings of the ``sqlite`` backend."""

    backend: str = Field("sqlite", description="The backend's name, `sqlite`.")
    path: Path | None = Field(
        None,
        description="The database file. Relative paths are under the data directory. "
        "Default: `<data_dir>/state.db`.",
    )
    busy_timeout_ms: int = Field(
        30_000,
        ge=0,
        le=3_600_000,
        description="How long a write waits for another process's write lock before the "
        "batch fails as transient (and is retried), in milliseconds.",
    )
    cache_size_mb: int = Field(
        16,
        ge=1,
        le=4096,
        description="Page cache of each connection, in MiB (SQLite's default is 2). The dedupe "
        "keys and the delivery log grow with every record and take writes at random keys; a "
        "cache that holds their indexes' upper levels (about 8 MiB at 10 million records) keeps "
        "a write's cost flat as they grow. Pages are cached as they are read: a process's "
        "memory grows by at most this much per connection it uses (a handful).",
    )


def _parse(model: type[StrictModel], settings: dict[str, Any]) -> Any:
    try:
        return model.model_validate(settings)
    except ValidationError as exc:
        raise ConfigError(
            ConfigIssue(
                file="pipeline.yaml",
                key=".".join(("state", *(str(part) for part in error["loc"]))),
                message=f"{error['msg']} (got {error.get('input')!r}).",
            )
            for error in exc.errors()
        ) from None


@register("states", "sqlite")
class SqliteStateBackend(StateBackend):
    """Opens the state store on a local SQLite file (the embedded deployment's default)."""

    Config = SqliteStateConfig

    def __init__(self, settings: dict[str, Any], data_dir: Path) -> None:
        self.config: SqliteStateConfig = _parse(SqliteStateConfig, settings)
        path = self.config.path or Path("state.db")
        self.path = path if path.is_absolute() else Path(data_dir) / path

    def open(self) -> StateStore:
        """Create the file's folder and return the store (not migrated; see ``open_state``)."""
        import sqlalchemy as sa

        from dps.state.sql import WRITE_OPTION, SqlStateStore, json_dumps

        self.path.parent.mkdir(parents=True, exist_ok=True)
        busy_ms = self.config.busy_timeout_ms
        cache_kib = self.config.cache_size_mb * 1024
        engine = sa.create_engine(
            f"sqlite+pysqlite:///{self.path}",
            # The driver's own timeout is the same busy wait; keep the two equal.
            connect_args={"timeout": busy_ms / 1000, "check_same_thread": False},
            json_serializer=json_dumps,
        )

        def on_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
            # Autocommit at the driver level: the "begin" listener below issues every BEGIN.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
                enable_wal(cursor, busy_ms / 1000)
                cursor.execute("PRAGMA synchronous = FULL")
                cursor.execute("PRAGMA foreign_keys = OFF")
                cursor.execute(f"PRAGMA cache_size = -{cache_kib}")
            finally:
                cursor.close()

        def on_begin(conn: sa.Connection) -> None:
            write = conn.get_execution_options().get(WRITE_OPTION, False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        sa.event.listen(engine, "connect", on_connect)
        sa.event.listen(engine, "begin", on_begin)
        return SqlStateStore(engine, backend="sqlite")
