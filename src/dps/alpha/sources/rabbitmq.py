"""``rabbitmq``: an AMQP 0-9-1 queue consumer with manual acks (pika).

The source consumes ``queue`` with ``auto_ack`` off and a prefetch of
``min(prefetch_count, BUFFER_CAPACITY)``: the broker never hands Alpha more unacked messages
than its buffer holds, and nothing is taken while the buffer is full (queue consumers stop
fetching). Each message is a raw item whose origin is ``amqp:<queue>:<message id>`` (the
``message_id`` property, else a hash of the body), stable across redeliveries, so a replay is
recognised as one. Messages are **acked only in** :meth:`RabbitMqSource.commit`, once their
records are durable in the transform queue; a rewind naks them back to the queue. When Alpha
stops or crashes the broker requeues every unacked message of the closed connection: a restart
loses nothing.

pika's ``BlockingConnection`` (no thread of its own, not thread-safe) is used only from Alpha's
worker; ``test`` opens a short connection of its own. A connection lost between two fetches is
opened again on the next fetch (its unacked messages were requeued by the broker). pika is the
reference AMQP client, kept small and pure Python; it is imported inside methods (house rule 13).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from pydantic import Field

from dps.alpha.sources.base import Fetch, RawItem, Source, SourceContext
from dps.config.secrets import SecretRef
from dps.core.errors import SecretError, TransientError
from dps.core.logging import get_logger
from dps.core.model import StrictModel
from dps.core.registry import register
from dps.state.base import StateStore

log = get_logger("alpha.rabbitmq")
POSITION_KEY = "amqp"
#: How long one step of the consumer generator waits for a message.
_TICK = 0.02


class RabbitMqConnection(StrictModel):
    """``connection:`` of a ``rabbitmq`` source."""

    host: str = Field(default="127.0.0.1", description="Broker host.")
    port: int = Field(default=5672, ge=1, le=65535, description="Broker AMQP port.")
    virtual_host: str = Field(default="/", description="Virtual host.")
    username: str = Field(default="guest", description="User name.")
    password_ref: SecretRef | None = Field(
        default=None, description="Password secret reference (env:, file:, vault:); none: guest."
    )
    queue: str = Field(description="Queue to consume.")
    declare_queue: bool = Field(
        default=False,
        description="Declare the queue (durable) when connecting; else it must exist.",
    )
    prefetch_count: int = Field(
        default=1000,
        ge=1,
        le=65535,
        description="Unacked messages the broker hands out at most (capped by BUFFER_CAPACITY).",
    )
    fetch_wait_ms: int = Field(
        default=200, ge=1, le=60000, description="Longest wait for a first message in one fetch."
    )
    connect_timeout_ms: int = Field(
        default=5000,
        ge=1,
        le=600000,
        description="Timeout of connecting and of socket reads (when not set: "
        "CONNECTION_TIMEOUT_MS of alpha.yaml).",
    )
    heartbeat_seconds: int = Field(
        default=60, ge=0, le=3600, description="AMQP heartbeat (0: none)."
    )


@register("sources", "rabbitmq")
class RabbitMqSource(Source):
    """An AMQP queue consumer with manual acks; see the module docstring."""

    Config = RabbitMqConnection
    connection: RabbitMqConnection

    def __init__(
        self,
        source_id: str,
        connection: Any,
        state: StateStore,
        *,
        context: SourceContext | None = None,
    ) -> None:
        super().__init__(source_id, connection, state, context=context)
        self._conn: Any = None
        self._channel: Any = None
        self._consumer: Any = None
        # origin -> delivery tag, handed out and not yet acked.
        self._unacked: dict[str, int] = {}
        self._in_use: str | None = None
        self.errors = 0
        self.acked = 0

    # -- connection -------------------------------------------------------------------------
    def _parameters(self) -> Any:
        import pika

        c = self.connection
        password = self._in_use = self._password()
        given = "connect_timeout_ms" in c.model_fields_set
        timeout = (c.connect_timeout_ms if given else self.context.connection_timeout_ms) / 1000
        return pika.ConnectionParameters(
            host=c.host,
            port=c.port,
            virtual_host=c.virtual_host,
            credentials=pika.PlainCredentials(c.username, password),
            heartbeat=c.heartbeat_seconds,
            blocked_connection_timeout=timeout,
            socket_timeout=timeout,
            stack_timeout=timeout * 2,
            connection_attempts=1,
            client_properties={"connection_name": f"dps-alpha-{self.source_id}"},
        )

    def _password(self) -> str:
        c = self.connection
        try:
            return c.password_ref.resolve() if c.password_ref is not None else "guest"
        except SecretError as exc:
            raise TransientError(str(exc)) from None

    def rotate_credentials(self) -> dict[str, Any]:
        """Resolve the password again; when it changed, the connection is closed between two
        steps (nothing is unacked then) and the next fetch connects with the new one."""
        changed = self._conn is not None and self._password() != self._in_use
        if changed:
            self._drop()
        return {"changed": changed, "reconnect": changed}

    def refresh_credentials(self) -> None:
        try:
            self.rotate_credentials()
        except TransientError as exc:
            log.warning(
                "The AMQP password cannot be read again; the connection keeps the old one.",
                source_id=self.source_id,
                error=str(exc),
            )

    def _where(self) -> str:
        c = self.connection
        return f"queue {c.queue} on amqp://{c.host}:{c.port}{c.virtual_host}"

    def _ensure(self) -> Any:
        if self._channel is not None and self._channel.is_open:
            return self._channel
        self._drop()
        import logging

        import pika.exceptions

        # pika logs every connection step at INFO; its failures reach us as exceptions.
        logging.getLogger("pika").setLevel(logging.WARNING)

        try:
            conn = pika.BlockingConnection(self._parameters())
            channel = conn.channel()
            if self.connection.declare_queue:
                channel.queue_declare(self.connection.queue, durable=True)
            prefetch = min(self.connection.prefetch_count, self.context.buffer_capacity)
            channel.basic_qos(prefetch_count=prefetch)
        except (pika.exceptions.AMQPError, OSError) as exc:
            self.errors += 1
            raise TransientError(
                f"Cannot consume {self._where()}: {type(exc).__name__}: {exc}".rstrip(": ")
            ) from None
        self._conn, self._channel = conn, channel
        self._consumer = channel.consume(
            self.connection.queue, auto_ack=False, inactivity_timeout=_TICK
        )
        return channel

    def _drop(self) -> None:
        """Forget the connection (the broker requeues its unacked messages)."""
        conn, self._conn, self._channel, self._consumer = self._conn, None, None, None
        self._unacked.clear()
        if conn is not None:
            try:
                conn.close()
            except Exception as exc:  # already closed or broken: nothing to release
                log.debug("AMQP connection close failed.", source_id=self.source_id, error=str(exc))

    # -- the contract -----------------------------------------------------------------------
    def fetch(self, max_items: int) -> Fetch:
        import pika.exceptions

        room = min(max_items, self.context.buffer_room())
        if room <= 0:
            if self._conn is not None:  # keep heartbeats answered while not fetching
                try:
                    self._conn.process_data_events(0)
                except (pika.exceptions.AMQPError, OSError):
                    self._drop()
            return Fetch()
        channel = self._ensure()
        out = Fetch()
        deadline = time.monotonic() + self.connection.fetch_wait_ms / 1000
        try:
            while len(out.items) < room:
                if not out.items:
                    wait = max(0.0, deadline - time.monotonic())
                elif channel.get_waiting_message_count() == 0:
                    break  # take what has arrived; do not wait for more
                else:
                    wait = 0.0
                method, properties, body = self._next(wait)
                if method is None:
                    if out.items or time.monotonic() >= deadline:
                        break
                    continue
                key = properties.message_id or hashlib.sha1(body).hexdigest()[:20]
                origin = f"amqp:{self.connection.queue}:{key}"
                if origin in self._unacked:  # the same message twice in one connection
                    origin = f"{origin}:{method.delivery_tag}"
                self._unacked[origin] = method.delivery_tag
                out.items.append(RawItem(bytes(body), origin, POSITION_KEY))
        except (pika.exceptions.AMQPError, OSError) as exc:
            self.errors += 1
            self._drop()
            raise TransientError(
                f"Consuming {self._where()} failed: {type(exc).__name__}: {exc}"
            ) from None
        if out.items:
            out.ends[POSITION_KEY] = len(out.items)
        return out

    def _next(self, wait: float) -> tuple[Any, Any, Any]:
        """The next delivery, waiting up to ``wait`` s; ``(None, None, None)`` when none came.

        The consumer generator yields ``(None, None, None)`` after ``_TICK`` s without a
        message; the first ``next`` also starts the consumer (basic.consume).
        """
        deadline = time.monotonic() + wait
        while True:
            if self._channel.get_waiting_message_count() == 0 and wait <= 0:
                return None, None, None
            result: tuple[Any, Any, Any] = next(self._consumer)
            if result[0] is not None or time.monotonic() >= deadline:
                return result

    def commit(self, fetch: Fetch, records_read: dict[str, int]) -> None:
        import pika.exceptions

        tags = [self._unacked.pop(i.origin) for i in fetch.items if i.origin in self._unacked]
        if not tags or self._channel is None:
            return
        try:
            for tag in tags:
                self._channel.basic_ack(delivery_tag=tag)
            self._conn.process_data_events(0)  # send the acks now
        except (pika.exceptions.AMQPError, OSError) as exc:
            # The records are durable; the broker requeues the unacked messages of the lost
            # connection, and they come back as replays (same origin): nothing lost or doubled.
            self.errors += 1
            log.warning(
                "AMQP acks failed; the messages will be redelivered.",
                source_id=self.source_id,
                error=str(exc),
            )
            self._drop()
            return
        self.acked += len(tags)

    def rewind(self) -> None:
        import pika.exceptions

        tags = list(self._unacked.values())
        self._unacked.clear()
        if not tags or self._channel is None:
            return
        try:
            for tag in tags:
                self._channel.basic_nack(delivery_tag=tag, requeue=True)
        except (pika.exceptions.AMQPError, OSError):
            self._drop()  # requeued by the broker anyway

    def pending(self) -> int:
        return len(self._unacked)

    def test(self) -> dict[str, Any]:
        import pika
        import pika.exceptions

        started = time.perf_counter()
        try:
            conn = pika.BlockingConnection(self._parameters())
            try:
                ok = conn.channel().queue_declare(self.connection.queue, passive=True)
            finally:
                conn.close()
        except (pika.exceptions.AMQPError, OSError, TransientError) as exc:
            return {"ok": False, "error": f"{self._where()}: {type(exc).__name__}: {exc}"}
        return {
            "ok": True,
            "latency_ms": round((time.perf_counter() - started) * 1000, 1),
            "queue": self.connection.queue,
            "messages": ok.method.message_count,
            "consumers": ok.method.consumer_count,
        }

    def info(self) -> dict[str, Any]:
        return {
            "connected": self.connected(),
            "unacked": len(self._unacked),
            "acked": self.acked,
            "errors": self.errors,
        }

    def connected(self) -> bool:
        return bool(self._conn is not None and self._conn.is_open)

    def open_connections(self) -> int:
        return 1 if self.connected() else 0

    def close(self) -> None:
        self._drop()
