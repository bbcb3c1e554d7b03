"""Alpha killed (SIGKILL) in the middle of a large file, restarted by the supervisor of a running
``dps run``: every line is read once (the committed offsets and the record counts add up to the
file), every record ends delivered, in a DLQ or as a duplicate, and none is delivered twice.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from pathlib import Path

import pytest
from tests.integration.pipeline_harness import (
    copy_quickstart,
    last_json_line,
    start_pipeline,
    wait_until,
)
from tests.integration.test_pipeline_faults import add_bulk_orders

BULK = 30_000


def expected_records(config_dir: Path) -> int:
    """What the quickstart's sources hold: non-blank order lines and CRM records."""
    lines = 0
    for path in (config_dir / "input" / "orders").glob("*.ndjson"):
        lines += sum(1 for line in path.read_bytes().splitlines() if line.strip())
    crm = 0
    for path in (config_dir / "input" / "crm").glob("*.json"):
        crm += len(json.loads(path.read_text())["data"]["records"])
    return lines + crm


@pytest.mark.slow
def test_kill_9_of_alpha_mid_file_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    config_dir = copy_quickstart(tmp_path / "quickstart")
    add_bulk_orders(config_dir, BULK)
    data_dir = tmp_path / "data"
    run = start_pipeline(config_dir, data_dir, "--once", "--json")
    try:
        run.wait_ready()
        first_pid = run.get("alpha", "/admin/status").json()["pid"]

        def alpha_is_mid_file() -> bool:
            ingested: int = run.get("control", "/api/accounting").json()["ingested"]
            return 3000 < ingested < BULK

        wait_until(alpha_is_mid_file, 120, "alpha never got into the large file")
        os.kill(first_pid, signal.SIGKILL)

        def restarted() -> bool:
            try:
                return run.get("alpha", "/admin/status").json()["pid"] != first_pid
            except Exception:
                return False

        wait_until(restarted, 60, "the supervisor did not restart alpha")
        code, out, err = run.finish(timeout=300)
    finally:
        run.stop()
    assert code == 0, err[-3000:]
    summary = last_json_line(out)
    assert summary["adds_up"] is True, summary
    # Every line read exactly once: the committed counts are the files' contents.
    assert summary["ingested"] == expected_records(config_dir), summary
    with sqlite3.connect(data_dir / "warehouse.db") as db:
        count, distinct = db.execute(
            "SELECT count(*), count(DISTINCT event_id) FROM pipeline_events"
        ).fetchone()
    assert count == distinct == summary["delivered"]["warehouse"]
    assert count > BULK // 2
