"""The queue contract (``dps.queues.base``), checked on both backends by the same tests.

``sqlite`` runs on a file in ``tmp_path``; ``nats`` on the real JetStream server at
127.0.0.1:4222 (override with ``DPS_TEST_NATS_URL``), each test on its own uniquely named
stream, deleted afterwards. The server being unreachable fails the tests: a skipped backend
would hide a broken scale-out deployment.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from dps.core.errors import ConfigError, QueueFullError, TransientError
from dps.queues import Message, Queue, QueueSpec, open_queue

NATS_URL = os.environ.get("DPS_TEST_NATS_URL", "nats://127.0.0.1:4222")
STREAM_PREFIX = "DPSTEST"

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("nats", id="nats", marks=pytest.mark.nats),
]


def backend_settings(backend: str) -> dict[str, Any]:
    """The ``transport`` settings the tests use for ``backend``."""
    if backend == "nats":
        return {"url": NATS_URL, "stream_prefix": STREAM_PREFIX, "connect_timeout": 3.0}
    return {}


def delete_nats_stream(name: str) -> None:
    """Delete the stream of queue ``name`` (best effort: the test may never have created it)."""
    import nats
    import nats.errors
    import nats.js.errors

    async def run() -> None:
        try:
            nc = await asyncio.wait_for(
                nats.connect(NATS_URL, connect_timeout=3, allow_reconnect=False), timeout=5
            )
        except (OSError, TimeoutError, nats.errors.Error):
            return  # the server is down: the test has failed already, nothing to clean up
        try:
            await nc.jetstream().delete_stream(f"{STREAM_PREFIX}_{name}".upper())
        except nats.js.errors.NotFoundError:
            pass
        finally:
            await nc.close()

    asyncio.run(run())


class DeadLetters:
    """A dead-letter sink that remembers each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[Message], str]] = []
        self._lock = threading.Lock()

    def __call__(self, messages: Sequence[Message], reason: str) -> None:
        with self._lock:
            self.calls.append((list(messages), reason))

    @property
    def ids(self) -> list[str]:
        return [m.msg_id for messages, _ in self.calls for m in messages]


OpenQueue = Callable[..., Queue]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def open_test_queue(backend: str, tmp_path: Path) -> Iterator[OpenQueue]:
    """Open instances of one fresh queue (same name, separate connections) for this test.

    Every instance of a test must get the same spec: on NATS, opening updates the shared
    consumer's ack wait to the spec's visibility timeout.
    """
    name = f"q{uuid.uuid4().hex[:12]}"
    opened: list[Queue] = []

    def open_one(**spec: Any) -> Queue:
        queue = open_queue(
            backend, backend_settings(backend), tmp_path, QueueSpec(name=name, **spec)
        )
        opened.append(queue)
        return queue

    yield open_one
    for queue in opened:
        queue.close()
    if backend == "nats" and opened:
        delete_nats_stream(name)


def put_ids(queue: Queue, ids: Sequence[str]) -> None:
    queue.put([(msg_id, f"body-{msg_id}".encode()) for msg_id in ids], timeout=5)


def drain_ids(queue: Queue, batch: int = 10) -> list[str]:
    """Lease and ack until nothing is left; the ids in the order they were handed out."""
    seen: list[str] = []
    while lease := queue.lease(batch, wait=0.2):
        seen += [m.msg_id for m in lease.messages]
        queue.ack(lease)
    return seen


# --------------------------------------------------------------------------- tests


def test_put_lease_ack_round_trip(open_test_queue: OpenQueue) -> None:
    queue = open_test_queue()
    put_ids(queue, ["a", "b", "c"])

    lease = queue.lease(10)
    assert [(m.msg_id, m.body, m.attempts) for m in lease.messages] == [
        ("a", b"body-a", 1),
        ("b", b"body-b", 1),
        ("c", b"body-c", 1),
    ]
    queue.ack(lease)
    assert queue.depth() == 0
    assert not queue.lease(10, wait=0.3)


def test_fifo_order(open_test_queue: OpenQueue) -> None:
    queue = open_test_queue()
    ids = [f"m{i:03d}" for i in range(60)]
    for start in range(0, len(ids), 20):
        put_ids(queue, ids[start : start + 20])
    assert drain_ids(queue, batch=7) == ids


def test_put_is_idempotent_on_msg_id(open_test_queue: OpenQueue) -> None:
    queue = open_test_queue()
    queue.put([("a", b"first"), ("b", b"b")])
    queue.put([("a", b"second"), ("c", b"c"), ("c", b"c again")])
    queue.put([("a", b"third")])
    assert queue.depth() == 3
    lease = queue.lease(10)
    assert [(m.msg_id, m.body) for m in lease.messages] == [
        ("a", b"first"),
        ("b", b"b"),
        ("c", b"c"),
    ]


