"""Runbook F (scheduled task management) as written, against a running ``dps run``.

``scheduler:8080`` is the control service (its port in the all-in-one). Every step is the
manual's curl command, F.2's ``jq`` filter included; the jobs do their real work against the
running modules (gamma_dest_health tests both quickstart destinations).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from tests.integration.pipeline_harness import (
    RunningPipeline,
    copy_quickstart,
    dps,
    start_pipeline,
    wait_until,
)

from dps.control.jobs import CATALOG


def curl(*args: str) -> tuple[int, Any]:
    done = subprocess.run(
        ["curl", "-s", "-o", "-", "-w", "\n%{http_code}", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    body, _, code = done.stdout.rpartition("\n")
    try:
        return int(code), json.loads(body)
    except json.JSONDecodeError:
        return int(code), body


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPipeline]:
    root = tmp_path_factory.mktemp("runbook_f")
    config_dir = copy_quickstart(root / "config")
    # One job every minute, to see the clock start it (overrides are pipeline.yaml's jobs:).
    with (config_dir / "pipeline.yaml").open("a") as f:
        f.write("jobs:\n  overrides:\n    alpha_metrics_aggregate:\n      schedule: '* * * * *'\n")
    running = start_pipeline(config_dir, root / "data")
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


def finished(scheduler: str, job: str) -> dict[str, Any]:
    result: dict[str, Any] = {}

    def done() -> bool:
        code, body = curl(f"{scheduler}/admin/jobs/{job}/status")
        assert code == 200
        result.update(body)
        last = body.get("last_run")
        return bool(last) and last["status"] != "RUNNING" and not body["running"]

    wait_until(done, 60, f"{job} did not finish")
    return result


def test_f1_list_status_trigger_monitor_logs(pipeline: RunningPipeline) -> None:
    scheduler = pipeline.url("control")
    # 1. List available jobs: a JSON array of the manual's catalog.
    code, jobs = curl(f"{scheduler}/admin/jobs/list")
    assert code == 200 and isinstance(jobs, list)
    by_name = {j["name"]: j for j in jobs}
    assert len(by_name) == 35
    assert by_name["gamma_dest_health"]["schedule"] == "40 * * * *"
    assert by_name["gamma_dest_health"]["status"] == "scheduled"
    assert by_name["gamma_routing_sync"]["status"] == "inactive"
    assert "no meaning here" in by_name["gamma_routing_sync"]["inactive_reason"]
    # 2. Check job status.
    code, status = curl(f"{scheduler}/admin/jobs/gamma_dest_health/status")
    assert code == 200 and status["last_run"] is None and status["next_run"]
    # 3. Trigger job manually.
    code, started = curl("-X", "POST", f"{scheduler}/admin/jobs/gamma_dest_health/trigger")
    assert code == 202 and started["run_id"]
    # 4. Monitor job execution.
    status = finished(scheduler, "gamma_dest_health")
    last = status["last_run"]
    assert last["run_id"] == started["run_id"]
    assert (last["status"], last["records"], last["trigger"]) == ("SUCCESS", 2, "manual")
    assert last["message"] == "2 of 2 destinations healthy."
    assert last["overrun"] is False
    # 5. View job logs.
    code, logs = curl(f"{scheduler}/admin/jobs/gamma_dest_health/logs")
    assert code == 200
    log = logs["runs"][0]["log"]
    assert 'destination="warehouse" ok=true' in log and "Report written." in log
    report = json.loads(
        next((pipeline.data_dir / "reports" / "gamma_dest_health").glob("*.json")).read_text()
    )
    assert report["failed"] == [] and set(report["destinations"]) == {"warehouse", "review_file"}


def test_f1_report_jobs_write_markdown_and_json(pipeline: RunningPipeline) -> None:
    scheduler = pipeline.url("control")
    for job in ("daily_metrics_rollup", "gamma_dlq_report", "daily_capacity_report"):
        code, _ = curl("-X", "POST", f"{scheduler}/admin/jobs/{job}/trigger")
        assert code == 202
        assert finished(scheduler, job)["last_run"]["status"] == "SUCCESS"
        folder = pipeline.data_dir / "reports" / job
        assert list(folder.glob("*.json")) and list(folder.glob("*.md"))
    rollup = json.loads(
        next((pipeline.data_dir / "reports" / "daily_metrics_rollup").glob("*.json")).read_text()
    )
    code, accounting = curl(f"{scheduler}/api/accounting")
    assert rollup["totals"]["ingested"] <= accounting["ingested"]


def test_jobs_run_on_their_schedule(pipeline: RunningPipeline) -> None:
    scheduler = pipeline.url("control")
    code, status = curl(f"{scheduler}/admin/jobs/alpha_metrics_aggregate/status")
    assert code == 200 and status["schedule"] == "* * * * *"

    def ran() -> bool:
        last = curl(f"{scheduler}/admin/jobs/alpha_metrics_aggregate/status")[1]["last_run"]
        return bool(last) and last["trigger"] == "schedule" and last["status"] == "SUCCESS"

    wait_until(ran, 75, "alpha_metrics_aggregate never ran on its schedule")


def test_f1_bad_requests(pipeline: RunningPipeline) -> None:
    scheduler = pipeline.url("control")
    code, body = curl("-X", "POST", f"{scheduler}/admin/jobs/no_such_job/trigger")
    assert code == 404 and "no_such_job" in body["error"]
    code, body = curl("-X", "POST", f"{scheduler}/admin/jobs/gamma_routing_sync/trigger")
    assert code == 409 and "inactive" in body["error"]
    code, body = curl(f"{scheduler}/admin/jobs/no_such_job/logs")
    assert code == 404


def test_f2_suspend_verify_resume(pipeline: RunningPipeline) -> None:
    scheduler = pipeline.url("control")
    # 1. Suspend specific job.
    code, body = curl("-X", "POST", f"{scheduler}/admin/jobs/daily_audit_export/suspend")
    assert code == 200 and body["status"] == "suspended"
    # 3. Verify suspension, with the manual's jq filter.
    verify = f"curl -s {scheduler}/admin/jobs/list | jq '.[] | select(.status==\"suspended\")'"
    out = subprocess.run(["bash", "-c", verify], capture_output=True, text=True, check=True)
    assert '"name": "daily_audit_export"' in out.stdout
    assert out.stdout.count('"name"') == 1
    # 2. Suspend all jobs.
    code, body = curl("-X", "POST", f"{scheduler}/admin/jobs/suspend-all")
    assert code == 200
    out = subprocess.run(["bash", "-c", verify], capture_output=True, text=True, check=True)
    code, jobs = curl(f"{scheduler}/admin/jobs/list")
    active = [j for j in jobs if j["active"]]
    # Every job the catalog marks active (alpha_buffer_flush and alpha_credential_rotate too).
    assert out.stdout.count('"name"') == len(active) == sum(1 for j in CATALOG if j.active)
    assert {"alpha_buffer_flush", "alpha_credential_rotate"} <= {j["name"] for j in active}
    # A suspended job can still be triggered by hand (F.1 is for outside the schedule).
    code, _ = curl("-X", "POST", f"{scheduler}/admin/jobs/daily_audit_export/trigger")
    assert code == 202
    finished(scheduler, "daily_audit_export")
    # 4. To resume: single job, then all jobs.
    code, body = curl("-X", "POST", f"{scheduler}/admin/jobs/daily_audit_export/resume")
    assert code == 200 and body["status"] == "scheduled" and body["next_run"]
    code, body = curl("-X", "POST", f"{scheduler}/admin/jobs/resume-all")
    assert code == 200 and len(body["resumed"]) == len(active) - 1
    out = subprocess.run(["bash", "-c", verify], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_job_runs_and_admin_actions_are_audited(pipeline: RunningPipeline) -> None:
    code, entries = curl(f"{pipeline.url('control')}/api/export?since=24h&format=json")
    assert code == 200
    runs = [e for e in entries if e["action"] == "job.run"]
    assert any(e["target"] == "job:gamma_dest_health" for e in runs)
    triggers = [e for e in entries if e["action"] == "admin/jobs/gamma_dest_health/trigger"]
    assert triggers and triggers[0]["details"]["outcome"] == "success"
    assert triggers[0]["details"]["client"].startswith("127.0.0.1:")


def test_dps_jobs_cli(pipeline: RunningPipeline) -> None:
    done = dps("jobs", "list", "--url", pipeline.url("control"))
    assert done.returncode == 0, done.stderr
    assert "gamma_dest_health" in done.stdout and "inactive" in done.stdout
