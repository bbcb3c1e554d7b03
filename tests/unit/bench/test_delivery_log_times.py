"""The benchmark reads its end time and latencies from the run's delivery log."""

from __future__ import annotations

import time
from pathlib import Path

from dps.bench.runner import BACKENDS, _delivery_times, _last_delivery
from dps.state.base import DeliveryOutcome, open_state


def test_the_end_of_a_run_is_its_last_delivered_row(tmp_path: Path) -> None:
    embedded = BACKENDS["embedded"]
    store = open_state("sqlite", {}, tmp_path)
    try:
        assert _last_delivery(embedded, tmp_path, "", "") is None  # nothing delivered yet
        before = time.time()
        store.record_deliveries(
            [
                DeliveryOutcome("push:L1", "warehouse", "delivered"),
                DeliveryOutcome("bench:R1", "warehouse", "failed", error="refused"),
            ]
        )
        time.sleep(0.05)
        store.record_deliveries([DeliveryOutcome("bench:R2", "warehouse", "delivered")])
        after = time.time()
    finally:
        store.close()

    last = _last_delivery(embedded, tmp_path, "", "")
    first = _delivery_times(embedded, tmp_path, "", "", ["push:L1", "push:L2"])
    assert last is not None and first.keys() == {"push:L1"}
    assert before - 0.001 <= first["push:L1"] < last <= after + 0.001
    assert last - first["push:L1"] >= 0.04