def test_lease_hides_messages_until_the_visibility_timeout(open_test_queue: OpenQueue) -> None:
    queue = open_test_queue(visibility_timeout=1.0)
    put_ids(queue, ["a", "b"])

    first = queue.lease(10)
    leased_at = time.monotonic()
    assert [m.msg_id for m in first.messages] == ["a", "b"]
    assert not queue.lease(10), "leased messages must be hidden"
    assert queue.depth() == 2

    # The consumer "died": after the visibility timeout the messages come back, one attempt more.
    again = queue.lease(10, wait=5)
    assert time.monotonic() - leased_at >= 0.8
    back = [(m.msg_id, m.attempts) for m in again.messages]
    queue.ack(again)
    if len(back) == 1:
        # NATS redelivers each message when its own ack wait ends: on a busy host the second
        # can come a moment after the lease that got the first returned.
        rest = queue.lease(10, wait=2)
        back += [(m.msg_id, m.attempts) for m in rest.messages]
        queue.ack(rest)
    assert back == [("a", 2), ("b", 2)]
    assert queue.depth() == 0


def test_ack_by_an_expired_lease_leaves_the_new_holder_in_charge(
    open_test_queue: OpenQueue, backend: str
) -> None:
    queue = open_test_queue(visibility_timeout=0.5)
    put_ids(queue, ["a"])
    stale = queue.lease(1)
    fresh = queue.lease(1, wait=3)
    assert [m.attempts for m in fresh.messages] == [2]

    queue.ack(stale)
    if backend == "sqlite":
        # The row is held by the new lease's token: the old holder's ack does not touch it.
        assert queue.depth() == 1
    # On NATS the server does not tell deliveries apart, so the stale ack removed it already
    # (documented in docs/queues.md); either way the new holder's ack succeeds and it is gone.
    queue.ack(fresh)
    assert queue.depth() == 0
    assert not queue.lease(1, wait=0.8)


def test_acked_messages_are_never_delivered_again(open_test_queue: OpenQueue) -> None:
    queue = open_test_queue(visibility_timeout=0.5)
    put_ids(queue, ["a", "b", "c"])
    lease = queue.lease(10)
    queue.ack(lease, ["a", "c"])
    queue.ack(lease, ["a"])  # acking twice is harmless

    # Only the unacked one comes back after its lease runs out.
    again = queue.lease(10, wait=3)
    assert [(m.msg_id, m.attempts) for m in again.messages] == [("b", 2)]
    queue.ack(again)

    # A producer that re-puts after a crash must not bring acked messages back.
    put_ids(queue, ["a", "b", "c"])
    assert queue.depth() == 0
    assert not queue.lease(10, wait=0.8)


def test_nack_redelivers_after_the_delay(open_test_queue: OpenQueue) -> None:
    queue = open_test_queue()
    put_ids(queue, ["a", "b"])
    lease = queue.lease(10)

    assert queue.nack(lease, ["a"], reason="destination_down", delay=1.0) == []
    assert queue.nack(lease, ["b"], reason="destination_down") == []
    nacked_at = time.monotonic()
    now = queue.lease(10)
    assert [(m.msg_id, m.attempts) for m in now.messages] == [("b", 2)]
    queue.ack(now)

    later = queue.lease(10, wait=5)
    waited = time.monotonic() - nacked_at
    assert [(m.msg_id, m.attempts) for m in later.messages] == [("a", 2)]
    assert 0.8 <= waited < 3.0
    queue.ack(later)
    assert queue.depth() == 0


def test_nack_after_max_attempts_dead_letters_and_removes(open_test_queue: OpenQueue) -> None:
    sink = DeadLetters()
    queue = open_test_queue(max_attempts=2, dead_letter=sink)
    put_ids(queue, ["a", "b"])

    assert queue.nack(queue.lease(10), reason="flaky") == []
    assert sink.calls == []
    second = queue.lease(10, wait=2)
    assert [m.attempts for m in second.messages] == [2, 2]

    dead = queue.nack(second, reason="transform_failed")
    assert [(m.msg_id, m.body, m.attempts) for m in dead] == [
        ("a", b"body-a", 2),
        ("b", b"body-b", 2),
    ]
    assert [([m.msg_id for m in msgs], reason) for msgs, reason in sink.calls] == [
        (["a", "b"], "transform_failed")
    ]
    assert queue.depth() == 0
    assert not queue.lease(10, wait=0.5)


