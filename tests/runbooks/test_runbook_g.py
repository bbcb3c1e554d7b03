"""Runbook G (emergency shutdown G.1 and restart G.2) as written with curl, against a running
``dps run`` with 20 000 records in flight (K.1 and K.2 with the CLI: test_runbook_k.py). Host
names are the modules' admin ports; G.2's fixed sleeps (30 s, 60 s) are shortened to health polls.
After the restart every record ends delivered once, in a DLQ, or as a duplicate.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from tests.integration.pipeline_harness import (
    RunningPipeline,
    copy_quickstart,
    start_pipeline,
    wait_until,
)
from tests.integration.test_pipeline_faults import add_bulk_orders

BULK = 20_000


def bash(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=600)


def settled(pipeline: RunningPipeline) -> dict[str, Any]:
    acc: dict[str, Any] = {}

    def done() -> bool:
        acc.clear()
        acc.update(pipeline.get("control", "/api/accounting").json())
        accounted = acc["duplicates"] + acc["dlq_total"] + acc["delivered_records"]
        return (
            acc["ingested"] >= BULK
            and accounted == acc["ingested"]
            and not any(acc["in_flight"].values())
        )

    wait_until(done, 240, "the pipeline did not finish its input")
    return acc


def delivered_once(data_dir: Path) -> None:
    import sqlite3

    with sqlite3.connect(data_dir / "warehouse.db") as conn:
        rows, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT event_id) FROM pipeline_events"
        ).fetchone()
    assert rows == distinct > BULK // 2


def test_g1_g2_as_written(tmp_path: Path) -> None:
    config_dir = copy_quickstart(tmp_path / "config")
    add_bulk_orders(config_dir, BULK)
    pipeline = start_pipeline(config_dir, tmp_path / "data")
    try:
        pipeline.wait_ready()
        wait_until(
            lambda: pipeline.get("control", "/api/accounting").json()["ingested"] > 0,
            60,
            "nothing ingested",
        )
        alpha, beta, gamma = (pipeline.url(m) for m in ("alpha", "beta", "gamma"))
        # G.1 steps 2 to 6.
        g1 = f"""
set -e
curl -s -X POST {alpha}/admin/emergency-stop > /dev/null
for i in {{1..60}}; do
  DEPTH=$(curl -s {beta}/admin/queue/depth | jq '.total')
  if [ "$DEPTH" -eq 0 ]; then break; fi
  sleep 5
done
curl -s -X POST {beta}/admin/emergency-stop > /dev/null
curl -s -X POST {gamma}/admin/emergency-stop > /dev/null
curl -s {alpha}/admin/status | jq -r .state
curl -s {beta}/admin/status | jq -r .state
curl -s {gamma}/admin/status | jq -r .state
"""
        done = bash(g1)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["stopped", "stopped", "stopped"]
        stopped_at = pipeline.get("control", "/api/accounting").json()
        # G.2 steps 2 to 4 (health polled instead of fixed sleeps).
        g2 = f"""
set -e
curl -s -X POST {gamma}/admin/start > /dev/null
curl -s {gamma}/admin/health | jq -r .status
curl -s -X POST {beta}/admin/start > /dev/null
curl -s {beta}/admin/health | jq -r .status
curl -s -X POST {alpha}/admin/start > /dev/null
curl -s {alpha}/admin/health | jq -r .status
"""
        done = bash(g2)
        assert done.returncode == 0, done.stderr
        # The operator reads each health (a stage may be UNHEALTHY until its input flows).
        assert len(done.stdout.split()) == 3
        assert set(done.stdout.split()) <= {"HEALTHY", "DEGRADED", "UNHEALTHY"}
        # Step 5: records flowing again.
        done = bash(f"curl -s {gamma}/metrics | grep delivered_total")
        assert "gamma_records_delivered_total" in done.stdout
        acc = settled(pipeline)
        assert acc["ingested"] >= stopped_at["ingested"]
        delivered_once(pipeline.data_dir)
    finally:
        pipeline.stop()
