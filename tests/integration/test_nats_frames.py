"""Frames on the NATS backend: a queue opened with ``pack`` puts many records per message.

Checked on the real JetStream server (127.0.0.1:4222, ``DPS_TEST_NATS_URL``), each test on its
own stream, deleted afterwards: what the server holds (messages, not records), that depth and
leases still count records, and how records of one frame share its fate (docs/queues.md,
*Frames*). The queue contract for plain messages is ``test_queues.py``'s.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.integration.test_queues import (
    NATS_URL,
    STREAM_PREFIX,
    DeadLetters,
    assert_two_consumers_share_the_work,
    delete_nats_stream,
    drain_ids,
    put_ids,
)

from dps.queues import Queue, QueueSpec, open_queue

pytestmark = pytest.mark.nats

#: Small frames, so that a test's few records make several of them.
PER_MESSAGE = 4

OpenPacked = Callable[..., Queue]


@pytest.fixture
def queue_name() -> Iterator[str]:
    name = f"f{uuid.uuid4().hex[:12]}"
    yield name
    delete_nats_stream(name)


@pytest.fixture
def open_packed(queue_name: str, tmp_path: Path) -> Iterator[OpenPacked]:
    """Open instances of one fresh queue; ``pack=False`` opens a plain producer on it."""
    opened: list[Queue] = []

    def open_one(*, pack: bool = True, **spec: Any) -> Queue:
        settings = {
            "url": NATS_URL,
            "stream_prefix": STREAM_PREFIX,
            "connect_timeout": 3.0,
            "records_per_message": PER_MESSAGE,
        }
        queue = open_queue(
            "nats", settings, tmp_path, QueueSpec(name=queue_name, pack=pack, **spec)
        )
        opened.append(queue)
        return queue

    yield open_one
    for queue in opened:
        queue.close()


def server_messages(name: str) -> int:
    """How many messages the server's stream holds (frames, not records)."""
    import nats

    async def run() -> int:
        nc = await nats.connect(NATS_URL, connect_timeout=3, allow_reconnect=False)
        try:
            info = await nc.jetstream().stream_info(f"{STREAM_PREFIX}_{name}".upper())
            return int(info.state.messages)
        finally:
            await nc.close()

    return asyncio.run(run())


def ids(n: int, prefix: str = "r") -> list[str]:
    return [f"{prefix}{i:03d}" for i in range(n)]


def test_a_put_becomes_few_messages_and_depth_and_leases_count_records(
    open_packed: OpenPacked, queue_name: str
) -> None:
    queue = open_packed()
    put_ids(queue, ids(10))
    assert server_messages(queue_name) == 3  # 4 + 4 + 2
    assert queue.depth() == 10

    lease = queue.lease(100)
    assert [(m.msg_id, m.body, m.attempts) for m in lease.messages] == [
        (i, f"body-{i}".encode(), 1) for i in ids(10)
    ]
    queue.ack(lease)
    assert queue.depth() == 0
    assert server_messages(queue_name) == 0


def test_a_batch_put_again_adds_nothing_and_duplicate_ids_in_a_batch_count_once(
    open_packed: OpenPacked, queue_name: str
) -> None:
    queue = open_packed()
    batch = [(i, f"body-{i}".encode()) for i in ids(6)]
    queue.put([*batch, ("r000", b"again")])
    queue.put(batch)  # a producer replaying its last put after a crash
    assert queue.depth() == 6
    assert server_messages(queue_name) == 2
    assert drain_ids(queue, batch=100) == ids(6)


def test_a_lease_takes_whole_frames_and_splits_only_a_frame_larger_than_itself(
    open_packed: OpenPacked, queue_name: str
) -> None:
    queue = open_packed()
    put_ids(queue, ids(10))  # frames of 4, 4 and 2

    first = queue.lease(6)  # the second frame does not fit: kept whole for the next lease
    assert [m.msg_id for m in first.messages] == ids(4)
    small = queue.lease(3)  # the next frame is larger than the lease: split
    assert [m.msg_id for m in small.messages] == ids(7)[4:]
    rest = queue.lease(10)
    assert [m.msg_id for m in rest.messages] == ids(10)[7:]

    queue.ack(first)
    queue.ack(small)
    assert server_messages(queue_name) == 2  # r007 of the split frame is not acked yet
    queue.ack(rest)
    assert server_messages(queue_name) == 0
    assert queue.depth() == 0


