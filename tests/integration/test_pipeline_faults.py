"""Faults against a running ``dps run``: a SIGKILLed stage, a broken reload, the admin API.

These perform what the manual tells operators to do, with the manual's own commands (``curl``
as pasted, including ``-d '{...}'`` with curl's default form content type).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tests.integration.pipeline_harness import (
    PG_DSN,
    copy_quickstart,
    delete_streams,
    last_json_line,
    make_scale_out,
    start_pipeline,
    wait_until,
)


def add_bulk_orders(config_dir: Path, count: int) -> None:
    lines = [
        json.dumps(
            {
                "order_id": f"BULK-{n:07d}",
                "customer_id": f"C{n % 997:05d}",
                "amount": n % 500 + 0.5,
                "country": "DE" if n % 3 else "US",
                "phone_number": f"(555) 010-{n % 10000:04d}",
                "email": f"bulk{n}@example.com",
            }
        )
        for n in range(count)
    ]
    # Written aside and renamed: a running file source never sees half of it.
    staged = config_dir / "input" / "orders" / "bulk.ndjson.part"
    staged.write_text("\n".join(lines) + "\n")
    staged.replace(staged.with_suffix(""))


def add_late_orders(config_dir: Path, count: int) -> None:
    """Orders in a new file, good enough for the warehouse (quality >= 0.7)."""
    lines = [
        json.dumps(
            {
                "order_id": f"LATE-{n:05d}",
                "customer_id": "C00001",
                "amount": 1.5,
                "country": "US",
                "phone_number": "555-123-4567",
                "email": f"late{n}@example.com",
            }
        )
        for n in range(count)
    ]
    (config_dir / "input" / "orders" / "late.ndjson").write_text("\n".join(lines) + "\n")


def late_orders_delivered(data_dir: Path) -> int:
    """Rows of ``add_late_orders`` in the warehouse (read-only: the test must not create it)."""
    try:
        db = sqlite3.connect(f"file:{data_dir / 'warehouse.db'}?mode=ro", uri=True)
        try:
            row = db.execute(
                "SELECT count(*) FROM pipeline_events WHERE event_id LIKE 'orders_file:LATE-%'"
            ).fetchone()
        finally:
            db.close()
    except sqlite3.OperationalError:  # no database or table yet: nothing delivered so far
        return 0
    return int(row[0])


def curl(*args: str) -> tuple[int, str]:
    done = subprocess.run(
        ["curl", "-s", "-o", "-", "-w", "\n%{http_code}", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    body, _, code = done.stdout.rpartition("\n")
    return int(code), body


def kill_beta_mid_run(config_dir: Path, data_dir: Path) -> dict[str, Any]:
    """Run the pipeline once, SIGKILL Beta while it holds a lease, let the supervisor restart
    it, and return the run's summary once it finished with exit code 0."""
    run = start_pipeline(config_dir, data_dir, "--once", "--json")
    try:
        run.wait_ready()
        first_pid = run.get("beta", "/admin/status").json()["pid"]

        def beta_has_work_in_hand() -> bool:
            acc = run.get("control", "/api/accounting").json()
            return acc["transformed"] > 2000 and acc["in_flight"]["transform"] > 0

        wait_until(beta_has_work_in_hand, 120, "beta never got going")
        os.kill(first_pid, signal.SIGKILL)

        def restarted() -> bool:
            try:
                return run.get("beta", "/admin/status").json()["pid"] != first_pid
            except Exception:
                return False

        wait_until(restarted, 60, "the supervisor did not restart beta")
        code, out, err = run.finish(timeout=300)
    finally:
        run.stop()
    assert code == 0, err[-3000:]
    summary = last_json_line(out)
    assert summary["adds_up"] is True, summary
    review = (data_dir / "review" / "low_quality.jsonl").read_text().splitlines()
    ids = [json.loads(line)["record_id"] for line in review]
    assert len(ids) == len(set(ids)) == summary["delivered"]["review_file"]
    return summary


@pytest.mark.slow
def test_kill_9_of_beta_mid_run_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    config_dir = copy_quickstart(tmp_path / "quickstart")
    add_bulk_orders(config_dir, 30_000)
    # A killed consumer's lease comes back after the visibility timeout: keep the test short.
    pipeline = config_dir / "pipeline.yaml"
    pipeline.write_text(
        pipeline.read_text().replace(
            "transport:\n  backend: sqlite\n",
            "transport:\n  backend: sqlite\n  visibility_timeout_seconds: 5\n",
        )
    )
    data_dir = tmp_path / "data"
    summary = kill_beta_mid_run(config_dir, data_dir)
    with sqlite3.connect(data_dir / "warehouse.db") as db:
        count, distinct = db.execute(
            "SELECT count(*), count(DISTINCT event_id) FROM pipeline_events"
        ).fetchone()
    assert count == distinct == summary["delivered"]["warehouse"]