def test_without_a_dead_letter_sink_messages_keep_coming(open_test_queue: OpenQueue) -> None:
    queue = open_test_queue(max_attempts=1)
    put_ids(queue, ["a"])
    for attempt in (1, 2, 3):
        lease = queue.lease(1, wait=2)
        assert [(m.msg_id, m.attempts) for m in lease.messages] == [("a", attempt)]
        assert queue.nack(lease, reason="failing") == []
    assert queue.depth() == 1


def test_lease_dead_letters_a_message_that_used_up_its_attempts(
    open_test_queue: OpenQueue,
) -> None:
    # Each delivery "crashes its consumer": the lease just runs out, nobody nacks.
    sink = DeadLetters()
    queue = open_test_queue(visibility_timeout=0.5, max_attempts=2, dead_letter=sink)
    put_ids(queue, ["poison", "fine"])

    first = queue.lease(1)
    assert [(m.msg_id, m.attempts) for m in first.messages] == [("poison", 1)]
    queue.ack(queue.lease(1))  # "fine" is processed normally
    second = queue.lease(1, wait=3)
    assert [(m.msg_id, m.attempts) for m in second.messages] == [("poison", 2)]

    third = queue.lease(1, wait=2)
    assert not third, "a message out of attempts must not be handed out again"
    assert sink.ids == ["poison"]
    assert sink.calls[0][1] == "max_attempts_exceeded"
    assert sink.calls[0][0][0].body == b"body-poison"
    assert queue.depth() == 0


def test_put_on_a_full_queue_waits_then_raises(open_test_queue: OpenQueue) -> None:
    queue = open_test_queue(capacity=5)
    put_ids(queue, ["a", "b", "c", "d", "e"])

    started = time.monotonic()
    with pytest.raises(QueueFullError):
        queue.put([("f", b"f")], timeout=0.5)
    assert time.monotonic() - started >= 0.45
    with pytest.raises(QueueFullError):
        queue.put([(f"x{i}", b"") for i in range(6)], timeout=10)  # can never fit: at once
    assert time.monotonic() - started < 5
    assert queue.depth() == 5


def test_put_on_a_full_queue_succeeds_once_a_consumer_acks(open_test_queue: OpenQueue) -> None:
    producer = open_test_queue(capacity=5)
    consumer = open_test_queue(capacity=5)
    put_ids(producer, ["a", "b", "c", "d", "e"])

    def consume_one_later() -> None:
        time.sleep(0.5)
        consumer.ack(consumer.lease(1))

    helper = threading.Thread(target=consume_one_later)
    started = time.monotonic()
    helper.start()
    producer.put([("f", b"f")], timeout=10)
    helper.join()
    assert time.monotonic() - started >= 0.4
    assert producer.depth() == 5
    assert drain_ids(producer) == ["b", "c", "d", "e", "f"]


def test_depth_counts_visible_and_leased_messages(open_test_queue: OpenQueue) -> None:
    queue = open_test_queue()
    assert queue.depth() == 0
    put_ids(queue, ["a", "b", "c", "d"])
    assert queue.depth() == 4
    lease = queue.lease(2)
    assert queue.depth() == 4
    queue.ack(lease, ["a"])
    assert queue.depth() == 3
    queue.nack(lease, ["b"], reason="retry")
    assert queue.depth() == 3


def test_two_consumers_never_get_the_same_message(open_test_queue: OpenQueue) -> None:
    producer = open_test_queue()
    assert_two_consumers_share_the_work(producer, [open_test_queue(), open_test_queue()])


def assert_two_consumers_share_the_work(producer: Queue, consumers: list[Queue]) -> None:
    """300 messages put in batches of 50, leased 7 at a time by two consumers on threads:
    both get work, none gets a message the other got, and all are acked."""
    ids = [f"m{i:04d}" for i in range(300)]
    for start in range(0, len(ids), 50):
        put_ids(producer, ids[start : start + 50])
    got: list[list[str]] = [[], []]
    errors: list[BaseException] = []

    def consume(index: int) -> None:
        queue = consumers[index]
        try:
            idle = 0
            while idle < 3:
                lease = queue.lease(7, wait=0.1)
                if not lease:
                    idle += 1
                    continue
                idle = 0
                got[index] += [m.msg_id for m in lease.messages]
                time.sleep(0.001)  # let the other consumer in between our lease and ack
                queue.ack(lease)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert got[0] and got[1], "both consumers should have had work"
    assert not set(got[0]) & set(got[1])
    assert sorted(got[0] + got[1]) == ids
    assert producer.depth() == 0


def test_bad_settings_are_refused_naming_the_key(backend: str, tmp_path: Path) -> None:
    key, value = {"sqlite": ("synchronous", "sometimes"), "nats": ("connect_timeout", -1)}[backend]
    with pytest.raises(ConfigError) as caught:
        open_queue(backend, {key: value}, tmp_path, QueueSpec(name="q"))
    assert f"transport.{key}" in str(caught.value)


