"""``nats``: a JetStream durable pull consumer on a configured stream and subject.

Messages are fetched in batches of at most what the ingest buffer has room for, handed out as
raw items (origin ``nats:<stream>:<stream sequence>``, the same on every redelivery, so a replay
is recognised as one), and **acked only in** :meth:`NatsSource.commit`, i.e. once their records
are durable in the transform queue (``ack_sync``: the server has recorded the ack). What is not
acked when Alpha stops or crashes is redelivered by the server after ``ack_wait_seconds``; a
rewind (the ingest failed) naks the messages so they come back at once. ``max_ack_pending``
bounds what the consumer hands out unacked, and nothing is fetched while the buffer is full.

nats-py is asyncio and the source contract is synchronous: the source runs one event loop in a
daemon thread and waits on it for at most ``fetch_wait_ms`` per fetch (an idle stream costs one
short wait per worker step). ``nats`` is imported inside methods (house rule 13).

With ``create_stream: true`` a missing stream is created with ``subjects: [subject]`` (useful in
development; in production the stream usually belongs to the publisher). An existing durable
consumer is reused as it is, so its position survives restarts and redeploys.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from pydantic import Field

from dps.alpha.sources.base import Fetch, RawItem, Source, SourceContext
from dps.config.secrets import SecretRef
from dps.core.errors import SecretError, TransientError
from dps.core.logging import get_logger
from dps.core.model import StrictModel
from dps.core.registry import register
from dps.state.base import StateStore

T = TypeVar("T")
log = get_logger("alpha.nats")
POSITION_KEY = "jetstream"


class NatsConnection(StrictModel):
    """``connection:`` of a ``nats`` source."""

    url: str = Field(
        default="nats://127.0.0.1:4222", description="NATS server URL(s), comma-separated."
    )
    stream: str = Field(description="JetStream stream to consume.")
    subject: str = Field(description="Subject (filter) consumed within the stream, e.g. orders.>.")
    durable: str = Field(
        description="Durable consumer name: the position is kept by the server under this name."
    )
    create_stream: bool = Field(
        default=False, description="Create the stream (subjects: [subject]) when it is missing."
    )
    ack_wait_seconds: float = Field(
        default=60,
        gt=0,
        le=86400,
        description="Unacked messages are redelivered after this long (a crash's recovery time).",
    )
    max_ack_pending: int = Field(
        default=10000, ge=1, description="Messages the consumer hands out without an ack at most."
    )
    fetch_wait_ms: int = Field(
        default=200, ge=1, le=60000, description="Longest wait for messages in one fetch."
    )
    connect_timeout_ms: int = Field(
        default=5000,
        ge=1,
        le=600000,
        description="Timeout of connecting and of one request (when not set: "
        "CONNECTION_TIMEOUT_MS of alpha.yaml).",
    )
    user: str | None = Field(default=None, description="User name (with password_ref).")
    password_ref: SecretRef | None = Field(default=None, description="Password secret reference.")
    token_ref: SecretRef | None = Field(default=None, description="Auth token secret reference.")


class _Loop:
    """An asyncio event loop in a daemon thread; coroutines are submitted from the worker."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TransientError(f"NATS did not answer within {timeout:g} s.") from None

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5.0)
        if not self.thread.is_alive():
            self.loop.close()


