"""The ``nats`` destination against the real NATS JetStream server on 127.0.0.1:4222.

Shows the server-side dedupe the destination relies on: a batch published twice (a retry, a
replay) leaves one message per record, each with the record id as ``Nats-Msg-Id``. A record the
stream refuses (over its ``max_msg_size``) or larger than the server takes at all
(``max_payload``) is refused alone, the rest of the batch is delivered; a server that cannot be
reached is a retryable failure.
"""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import nats
import pytest
from nats.js.api import StreamConfig
from tests.integration.pipeline_harness import NATS_URL

from dps.config.models import DestinationConfig
from dps.core.record import Record, new_record
from dps.gamma.destinations.base import DeliveryError, RecordError
from dps.gamma.destinations.nats import NatsDestination
from dps.gamma.module import build_destination

pytestmark = pytest.mark.nats


def _records(count: int, start: int = 0, **extra: Any) -> list[Record]:
    return [
        new_record(
            "orders_file", {"order_id": f"N-{n:04d}", "amount": n, **extra}, id_field="order_id"
        )
        for n in range(start, start + count)
    ]


async def _stream_messages(stream: str, subject: str) -> list[tuple[str, dict[str, Any]]]:
    """Every message in the stream: (Nats-Msg-Id, decoded body), in order."""
    nc = await nats.connect(NATS_URL)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        out: list[tuple[str, dict[str, Any]]] = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(stream, seq)
            headers = msg.headers or {}
            out.append((headers.get("Nats-Msg-Id", ""), json.loads(msg.data or b"{}")))
        return out
    finally:
        await nc.close()


async def _add_stream(config: StreamConfig) -> None:
    nc = await nats.connect(NATS_URL)
    try:
        await nc.jetstream().add_stream(config)
    finally:
        await nc.close()


async def _delete_stream(name: str) -> None:
    nc = await nats.connect(NATS_URL)
    try:
        await nc.jetstream().delete_stream(name)
    except Exception:
        pass  # never created (the test failed before)
    finally:
        await nc.close()


@pytest.fixture
def stream() -> Iterator[tuple[str, str]]:
    name = f"DPS_DEST_{uuid.uuid4().hex[:8].upper()}"
    yield name, f"dps.test.{name.lower()}"
    asyncio.run(_delete_stream(name))


def _destination(stream: str, subject: str, **connection: Any) -> NatsDestination:
    config = DestinationConfig.model_validate(
        {
            "destination_id": "events_bus",
            "destination_type": "nats",
            "connection": {"url": NATS_URL, "subject": subject, "stream": stream, **connection},
            "delivery": {"timeout_ms": 5000},
        }
    )
    destination = build_destination(config)
    assert isinstance(destination, NatsDestination)
    return destination


def test_a_batch_published_twice_is_stored_once_with_the_record_id_as_message_id(
    stream: tuple[str, str],
) -> None:
    name, subject = stream
    destination = _destination(name, subject, create_stream=True)
    try:
        batch = _records(20)
        assert destination.deliver(batch) == []
        assert destination.deliver(batch) == []  # a retry of the whole batch
        assert destination.deliver(batch[5:8] + _records(2, start=20)) == []  # a partial replay
    finally:
        destination.close()

    messages = asyncio.run(_stream_messages(name, subject))
    ids = [msg_id for msg_id, _ in messages]
    assert ids == [f"orders_file:N-{n:04d}" for n in range(22)]
    first = messages[0][1]
    assert first["record_id"] == "orders_file:N-0000"
    assert first["payload"] == {"order_id": "N-0000", "amount": 0}


def test_a_new_instance_still_dedupes_within_the_window(stream: tuple[str, str]) -> None:
    """Dedupe is the server's, not the client's: a restarted Gamma does not republish."""
    name, subject = stream
    first = _destination(name, subject, create_stream=True)
    try:
        first.deliver(_records(5))
    finally:
        first.close()
    second = _destination(name, subject)
    try:
        assert second.deliver(_records(5)) == []
    finally:
        second.close()
    assert len(asyncio.run(_stream_messages(name, subject))) == 5


def test_without_envelope_the_payload_is_published(stream: tuple[str, str]) -> None:
    name, subject = stream
    config = DestinationConfig.model_validate(
        {
            "destination_id": "bus",
            "destination_type": "nats",
            "connection": {"url": NATS_URL, "subject": subject, "stream": name},
            "format": {"envelope": False},
        }
    )
    asyncio.run(_add_stream(StreamConfig(name=name, subjects=[subject])))
    destination = build_destination(config)
    try:
        destination.deliver(_records(1))
    finally:
        destination.close()
    [(msg_id, body)] = asyncio.run(_stream_messages(name, subject))
    assert msg_id == "orders_file:N-0000"
    assert body == {"order_id": "N-0000", "amount": 0, "record_id": "orders_file:N-0000"}


def test_a_record_the_stream_refuses_is_rejected_alone(stream: tuple[str, str]) -> None:
    name, subject = stream
    asyncio.run(_add_stream(StreamConfig(name=name, subjects=[subject], max_msg_size=2000)))
    destination = _destination(name, subject)
    try:
        batch = _records(3)
        big = _records(1, start=3, notes="x" * 5000)[0]
        rejected = destination.deliver([*batch, big])
    finally:
        destination.close()
    assert [(r.record_id, type(e)) for r, e in rejected] == [(big.record_id, RecordError)]
    assert rejected[0][1].reason == "destination_rejected"
    ids = [msg_id for msg_id, _ in asyncio.run(_stream_messages(name, subject))]
    assert ids == [r.record_id for r in batch]


def test_a_record_over_the_server_max_payload_is_poison(stream: tuple[str, str]) -> None:
    name, subject = stream
    destination = _destination(name, subject, create_stream=True)
    try:
        limit = destination._nc.max_payload
        huge = _records(1, start=9, notes="y" * (limit + 10))[0]
        rejected = destination.deliver([*_records(2), huge])
    finally:
        destination.close()
    assert len(rejected) == 1 and rejected[0][0].record_id == huge.record_id
    error = rejected[0][1]
    assert isinstance(error, RecordError) and error.error_class == "poison"
    assert error.reason == "record_too_large"
    assert len(asyncio.run(_stream_messages(name, subject))) == 2


def test_an_unreachable_server_is_a_retryable_failure() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = DestinationConfig.model_validate(
        {
            "destination_id": "bus",
            "destination_type": "nats",
            "connection": {"url": f"nats://127.0.0.1:{port}", "subject": "dps.nowhere"},
            "delivery": {"timeout_ms": 1000},
        }
    )
    with pytest.raises(DeliveryError) as caught:
        build_destination(config)
    assert caught.value.error_class == "retryable"
