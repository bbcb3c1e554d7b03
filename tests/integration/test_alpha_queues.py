"""The ``nats`` and ``rabbitmq`` sources against the real servers (NATS JetStream on
127.0.0.1:4222, RabbitMQ on 127.0.0.1:5672 as guest/guest), through Alpha: records reach the
transform queue, messages are acked only after that, and a restart mid-stream (messages fetched
and not committed, then the process gone) loses nothing and duplicates nothing downstream.

A missing server fails these tests: they are the only proof that the sources work.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dps.alpha.module import AlphaModule
from dps.core.record import decode

NATS_URL = "nats://127.0.0.1:4222"


def _config(tmp_path: Path, source_yaml: str, alpha_yaml: str = "DEFAULT_BATCH_SIZE: 50\n") -> Path:
    root = tmp_path / "config"
    (root / "alpha" / "sources").mkdir(parents=True, exist_ok=True)
    (root / "pipeline.yaml").write_text("name: alpha-queues-test\n")
    (root / "alpha" / "alpha.yaml").write_text(alpha_yaml)
    (root / "alpha" / "sources" / "q.yaml").write_text(source_yaml)
    return root


def _drain(alpha: AlphaModule) -> list[int]:
    """Order ids that reached the transform queue (taken off it, as Beta would)."""
    out: list[int] = []
    while True:
        lease = alpha.queue.lease(1000)
        if not lease.messages:
            return out
        out.extend(decode(m.body).payload["order_id"] for m in lease.messages)
        alpha.queue.ack(lease)


def _steps_until(alpha: AlphaModule, seen: list[int], want: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while len(seen) < want and time.monotonic() < deadline:
        alpha.step()
        seen.extend(_drain(alpha))
    assert len(seen) >= want, f"only {len(seen)} of {want} records arrived"


def _body(i: int) -> bytes:
    return json.dumps({"order_id": i, "amount": i}).encode()


# -- NATS JetStream ---------------------------------------------------------------------------


async def _nats_publish(stream: str, subject: str, ids: range) -> None:
    import nats

    nc = await nats.connect(NATS_URL, connect_timeout=5)
    try:
        js = nc.jetstream()
        for i in ids:
            await js.publish(subject, _body(i), stream=stream)
    finally:
        await nc.close()


async def _nats_consumer(stream: str, durable: str) -> Any:
    import nats

    nc = await nats.connect(NATS_URL, connect_timeout=5)
    try:
        return await nc.jetstream().consumer_info(stream, durable)
    finally:
        await nc.close()


async def _nats_delete(stream: str) -> None:
    import nats

    nc = await nats.connect(NATS_URL, connect_timeout=5)
    try:
        await nc.jetstream().delete_stream(stream)
    finally:
        await nc.close()


@pytest.fixture
def stream() -> Iterator[str]:
    name = f"DPS_TEST_{uuid.uuid4().hex[:10].upper()}"
    yield name
    with contextlib.suppress(Exception):  # the test may have failed before creating it
        asyncio.run(_nats_delete(name))


def _nats_yaml(stream: str, *, ack_wait: float = 60) -> str:
    return (
        "source_id: orders_nats\nsource_type: nats\n"
        f"connection:\n  url: {NATS_URL}\n  stream: {stream}\n  subject: {stream.lower()}.orders\n"
        f"  durable: alpha\n  create_stream: true\n  ack_wait_seconds: {ack_wait}\n"
        "  fetch_wait_ms: 50\n"
        "parsing:\n  format: json\n  id_field: order_id\n"
    )


def test_nats_records_arrive_and_are_acked_after_they_are_durable(
    tmp_path: Path, stream: str
) -> None:
    alpha = AlphaModule(_config(tmp_path, _nats_yaml(stream)), data_dir=tmp_path / "data")
    try:
        alpha.step()  # connects and creates the stream
        asyncio.run(_nats_publish(stream, f"{stream.lower()}.orders", range(1, 121)))
        seen: list[int] = []
        _steps_until(alpha, seen, 120)
        assert sorted(seen) == list(range(1, 121))
        info = asyncio.run(_nats_consumer(stream, "alpha"))
        assert info.num_ack_pending == 0 and info.num_pending == 0
        status = alpha.runners["orders_nats"].as_dict()
        assert status["acked"] == 120 and status["connected"] is True
        assert alpha.runners["orders_nats"].source.test()["ok"] is True
    finally:
        alpha.close()


def test_nats_restart_mid_stream_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, stream: str
) -> None:
    root = _config(tmp_path, _nats_yaml(stream, ack_wait=1))
    alpha = AlphaModule(root, data_dir=tmp_path / "data")
    seen: list[int] = []
    try:
        alpha.step()
        asyncio.run(_nats_publish(stream, f"{stream.lower()}.orders", range(1, 201)))
        _steps_until(alpha, seen, 50)
        # A fetch taken and never committed: the crash comes before the records are durable.
        runner = alpha.runners["orders_nats"]
        lost = runner.source.fetch(30)
        assert len(lost.items) == 30
    finally:
        alpha.close()  # the connection goes away with 30 messages unacked
    alpha = AlphaModule(root, data_dir=tmp_path / "data")
    try:
        _steps_until(alpha, seen, 200)
        time.sleep(1.5)  # anything still to be redelivered (ack_wait 1 s) comes now
        for _ in range(5):
            alpha.step()
        seen.extend(_drain(alpha))
        assert sorted(seen) == list(range(1, 201))  # every record once: none lost, none twice
    finally:
        alpha.close()


def test_nats_source_that_cannot_connect_is_an_error_and_others_go_on(tmp_path: Path) -> None:
    text = (
        _nats_yaml("NOPE")
        .replace(NATS_URL, "nats://127.0.0.1:1")
        .replace("create_stream: true", "create_stream: false")
    )
    alpha = AlphaModule(_config(tmp_path, text), data_dir=tmp_path / "data")
    try:
        alpha.step()
        runner = alpha.runners["orders_nats"]
        assert runner.status == "error" and runner.last_error
        assert runner.source.test()["ok"] is False
    finally:
        alpha.close()


# -- RabbitMQ -----------------------------------------------------------------------------------


def _amqp() -> Any:
    import pika

    return pika.BlockingConnection(
        pika.ConnectionParameters(
            "127.0.0.1", 5672, credentials=pika.PlainCredentials("guest", "guest")
        )
    )


@pytest.fixture
def queue() -> Iterator[str]:
    name = f"dps-test-{uuid.uuid4().hex[:10]}"
    conn = _amqp()
    conn.channel().queue_declare(name, durable=True)
    conn.close()
    yield name
    conn = _amqp()
    conn.channel().queue_delete(name)
    conn.close()


def _amqp_publish(queue: str, ids: range) -> None:
    import pika

    conn = _amqp()
    channel = conn.channel()
    for i in ids:
        channel.basic_publish(
            "", queue, _body(i), pika.BasicProperties(message_id=f"m{i}", delivery_mode=2)
        )
    conn.close()


def _amqp_counts(queue: str) -> tuple[int, int]:
    conn = _amqp()
    ok = conn.channel().queue_declare(queue, passive=True)
    conn.close()
    return ok.method.message_count, ok.method.consumer_count


def _rabbit_yaml(queue: str, prefetch: int = 1000) -> str:
    return (
        "source_id: orders_amqp\nsource_type: rabbitmq\n"
        f"connection:\n  queue: {queue}\n  password_ref: env:DPS_TEST_AMQP_PASSWORD\n"
        f"  prefetch_count: {prefetch}\n  fetch_wait_ms: 50\n"
        "parsing:\n  format: json\n  id_field: order_id\n"
    )


@pytest.fixture
def amqp_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DPS_TEST_AMQP_PASSWORD", "guest")


def test_rabbitmq_records_arrive_and_are_acked_after_they_are_durable(
    tmp_path: Path, queue: str, amqp_password: None
) -> None:
    _amqp_publish(queue, range(1, 151))
    alpha = AlphaModule(_config(tmp_path, _rabbit_yaml(queue)), data_dir=tmp_path / "data")
    try:
        seen: list[int] = []
        _steps_until(alpha, seen, 150)
        assert sorted(seen) == list(range(1, 151))
        runner = alpha.runners["orders_amqp"]
        assert runner.as_dict()["acked"] == 150
        assert _amqp_counts(queue) == (0, 1)  # all acked; our consumer is attached
        result = runner.source.test()
        assert result["ok"] is True and result["queue"] == queue
    finally:
        alpha.close()


def test_rabbitmq_prefetch_is_capped_by_the_buffer(
    tmp_path: Path, queue: str, amqp_password: None
) -> None:
    _amqp_publish(queue, range(1, 101))
    settings = "DEFAULT_BATCH_SIZE: 50\nBUFFER_CAPACITY: 20\n"
    alpha = AlphaModule(_config(tmp_path, _rabbit_yaml(queue), settings), data_dir=tmp_path / "d")
    try:
        for _ in range(5):
            alpha.step()
        # The buffer is full at 20: nothing more is taken, the rest waits in the broker.
        assert alpha.queue.depth() == 20
        assert _amqp_counts(queue)[0] >= 80 - 20  # at most one prefetch window left the queue
        seen: list[int] = []
        _steps_until(alpha, seen, 100)
        assert sorted(seen) == list(range(1, 101))
    finally:
        alpha.close()


def test_rabbitmq_restart_mid_stream_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, queue: str, amqp_password: None
) -> None:
    _amqp_publish(queue, range(1, 201))
    root = _config(tmp_path, _rabbit_yaml(queue, prefetch=50))
    alpha = AlphaModule(root, data_dir=tmp_path / "data")
    seen: list[int] = []
    try:
        _steps_until(alpha, seen, 60)
        source = alpha.runners["orders_amqp"].source
        lost = source.fetch(25)  # fetched, never committed (a fetch takes what has arrived)
        assert 0 < len(lost.items) <= 25 and source.pending() == len(lost.items)
    finally:
        alpha.close()  # the broker requeues what was not acked
    alpha = AlphaModule(root, data_dir=tmp_path / "data")
    try:
        _steps_until(alpha, seen, 200)
        for _ in range(5):
            alpha.step()
        seen.extend(_drain(alpha))
        assert sorted(seen) == list(range(1, 201))
        assert _amqp_counts(queue)[0] == 0
    finally:
        alpha.close()


def test_rabbitmq_wrong_password_is_an_error_the_test_endpoint_reports(
    tmp_path: Path, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DPS_TEST_AMQP_PASSWORD", "wrong")
    alpha = AlphaModule(_config(tmp_path, _rabbit_yaml(queue)), data_dir=tmp_path / "data")
    try:
        alpha.step()
        runner = alpha.runners["orders_amqp"]
        assert runner.status == "error"
        result = runner.source.test()
        assert result["ok"] is False and queue in result["error"]
    finally:
        alpha.close()
