"""Beta's transform rate is graded as the manual's sustained rate, not as its capacity."""

from __future__ import annotations

import time
from pathlib import Path

from tests.integration.pipeline_harness import copy_quickstart

from dps.beta.module import RATE_WINDOW_SECONDS, BetaModule


def test_a_fast_burst_is_not_a_critical_transform_rate(tmp_path: Path) -> None:
    module = BetaModule(copy_quickstart(tmp_path / "config"), data_dir=tmp_path / "data")
    try:
        now = time.time()
        # 40,000 records transformed in two seconds: capacity, far above the 8,000/s bound.
        module.batches.extend((now - 1, 20_000, 0, 1.0) for _ in range(2))
        window = module.window()
        assert window["records_per_second_busy"] == 20_000
        assert window["records_per_second"] is None  # the module has not run five minutes yet

        module.started_at = now - RATE_WINDOW_SECONDS
        window = module.window()
        assert window["records_per_second"] == 40_000 / RATE_WINDOW_SECONDS  # 133 records/s
    finally:
        module.close()
