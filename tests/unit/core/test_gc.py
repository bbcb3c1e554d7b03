"""The garbage collector around the hot path: envelopes it need not track, and young
collections between two steps rather than within one."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from dps.core.record import LineageStep, Quality, Record
from dps.queues.base import Message
from dps.runtime.module import GC_BETWEEN_STEPS, GC_THRESHOLD, ModuleHost


@pytest.fixture
def no_automatic_collection() -> Iterator[None]:
    before = gc.get_threshold()
    gc.collect()
    gc.set_threshold(10**9)
    try:
        yield
    finally:
        gc.set_threshold(*before)


class _Node:
    def __init__(self) -> None:
        self.me = self


def test_envelopes_are_untracked_but_a_cycle_in_a_payload_is_still_collected() -> None:
    node = _Node()  # a cycle an operator's data could never hold, held by the payload all the same
    gone = weakref.ref(node)
    record = Record(
        record_id="s:1",
        source_id="s",
        correlation_id="c",
        ingested_at=1.0,
        payload={"node": node},
        quality=Quality(score=1.0),
        lineage=[LineageStep("alpha", "ingest", 1.0)],
    )
    assert not gc.is_tracked(record)
    assert not gc.is_tracked(record.quality) and not gc.is_tracked(record.lineage[0])
    assert not gc.is_tracked(Message("s:1", b"x"))
    assert gc.is_tracked(record.payload)
    del record, node
    gc.collect()
    assert gone() is None


def test_between_steps_collects_the_young_generation_once_enough_outlived_the_step(
    no_automatic_collection: None,
) -> None:
    host = SimpleNamespace(gc_threshold=GC_THRESHOLD)
    kept = [{} for _ in range(GC_BETWEEN_STEPS // 2)]
    before = gc.get_count()[0]
    ModuleHost.between_steps(host)  # type: ignore[arg-type]
    assert gc.get_count()[0] >= before  # too few: left to the next step
    kept += [{} for _ in range(GC_BETWEEN_STEPS)]
    ModuleHost.between_steps(host)  # type: ignore[arg-type]
    assert gc.get_count()[0] < 100  # collected: the young generation starts again
    assert len(kept) > GC_BETWEEN_STEPS


def test_between_steps_leaves_the_interpreters_settings_alone(
    no_automatic_collection: None,
) -> None:
    """A host that keeps the interpreter's collector (``gc_threshold = None``) is not touched."""
    host = SimpleNamespace(gc_threshold=None)
    kept = [{} for _ in range(GC_BETWEEN_STEPS + 10)]
    before = gc.get_count()[0]
    ModuleHost.between_steps(host)  # type: ignore[arg-type]
    assert gc.get_count()[0] >= before > GC_BETWEEN_STEPS and kept
