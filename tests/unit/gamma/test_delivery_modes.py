"""``delivery_mode: async`` (several batches in flight) and ``ack_mode: record``.

A real SQLite spool and state store in a temporary directory; the destination is a test double
that records how many calls overlap and what the spool holds at each call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from dps.config.models import DestinationConfig, GammaSettings
from dps.core.record import Record, encode
from dps.gamma.delivery import SPOOL_MAX_ATTEMPTS, DestinationWorker, spool_name
from dps.gamma.destinations.base import DeliveryError, Destination, Rejected
from dps.queues import QueueSpec, open_queue
from dps.state import open_state
from dps.state.base import DlqFilter


class Probe(Destination):
    """Sleeps ``pause`` per call, counts overlapping calls, refuses batches holding ``bad``."""

    Config: Any = None
    lock = threading.Lock()
    active = 0
    most = 0
    delivered: list[str] = []
    depths: list[int] = []
    instances = 0
    pause = 0.0
    hang_first = 0.0
    calls = 0
    spool: Any = None

    def __init__(self) -> None:
        super().__init__("dest", None)
        with Probe.lock:
            Probe.instances += 1

    def deliver(self, records: Sequence[Record]) -> Rejected:
        with Probe.lock:
            Probe.active += 1
            Probe.most = max(Probe.most, Probe.active)
        try:
            if Probe.spool is not None:
                Probe.depths.append(Probe.spool.depth())
            with Probe.lock:
                Probe.calls += 1
                first = Probe.calls == 1
            time.sleep(Probe.hang_first if first and Probe.hang_first else Probe.pause)
            if any(r.payload.get("bad") for r in records):
                raise DeliveryError("23514 check constraint", "permanent")
            with Probe.lock:
                Probe.delivered.extend(r.record_id for r in records)
            return []
        finally:
            with Probe.lock:
                Probe.active -= 1


def _records(n: int, bad: int | None = None) -> list[Record]:
    return [
        Record(
            record_id=f"src:{i}",
            source_id="src",
            correlation_id=f"c{i}",
            ingested_at=0.0,
            payload={"bad": True} if i == bad else {"n": i},
        )
        for i in range(n)
    ]


@pytest.fixture
def make_worker(tmp_path: Path) -> Any:
    Probe.active = Probe.most = Probe.instances = 0
    Probe.delivered, Probe.depths, Probe.pause, Probe.spool = [], [], 0.0, None
    Probe.hang_first, Probe.calls = 0.0, 0
    opened: list[Any] = []

    def make(
        settings: GammaSettings | None = None, **destination: Any
    ) -> tuple[DestinationWorker, Any, Any]:
        dc = DestinationConfig.model_validate(
            {"destination_id": "dest", "destination_type": "stdout", **destination}
        )
        spool = open_queue(
            "sqlite",
            {},
            tmp_path,
            QueueSpec(name=spool_name("dest"), max_attempts=SPOOL_MAX_ATTEMPTS),
        )
        state = open_state("sqlite", {}, tmp_path)
        opened.extend([spool, state])
        worker = DestinationWorker(
            dc,
            settings or GammaSettings(OUTPUT_LINGER_MS=0),
            factory=lambda _dc: Probe(),
            spool=spool,
            state=state,
            config_version="v1",
            paused=lambda: False,
        )
        return worker, spool, state

    yield make
    for thing in opened:
        thing.close()


def _run_until_drained(worker: DestinationWorker, spool: Any, timeout: float = 20.0) -> float:
    started = time.monotonic()
    worker.start()
    try:
        deadline = started + timeout
        while time.monotonic() < deadline:
            if spool.depth() == 0 and not worker.busy:
                return time.monotonic() - started
            time.sleep(0.02)
        raise AssertionError("the spool never drained")
    finally:
        worker.stop()


def test_async_keeps_several_batches_in_flight_on_separate_instances(make_worker: Any) -> None:
    worker, spool, state = make_worker(
        delivery_mode="async", delivery={"batch_size": 10, "max_in_flight": 3}
    )
    Probe.pause = 0.3
    records = _records(60)
    spool.put([(r.record_id, encode(r)) for r in records])

    elapsed = _run_until_drained(worker, spool)

    assert sorted(Probe.delivered) == sorted(r.record_id for r in records)
    assert len(Probe.delivered) == 60  # each once
    assert Probe.most == 3 and Probe.instances == 3
    assert elapsed < 6 * 0.3  # sequential would take at least 1.8 s
    assert state.delivered_records([r.record_id for r in records], "dest") == {
        r.record_id for r in records
    }


def test_sync_sends_one_batch_at_a_time(make_worker: Any) -> None:
    worker, spool, _ = make_worker(delivery={"batch_size": 10, "max_in_flight": 3})
    Probe.pause = 0.05
    spool.put([(r.record_id, encode(r)) for r in _records(30)])

    _run_until_drained(worker, spool)

    assert Probe.most == 1 and Probe.instances == 1 and len(Probe.delivered) == 30


def test_async_isolates_a_bad_record_like_sync(make_worker: Any) -> None:
    worker, spool, state = make_worker(
        delivery_mode="async", delivery={"batch_size": 8, "max_in_flight": 2}
    )
    spool.put([(r.record_id, encode(r)) for r in _records(32, bad=13)])

    _run_until_drained(worker, spool)

    assert sorted(Probe.delivered) == sorted(f"src:{i}" for i in range(32) if i != 13)
    entries = state.query_dlq(DlqFilter(module="gamma"))
    assert [(e.record_id, e.error_class) for e in entries] == [("src:13", "permanent")]


@pytest.mark.parametrize("ack_mode", ["batch", "record"])
def test_ack_mode_record_releases_settled_records_while_the_batch_is_split(
    make_worker: Any, ack_mode: str
) -> None:
    worker, spool, state = make_worker(ack_mode=ack_mode, delivery={"batch_size": 8})
    Probe.spool = spool
    spool.put([(r.record_id, encode(r)) for r in _records(8, bad=7)])

    assert worker.step()

    # The split delivers 0-3 first, then 4-5, then 6, then finds 7 alone.
    assert sorted(Probe.delivered) == [f"src:{i}" for i in range(7)]
    assert spool.depth() == 0
    if ack_mode == "batch":
        assert set(Probe.depths) == {8}  # nothing leaves the spool before the batch is done
    else:
        assert Probe.depths[0] == 8 and Probe.depths[-1] < 8
        assert Probe.depths == sorted(Probe.depths, reverse=True)
    [entry] = state.query_dlq(DlqFilter(module="gamma"))
    assert entry.record_id == "src:7"
    assert state.delivered_records([f"src:{i}" for i in range(8)], "dest") == {
        f"src:{i}" for i in range(7)
    }


@pytest.mark.parametrize("action", ["RETRY_DELIVERY", "ASSUME_SUCCESS"])
def test_a_call_without_acknowledgement_within_ack_wait_timeout(
    make_worker: Any, action: str
) -> None:
    settings = GammaSettings(OUTPUT_LINGER_MS=0, ACK_WAIT_TIMEOUT_MS=300, ACK_TIMEOUT_ACTION=action)
    worker, spool, state = make_worker(settings, delivery={"batch_size": 10, "retry_delay_ms": 1})
    Probe.hang_first = 1.0
    records = _records(5)
    spool.put([(r.record_id, encode(r)) for r in records])

    started = time.monotonic()
    assert worker.step()
    elapsed = time.monotonic() - started

    ids = {r.record_id for r in records}
    assert worker.stats.ack_timeouts == 1 and spool.depth() == 0
    assert state.delivered_records(sorted(ids), "dest") == ids
    if action == "RETRY_DELIVERY":
        # The hung instance is abandoned; a fresh one delivers the batch again at once.
        assert Probe.instances == 2 and Probe.calls == 2
        assert sorted(Probe.delivered) == sorted(ids)
    else:
        # Counted delivered without waiting for the answer, and not sent again.
        assert Probe.calls == 1 and Probe.delivered == []
    assert elapsed < 1.0
    assert not state.query_dlq(DlqFilter(module="gamma"))