@pytest.mark.slow
@pytest.mark.nats
@pytest.mark.postgres
def test_kill_9_of_beta_on_nats_frames_loses_nothing_and_duplicates_nothing(
    tmp_path: Path,
) -> None:
    """The same on NATS, where the stage queues carry frames of records: the frames Beta held
    come back whole, and what it had already put again is delivered once."""
    config_dir = copy_quickstart(tmp_path / "quickstart")
    add_bulk_orders(config_dir, 30_000)
    schema = f"dps_kill_{uuid.uuid4().hex[:8]}"
    prefix = f"KILL{uuid.uuid4().hex[:6].upper()}"
    make_scale_out(config_dir, schema, prefix)
    pipeline = config_dir / "pipeline.yaml"
    pipeline.write_text(
        pipeline.read_text().replace(
            f"  stream_prefix: {prefix}\n",
            f"  stream_prefix: {prefix}\n  visibility_timeout_seconds: 5\n",
        )
    )
    try:
        summary = kill_beta_mid_run(config_dir, tmp_path / "data")
        with psycopg.connect(PG_DSN) as conn:
            count, distinct = conn.execute(
                f"SELECT count(*), count(DISTINCT event_id) FROM {schema}.pipeline_events"
            ).fetchone()
        assert count == distinct == summary["delivered"]["warehouse"]
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        delete_streams(prefix)


@pytest.mark.slow
def test_admin_endpoints_and_a_broken_reload_as_the_manual_does_them(tmp_path: Path) -> None:
    config_dir = copy_quickstart(tmp_path / "quickstart")
    run = start_pipeline(config_dir, tmp_path / "data")
    try:
        run.wait_ready()
        for module in ("alpha", "beta", "gamma", "control"):
            code, body = curl(f"{run.url(module)}/admin/health")
            assert code == 200 and json.loads(body)["status"] in ("HEALTHY", "DEGRADED"), body
            code, body = curl(f"{run.url(module)}/admin/status")
            assert code == 200 and json.loads(body)["module"] == module
            code, body = curl(f"{run.url(module)}/admin/config/export")
            assert code == 200 and "gamma" in json.loads(body)

        alpha = run.url("alpha")
        # A.1 step 5 / A.3 step 2: reload.
        code, body = curl("-X", "POST", f"{alpha}/admin/config/reload")
        assert code == 200, body

        # A broken source file: the reload is refused with file and key named; alpha keeps running.
        broken = config_dir / "alpha" / "sources" / "orders.yaml"
        good = broken.read_text()
        broken.write_text(good.replace("batch_size: 500", "batch_size: lots"))
        code, body = curl("-X", "POST", f"{alpha}/admin/config/reload")
        assert code == 400, body
        issues = json.loads(body)["issues"]
        assert any("orders.yaml" in i["file"] and "polling.batch_size" in i["key"] for i in issues)
        code, body = curl(f"{alpha}/admin/health")
        assert code == 200
        # Every module judges the whole directory, so every module refuses it.
        for module in ("beta", "gamma", "control"):
            code, body = curl("-X", "POST", f"{run.url(module)}/admin/config/reload")
            assert code == 400, body
            assert any("orders.yaml" in i["file"] for i in json.loads(body)["issues"]), body
        # The pipeline keeps running on its last good configuration: new input still flows.
        add_late_orders(config_dir, 200)
        wait_until(
            lambda: late_orders_delivered(run.data_dir) == 200,
            60,
            "input added after the refused reload was not delivered",
        )
        broken.write_text(good)
        code, body = curl("-X", "POST", f"{alpha}/admin/config/reload")
        assert code == 200, body

        # Pause and resume as pasted from the manual (form content type, JSON body).
        code, body = curl("-X", "POST", f"{alpha}/admin/pause", "-d", '{"reason": "maintenance"}')
        assert code == 200, body
        assert json.loads(curl(f"{alpha}/admin/status")[1])["state"] == "paused"
        code, body = curl("-X", "POST", f"{alpha}/admin/resume")
        assert code == 200, body
        assert json.loads(curl(f"{alpha}/admin/status")[1])["state"] == "running"

        # G.1 step 3's loop reads .total from the queue depth.
        code, body = curl(f"{run.url('beta')}/admin/queue/depth")
        assert code == 200 and isinstance(json.loads(body)["total"], int)

        # Metrics with the manual's names (A.1 step 8, G.2 step 5).
        wait_until(
            lambda: "gamma_records_delivered_total{" in run.get("gamma", "/metrics").text,
            60,
            "gamma never delivered",
        )
        assert "alpha_records_ingested_total" in curl(f"{alpha}/metrics")[1]
        assert "beta_records_transformed_total" in curl(f"{run.url('beta')}/metrics")[1]
    finally:
        run.stop()
    assert run.process.returncode == 0