@pytest.mark.nats
def test_unreachable_nats_server_is_a_transient_error(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(TransientError, match="not reachable"):
        open_queue(
            "nats",
            {"url": "nats://127.0.0.1:1", "connect_timeout": 1.0},
            tmp_path,
            QueueSpec(name="q"),
        )
    assert time.monotonic() - started < 5
    assert not [t for t in threading.enumerate() if t.name.startswith("dps-nats-")]


def limit_nats_message_size(name: str, max_bytes: int) -> None:
    """Lower the stream's max_msg_size behind the queue's back, as an operator could."""
    import nats

    async def run() -> None:
        nc = await nats.connect(NATS_URL, connect_timeout=3, allow_reconnect=False)
        try:
            js = nc.jetstream()
            info = await js.stream_info(f"{STREAM_PREFIX}_{name}".upper())
            info.config.max_msg_size = max_bytes
            await js.update_stream(info.config)
        finally:
            await nc.close()

    asyncio.run(run())


@pytest.mark.nats
def test_a_put_the_server_refuses_is_a_transient_error_naming_the_stream(tmp_path: Path) -> None:
    name = f"q{uuid.uuid4().hex[:12]}"
    queue = open_queue("nats", backend_settings("nats"), tmp_path, QueueSpec(name=name))
    try:
        limit_nats_message_size(name, 150)  # headers count too

        with pytest.raises(TransientError) as refused:
            queue.put([("small", b"s"), ("big", b"b" * 200)], timeout=5)

        assert f"{STREAM_PREFIX}_{name}".upper() in str(refused.value)
        assert "1 of 2 messages" in str(refused.value) and "maximum" in str(refused.value)
        # The put is retried once the stream takes the message: the stored one is not doubled.
        limit_nats_message_size(name, -1)
        queue.put([("small", b"s"), ("big", b"b" * 200)], timeout=5)
        assert [m.msg_id for m in queue.lease(10, wait=2).messages] == ["small", "big"]
    finally:
        queue.close()
        delete_nats_stream(name)


def test_describe_states_the_durability(backend: str, tmp_path: Path) -> None:
    from dps.core import registry

    instance = registry.get("queues", backend)(backend_settings(backend), tmp_path)
    described = instance.describe()
    assert described["backend"] == backend
    assert described["durability"]


@pytest.mark.nats
def test_a_lingering_pull_the_server_leaves_unanswered_ends_soon_after_its_expiry(
    tmp_path: Path,
) -> None:
    """The server ends a lingering pull request with a 408 at its expiry; when that answer does
    not come (nats-server 2.9 was seen to drop it under load), the lease must not wait out the
    whole ``request_timeout`` while messages pile up. The pull requests go to a stand-in here
    that answers ``no_wait`` requests (404) and leaves lingering ones unanswered."""
    import json

    import nats

    name = f"q{uuid.uuid4().hex[:12]}"
    subject = f"dpstest.silent.{name}"
    settings = {**backend_settings("nats"), "request_timeout": 30.0}
    queue = open_queue("nats", settings, tmp_path, QueueSpec(name=name))
    ready = threading.Event()
    done = threading.Event()
    requests: list[dict[str, Any]] = []

    async def stand_in() -> None:
        nc = await nats.connect(NATS_URL, connect_timeout=3, allow_reconnect=False)

        async def answer(msg: Any) -> None:
            requests.append(json.loads(msg.data))
            if requests[-1].get("no_wait"):
                await nc.publish(msg.reply, b"", headers={"Status": "404"})

        await nc.subscribe(subject, cb=answer)
        await nc.flush()
        ready.set()
        while not done.is_set():
            await asyncio.sleep(0.01)
        await nc.close()

    server = threading.Thread(target=asyncio.run, args=(stand_in(),), daemon=True)
    server.start()
    try:
        assert ready.wait(10)
        queue._next = subject  # type: ignore[attr-defined]

        started = time.monotonic()
        lease = queue.lease(10, wait=0.1)
        took = time.monotonic() - started

        assert not lease
        assert took < 5, f"the lease waited {took:.1f} s for an answer that never came"
        [lingering] = [r for r in requests if "expires" in r]
        assert lingering["batch"] == 1 and 0 < lingering["expires"] <= 100_000_000

        # A wait of a few ms (Gamma's while batches are in flight) sends no lingering request.
        requests.clear()
        assert not queue.lease(10, wait=0.01)
        assert requests and all(r.get("no_wait") for r in requests)
    finally:
        done.set()
        server.join(10)
        queue.close()
        delete_nats_stream(name)