@register("sources", "nats")
class NatsSource(Source):
    """A JetStream durable pull consumer; see the module docstring."""

    Config = NatsConnection
    connection: NatsConnection

    def __init__(
        self,
        source_id: str,
        connection: Any,
        state: StateStore,
        *,
        context: SourceContext | None = None,
    ) -> None:
        super().__init__(source_id, connection, state, context=context)
        self._loop: _Loop | None = None
        self._nc: Any = None
        self._sub: Any = None
        # origin -> message, fetched and not yet acked.
        self._unacked: dict[str, Any] = {}
        self._in_use: tuple[str | None, str | None] = (None, None)
        self.errors = 0
        self.acked = 0

    # -- connection -------------------------------------------------------------------------
    @property
    def _timeout(self) -> float:
        c = self.connection
        given = "connect_timeout_ms" in c.model_fields_set
        return (c.connect_timeout_ms if given else self.context.connection_timeout_ms) / 1000

    def _options(self) -> dict[str, Any]:
        c = self.connection
        options: dict[str, Any] = {
            "servers": [u.strip() for u in c.url.split(",")],
            "connect_timeout": self._timeout,
            # A lost connection is opened again by the next fetch (see _ensure). nats-py retries a
            # first connect max_reconnect_attempts times per server, whatever allow_reconnect
            # says: one retry after 0.2 s keeps an unreachable server from hanging the worker.
            "allow_reconnect": False,
            "max_reconnect_attempts": 1,
            "reconnect_time_wait": 0.2,
            "name": f"dps-alpha-{self.source_id}",
        }
        password, token = self._in_use = self._credentials()
        if c.user is not None:
            options["user"] = c.user
            if password is not None:
                options["password"] = password
        if token is not None:
            options["token"] = token
        return options

    def _credentials(self) -> tuple[str | None, str | None]:
        """The password and token the references hold now."""
        c = self.connection
        try:
            password = c.password_ref.resolve() if c.user is not None and c.password_ref else None
            token = c.token_ref.resolve() if c.token_ref is not None else None
        except SecretError as exc:
            raise TransientError(str(exc)) from None
        return password, token

    def rotate_credentials(self) -> dict[str, Any]:
        """Resolve the secrets again; when they changed, the connection is closed between two
        steps (nothing is unacked then) and the next fetch connects with the new ones."""
        fresh = self._credentials()
        changed = self._nc is not None and fresh != self._in_use
        if changed and self._loop is not None:
            nc, self._nc, self._sub = self._nc, None, None
            try:
                self._loop.run(nc.close(), self._timeout)
            except Exception as exc:
                log.debug("NATS close failed.", source_id=self.source_id, error=str(exc))
        return {"changed": changed, "reconnect": changed}

    def refresh_credentials(self) -> None:
        try:
            self.rotate_credentials()
        except TransientError as exc:
            log.warning(
                "The NATS credentials cannot be read again; the connection keeps the old ones.",
                source_id=self.source_id,
                error=str(exc),
            )

    async def _connect(self) -> None:
        import nats
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig
        from nats.js.errors import NotFoundError

        async def _quiet(_: Exception) -> None:
            return None

        nc = await nats.connect(**self._options(), error_cb=_quiet)
        try:
            js = nc.jetstream(timeout=self._timeout)
            c = self.connection
            try:
                await js.stream_info(c.stream)
            except NotFoundError:
                if not c.create_stream:
                    raise TransientError(
                        f"JetStream stream {c.stream} does not exist on {c.url}; create it or set "
                        "connection.create_stream: true."
                    ) from None
                await js.add_stream(StreamConfig(name=c.stream, subjects=[c.subject]))
            config = ConsumerConfig(
                durable_name=c.durable,
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=c.ack_wait_seconds,
                max_ack_pending=c.max_ack_pending,
                filter_subject=c.subject,
            )
            self._sub = await js.pull_subscribe(
                c.subject, durable=c.durable, stream=c.stream, config=config
            )
        except BaseException:
            await nc.close()
            raise
        self._nc = nc

    def _ensure(self) -> _Loop:
        if self._loop is None:
            self._loop = _Loop(f"dps-alpha-nats-{self.source_id}")
        if self._nc is not None and not self._nc.is_connected:
            # Lost (server restart, network): start over; the durable consumer kept the position
            # and redelivers what was not acked.
            nc, self._nc, self._sub = self._nc, None, None
            try:
                self._loop.run(nc.close(), self._timeout)
            except Exception as exc:
                log.debug("NATS close failed.", source_id=self.source_id, error=str(exc))
        if self._nc is None:
            try:
                self._loop.run(self._connect(), self._timeout * 2)
            except TransientError:
                self.errors += 1
                raise
            except Exception as exc:  # nats-py raises its own errors, OSError and timeouts
                self.errors += 1
                raise TransientError(
                    f"Cannot consume {self.connection.stream}/{self.connection.durable} on "
                    f"{self.connection.url}: {type(exc).__name__}: {exc}"
                ) from None
        return self._loop

    # -- the contract -----------------------------------------------------------------------
    def fetch(self, max_items: int) -> Fetch:
        room = min(max_items, self.context.buffer_room())
        if room <= 0:
            return Fetch()
        loop = self._ensure()
        wait = self.connection.fetch_wait_ms / 1000
        try:
            msgs = loop.run(self._fetch(room, wait), wait + self._timeout)
        except TransientError:
            self.errors += 1
            raise
        out = Fetch()
        for msg in msgs:
            origin = f"nats:{self.connection.stream}:{msg.metadata.sequence.stream}"
            self._unacked[origin] = msg
            out.items.append(RawItem(msg.data, origin, POSITION_KEY))
        if out.items:
            out.ends[POSITION_KEY] = len(out.items)
        return out

    async def _fetch(self, batch: int, wait: float) -> list[Any]:
        import nats.errors

        try:
            msgs: list[Any] = await self._sub.fetch(batch=batch, timeout=wait)
        except (TimeoutError, nats.errors.TimeoutError):
            return []
        except nats.errors.Error as exc:
            raise TransientError(f"JetStream fetch failed: {type(exc).__name__}: {exc}") from None
        return msgs

    def commit(self, fetch: Fetch, records_read: dict[str, int]) -> None:
        msgs = [self._unacked.pop(i.origin) for i in fetch.items if i.origin in self._unacked]
        if not msgs:
            return
        loop = self._ensure()

        async def ack_all() -> None:
            for msg in msgs:
                await msg.ack_sync(timeout=self._timeout)

        try:
            loop.run(ack_all(), self._timeout * 2)
        except Exception as exc:
            # The records are durable; an unacked message comes back after ack_wait and is
            # recognised as a replay (same origin), so this loses nothing and duplicates nothing.
            self.errors += 1
            log.warning(
                "JetStream acks failed; the messages will be redelivered.",
                source_id=self.source_id,
                error=str(exc),
            )
            return
        self.acked += len(msgs)

    def rewind(self) -> None:
        msgs = list(self._unacked.values())
        self._unacked.clear()
        if not msgs or self._loop is None:
            return

        async def nak_all() -> None:
            for msg in msgs:
                await msg.nak()

        try:
            self._loop.run(nak_all(), self._timeout)
        except Exception as exc:  # redelivered after ack_wait anyway
            log.warning("JetStream naks failed.", source_id=self.source_id, error=str(exc))

    def pending(self) -> int:
        return len(self._unacked)

    def test(self) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            loop = self._ensure()
            info = loop.run(self._sub.consumer_info(), self._timeout)
        except Exception as exc:
            return {"ok": False, "error": str(exc)}
        return {
            "ok": True,
            "latency_ms": round((time.perf_counter() - started) * 1000, 1),
            "stream": self.connection.stream,
            "durable": self.connection.durable,
            "num_pending": info.num_pending,
            "num_ack_pending": info.num_ack_pending,
        }

    def info(self) -> dict[str, Any]:
        return {
            "connected": bool(self._nc is not None and self._nc.is_connected),
            "unacked": len(self._unacked),
            "acked": self.acked,
            "errors": self.errors,
        }

    def connected(self) -> bool:
        return bool(self._nc is not None and self._nc.is_connected)

    def open_connections(self) -> int:
        return 1 if self.connected() else 0

    def close(self) -> None:
        if self._loop is None:
            return
        if self._nc is not None:
            try:
                self._loop.run(self._nc.close(), self._timeout)
            except Exception as exc:
                log.warning(
                    "NATS connection did not close.", source_id=self.source_id, error=str(exc)
                )
            self._nc = None
        self._loop.stop()
        self._loop = None
