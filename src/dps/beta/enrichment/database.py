"""``database``: a SQL query with a ``:key`` parameter, on PostgreSQL or SQLite.

The query names the key as ``= :key`` (``SELECT id, name, tier FROM customers WHERE id =
:key``); for a batch it runs once with ``IN (...)`` over the distinct missing keys (SQLAlchemy's
expanding parameter), and each result row is filed under its ``key_column`` (default: the first
column). A query that uses ``:key`` otherwise (``LIKE :key``) runs once per key, in one
connection. ``scan_query`` (no parameters) lists the whole source for warmup and full refresh.

Connection errors, timeouts (``statement_timeout`` on PostgreSQL, the lock wait on SQLite) and
SQL errors make the source unavailable. SQLAlchemy Core gives one code path for both dialects and
a pool that checks connections before use, so a restarted database is picked up again.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final

from pydantic import Field, field_validator

from dps.beta.enrichment.base import EnrichmentSource, Row, SourceUnavailable, key_text
from dps.config.secrets import SecretRef
from dps.core.errors import SecretError
from dps.core.model import StrictModel
from dps.core.registry import register

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

_EQUALS_KEY: Final = re.compile(r"=\s*:key\b")
_KEY: Final = re.compile(r":key\b")


class DatabaseEnrichmentConfig(StrictModel):
    """``connection:`` of a ``database`` enrichment source."""

    url: str = Field(
        description="postgresql://user@host:5432/db or sqlite:///path/to/file.db "
        "(no password here: use password_ref)."
    )
    password_ref: SecretRef | None = Field(default=None, description="PostgreSQL password.")
    query: str = Field(description="SELECT with the parameter :key, e.g. WHERE id = :key.")
    key_column: str | None = Field(
        default=None, description="Result column holding the key; not set: the first column."
    )
    scan_query: str | None = Field(
        default=None, description="SELECT listing every row, for warmup and full refresh."
    )
    timeout_seconds: float = Field(
        default=5.0, gt=0, le=300, description="Connect and statement timeout in seconds."
    )

    @field_validator("url")
    @classmethod
    def _dialect(cls, value: str) -> str:
        if not value.startswith(("postgresql://", "postgresql+psycopg://", "sqlite:///")):
            raise ValueError(
                f"url {value!r} is not supported; expected postgresql://... or sqlite:///path"
            )
        return value

    @field_validator("query")
    @classmethod
    def _has_key(cls, value: str) -> str:
        if not _KEY.search(value):
            raise ValueError("query has no :key parameter; expected e.g. WHERE id = :key")
        return value


@register("enrichment", "database")
class DatabaseEnrichment(EnrichmentSource):
    """A batched keyed query (see the module docstring)."""

    Config = DatabaseEnrichmentConfig
    config: DatabaseEnrichmentConfig

    def __init__(self, name: str, config: Any) -> None:
        super().__init__(name, config)
        self._engine: Engine | None = None
        self._lock = threading.Lock()
        self.batched = bool(_EQUALS_KEY.search(config.query))

    @property
    def can_scan(self) -> bool:  # type: ignore[override]
        return self.config.scan_query is not None

    def _connect(self) -> Engine:
        import sqlalchemy as sa

        with self._lock:
            if self._engine is None:
                c = self.config
                url = sa.make_url(c.url.replace("postgresql://", "postgresql+psycopg://", 1))
                connect_args: dict[str, Any]
                if url.get_backend_name() == "sqlite":
                    connect_args = {"timeout": c.timeout_seconds}
                else:
                    try:
                        if c.password_ref:
                            url = url.set(password=c.password_ref.resolve())
                    except SecretError as exc:
                        raise SourceUnavailable(str(exc)) from exc
                    connect_args = {
                        "connect_timeout": max(1, int(c.timeout_seconds)),
                        "options": f"-c statement_timeout={int(c.timeout_seconds * 1000)}",
                    }
                self._engine = sa.create_engine(
                    url, pool_pre_ping=True, pool_size=2, connect_args=connect_args
                )
            return self._engine

    def _rows(self, statement: Any, params: dict[str, Any]) -> Iterator[tuple[str, Row]]:
        import sqlalchemy as sa

        try:
            with self._connect().connect() as conn:
                result = conn.execute(statement, params)
                columns = list(result.keys())
                rows = result.fetchall()
        except sa.exc.SQLAlchemyError as exc:
            raise SourceUnavailable(f"{self.name}: {type(exc).__name__}: {exc}") from exc
        key_column = self.config.key_column or columns[0]
        if key_column not in columns:
            raise SourceUnavailable(
                f"{self.name}: the query has no column {key_column!r} (key_column); "
                f"its columns are {columns}."
            )
        for row in rows:
            data = dict(zip(columns, row, strict=True))
            yield key_text(data[key_column]), data

    def fetch(self, keys: Sequence[str]) -> dict[str, Row]:
        import sqlalchemy as sa

        if self.batched:
            text = _EQUALS_KEY.sub("IN :key", self.config.query)
            statement = sa.text(text).bindparams(sa.bindparam("key", expanding=True))
            return dict(self._rows(statement, {"key": list(keys)}))
        found: dict[str, Row] = {}
        statement = sa.text(self.config.query)
        for key in keys:
            found.update(self._rows(statement, {"key": key}))
        return found

    def scan(self) -> tuple[int, Iterator[list[tuple[str, Row]]]]:
        import sqlalchemy as sa

        assert self.config.scan_query is not None
        items = list(self._rows(sa.text(self.config.scan_query), {}))

        def chunks() -> Iterator[list[tuple[str, Row]]]:
            for start in range(0, len(items), 1000):
                yield items[start : start + 1000]

        return len(items), chunks()

    def close(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None
