"""``http``: POST records to an HTTP endpoint, one per request or a batch (JSON array or NDJSON).

Authentication: ``bearer`` (token reference), ``basic`` (user and password references),
``api_key`` (a header) or ``oauth2`` client credentials (the token is fetched from
``token_url`` and refreshed before it expires or on a 401). Every request carries an idempotency
key header (``Idempotency-Key`` by default): the record id for a single record, a hash of the
batch's record ids for a batch, so the receiver can drop a retry it has already applied.

Success is a status in ``success_codes`` (any 2xx by default). Other answers are classified by
:func:`~dps.gamma.destinations.base.classify_http_status`: 429 (and 503 with ``Retry-After``)
throttle, honouring ``Retry-After``; 408 and 5xx are retryable; other 4xx are permanent (Gamma
splits a batch to isolate the records at fault; in ``single`` mode the record goes to the DLQ).
Connection errors and timeouts (``delivery.timeout_ms``) are retryable. A rendered body larger
than ``max_body_bytes`` is a poison record (it could never be accepted).
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from collections.abc import Sequence
from typing import Any, Literal

import httpx
import msgspec
from pydantic import Field, model_validator

from dps.config.secrets import SecretRef
from dps.core.model import StrictModel
from dps.core.record import Record
from dps.core.registry import register
from dps.gamma.destinations.base import (
    DeliveryError,
    Destination,
    RecordError,
    Rejected,
    classify_http_status,
    parse_retry_after,
    render_record,
)

_json = msgspec.json.Encoder()


class HttpAuth(StrictModel):
    """``connection.auth:`` of an ``http`` destination."""

    type: Literal["none", "bearer", "basic", "api_key", "oauth2"] = Field(
        default="none", description="Authentication scheme."
    )
    token_ref: SecretRef | None = Field(default=None, description="bearer: the token.")
    username: str | None = Field(default=None, description="basic: the user name.")
    username_ref: SecretRef | None = Field(default=None, description="basic: user name reference.")
    password_ref: SecretRef | None = Field(default=None, description="basic: password reference.")
    header: str = Field(default="X-API-Key", description="api_key: the header carrying the key.")
    api_key_ref: SecretRef | None = Field(default=None, description="api_key: the key.")
    token_url: str | None = Field(default=None, description="oauth2: the token endpoint.")
    client_id: str | None = Field(default=None, description="oauth2: the client id.")
    client_secret_ref: SecretRef | None = Field(
        default=None, description="oauth2: the client secret reference."
    )
    scope: str | None = Field(default=None, description="oauth2: the scope asked for.")

    @model_validator(mode="after")
    def _complete(self) -> HttpAuth:
        needs = {
            "bearer": ["token_ref"],
            "basic": ["password_ref"],
            "api_key": ["api_key_ref"],
            "oauth2": ["token_url", "client_id", "client_secret_ref"],
        }.get(self.type, [])
        missing = [name for name in needs if getattr(self, name) is None]
        if missing:
            raise ValueError(f"auth type {self.type} needs {', '.join(missing)}")
        return self


class HttpConnection(StrictModel):
    """``connection:`` of an ``http`` destination."""

    url: str = Field(description="The endpoint records are POSTed to (http:// or https://).")
    method: Literal["POST", "PUT"] = Field(default="POST", description="HTTP method.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers.")
    auth: HttpAuth = Field(default_factory=HttpAuth, description="Authentication.")
    verify_tls: bool = Field(default=True, description="Verify the server's TLS certificate.")
    idempotency_header: str = Field(
        default="Idempotency-Key", description="Header carrying the idempotency key ('' for none)."
    )
    success_codes: list[int] = Field(
        default_factory=list, description="Status codes that mean delivered (empty: any 2xx)."
    )
    max_body_bytes: int = Field(
        default=10_000_000, ge=1, description="Largest body sent; a bigger record is poison."
    )

    @model_validator(mode="after")
    def _scheme(self) -> HttpConnection:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url {self.url!r} must start with http:// or https://")
        return self


class HttpFormat(StrictModel):
    """``format:`` of an ``http`` destination."""

    type: Literal["json", "ndjson"] = Field(
        default="json", description="json: one object or an array; ndjson: one line per record."
    )
    mode: Literal["single", "batch"] = Field(
        default="batch", description="single: one request per record; batch: one per batch."
    )
    envelope: bool = Field(
        default=True, description="Send the envelope (id, source, quality, payload); else payload."
    )


class HttpDestinationConfig(StrictModel):
    """The type-specific sections of an ``http`` destination."""

    connection: HttpConnection
    format: HttpFormat = Field(default_factory=HttpFormat)


#: Kept for callers of the former name.
render = render_record


@register("destinations", "http")
class HttpDestination(Destination):
    """POSTs records; see the module docstring."""

    Config = HttpDestinationConfig
    spec: HttpDestinationConfig

    def __init__(self, destination_id: str, spec: Any) -> None:
        super().__init__(destination_id, spec)
        self._client: httpx.Client | None = None
        self._token: tuple[str, float] | None = None
        self._token_lock = threading.Lock()

    def open(self) -> None:
        c = self.spec.connection
        headers = {"User-Agent": "dps-gamma", **c.headers}
        auth: httpx.Auth | None = None
        if c.auth.type == "basic":
            user = c.auth.username_ref.resolve() if c.auth.username_ref else c.auth.username
            assert c.auth.password_ref is not None
            auth = httpx.BasicAuth(user or "", c.auth.password_ref.resolve())
        elif c.auth.type == "bearer":
            assert c.auth.token_ref is not None
            headers["Authorization"] = f"Bearer {c.auth.token_ref.resolve()}"
        elif c.auth.type == "api_key":
            assert c.auth.api_key_ref is not None
            headers[c.auth.header] = c.auth.api_key_ref.resolve()
        self._client = httpx.Client(
            headers=headers, auth=auth, verify=c.verify_tls, timeout=self.timeout_s
        )

    def _oauth_token(self, *, refresh: bool = False) -> str:
        a = self.spec.connection.auth
        with self._token_lock:
            if self._token and not refresh and self._token[1] > time.monotonic() + 30:
                return self._token[0]
            assert self._client is not None and a.token_url and a.client_secret_ref
            data = {"grant_type": "client_credentials", "client_id": a.client_id or ""}
            if a.scope:
                data["scope"] = a.scope
            try:
                resp = self._client.post(
                    a.token_url,
                    data=data,
                    auth=(a.client_id or "", a.client_secret_ref.resolve()),
                )
            except httpx.HTTPError as exc:
                raise DeliveryError(f"OAuth2 token request failed: {exc}", "retryable") from exc
            if resp.status_code != 200:
                klass = classify_http_status(resp.status_code, resp.headers.get("retry-after"))
                raise DeliveryError(
                    f"OAuth2 token endpoint answered {resp.status_code}: {resp.text[:200]}",
                    "retryable" if klass == "permanent" else klass,
                    reason="auth_failed",
                )
            body = resp.json()
            token = str(body["access_token"])
            self._token = (token, time.monotonic() + float(body.get("expires_in", 3600)))
            return token

    def _idempotency_key(self, records: Sequence[Record]) -> str:
        if len(records) == 1:
            return records[0].record_id
        digest = hashlib.sha256("\n".join(r.record_id for r in records).encode()).digest()
        return base64.urlsafe_b64encode(digest[:18]).decode()

    def _body(self, records: Sequence[Record]) -> tuple[bytes, str]:
        fmt = self.spec.format
        objects = [self.document(r, fmt.envelope) for r in records]
        if fmt.type == "ndjson":
            return b"".join(_json.encode(o) + b"\n" for o in objects), "application/x-ndjson"
        if fmt.mode == "single":
            return _json.encode(objects[0]), "application/json"
        return _json.encode(objects), "application/json"

    def _post(self, records: Sequence[Record]) -> None:
        assert self._client is not None, "open() first"
        c = self.spec.connection
        body, content_type = self._body(records)
        if len(body) > c.max_body_bytes:
            if len(records) == 1:
                raise RecordError(
                    "record_too_large",
                    f"The record renders to {len(body)} bytes; the destination takes at most "
                    f"{c.max_body_bytes} (connection.max_body_bytes).",
                    "poison",
                )
            raise DeliveryError(f"The batch renders to {len(body)} bytes.", "permanent")
        headers = {"Content-Type": content_type}
        if c.idempotency_header:
            headers[c.idempotency_header] = self._idempotency_key(records)
        for attempt in range(2):
            if c.auth.type == "oauth2":
                headers["Authorization"] = f"Bearer {self._oauth_token(refresh=attempt > 0)}"
            try:
                resp = self._client.request(c.method, c.url, content=body, headers=headers)
            except httpx.TimeoutException as exc:
                raise DeliveryError(f"{c.url}: timed out ({exc}).", "retryable") from exc
            except httpx.HTTPError as exc:
                raise DeliveryError(f"{c.url}: {type(exc).__name__}: {exc}", "retryable") from exc
            if resp.status_code == 401 and c.auth.type == "oauth2" and attempt == 0:
                continue  # the token may have been revoked: fetch a new one once
            break
        ok = resp.status_code in c.success_codes if c.success_codes else resp.is_success
        if ok:
            return
        retry_after = resp.headers.get("retry-after")
        klass = classify_http_status(resp.status_code, retry_after)
        raise DeliveryError(
            f"{c.url} answered {resp.status_code}: {resp.text[:300]}",
            klass,
            retry_after=parse_retry_after(retry_after),
            reason=f"http_{resp.status_code}",
        )

    def deliver(self, records: Sequence[Record]) -> Rejected:
        if not records:
            return []
        if self.spec.format.mode == "batch":
            self._post(records)
            return []
        rejected: Rejected = []
        for record in records:
            try:
                self._post([record])
            except RecordError as exc:
                rejected.append((record, exc))
            except DeliveryError as exc:
                if exc.error_class != "permanent":
                    raise
                rejected.append((record, RecordError(exc.reason, str(exc), "permanent")))
        return rejected

    def test(self) -> dict[str, Any]:
        assert self._client is not None
        try:
            resp = self._client.request("HEAD", self.spec.connection.url)
        except httpx.HTTPError as exc:
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        return {"ok": resp.status_code < 500, "status_code": resp.status_code}

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
