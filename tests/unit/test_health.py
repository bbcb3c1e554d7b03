"""Health grading from the manual's threshold tables: the worst check wins."""

from __future__ import annotations

import pytest

from dps.core.health import THRESHOLDS, Check, combine, evaluate, grade, worst
from dps.runtime.lifecycle import Health

H, D, U = Health.HEALTHY, Health.DEGRADED, Health.UNHEALTHY


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        # Buffer utilization: <60% normal, 60-80% warning, >80% critical.
        ("alpha.buffer_utilization", 0.59, H),
        ("alpha.buffer_utilization", 0.60, D),
        ("alpha.buffer_utilization", 0.80, D),
        ("alpha.buffer_utilization", 0.81, U),
        # Beta queue depth: <3000, 3000-5000, >5000.
        ("beta.queue_depth", 2999, H),
        ("beta.queue_depth", 3000, D),
        ("beta.queue_depth", 5000, D),
        ("beta.queue_depth", 5001, U),
        # Delivery success rate: >99.5%, 98-99.5%, <98%.
        ("gamma.delivery_success_rate", 0.999, H),
        ("gamma.delivery_success_rate", 0.995, D),
        ("gamma.delivery_success_rate", 0.98, D),
        ("gamma.delivery_success_rate", 0.979, U),
        # Cache hit rate: >85%, 70-85%, <70%.
        ("beta.enrichment_cache_hit_rate", 0.9, H),
        ("beta.enrichment_cache_hit_rate", 0.7, D),
        ("beta.enrichment_cache_hit_rate", 0.69, U),
        # Error queue total: <1000, 1000-5000, >5000.
        ("pipeline.error_queue_total", 999, H),
        ("pipeline.error_queue_total", 1000, D),
        ("pipeline.error_queue_total", 5001, U),
        # Circuit breakers open: 0, 1-2, >2.
        ("pipeline.circuit_breakers_open", 0, H),
        ("pipeline.circuit_breakers_open", 1, D),
        ("pipeline.circuit_breakers_open", 2, D),
        ("pipeline.circuit_breakers_open", 3, U),
        # Ingestion rate is two-sided: <500 or >7500 warning, <100 or >10000 critical.
        ("alpha.ingestion_rate", 3000, H),
        ("alpha.ingestion_rate", 400, D),
        ("alpha.ingestion_rate", 8000, D),
        ("alpha.ingestion_rate", 50, U),
        ("alpha.ingestion_rate", 10001, U),
        # End-to-end latency P99: <500ms, 500ms-2s, >2s.
        ("pipeline.end_to_end_latency_p99", 0.3, H),
        ("pipeline.end_to_end_latency_p99", 1.0, D),
        ("pipeline.end_to_end_latency_p99", 2.5, U),
        # Data loss: any is critical.
        ("pipeline.data_loss_incidents", 0, H),
        ("pipeline.data_loss_incidents", 1, U),
    ],
)
def test_manual_rows(name: str, value: float, expected: Health) -> None:
    assert evaluate(name, value).status is expected


def test_grade_without_bounds_is_healthy() -> None:
    assert grade(1e9) is H


def test_every_row_has_its_warning_band_inside_its_critical_band() -> None:
    for row in THRESHOLDS.values():
        if row.warning is None or row.critical is None:
            continue
        (wlo, whi), (clo, chi) = row.warning, row.critical
        assert (wlo is None) == (clo is None), row.name
        assert (whi is None) == (chi is None), row.name
        assert wlo is None or clo is None or clo <= wlo, row.name
        assert whi is None or chi is None or whi <= chi, row.name


def test_no_data_is_healthy_and_unknown_rows_raise() -> None:
    assert evaluate("beta.quality_score", None).status is H
    with pytest.raises(KeyError):
        evaluate("beta.no_such_row", 1)


def test_combine_worst_wins_and_renders_checks() -> None:
    report = combine(
        {
            "buffer": evaluate("alpha.buffer_utilization", 0.7),
            "queue": Check.ok(),
            "worker": Health.HEALTHY,
        }
    )
    assert report.status is D
    assert report.checks["buffer"] == {
        "status": "DEGRADED",
        "value": 0.7,
        "warning": {"above": 0.6},
        "critical": {"above": 0.8},
        "unit": "ratio",
    }
    assert report.checks["queue"] == {"status": "HEALTHY"}
    failed = combine(
        {"buffer": evaluate("alpha.buffer_utilization", 0.1), "db": Check.failed("Down.")}
    )
    assert failed.as_dict()["status"] == "UNHEALTHY"
    assert failed.checks["db"] == {"status": "UNHEALTHY", "message": "Down."}
    assert combine({}).status is H


def test_worst() -> None:
    assert worst() is H
    assert worst(H, U, D) is U