def test_records_of_a_frame_share_its_fate_when_the_consumer_stops_acking(
    open_packed: OpenPacked,
) -> None:
    queue = open_packed(visibility_timeout=0.5)
    put_ids(queue, ["a", "b", "c"])
    lease = queue.lease(10)
    queue.ack(lease, ["a", "c"])  # "b" is never settled: the consumer "died"

    again = queue.lease(10, wait=3)
    assert [(m.msg_id, m.attempts) for m in again.messages] == [("a", 2), ("b", 2), ("c", 2)]
    queue.ack(again)
    assert queue.depth() == 0


def test_a_partial_nack_republishes_the_nacked_records_and_removes_the_frame(
    open_packed: OpenPacked, queue_name: str
) -> None:
    queue = open_packed()
    put_ids(queue, ["a", "b", "c"])
    lease = queue.lease(10)
    assert queue.nack(lease, ["b"], reason="retry") == []
    assert server_messages(queue_name) == 1  # nothing happens until the frame is settled
    queue.ack(lease)  # "a" and "c"; "b" was nacked and stays nacked

    again = queue.lease(10, wait=2)
    assert [(m.msg_id, m.body, m.attempts) for m in again.messages] == [("b", b"body-b", 2)]
    queue.ack(again)
    assert queue.depth() == 0
    assert server_messages(queue_name) == 0


def test_a_partial_nack_with_a_delay_comes_back_after_it(open_packed: OpenPacked) -> None:
    queue = open_packed()
    put_ids(queue, ["a", "b", "c"])
    lease = queue.lease(10)
    queue.nack(lease, ["a"], reason="destination_down", delay=1.0)
    queue.ack(lease, ["b", "c"])
    nacked_at = time.monotonic()

    assert not queue.lease(10), "a delayed record must not come back before its time"
    later = queue.lease(10, wait=5)
    waited = time.monotonic() - nacked_at
    assert [(m.msg_id, m.attempts) for m in later.messages] == [("a", 2)]
    assert 0.8 <= waited < 3.0
    queue.ack(later)
    assert queue.depth() == 0


def test_a_whole_frame_nacked_is_redelivered_by_the_server_after_the_delay(
    open_packed: OpenPacked, queue_name: str
) -> None:
    queue = open_packed()
    put_ids(queue, ["a", "b"])
    queue.nack(queue.lease(10), reason="destination_down", delay=0.5)
    assert server_messages(queue_name) == 1
    later = queue.lease(10, wait=3)
    assert [(m.msg_id, m.attempts) for m in later.messages] == [("a", 2), ("b", 2)]
    queue.ack(later)
    assert queue.depth() == 0


def test_records_out_of_attempts_are_dead_lettered_on_nack_and_on_lease(
    open_packed: OpenPacked,
) -> None:
    sink = DeadLetters()
    queue = open_packed(visibility_timeout=0.5, max_attempts=2, dead_letter=sink)
    put_ids(queue, ["a", "b", "c", "d", "e"])  # frames [a b c d] and [e]

    first = queue.lease(10)
    assert [m.msg_id for m in first.messages] == ["a", "b", "c", "d", "e"]
    queue.ack(first, ["e"])
    assert queue.nack(first, ["a", "b"], reason="flaky") == []
    # [a b c d] is not settled ("c" and "d" are not): its lease runs out.
    second = queue.lease(10, wait=3)
    assert [(m.msg_id, m.attempts) for m in second.messages] == [
        ("a", 2),
        ("b", 2),
        ("c", 2),
        ("d", 2),
    ]
    dead = queue.nack(second, ["a"], reason="transform_failed")
    assert [(m.msg_id, m.attempts) for m in dead] == [("a", 2)]
    assert sink.calls[-1][1] == "transform_failed"
    # "b", "c", "d" are left to run out again: the next lease dead-letters the whole frame,
    # "a" with it once more (its frame was never settled; DLQ entries are idempotent).
    assert not queue.lease(10, wait=2)
    assert sink.ids == ["a", "a", "b", "c", "d"]
    assert sink.calls[-1][1] == "max_attempts_exceeded"
    assert queue.depth() == 0


def test_a_packed_consumer_reads_plain_messages_and_frames_alike(
    open_packed: OpenPacked,
) -> None:
    plain = open_packed(pack=False)
    packed = open_packed()
    put_ids(plain, ["p1", "p2"])
    put_ids(packed, ["f1", "f2", "f3"])
    assert packed.depth() == 5
    assert drain_ids(packed, batch=100) == ["p1", "p2", "f1", "f2", "f3"]


def test_two_consumers_never_get_the_same_record(open_packed: OpenPacked) -> None:
    producer = open_packed()
    assert_two_consumers_share_the_work(producer, [open_packed(), open_packed()])
