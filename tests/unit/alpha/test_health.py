"""Alpha's health from the manual's thresholds table, its metrics, and the H.1 tuning keys."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY, generate_latest

from dps.alpha.module import AlphaModule
from dps.alpha.sources.base import SourceContext
from dps.alpha.sources.rest_api import RestApiConnection, RestApiSource
from dps.alpha.stats import MIN_RECORDS, WINDOW_SECONDS, BatchStats, IngestStats, parse_duration
from dps.core.health import Health
from dps.state import open_state


def _batch(records: int, *, errors: int = 0, failed: int = 0, full: bool = False) -> BatchStats:
    return BatchStats(time.time(), "s", records, records, errors, failed, 0.001, 0.001, 0.1, full)


def test_rates_are_graded_only_with_enough_records() -> None:
    stats = IngestStats()
    stats.batch(_batch(50, errors=5))
    window = stats.window()
    assert window["parse_error_rate"] is None and window["ingestion_rate"] is None
    stats.batch(_batch(MIN_RECORDS, errors=5, failed=20, full=True))
    window = stats.window()
    assert window["parse_error_rate"] == pytest.approx(10 / (MIN_RECORDS + 50))
    assert window["validation_failure_rate"] == pytest.approx(20 / (MIN_RECORDS + 50))
    # The ingestion rate is a sustained rate: not graded before the module ran a full window.
    assert window["ingestion_rate"] is None
    stats.started -= WINDOW_SECONDS
    assert stats.window()["ingestion_rate"] == pytest.approx((MIN_RECORDS + 50) / WINDOW_SECONDS)


def test_a_start_up_burst_is_not_a_sustained_ingestion_rate() -> None:
    stats = IngestStats()
    stats.batch(_batch(50_000, full=True))  # a backlog drained in a second at start-up
    assert stats.window()["ingestion_rate"] is None


def test_old_batches_leave_the_window() -> None:
    stats = IngestStats()
    stats.batch(BatchStats(time.time() - 301, "s", 5000, 5000, 5000, 0, 0, 0, 1, True))
    assert stats.window()["records"] == 0


def test_connection_success_counts_attempts() -> None:
    stats = IngestStats()
    for ok in [True] * 9 + [False]:
        stats.attempt("s", ok)
    assert stats.window()["source_connection_success"] == pytest.approx(0.9)
    assert stats.per_source()["s"]["fetch_failures"] == 1


def _config(tmp_path: Path, alpha_yaml: str = "DEFAULT_BATCH_SIZE: 5000\n") -> Path:
    root = tmp_path / "config"
    (root / "alpha" / "sources").mkdir(parents=True)
    (root / "pipeline.yaml").write_text("name: health-test\n")
    (root / "alpha" / "alpha.yaml").write_text(alpha_yaml)
    (root / "alpha" / "sources" / "orders.yaml").write_text(
        "source_id: health_orders\nsource_type: file\n"
        f"connection:\n  path: {tmp_path / 'in'}\n  partial_line_grace_seconds: 0\n"
        "parsing:\n  format: ndjson\n  id_field: order_id\n"
        "validation:\n  required_fields: [amount]\n"
    )
    (tmp_path / "in").mkdir(exist_ok=True)
    return root


def _orders(tmp_path: Path, count: int, *, bad: int = 0, missing: int = 0) -> None:
    lines = [json.dumps({"order_id": i, "amount": 1}) for i in range(count - bad - missing)]
    lines += [json.dumps({"order_id": f"m{i}"}) for i in range(missing)]
    lines += ['{"order_id": ' for _ in range(bad)]
    (tmp_path / "in").mkdir(exist_ok=True)
    (tmp_path / "in" / "orders.ndjson").write_text("\n".join(lines) + "\n")


def _checks(alpha: AlphaModule) -> dict[str, Any]:
    return alpha.health().checks


@pytest.mark.parametrize(
    ("bad", "missing", "check", "status"),
    [
        (0, 0, "parse_error_rate", "HEALTHY"),
        (4, 0, "parse_error_rate", "DEGRADED"),  # 0.2%: 0.1-0.5% is warning
        (20, 0, "parse_error_rate", "UNHEALTHY"),  # 1%
        (0, 40, "validation_failure_rate", "DEGRADED"),  # 2%: 1-3% is warning
        (0, 80, "validation_failure_rate", "UNHEALTHY"),  # 4%
    ],
)
def test_health_follows_the_manuals_alpha_thresholds(
    tmp_path: Path, bad: int, missing: int, check: str, status: str
) -> None:
    _orders(tmp_path, 2000, bad=bad, missing=missing)
    alpha = AlphaModule(_config(tmp_path), data_dir=tmp_path / "data")
    try:
        alpha.step()
        checks = _checks(alpha)
        assert checks[check]["status"] == status, checks
        report = alpha.health()
        if status != "HEALTHY":
            assert report.status == Health(status)
    finally:
        alpha.close()


def test_a_full_buffer_is_unhealthy(tmp_path: Path) -> None:
    _orders(tmp_path, 300)
    alpha = AlphaModule(
        _config(tmp_path, "DEFAULT_BATCH_SIZE: 100\nBUFFER_CAPACITY: 100\n"),
        data_dir=tmp_path / "data",
    )
    try:
        alpha.step()
        assert alpha.queue.depth() == 100
        check = _checks(alpha)["buffer_utilization"]
        assert check["status"] == "UNHEALTHY" and check["value"] == 1.0
        assert alpha.health().status == Health.UNHEALTHY
    finally:
        alpha.close()


def test_a_source_in_error_degrades_and_connection_success_drops(tmp_path: Path) -> None:
    root = _config(tmp_path)
    alpha = AlphaModule(root, data_dir=tmp_path / "data")
    try:
        (tmp_path / "in").rmdir()  # the file source's directory is gone: a transient error
        for _ in range(3):
            alpha.step()
        checks = _checks(alpha)
        assert checks["sources"]["status"] == "DEGRADED"
        assert checks["source_connection_success"]["status"] == "UNHEALTHY"
        assert checks["source_connection_success"]["value"] == 0.0
    finally:
        alpha.close()


def _sample(name: str, labels: dict[str, str]) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_metrics_with_per_source_labels(tmp_path: Path) -> None:
    _orders(tmp_path, 100, bad=2, missing=3)
    alpha = AlphaModule(_config(tmp_path), data_dir=tmp_path / "data")
    try:
        before = _sample("alpha_dlq_total", {"source_id": "health_orders"}) or 0.0
        alpha.step()
        labels = {"source_id": "health_orders"}
        assert (_sample("alpha_dlq_total", labels) or 0) - before == 5
        assert (_sample("alpha_source_fetch_duration_seconds_count", labels) or 0) >= 1
        assert _sample("alpha_source_connection_status", {"source": "health_orders"}) == 1
        assert _sample("alpha_active_connections", {}) == 0  # a file source holds none
        text = generate_latest(REGISTRY).decode()
        for name in (
            "alpha_records_ingested_total",
            "alpha_records_validated_total",
            "alpha_validation_failures_total",
            "alpha_parse_errors_total",
            "alpha_duplicates_total",
            "alpha_buffer_utilization",
            'alpha_parse_duration_seconds_bucket{le="0.001"}',
            'alpha_validation_duration_seconds_bucket{le="0.1"}',
        ):
            assert name in text, name
    finally:
        alpha.close()


def test_rest_api_takes_timeout_retries_and_pool_from_alpha_yaml(tmp_path: Path) -> None:
    state = open_state("sqlite", {}, tmp_path / "data")
    context = SourceContext(
        connection_timeout_ms=1234,
        max_retry_count=7,
        connection_pool_size=3,
        connection_idle_timeout_ms=4000,
    )
    try:
        plain = RestApiSource(
            "api",
            RestApiConnection.model_validate({"endpoint": "http://127.0.0.1:1/x"}),
            state,
            context=context,
        )
        assert (plain.timeout_ms, plain.retry_count) == (1234, 7)
        pool = plain._client._transport._pool  # type: ignore[attr-defined]
        assert pool._max_connections == 3 and pool._keepalive_expiry == 4.0
        own = RestApiSource(
            "api2",
            RestApiConnection.model_validate(
                {"endpoint": "http://127.0.0.1:1/x", "timeout_ms": 500, "retry_count": 1}
            ),
            state,
            context=context,
        )
        assert (own.timeout_ms, own.retry_count) == (500, 1)
        plain.close()
        own.close()
    finally:
        state.close()


def test_parse_latency_is_per_record_not_per_document() -> None:
    stats = IngestStats()
    # One JSON document of 2000 records that took 60 ms to parse: 30 µs a record.
    stats.batch(BatchStats(time.time(), "s", 1, 2000, 0, 0, 0.06, 0.001, 0.1, False))
    assert stats.window()["parse_latency"] == pytest.approx(0.00003)


def test_parse_durations_read_like_the_manual() -> None:
    assert parse_duration("50ms") == pytest.approx(0.05)
    assert parse_duration("0.2s") == pytest.approx(0.2)
    assert parse_duration("7") == pytest.approx(0.007)
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("soon")


def test_slow_records_lists_the_slowest_parses_over_the_threshold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """H.1 step 2: ``/admin/parser/slow-records?threshold=50ms&limit=50``."""
    from starlette.testclient import TestClient

    import dps.alpha.module
    from dps.admin.app import build_app

    # Remember every parse, so the test does not depend on how fast this machine parses.
    monkeypatch.setattr(dps.alpha.module, "SLOW_PARSE_SECONDS", 0.0)
    root = _config(tmp_path)
    big = json.dumps({"order_id": "big", "amount": 1, "blob": ["x" * 40] * 20000})
    (tmp_path / "in" / "orders.ndjson").write_text(big + "\n" + '{"order_id": 1, "amount": 1}\n')
    alpha = AlphaModule(root, data_dir=tmp_path / "data")
    try:
        alpha.step()
        client = TestClient(build_app(alpha))
        listed = client.get("/admin/parser/slow-records?threshold=0ms&limit=50").json()
        origins = [r["origin"] for r in listed["records"]]
        assert len(origins) == 2 and origins[0].endswith("orders.ndjson:1")  # big line first
        first = listed["records"][0]
        assert first["size_bytes"] > 800_000 and first["preview"].startswith('{"order_id": "big"')
        assert client.get("/admin/parser/slow-records?threshold=10s").json()["records"] == []
        assert client.get("/admin/parser/slow-records?threshold=soon").status_code == 400
    finally:
        alpha.close()
