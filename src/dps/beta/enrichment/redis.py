"""``redis``: keys ``<key_prefix><key>`` holding a hash, or a JSON object in a string.

A batch's missing keys are read in one round trip (a pipeline of ``HGETALL``, or one ``MGET``).
Warmup and full refresh list the keys with ``SCAN MATCH <key_prefix>*``. A connection error or
timeout makes the source unavailable. The client (``redis``) is imported when the source is built.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from dps.beta.enrichment.base import EnrichmentSource, Row, SourceUnavailable
from dps.config.secrets import SecretRef
from dps.core.errors import SecretError
from dps.core.model import StrictModel
from dps.core.registry import register

if TYPE_CHECKING:
    import redis as redis_client


class RedisEnrichmentConfig(StrictModel):
    """``connection:`` of a ``redis`` enrichment source."""

    url: str = Field(default="redis://127.0.0.1:6379/0", description="Redis URL (redis://...).")
    password_ref: SecretRef | None = Field(default=None, description="Password reference.")
    key_prefix: str = Field(default="", description="Prefix of the Redis keys (customer:).")
    value_type: Literal["hash", "json"] = Field(
        default="hash", description="hash: HGETALL; json: GET of a JSON object."
    )
    timeout_seconds: float = Field(
        default=1.0, gt=0, le=60, description="Socket and connect timeout in seconds."
    )


@register("enrichment", "redis")
class RedisEnrichment(EnrichmentSource):
    """Batched reads (see the module docstring)."""

    Config = RedisEnrichmentConfig
    config: RedisEnrichmentConfig
    can_scan = True

    def __init__(self, name: str, config: Any) -> None:
        super().__init__(name, config)
        self._client: redis_client.Redis | None = None
        self._lock = threading.Lock()

    def _connect(self) -> redis_client.Redis:
        import redis

        with self._lock:
            if self._client is None:
                c = self.config
                try:
                    password = c.password_ref.resolve() if c.password_ref else None
                except SecretError as exc:
                    raise SourceUnavailable(str(exc)) from exc
                self._client = redis.Redis.from_url(
                    c.url,
                    password=password,
                    socket_timeout=c.timeout_seconds,
                    socket_connect_timeout=c.timeout_seconds,
                    decode_responses=True,
                )
            return self._client

    def _read(self, client: redis_client.Redis, names: Sequence[str]) -> list[Row | None]:
        import redis

        try:
            if self.config.value_type == "hash":
                pipe = client.pipeline(transaction=False)
                for name in names:
                    pipe.hgetall(name)
                hashes: list[dict[str, str]] = pipe.execute()
                return [dict(h) if h else None for h in hashes]
            raw: list[str | None] = client.mget(list(names))  # type: ignore[assignment]
        except redis.RedisError as exc:
            raise SourceUnavailable(f"redis {self.config.url}: {exc}") from exc
        rows: list[Row | None] = []
        for name, text in zip(names, raw, strict=True):
            if text is None:
                rows.append(None)
                continue
            try:
                value = json.loads(text)
            except ValueError:
                value = None
            if not isinstance(value, dict):
                raise SourceUnavailable(f"redis key {name} does not hold a JSON object.")
            rows.append(value)
        return rows

    def fetch(self, keys: Sequence[str]) -> dict[str, Row]:
        client = self._connect()
        prefix = self.config.key_prefix
        rows = self._read(client, [prefix + key for key in keys])
        return {key: row for key, row in zip(keys, rows, strict=True) if row is not None}

    def scan(self) -> tuple[int, Iterator[list[tuple[str, Row]]]]:
        import redis

        client = self._connect()
        prefix = self.config.key_prefix
        try:
            names = [str(n) for n in client.scan_iter(match=_glob_escape(prefix) + "*", count=1000)]
        except redis.RedisError as exc:
            raise SourceUnavailable(f"redis {self.config.url}: {exc}") from exc

        def chunks() -> Iterator[list[tuple[str, Row]]]:
            for start in range(0, len(names), 500):
                part = names[start : start + 500]
                rows = self._read(client, part)
                yield [
                    (name[len(prefix) :], row)
                    for name, row in zip(part, rows, strict=True)
                    if row is not None
                ]

        return len(names), chunks()

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)
