"""``http``: GET one URL per key (``{key}`` in the URL), with authentication and timeouts.

The distinct keys of a batch that the cache cannot answer are fetched concurrently over one
connection pool of ``max_concurrency`` connections, shared by the batches transformed at once.
A ``miss_status`` answer (404 by default) is a miss; a timeout, a refused connection or any other
non-2xx answer makes the source unavailable for the whole fetch, so ``on_unavailable`` decides.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal
from urllib.parse import quote

import httpx
from pydantic import Field, field_validator, model_validator

from dps.beta.enrichment.base import EnrichmentSource, Row, SourceUnavailable
from dps.config.secrets import SecretRef
from dps.core.errors import SecretError
from dps.core.model import StrictModel
from dps.core.record import get_path
from dps.core.registry import register


class HttpEnrichmentAuth(StrictModel):
    """``connection.auth:`` of an ``http`` enrichment source."""

    type: Literal["none", "bearer", "basic", "api_key"] = Field(
        default="none", description="Authentication scheme."
    )
    token_ref: SecretRef | None = Field(default=None, description="bearer: the token.")
    username: str | None = Field(default=None, description="basic: the user name.")
    password_ref: SecretRef | None = Field(default=None, description="basic: the password.")
    header: str = Field(default="X-API-Key", description="api_key: the header carrying the key.")
    api_key_ref: SecretRef | None = Field(default=None, description="api_key: the key.")

    @model_validator(mode="after")
    def _complete(self) -> HttpEnrichmentAuth:
        needs = {
            "bearer": ["token_ref"],
            "basic": ["username", "password_ref"],
            "api_key": ["api_key_ref"],
        }.get(self.type, [])
        missing = [name for name in needs if getattr(self, name) is None]
        if missing:
            raise ValueError(f"auth type {self.type} needs {', '.join(missing)}")
        return self


class HttpEnrichmentConfig(StrictModel):
    """``connection:`` of an ``http`` enrichment source."""

    url: str = Field(
        description="URL template; {key} is replaced by the URL-encoded key "
        "(e.g. https://crm.internal/customers/{key})."
    )
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers.")
    auth: HttpEnrichmentAuth = Field(
        default_factory=HttpEnrichmentAuth, description="Authentication."
    )
    timeout_seconds: float = Field(
        default=2.0, gt=0, le=300, description="Seconds to wait for an answer."
    )
    connect_timeout_seconds: float = Field(
        default=1.0, gt=0, le=60, description="Seconds to wait for the connection."
    )
    response_path: str | None = Field(
        default=None, description="Dotted path of the row in the JSON answer; not set: the answer."
    )
    miss_status: list[int] = Field(
        default_factory=lambda: [404], description="Statuses that mean the key does not exist."
    )
    max_concurrency: int = Field(
        default=8,
        ge=1,
        le=256,
        description="Requests in flight at once to this source (all batches together).",
    )

    @field_validator("url")
    @classmethod
    def _has_key(cls, value: str) -> str:
        if "{key}" not in value:
            raise ValueError(f"url {value!r} has no {{key}}; expected the key's place in the URL")
        return value


@register("enrichment", "http")
class HttpEnrichment(EnrichmentSource):
    """One GET per key (see the module docstring)."""

    Config = HttpEnrichmentConfig
    config: HttpEnrichmentConfig

    def __init__(self, name: str, config: Any) -> None:
        super().__init__(name, config)
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()

    def _connect(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                c = self.config
                headers = dict(c.headers)
                auth: httpx.Auth | None = None
                try:
                    if c.auth.type == "bearer" and c.auth.token_ref:
                        headers["Authorization"] = f"Bearer {c.auth.token_ref.resolve()}"
                    elif c.auth.type == "api_key" and c.auth.api_key_ref:
                        headers[c.auth.header] = c.auth.api_key_ref.resolve()
                    elif c.auth.type == "basic" and c.auth.password_ref and c.auth.username:
                        auth = httpx.BasicAuth(c.auth.username, c.auth.password_ref.resolve())
                except SecretError as exc:
                    raise SourceUnavailable(str(exc)) from exc
                self._client = httpx.Client(
                    headers=headers,
                    auth=auth,
                    timeout=httpx.Timeout(c.timeout_seconds, connect=c.connect_timeout_seconds),
                    limits=httpx.Limits(max_connections=c.max_concurrency),
                )
            return self._client

    def _get(self, client: httpx.Client, key: str) -> Row | None:
        url = self.config.url.replace("{key}", quote(key, safe=""))
        try:
            response = client.get(url)
        except httpx.HTTPError as exc:
            raise SourceUnavailable(f"GET {url} failed: {type(exc).__name__}: {exc}") from exc
        if response.status_code in self.config.miss_status:
            return None
        if not response.is_success:
            raise SourceUnavailable(f"GET {url} answered {response.status_code}.")
        try:
            body = response.json()
        except ValueError as exc:
            raise SourceUnavailable(f"GET {url} did not answer JSON: {exc}") from exc
        if self.config.response_path:
            body = get_path(body, self.config.response_path) if isinstance(body, dict) else None
        if body is None:
            return None
        if not isinstance(body, dict):
            raise SourceUnavailable(
                f"GET {url} answered a JSON {type(body).__name__}; expected an object."
            )
        return body

    def fetch(self, keys: Sequence[str]) -> dict[str, Row]:
        client = self._connect()
        if len(keys) == 1:
            row = self._get(client, keys[0])
            return {} if row is None else {keys[0]: row}
        workers = min(self.config.max_concurrency, len(keys))
        with ThreadPoolExecutor(workers, thread_name_prefix=f"enrich-{self.name}") as pool:
            rows = list(pool.map(lambda k: self._get(client, k), keys))
        return {key: row for key, row in zip(keys, rows, strict=True) if row is not None}

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
