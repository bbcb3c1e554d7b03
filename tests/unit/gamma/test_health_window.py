"""Gamma's health grades delivery success and acknowledgement timeouts over the last 5 minutes.

A destination that failed for a while and recovered reads HEALTHY again once its failed calls are
older than the window (graded since the start, it would stay UNHEALTHY for ever).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dps.core.health import Health
from dps.gamma.delivery import DestinationStats
from dps.gamma.module import HEALTH_WINDOW_S, GammaModule


def test_recent_counts_only_calls_inside_the_window() -> None:
    stats = DestinationStats()
    now = 10_000.0
    stats.calls.extend(
        [(now - 400, "failed"), (now - 350, "timeout"), (now - 100, "ok"), (now - 50, "failed")]
    )
    stats.calls.extend([(now - 10, "timeout"), (now - 1, "ok")])
    assert stats.recent(300, now) == (4, 2, 1)
    assert stats.recent(5, now) == (1, 0, 0)
    assert stats.recent(1000, now) == (6, 4, 2)


@pytest.fixture
def gamma(tmp_path: Path) -> Iterator[GammaModule]:
    root = tmp_path / "config"
    (root / "gamma" / "destinations").mkdir(parents=True)
    (root / "gamma" / "destinations" / "out.yaml").write_text(
        f"destination_id: out\ndestination_type: file\nconnection:\n  path: {tmp_path}/o.jsonl\n"
    )
    module = GammaModule(root, data_dir=tmp_path / "data")
    yield module
    module.close()


def test_old_failures_age_out_of_the_health_grade(gamma: GammaModule) -> None:
    stats = gamma.stats["out"]
    now = time.time()
    stats.calls.extend((now - HEALTH_WINDOW_S - 60, "failed") for _ in range(50))
    stats.calls.extend((now - 5, "ok") for _ in range(100))
    report = gamma.health()
    assert report.checks["delivery_success_rate"]["status"] == Health.HEALTHY.value, report
    assert report.checks["ack_timeout_rate"]["status"] == Health.HEALTHY.value

    stats.calls.extend((now - 1, "timeout") for _ in range(5))
    report = gamma.health()
    assert report.checks["delivery_success_rate"]["status"] == Health.UNHEALTHY.value
    assert report.checks["ack_timeout_rate"]["status"] == Health.UNHEALTHY.value
