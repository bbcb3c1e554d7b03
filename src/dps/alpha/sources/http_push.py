"""``http_push``: an HTTP endpoint that senders POST batches of records to.

Each ``http_push`` source listens on its own address (``connection.bind``:``connection.port``,
path ``connection.path``), apart from Alpha's admin API: senders are outside systems with their
own token, the admin API is for operators, and a busy ingest endpoint must not slow down health
probes. The server starts with the first fetch of an enabled source and stops when the source is
disabled or removed (its waiting batches are made durable first).

A request body is a JSON object, a JSON array of objects, or NDJSON (one object per line); the
content type does not matter. The answers:

- ``200 {"accepted": n, "batch_id": ...}`` only once the batch is durable: the handler hands the
  batch to Alpha's worker and waits until Alpha has committed it (records in the transform queue,
  invalid ones in the DLQ). ``batch_id`` is the ``Idempotency-Key`` or ``X-Request-Id`` header when
  one is sent, so a sender that retries a batch gets the same origins and its records are
  recognised as replays rather than duplicates.
- ``400 {"error": ..., "errors": [{"line": n, "error": ...}]}`` when the body is not JSON/NDJSON or
  holds something other than objects; nothing of that batch is taken.
- ``401`` without the bearer token (``auth_token_ref``), ``413`` above ``max_body_bytes``.
- ``429`` with ``Retry-After`` when the ingest buffer (``BUFFER_CAPACITY``) or this source's
  waiting room (``max_pending_records``) is full; ``503`` with ``Retry-After`` while Alpha does
  not take work (paused, emergency stop, the source paused or draining) or when the batch was not
  durable within ``ack_timeout_ms`` (it may still become durable: a retry is then a replay).

Offsets: each committed batch moves this source's ``http_push`` position forward by one, with the
batch's record count, so the run summary counts pushed records like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import msgspec
from pydantic import Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from dps.alpha.sources.base import Fetch, RawItem, Source, SourceContext
from dps.config.secrets import SecretRef
from dps.core.errors import SecretError, TransientError
from dps.core.logging import get_logger
from dps.core.model import StrictModel
from dps.core.registry import register
from dps.state.base import StateStore

__all__ = ["HttpPushConnection", "HttpPushSource"]

POSITION_KEY = "http_push"
#: How many lines of a bad batch are reported in a 400.
MAX_REPORTED_ERRORS = 20

_log = get_logger("source.http_push")
_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


class HttpPushConnection(StrictModel):
    """``connection:`` of an ``http_push`` source."""

    bind: str = Field(default="127.0.0.1", description="Address the endpoint listens on.")
    port: int = Field(
        ge=0, le=65535, description="Port of the endpoint (its own; 0 picks a free port)."
    )
    path: str = Field(default="/ingest", description="Path senders POST to.")
    auth_token_ref: SecretRef | None = Field(
        default=None,
        description="Bearer token senders must present (none: the endpoint is open; only for "
        "a trusted network).",
    )
    max_body_bytes: int = Field(
        default=10 * 1024 * 1024, ge=1, description="Largest request body taken (else 413)."
    )
    max_pending_records: int = Field(
        default=10000,
        ge=1,
        description="Records received and not yet durable before senders get 429.",
    )
    ack_timeout_ms: int = Field(
        default=30000, ge=1, description="Longest wait for a batch to become durable (else 503)."
    )
    retry_after_seconds: int = Field(
        default=1, ge=0, description="Retry-After sent with 429 and 503 answers."
    )


@dataclass(slots=True)
class _Batch:
    batch_id: str
    items: list[RawItem]
    loop: asyncio.AbstractEventLoop
    done: asyncio.Future[bool]
    created: float = field(default_factory=time.monotonic)
    received_at: float = field(default_factory=time.time)


class BadBatch(ValueError):
    """A body that is not JSON objects; ``errors`` says where."""

    def __init__(self, message: str, errors: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.errors = errors


def split_body(body: bytes) -> list[bytes]:
    """The records of a body (JSON object, JSON array of objects, or NDJSON) as JSON bytes.

    Raises :class:`BadBatch` naming every bad line (at most ``MAX_REPORTED_ERRORS``).
    """
    try:
        document = _decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        document = None
        whole_json = False
    else:
        whole_json = True
    if whole_json:
        values = document if isinstance(document, list) else [document]
        bad = [
            {"index": i, "error": f"is a JSON {type(v).__name__}; expected an object."}
            for i, v in enumerate(values)
            if not isinstance(v, dict)
        ]
        if bad:
            raise BadBatch("The batch holds values that are not JSON objects.", bad)
        if isinstance(document, dict):
            return [body.strip()]
        return [_encode(v) for v in values]
    records: list[bytes] = []
    errors: list[dict[str, Any]] = []
    for number, line in enumerate(body.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            value = _decode(line)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            errors.append({"line": number, "error": f"Not valid JSON: {exc}."})
            continue
        if not isinstance(value, dict):
            errors.append(
                {"line": number, "error": f"is a JSON {type(value).__name__}; expected an object."}
            )
            continue
        records.append(line.strip())
    if errors:
        raise BadBatch(
            f"The body is neither a JSON document nor NDJSON: {len(errors)} bad line(s).",
            errors[:MAX_REPORTED_ERRORS],
        )
    return records


@register("sources", "http_push")
class HttpPushSource(Source):
    """Receives pushed batches (see the module docstring)."""

    Config = HttpPushConnection
    connection: HttpPushConnection

    def __init__(
        self,
        source_id: str,
        connection: Any,
        state: StateStore,
        *,
        context: SourceContext | None = None,
    ) -> None:
        super().__init__(source_id, connection, state, context=context)
        self._lock = threading.Lock()
        self._waiting: deque[_Batch] = deque()
        self._inflight: dict[int, list[_Batch]] = {}
        self._pending_records = 0
        self._seq = max(state.offsets(source_id).values(), default=0)
        self._server: Any = None
        self._token: str | None = None
        self._closed = False
        self._stats = {"batches": 0, "rejected_400": 0, "rejected_401": 0, "rejected_429": 0}

    # -- the endpoint ---------------------------------------------------------------------------
    @property
    def url(self) -> str | None:
        """The endpoint's URL once it listens."""
        if self._server is None:
            return None
        return f"{self._server.url}{self.connection.path}"

    def _start(self) -> None:
        from dps.admin.server import AdminServer, AdminServerError

        c = self.connection
        if c.auth_token_ref is not None:
            try:
                self._token = c.auth_token_ref.resolve()
            except SecretError as exc:
                raise TransientError(f"Source {self.source_id}: {exc}") from None
        app = Starlette(routes=[Route(c.path, self._handle, methods=["POST"])])
        server = AdminServer(app, c.bind, c.port)
        try:
            server.start()
        except AdminServerError as exc:
            raise TransientError(
                f"Source {self.source_id}: the push endpoint cannot listen on {c.bind}:{c.port} "
                f"({exc.__cause__ or exc}); set another connection.port."
            ) from None
        self._server = server
        _log.info("Push endpoint listening.", source_id=self.source_id, url=self.url)

    def _answer(self, status: int, body: dict[str, Any], *, retry: bool = False) -> JSONResponse:
        headers = {"Retry-After": str(self.connection.retry_after_seconds)} if retry else None
        return JSONResponse(body, status_code=status, headers=headers)

    async def _handle(self, request: Request) -> JSONResponse:
        c = self.connection
        if self._token is not None:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self._token}".encode()):
                self._stats["rejected_401"] += 1
                return JSONResponse(
                    {"error": "A valid bearer token is required."},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
        if self._closed or not self.context.accepting():
            return self._answer(
                503, {"error": "Intake is stopped (paused or draining); retry later."}, retry=True
            )
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > c.max_body_bytes:
            return self._answer(
                413, {"error": f"The body is larger than {c.max_body_bytes} bytes."}
            )
        body = await request.body()
        if len(body) > c.max_body_bytes:
            return self._answer(
                413, {"error": f"The body is larger than {c.max_body_bytes} bytes."}
            )
        try:
            records = split_body(body)
        except BadBatch as exc:
            self._stats["rejected_400"] += 1
            return self._answer(400, {"error": str(exc), "errors": exc.errors})
        if not records:
            return self._answer(400, {"error": "The body holds no records.", "errors": []})
        with self._lock:
            full = self._pending_records + len(records) > c.max_pending_records
        if full or self.context.buffer_room() < len(records):
            self._stats["rejected_429"] += 1
            return self._answer(
                429, {"error": "The ingest buffer is full; retry later."}, retry=True
            )
        batch_id = (
            request.headers.get("idempotency-key")
            or request.headers.get("x-request-id")
            or uuid.uuid4().hex
        )
        items = [
            RawItem(data, f"push:{batch_id}:{i}", POSITION_KEY) for i, data in enumerate(records)
        ]
        loop = asyncio.get_running_loop()
        batch = _Batch(batch_id, items, loop, loop.create_future())
        with self._lock:
            self._waiting.append(batch)
            self._pending_records += len(items)
        self.context.wake()
        try:
            ok = await asyncio.wait_for(asyncio.shield(batch.done), c.ack_timeout_ms / 1000)
        except TimeoutError:
            return self._answer(
                503,
                {
                    "error": "The batch was not made durable in time; send it again with the same "
                    "Idempotency-Key.",
                    "batch_id": batch_id,
                },
                retry=True,
            )
        if not ok:
            return self._answer(
                503,
                {
                    "error": "The source is being replaced; send the batch again.",
                    "batch_id": batch_id,
                },
                retry=True,
            )
        return self._answer(200, {"accepted": len(items), "batch_id": batch_id})

    @staticmethod
    def _settle(batch: _Batch, ok: bool) -> None:
        def resolve() -> None:
            if not batch.done.done():
                batch.done.set_result(ok)

        # A closed loop (RuntimeError) means nobody waits for the answer any more.
        with contextlib.suppress(RuntimeError):
            batch.loop.call_soon_threadsafe(resolve)

    # -- the Source contract --------------------------------------------------------------------
    def fetch(self, max_items: int) -> Fetch:
        if self._server is None and not self._closed:
            self._start()
        out = Fetch()
        taken: list[_Batch] = []
        with self._lock:
            while self._waiting and (
                not taken or len(out.items) + len(self._waiting[0].items) <= max_items
            ):
                batch = self._waiting.popleft()
                if batch.done.done():  # the sender gave up (timeout): it will send again
                    self._pending_records -= len(batch.items)
                    continue
                taken.append(batch)
                out.items.extend(batch.items)
            if not taken:
                return out
            self._seq += 1
            self._inflight[self._seq] = taken
        out.ends[POSITION_KEY] = self._seq
        return out

    def commit(self, fetch: Fetch, records_read: dict[str, int]) -> None:
        seq = fetch.ends.get(POSITION_KEY)
        if seq is None:
            return
        self.state.commit_offset(
            self.source_id, POSITION_KEY, seq, records_read.get(POSITION_KEY, 0)
        )
        with self._lock:
            batches = self._inflight.pop(seq, [])
            self._pending_records -= sum(len(b.items) for b in batches)
        self._stats["batches"] += len(batches)
        for batch in batches:
            self._settle(batch, True)

    def rewind(self) -> None:
        with self._lock:
            for seq in sorted(self._inflight, reverse=True):
                for batch in reversed(self._inflight[seq]):
                    self._waiting.appendleft(batch)
            self._inflight.clear()

    def pending(self) -> int:
        with self._lock:
            return self._pending_records

    def held_since(self) -> float | None:
        with self._lock:
            held = list(self._waiting) + [b for bs in self._inflight.values() for b in bs]
        return min((b.received_at for b in held), default=None)

    def stop_intake(self) -> None:
        self._closed = True

    def rotate_credentials(self) -> dict[str, Any]:
        """Read ``auth_token_ref`` again: senders must present its current value from now on."""
        ref = self.connection.auth_token_ref
        if ref is None:
            return {"changed": False}
        try:
            token = ref.resolve()
        except SecretError as exc:
            raise TransientError(f"Source {self.source_id}: {exc}") from None
        changed = self._token is not None and not hmac.compare_digest(token, self._token)
        if self._server is not None:
            self._token = token
        return {"changed": changed}

    def refresh_credentials(self) -> None:
        try:
            self.rotate_credentials()
        except TransientError as exc:
            _log.warning(
                "The push token cannot be read again; the endpoint keeps the one it has.",
                source_id=self.source_id,
                error=str(exc),
            )

    def test(self) -> dict[str, Any]:
        return {
            "ok": True,
            "listening": self.url is not None,
            "url": self.url
            or f"http://{self.connection.bind}:{self.connection.port}"
            f"{self.connection.path} (starts when the source is enabled)",
        }

    def info(self) -> dict[str, Any]:
        return {"url": self.url, **self._stats}

    def open_connections(self) -> int:
        return 1 if self.url is not None else 0

    def close(self) -> None:
        self._closed = True
        with self._lock:
            left = list(self._waiting) + [b for bs in self._inflight.values() for b in bs]
            self._waiting.clear()
            self._inflight.clear()
            self._pending_records = 0
        for batch in left:
            self._settle(batch, False)
        if self._server is not None:
            self._server.stop()
            self._server = None
