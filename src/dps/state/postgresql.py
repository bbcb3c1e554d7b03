"""The scale-out state backend: PostgreSQL through psycopg 3, shared by every module instance.

Only the connection set-up lives here; the tables and queries are :mod:`dps.state.sql`. The
tables live in one schema (``public`` unless configured), created if missing, and every pooled
connection sets ``search_path`` to it, so the manual's ad-hoc queries (Runbook D.2) name the
tables unqualified, as written. A plain ``postgresql://`` DSN (the form ``psql`` and libpq take)
is accepted and rewritten to SQLAlchemy's psycopg 3 driver. SQLAlchemy and psycopg are imported
only when the store is opened, because the registry imports every module of this package.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, ValidationError, field_validator

from dps.config.secrets import SecretRef
from dps.core.errors import ConfigError, ConfigIssue, TransientError
from dps.core.model import StrictModel
from dps.core.registry import register
from dps.state.base import StateBackend, StateStore

if TYPE_CHECKING:
    import sqlalchemy as sa

#: DSN schemes accepted, and the SQLAlchemy driver they are rewritten to.
_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://")
_DRIVER = "postgresql+psycopg://"


class PostgresqlStateConfig(StrictModel):
    """``pipeline.yaml`` ``state:`` settings of the ``postgresql`` backend."""

    backend: str = Field("postgresql", description="The backend's name, `postgresql`.")
    dsn: str = Field(
        description="Where the database is: `postgresql://user@host:5432/dbname` (also "
        "`postgresql+psycopg://...`). Keep the password out of it: use `password_ref`, "
        "`PGPASSWORD` or `~/.pgpass`."
    )
    password_ref: SecretRef | None = Field(
        None, description="The password as a secret reference (`env:`, `file:` or `vault:`)."
    )
    db_schema: str = Field(
        "public",
        alias="schema",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="The schema holding the tables; created if missing. Lower-case letters, "
        "digits and `_`, so operators can name the tables unquoted.",
    )
    pool_size: int = Field(
        5, ge=1, le=1000, description="Connections each process keeps open to the database."
    )
    max_overflow: int = Field(
        5, ge=0, le=1000, description="Extra connections a process may open above `pool_size`."
    )
    connect_timeout_s: int = Field(
        10, ge=1, le=600, description="How long to wait for a connection before the call fails."
    )

    @field_validator("dsn")
    @classmethod
    def _check_dsn(cls, value: str) -> str:
        if not value.startswith(_SCHEMES):
            raise ValueError("expected a PostgreSQL DSN such as postgresql://user@host:5432/dbname")
        return value

    @property
    def url(self) -> str:
        """The DSN with SQLAlchemy's psycopg 3 driver name."""
        return _DRIVER + self.dsn.split("://", 1)[1]


def _parse(settings: dict[str, Any]) -> PostgresqlStateConfig:
    try:
        return PostgresqlStateConfig.model_validate(settings)
    except ValidationError as exc:
        raise ConfigError(
            ConfigIssue(
                file="pipeline.yaml",
                key=".".join(("state", *(str(part) for part in error["loc"]))),
                message=f"{error['msg']} (got {error.get('input')!r}).",
            )
            for error in exc.errors()
        ) from None


@register("states", "postgresql")
class PostgresqlStateBackend(StateBackend):
    """Opens the state store on a PostgreSQL database (the scale-out deployment)."""

    Config = PostgresqlStateConfig

    def __init__(self, settings: dict[str, Any], data_dir: Path) -> None:
        self.config = _parse(settings)

    def _engine(self, **options: Any) -> sa.Engine:
        import sqlalchemy as sa

        from dps.state.sql import json_dumps

        url = sa.make_url(self.config.url)
        if self.config.password_ref is not None:
            url = url.set(password=self.config.password_ref.resolve())
        return sa.create_engine(
            url,
            connect_args={
                "connect_timeout": self.config.connect_timeout_s,
                "application_name": "dps",
            },
            json_serializer=json_dumps,
            **options,
        )

    def _ensure_schema(self) -> None:
        """Create the schema if it is missing, before any pooled connection points at it."""
        import sqlalchemy as sa
        from sqlalchemy.pool import NullPool

        schema = self.config.db_schema
        engine = self._engine(poolclass=NullPool)
        try:
            with engine.begin() as conn:
                exists = conn.scalar(
                    sa.text("SELECT 1 FROM pg_namespace WHERE nspname = :schema"),
                    {"schema": schema},
                )
                if not exists:
                    # Two processes starting at once would race on CREATE SCHEMA (even with
                    # IF NOT EXISTS, which is not atomic); the lock serialises them.
                    conn.execute(
                        sa.text("SELECT pg_advisory_xact_lock(hashtext(:name))"),
                        {"name": f"dps-schema:{schema}"},
                    )
                    conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        except sa.exc.OperationalError as exc:
            raise TransientError(f"The postgresql state store is unavailable: {exc.orig}") from exc
        finally:
            engine.dispose()

    def open(self) -> StateStore:
        """Create the schema if needed and return the store (not migrated; see ``open_state``)."""
        import sqlalchemy as sa

        from dps.state.sql import SqlStateStore

        self._ensure_schema()
        schema = self.config.db_schema
        engine = self._engine(
            pool_size=self.config.pool_size, max_overflow=self.config.max_overflow
        )

        def on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Outside any transaction, so the setting holds for the connection's whole life.
            autocommit = dbapi_connection.autocommit
            dbapi_connection.autocommit = True
            try:
                dbapi_connection.execute(f'SET search_path TO "{schema}"')
            finally:
                dbapi_connection.autocommit = autocommit

        # insert=True: before SQLAlchemy's first-connect set-up, which reads current_schema().
        sa.event.listen(engine, "connect", on_connect, insert=True)
        return SqlStateStore(engine, backend="postgresql")
