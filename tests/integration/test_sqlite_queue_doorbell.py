"""The embedded queue's wake-ups: a put (or a nack with no delay) rings the waiting consumers.

Each test makes the poll steps a minute long, so a waiting lease that returns sooner was woken
by a ring: without one it would sleep the whole step. The producers run in other processes
where it matters, as in the pipeline.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import dps.queues.sqlite as sqlite_queue
from dps.queues import Lease, QueueSpec, open_queue
from dps.queues.doorbell import open_doorbell
from dps.queues.sqlite import SqliteBackend, SqliteQueue

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="doorbells use Linux abstract sockets"
)

#: Far longer than any test waits: only a ring ends a wait early.
STEP = 60.0

PUT_FROM_ANOTHER_PROCESS = """
import sys
from pathlib import Path
from dps.queues import QueueSpec, open_queue
queue = open_queue("sqlite", {}, Path(sys.argv[1]), QueueSpec(name="q", capacity=10_000))
queue.put([(sys.argv[2], b"rung")], timeout=10)
queue.close()
"""


@pytest.fixture(autouse=True)
def long_poll_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_queue, "_POLL_FIRST", STEP)
    monkeypatch.setattr(sqlite_queue, "_POLL_MAX", STEP)


def open_sqlite(tmp_path: Path) -> SqliteQueue:
    queue = open_queue("sqlite", {}, tmp_path, QueueSpec(name="q", capacity=10_000))
    assert isinstance(queue, SqliteQueue)
    return queue


def waiters(tmp_path: Path) -> list[tuple[str, int]]:
    with sqlite3.connect(tmp_path / "queues" / "q.db") as db:
        return list(db.execute("SELECT name, pid FROM waiters ORDER BY name"))


class Waiting:
    """A lease waiting on another thread; ``result`` once it returned."""

    def __init__(self, queue: SqliteQueue, wait: float = 2 * STEP) -> None:
        self.result: Lease | None = None
        self.took = 0.0
        self._thread = threading.Thread(target=self._run, args=(queue, wait), daemon=True)
        self._thread.start()

    def _run(self, queue: SqliteQueue, wait: float) -> None:
        started = time.monotonic()
        self.result = queue.lease(10, wait=wait)
        self.took = time.monotonic() - started

    def signed_up(self, tmp_path: Path) -> None:
        """Wait until the lease has found the queue empty and signed up its doorbell."""
        deadline = time.monotonic() + 10
        while not waiters(tmp_path):
            assert time.monotonic() < deadline, "the waiting lease never signed up a doorbell"
            time.sleep(0.01)

    def join(self) -> Lease:
        self._thread.join(timeout=STEP / 2)
        assert not self._thread.is_alive(), "the lease was not woken: it sleeps its poll step"
        assert self.result is not None
        return self.result


@pytest.fixture
def consumer(tmp_path: Path) -> Iterator[SqliteQueue]:
    queue = open_sqlite(tmp_path)
    yield queue
    queue.close()


def test_a_put_from_another_process_wakes_a_waiting_lease(
    tmp_path: Path, consumer: SqliteQueue
) -> None:
    waiting = Waiting(consumer)
    waiting.signed_up(tmp_path)
    subprocess.run(
        [sys.executable, "-c", PUT_FROM_ANOTHER_PROCESS, str(tmp_path), "m1"], check=True
    )

    lease = waiting.join()
    assert [(m.msg_id, m.body) for m in lease.messages] == [("m1", b"rung")]
    assert waiting.took < STEP / 2


def test_a_nack_without_delay_wakes_another_waiting_consumer(
    tmp_path: Path, consumer: SqliteQueue
) -> None:
    holder = open_sqlite(tmp_path)
    try:
        holder.put([("m1", b"x")])
        held = holder.lease(10)
        waiting = Waiting(consumer)
        waiting.signed_up(tmp_path)

        holder.nack(held, reason="try again")

        lease = waiting.join()
        assert [m.msg_id for m in lease.messages] == ["m1"]
        assert lease.messages[0].attempts == 2
    finally:
        holder.close()


def test_a_lease_that_waits_signs_up_once_and_close_signs_it_out(
    tmp_path: Path, consumer: SqliteQueue
) -> None:
    assert not consumer.lease(10, wait=0.0)
    assert waiters(tmp_path) == []  # a lease that does not wait needs no doorbell

    waiting = Waiting(consumer, wait=0.05)
    waiting.signed_up(tmp_path)
    assert not waiting.join()
    Waiting(consumer, wait=0.05).join()
    [(name, pid)] = waiters(tmp_path)
    assert name.startswith("dps-queue-")
    assert pid == os.getpid()

    consumer.close()
    assert waiters(tmp_path) == []


def test_a_waiter_whose_process_is_gone_is_forgotten_by_the_next_puts(tmp_path: Path) -> None:
    producer = open_sqlite(tmp_path)
    try:
        with sqlite3.connect(tmp_path / "queues" / "q.db") as db:
            db.execute("INSERT INTO waiters (name, pid, since) VALUES ('dps-queue-gone', 1, 0)")
        producer.put([("m1", b"x")])  # rings the name: nobody answers
        assert waiters(tmp_path) == [("dps-queue-gone", 1)]
        producer.put([("m2", b"x")])  # deletes it
        assert waiters(tmp_path) == []
        assert [m.msg_id for m in producer.lease(10).messages] == ["m1", "m2"]
    finally:
        producer.close()


def test_rings_a_busy_consumer_has_not_read_never_block_a_put(
    tmp_path: Path, consumer: SqliteQueue
) -> None:
    Waiting(consumer, wait=0.05).join()  # signed up; from now on nobody reads its rings
    producer = open_sqlite(tmp_path)
    try:
        for n in range(500):  # far more than a datagram socket queues
            producer.put([(f"m{n}", b"x")], timeout=5)
        assert producer.depth() == 500
        assert len(waiters(tmp_path)) == 1  # a full socket is not a gone one
    finally:
        producer.close()


def test_describe_says_how_consumers_are_woken(tmp_path: Path) -> None:
    assert "doorbells" in SqliteBackend({}, tmp_path).describe()["wake_ups"]


def test_a_doorbell_closed_while_its_lease_waits_ends_the_wait() -> None:
    doorbell = open_doorbell()
    assert doorbell is not None
    doorbell.close()
    doorbell.drain()  # no error: nothing to read from a closed socket
    started = time.monotonic()
    assert not doorbell.wait(STEP)
    assert time.monotonic() - started < STEP / 2
