"""``/admin/health`` of a running ``dps beta`` graded from the manual's Beta thresholds.

The manual's table: queue depth normal below 3000, warning to 5000, critical above; transform
error rate below 0.5 %, to 1 %, above; average quality score above 0.8, 0.6 to 0.8, below. Beta
runs alone on its admin port; the test fills its transform queue (the SQLite file of the data
directory) as Alpha would, reads the health as an operator does (HTTP 503 when UNHEALTHY), and
reads the rejected and failed records back with ``dps dlq --module beta``.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import httpx
from tests.integration.pipeline_harness import (
    copy_quickstart,
    dps,
    free_port_base,
    start_module,
    wait_until,
)

from dps.core.record import Record, encode_many
from dps.queues import QueueSpec, open_queue
from dps.runtime.module import TRANSFORM_QUEUE

CAST_RULE = """\
rule_id: TRX_050_AMOUNT_DECIMAL
priority: 400
match: {field: amount, condition: exists}
transform: {type: cast, config: {to: decimal, scale: 2}}
on_failure: dlq
"""
#: The manual's beta_* metrics ("Metric Types" and the Module Beta alerts).
MANUAL_METRICS = (
    "beta_records_transformed_total",
    "beta_enrichment_lookups_total",
    "beta_queue_depth",
    "beta_cache_size",
    "beta_transform_duration_seconds",
    "beta_enrichment_duration_seconds",
    "beta_quality_score",
    "beta_enrichment_cache_hit_rate",
)
#: A complete record scores 1; one without customer_id and email 0.5 (an "error", delivered);
#: one without customer_id whose email is malformed 0.25, below reject (the Beta DLQ).
SCORING = """\
quality_scoring:
  weights: {completeness: 0.5, consistency: 0.0, conformance: 0.5, timeliness: 0.0}
  thresholds: {warn: 0.7, error: 0.6, reject: 0.3}
  rules:
    completeness:
      required_fields: [customer_id, email]
      penalty_per_missing: 0.5
    conformance:
      formats: {email: email}
      penalty_per_violation: 1.0
"""


def _records(prefix: str, count: int, **payload: Any) -> list[Record]:
    return [
        Record(
            record_id=f"orders_file:{prefix}-{i}",
            source_id="orders_file",
            correlation_id=f"{prefix}-{i}",
            ingested_at=time.time(),
            payload={"order_id": f"{prefix}-{i}", **payload},
        )
        for i in range(count)
    ]


def test_beta_health_follows_the_manual_thresholds(tmp_path: Path) -> None:
    config = copy_quickstart(tmp_path / "config")
    rules = config / "beta" / "transforms" / "rules"
    for rule in rules.glob("*.yaml"):
        rule.unlink()
    (rules / "amount.yaml").write_text(CAST_RULE)
    (config / "beta" / "quality" / "scoring.yaml").write_text(SCORING)
    data_dir = tmp_path / "data"
    port = free_port_base(1)
    beta = f"http://127.0.0.1:{port}"
    process = start_module("beta", config, data_dir, port)
    queue = None
    try:

        def answers() -> bool:
            assert process.poll() is None, process.communicate()[1][-2000:]
            try:
                return httpx.get(f"{beta}/admin/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(answers, 60, "dps beta never answered")
        assert httpx.post(f"{beta}/admin/pause", timeout=10).status_code == 200
        queue = open_queue("sqlite", {}, data_dir, QueueSpec(name=TRANSFORM_QUEUE))

        def health() -> tuple[int, dict[str, Any]]:
            response = httpx.get(f"{beta}/admin/health", timeout=10)
            return response.status_code, response.json()

        # 3001 records waiting: a warning. Each has no customer_id nor email: scores 0.5.
        queue.put(encode_many(_records("LOW", 3001, amount="1")))
        code, report = health()
        assert code == 200 and report["status"] == "DEGRADED", report
        assert report["checks"]["queue_depth"]["status"] == "DEGRADED"
        assert report["checks"]["queue_depth"]["value"] == 3001

        # 5001 waiting: critical, and the health answers 503. Of the 2000 added, 100 have an
        # amount that does not cast and 50 a malformed email (rejected): 3 % to the DLQ.
        queue.put(
            encode_many(
                _records("OK", 850, amount="10.5", customer_id="C1", email="a@example.com")
                + _records("LOW2", 1000, amount="1")
                + _records("BAD", 100, amount="abc", customer_id="C1", email="a@example.com")
                + _records("REJ", 50, amount="1", email="not an email")
            )
        )
        code, report = health()
        assert code == 503 and report["status"] == "UNHEALTHY", report
        assert report["checks"]["queue_depth"]["status"] == "UNHEALTHY"
        assert report["checks"]["queue_depth"]["critical"] == {"above": 5000}

        # Drained: the queue is fine, the error rate and the average score are not.
        assert httpx.post(f"{beta}/admin/resume", timeout=10).status_code == 200

        def drained() -> bool:
            # The window of recent batches (the rates) is fed last, after the quality figures.
            recent = httpx.get(f"{beta}/admin/transform/parallelism", timeout=10).json()["recent"]
            return bool(recent["records"] == 5001)

        wait_until(drained, 120, "beta never transformed the 5001 records")
        code, report = health()
        checks = report["checks"]
        assert code == 503 and report["status"] == "UNHEALTHY", report
        assert checks["queue_depth"]["status"] == "HEALTHY"
        assert checks["transform_error_rate"]["status"] == "UNHEALTHY"
        assert abs(checks["transform_error_rate"]["value"] - 150 / 5001) < 1e-6
        assert checks["quality_score"]["status"] == "UNHEALTHY"
        assert checks["quality_score"]["critical"] == {"below": 0.6}
        average = (4001 * 0.5 + 850 * 1.0 + 50 * 0.25) / 4901  # 0.584
        assert abs(checks["quality_score"]["value"] - average) < 1e-4
        metrics = httpx.get(f"{beta}/metrics", timeout=10).text
        gauge = next(
            line for line in metrics.splitlines() if line.startswith("beta_quality_score ")
        )
        assert abs(float(gauge.split()[1]) - average) < 1e-4
        # Every beta_* series of the manual's metric tables and alert rules is exported.
        exported = {line.split()[2] for line in metrics.splitlines() if line.startswith("# TYPE")}
        assert set(MANUAL_METRICS) <= exported
        stats = httpx.get(f"{beta}/admin/quality/stats", timeout=10).json()
        assert stats["levels"] == {"ok": 850, "warn": 0, "error": 4001, "reject": 50}
    finally:
        if queue is not None:
            queue.close()
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err[-2000:]

    # The Beta DLQ as the operator reads it: each failure with the rule id, each rejected record
    # with its score breakdown.
    done = dps("dlq", "--module", "beta", "-c", str(config), "--data-dir", str(data_dir), "list",
               "--limit", "1000")  # fmt: skip
    assert done.returncode == 0, done.stderr
    entries = json.loads(done.stdout)["entries"]
    by_reason: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        by_reason.setdefault(entry["reason"], []).append(entry)
    failed = by_reason["rule_failed:TRX_050_AMOUNT_DECIMAL"]
    assert len(failed) == 100
    assert "'abc' in amount cannot be cast to decimal" in failed[0]["error"]
    rejected = by_reason["quality_rejected"]
    assert len(rejected) == 50
    assert "Quality score 0.25 is below the reject threshold 0.3" in rejected[0]["error"]
    assert "completeness 0.5" in rejected[0]["error"]
    assert "conformance: email is not email" in rejected[0]["error"]
