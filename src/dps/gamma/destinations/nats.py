"""``nats``: publish each record to a NATS JetStream subject, with the record id as message id.

JetStream drops a publish whose ``Nats-Msg-Id`` it has seen within the stream's duplicate
window, so a retried or replayed batch adds nothing (server-side dedupe; make the stream's
``duplicate_window`` longer than the longest outage you expect to retry through). A publish is
acknowledged by the server (``PubAck``) before the record counts as delivered. The stream is
created when ``create_stream`` is set and it does not exist.

nats-py is asyncio; the destination runs its own event loop in a daemon thread and waits on it
from the delivery thread. Timeouts and connection errors are retryable; a stream that refuses a
message (over its ``max_msg_size``) is permanent for the record; a record larger than the
server's ``max_payload`` is poison (``record_too_large``): no retry could ever publish it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import msgspec
from pydantic import Field

from dps.core.model import StrictModel
from dps.core.record import Record
from dps.core.registry import register
from dps.gamma.destinations.base import DeliveryError, Destination, RecordError, Rejected

T = TypeVar("T")
_json = msgspec.json.Encoder()


class NatsConnection(StrictModel):
    """``connection:`` of a ``nats`` destination."""

    url: str = Field(
        default="nats://127.0.0.1:4222", description="NATS server URL(s), comma-separated."
    )
    subject: str = Field(description="The subject records are published on.")
    stream: str | None = Field(
        default=None, description="The JetStream stream (for create_stream)."
    )
    create_stream: bool = Field(default=False, description="Create the stream when it is missing.")
    duplicate_window_seconds: float = Field(
        default=120.0, gt=0, description="Dedupe window of a created stream."
    )


class NatsFormat(StrictModel):
    """``format:`` of a ``nats`` destination."""

    envelope: bool = Field(default=True, description="Publish the envelope; else the payload.")


class NatsDestinationConfig(StrictModel):
    """The type-specific sections of a ``nats`` destination."""

    connection: NatsConnection
    format: NatsFormat = Field(default_factory=NatsFormat)


@register("destinations", "nats")
class NatsDestination(Destination):
    """Publishes to JetStream; see the module docstring."""

    Config = NatsDestinationConfig
    spec: NatsDestinationConfig

    def __init__(self, destination_id: str, spec: Any) -> None:
        super().__init__(destination_id, spec)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._nc: Any = None
        self._js: Any = None

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout=self.timeout_s + 5)
        except TimeoutError as exc:
            future.cancel()
            raise DeliveryError(f"NATS did not answer within {self.timeout_s:g} s.") from exc

    def open(self) -> None:
        import nats

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"nats-dest-{self.destination_id}", daemon=True
        )
        self._thread.start()
        c = self.spec.connection

        async def connect() -> None:
            self._nc = await nats.connect(
                servers=c.url.split(","),
                connect_timeout=self.timeout_s,
                max_reconnect_attempts=-1,
                allow_reconnect=True,
            )
            self._js = self._nc.jetstream(timeout=self.timeout_s)
            if c.create_stream and c.stream:
                from nats.js.api import StreamConfig
                from nats.js.errors import NotFoundError

                try:
                    await self._js.stream_info(c.stream)
                except NotFoundError:
                    await self._js.add_stream(
                        StreamConfig(
                            name=c.stream,
                            subjects=[c.subject],
                            duplicate_window=c.duplicate_window_seconds,
                        )
                    )

        try:
            self._run(connect())
        except DeliveryError:
            raise
        except Exception as exc:
            raise DeliveryError(f"Cannot connect to NATS at {c.url}: {exc}") from exc

    def deliver(self, records: Sequence[Record]) -> Rejected:
        from nats.errors import Error as NatsError
        from nats.errors import MaxPayloadError
        from nats.js.errors import APIError

        subject = self.spec.connection.subject
        envelope = self.spec.format.envelope

        async def publish_all() -> list[tuple[int, BaseException]]:
            futures = [
                self._js.publish(
                    subject,
                    _json.encode(self.document(r, envelope)),
                    headers={"Nats-Msg-Id": r.record_id},
                )
                for r in records
            ]
            results = await asyncio.gather(*futures, return_exceptions=True)
            return [(i, res) for i, res in enumerate(results) if isinstance(res, BaseException)]

        failures = self._run(publish_all())
        rejected: Rejected = []
        for index, exc in failures:
            if isinstance(exc, MaxPayloadError):
                size = len(_json.encode(self.document(records[index], envelope)))
                limit = self._nc.max_payload
                error = RecordError(
                    "record_too_large",
                    f"The record renders to {size} bytes; the NATS server takes at most {limit} "
                    "(its max_payload).",
                    "poison",
                )
                rejected.append((records[index], error))
            elif isinstance(exc, APIError) and getattr(exc, "code", None) in (400, 413):
                rejected.append((records[index], RecordError("destination_rejected", str(exc))))
            elif isinstance(exc, NatsError | TimeoutError | OSError | APIError):
                raise DeliveryError(f"NATS publish failed: {type(exc).__name__}: {exc}") from exc
            else:
                raise DeliveryError(f"NATS publish failed: {exc!r}") from exc
        return rejected

    def test(self) -> dict[str, Any]:
        ok = self._nc is not None and self._nc.is_connected
        return {"ok": bool(ok), "url": self.spec.connection.url}

    def close(self) -> None:
        if self._nc is not None and self._loop is not None:
            # Closing a broken connection: nothing is left to release.
            with contextlib.suppress(Exception):
                self._run(self._nc.close())
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(5.0)
