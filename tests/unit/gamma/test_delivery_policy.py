"""The circuit breaker's state machine and the delivery worker's policy per error class, with a
real SQLite spool and state store and scripted in-process destinations."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from dps.config.models import DestinationConfig, GammaSettings
from dps.core.record import Record, encode
from dps.gamma.circuit_breaker import CLOSED, HALF_OPEN, OPEN, BreakerSettings, CircuitBreaker
from dps.gamma.delivery import SPOOL_MAX_ATTEMPTS, DestinationWorker, spool_name
from dps.gamma.destinations.base import DeliveryError, Destination, RecordError, Rejected
from dps.queues import QueueSpec, open_queue
from dps.state import open_state
from dps.state.base import DlqFilter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_threshold_in_window_then_half_opens_and_closes() -> None:
    clock = Clock()
    b = CircuitBreaker(
        "d", BreakerSettings(failure_threshold=3, window_s=10, cooldown_s=5), clock=clock
    )
    b.record_failure("x")
    clock.now += 11  # the first failure leaves the window
    b.record_failure("x")
    b.record_failure("x")
    assert b.state == CLOSED
    b.record_failure("x")
    assert b.state == OPEN and not b.allow()
    clock.now += 5
    assert b.state == HALF_OPEN
    assert b.allow() and not b.allow()  # one probe at a time
    b.record_failure("still down")
    assert b.state == OPEN and b.snapshot()["cooldown_seconds"] == 10  # doubled
    clock.now += 10
    assert b.allow()
    b.record_success()
    assert b.state == CLOSED and b.snapshot()["cooldown_seconds"] == 5


def test_breaker_reset_closes_it() -> None:
    b = CircuitBreaker("d", BreakerSettings(failure_threshold=1))
    b.record_failure()
    assert b.state == OPEN
    b.reset()
    assert b.state == CLOSED and b.allow()


def test_spool_names_are_valid_queue_names() -> None:
    assert spool_name("analytics.warehouse-1").startswith("spool_analytics_warehouse-1_")
    assert spool_name("A") != spool_name("a")


# -- the worker ---------------------------------------------------------------------------------


class Scripted(Destination):
    """Raises the scripted errors in turn, refuses records whose payload says ``bad``."""

    Config: Any = None
    script: list[BaseException] = []
    delivered: list[str] = []
    calls: list[int] = []

    def deliver(self, records: Sequence[Record]) -> Rejected:
        self.calls.append(len(records))
        if self.script:
            raise self.script.pop(0)
        if any(r.payload.get("bad") for r in records) and len(records) > 1:
            raise DeliveryError("a row in this batch violates a constraint", "permanent")
        if records[0].payload.get("bad"):
            raise DeliveryError("23505 duplicate key", "permanent")
        rejected: Rejected = [
            (r, RecordError("record_too_large", "too big", "poison"))
            for r in records
            if r.payload.get("huge")
        ]
        self.delivered.extend(r.record_id for r in records if not r.payload.get("huge"))
        return rejected


def _records(n: int, **special: dict[str, Any]) -> list[Record]:
    return [
        Record(
            record_id=f"src:{i}",
            source_id="src",
            correlation_id=f"c{i}",
            ingested_at=0.0,
            payload=special.get(str(i), {"n": i}),
        )
        for i in range(n)
    ]


@pytest.fixture
def worker(tmp_path: Path) -> Any:
    Scripted.script, Scripted.delivered, Scripted.calls = [], [], []
    dc = DestinationConfig.model_validate(
        {
            "destination_id": "dest",
            "destination_type": "stdout",
            "delivery": {"batch_size": 8, "retry_count": 2, "retry_delay_ms": 1},
            "circuit_breaker": {"failure_threshold": 2, "cooldown_seconds": 60},
        }
    )
    settings = GammaSettings(OUTPUT_LINGER_MS=0, MAX_DELIVERY_RETRIES=5)
    spool = open_queue(
        "sqlite",
        {},
        tmp_path,
        QueueSpec(name=spool_name("dest"), max_attempts=SPOOL_MAX_ATTEMPTS),
    )
    state = open_state("sqlite", {}, tmp_path)
    w = DestinationWorker(
        dc,
        settings,
        factory=lambda _dc: Scripted("dest", None),
        spool=spool,
        state=state,
        config_version="v1",
        paused=lambda: False,
    )
    yield w, spool, state
    spool.close()
    state.close()


def _fill(spool: Any, records: list[Record]) -> None:
    spool.put([(r.record_id, encode(r)) for r in records])


def test_one_bad_row_is_isolated_by_splitting_and_the_rest_delivered(worker: Any) -> None:
    w, spool, state = worker
    _fill(spool, _records(8, **{"5": {"bad": True}}))
    assert w.step()
    assert sorted(Scripted.delivered) == sorted(f"src:{i}" for i in range(8) if i != 5)
    entries = state.query_dlq(DlqFilter(module="gamma"))
    assert [(e.record_id, e.error_class, e.destination_id) for e in entries] == [
        ("src:5", "permanent", "dest")
    ]
    assert entries[0].stage == "deliver" and entries[0].correlation_id == "c5"
    assert spool.depth() == 0
    assert w.stats.splits >= 3


def test_a_poison_record_goes_to_the_dlq_with_its_class(worker: Any) -> None:
    w, spool, state = worker
    _fill(spool, _records(3, **{"1": {"huge": True}}))
    w.step()
    assert [(e.record_id, e.error_class, e.reason) for e in state.query_dlq(DlqFilter())] == [
        ("src:1", "poison", "record_too_large")
    ]
    assert sorted(Scripted.delivered) == ["src:0", "src:2"]


def test_retryable_failures_are_retried_then_succeed(worker: Any) -> None:
    w, spool, state = worker
    Scripted.script = [DeliveryError("500", "retryable"), ConnectionResetError("reset")]
    _fill(spool, _records(4))
    w.step()
    assert len(Scripted.delivered) == 4 and Scripted.calls == [4, 4, 4]
    assert w.breaker.state == CLOSED
    assert len(state.delivery_errors("dest", 0)) == 2


def test_a_destination_down_opens_the_breaker_and_its_records_wait(worker: Any) -> None:
    w, spool, state = worker
    Scripted.script = [DeliveryError("refused", "retryable")] * 6
    _fill(spool, _records(4))
    w.step()  # 3 attempts, one breaker failure, records back in the spool
    assert w.breaker.state == CLOSED and spool.depth() == 4
    time.sleep(1.1)  # the records come back after the nack delay
    w.step()  # fails again: the second failure in the window opens the breaker
    assert w.breaker.state == OPEN
    assert spool.depth() == 4 and state.count_dlq(DlqFilter()) == 0  # nothing lost, no DLQ
    calls = len(Scripted.calls)
    w.step()  # OPEN: nothing is sent
    assert len(Scripted.calls) == calls
    w.breaker.reset()
    Scripted.script = []
    time.sleep(1.1)  # the nack delay
    while spool.depth():
        w.step()
    assert sorted(Scripted.delivered) == [f"src:{i}" for i in range(4)]


def test_throttle_waits_and_does_not_count_toward_the_breaker(worker: Any) -> None:
    w, spool, _state = worker
    Scripted.script = [DeliveryError("429", "throttle", retry_after=0.05)] * 3
    _fill(spool, _records(2))
    w.step()
    assert len(Scripted.delivered) == 2
    assert w.stats.throttled == 3 and w.breaker.snapshot()["failures_in_window"] == 0


def test_an_unclassified_exception_is_retried_once_then_isolated(worker: Any) -> None:
    w, spool, state = worker
    Scripted.script = [KeyError("boom"), KeyError("boom")]
    _fill(spool, _records(1))
    w.step()
    assert [e.error_class for e in state.query_dlq(DlqFilter())] == ["permanent"]
