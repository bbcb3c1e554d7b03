"""The scheduler: the manual's catalog, overrides, due runs, no double run, overruns, suspension.

Runs use a real SQLite state store in ``tmp_path``; the clock is passed to ``tick``.
"""

from __future__ import annotations

import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dps.config import load_config
from dps.config.models import PipelineConfig
from dps.control import scheduler as scheduler_mod
from dps.control.jobs import CATALOG, JOBS, JobContext, JobResult, JobSpec
from dps.control.modules import ModuleClient
from dps.control.scheduler import JobBusy, JobInactive, Scheduler, UnknownJob
from dps.core.errors import ConfigError
from dps.state import StateStore, open_state

MANUAL = Path(__file__).resolve().parents[4] / "shared" / "spec" / "operations-manual.md"

#: The manual's Batch Processing Schedules, as (name, cron) pairs.
MANUAL_SCHEDULES = {
    "alpha_source_sync": "0 * * * *",
    "alpha_buffer_flush": "15 * * * *",
    "alpha_metrics_aggregate": "30 * * * *",
    "alpha_error_report": "45 * * * *",
    "beta_cache_refresh": "5 * * * *",
    "beta_rule_validation": "20 * * * *",
    "beta_quality_report": "35 * * * *",
    "beta_schema_sync": "50 * * * *",
    "gamma_dlq_report": "10 * * * *",
    "gamma_ack_reconcile": "25 * * * *",
    "gamma_dest_health": "40 * * * *",
    "gamma_routing_sync": "55 * * * *",
    "daily_audit_export": "0 1 * * *",
    "daily_metrics_rollup": "0 2 * * *",
    "daily_lineage_index": "0 3 * * *",
    "daily_compliance_check": "0 4 * * *",
    "daily_capacity_report": "0 5 * * *",
    "daily_backup_verify": "0 6 * * *",
    "alpha_source_discovery": "30 0 * * *",
    "alpha_credential_rotate": "30 1 * * *",
    "beta_enrichment_warmup": "30 2 * * *",
    "beta_rule_optimize": "30 3 * * *",
    "gamma_dlq_cleanup": "30 4 * * *",
    "gamma_route_optimize": "30 5 * * *",
    "weekly_full_backup": "0 2 * * 0",
    "weekly_index_rebuild": "0 3 * * 0",
    "weekly_log_archive": "0 4 * * 0",
    "weekly_cert_check": "0 5 * * 0",
    "midweek_perf_baseline": "0 3 * * 3",
    "midweek_config_audit": "30 3 * * 3",
    "monthly_capacity_forecast": "0 1 1 * *",
    "monthly_compliance_audit": "0 2 1 * *",
    "monthly_dr_validation": "0 3 1 * *",
    "monthly_security_scan": "0 1 15 * *",
    "monthly_perf_analysis": "0 2 15 * *",
}


def write_config(root: Path, pipeline_yaml: str = "") -> PipelineConfig:
    root.mkdir(parents=True, exist_ok=True)
    (root / "pipeline.yaml").write_text(pipeline_yaml or "name: t\n")
    return load_config(root)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    opened = open_state("sqlite", {"path": str(tmp_path / "state.db")}, tmp_path)
    yield opened
    opened.close()


def make_scheduler(
    tmp_path: Path, store: StateStore, config: PipelineConfig | None = None
) -> Scheduler:
    config = config or write_config(tmp_path / "config")
    client = ModuleClient({"alpha": "http://127.0.0.1:9", "beta": "", "gamma": ""})

    def context(job: str, run_id: str) -> JobContext:
        return JobContext(job, run_id, store, client, config, config.root, tmp_path)

    return Scheduler(config, store, context, tmp_path / "scheduler.json")


def test_catalog_is_the_manuals() -> None:
    assert {j.name: j.schedule for j in CATALOG} == MANUAL_SCHEDULES
    for job in CATALOG:
        assert job.active != bool(job.inactive_reason), job.name


def test_catalog_names_appear_in_the_manual() -> None:
    if not MANUAL.is_file():
        pytest.skip("the manual is not beside the repository")  # CI has shared/ beside it
    names = set(re.findall(r"^\| `([a-z_]+)` \|", MANUAL.read_text(), re.M))
    assert set(JOBS) <= names


def test_overrides_change_schedule_and_expected_duration(tmp_path: Path, store: StateStore) -> None:
    config = write_config(
        tmp_path / "c",
        "jobs:\n  overrides:\n    gamma_dest_health:\n      schedule: '*/5 * * * *'\n"
        "      expected_duration_minutes: 1\n    daily_audit_export:\n      enabled: false\n",
    )
    scheduler = make_scheduler(tmp_path, store, config)
    assert scheduler.jobs["gamma_dest_health"].schedule == "*/5 * * * *"
    assert scheduler.jobs["gamma_dest_health"].expected_seconds == 60
    assert scheduler.jobs["daily_audit_export"].status() == "suspended"


@pytest.mark.parametrize(
    ("schedule", "message"),
    [("every hour", "is not a cron expression"), ("0 0 30 2 *", "never fires")],
)
def test_bad_cron_is_refused_with_file_and_key(tmp_path: Path, schedule: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        write_config(
            tmp_path / "c",
            f"jobs:\n  overrides:\n    gamma_dest_health:\n      schedule: '{schedule}'\n",
        )
    text = str(info.value)
    assert message in text and "pipeline.yaml" in text and "schedule" in text


def test_unknown_job_name_is_refused(tmp_path: Path, store: StateStore) -> None:
    config = write_config(tmp_path / "c", "jobs:\n  overrides:\n    gamma_dest_healht: {}\n")
    with pytest.raises(ConfigError, match="'gamma_dest_healht' is not a job"):
        make_scheduler(tmp_path, store, config)


@pytest.fixture
def fake_job(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """Replace gamma_dest_health's work with one the test controls."""
    state: dict[str, object] = {"release": threading.Event(), "calls": 0, "fail": False}

    def run(ctx: JobContext) -> JobResult:
        state["calls"] = int(state["calls"]) + 1  # type: ignore[call-overload]
        ctx.log("working")
        assert isinstance(state["release"], threading.Event)
        state["release"].wait(10)
        if state["fail"]:
            raise RuntimeError("destination exploded")
        return JobResult(3, "did it")

    spec = JOBS["gamma_dest_health"]
    patched = JobSpec(spec.name, spec.schedule, spec.description, spec.module, 1, run)
    # The catalog is the patched job alone: a tick starts nothing else.
    monkeypatch.setattr(scheduler_mod, "CATALOG", (patched,))
    return state


def wait_finished(store: StateStore, job: str, timeout: float = 10) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = store.list_job_runs(job, limit=1)
        if runs and runs[0]["status"] != "RUNNING":
            return runs[0]
        time.sleep(0.05)
    raise AssertionError("the run did not finish")


def test_due_job_runs_once_and_is_recorded(
    tmp_path: Path, store: StateStore, fake_job: dict[str, object]
) -> None:
    scheduler = make_scheduler(tmp_path, store)
    job = scheduler.jobs["gamma_dest_health"]
    assert job.next_run is not None
    assert datetime.fromtimestamp(job.next_run, UTC).minute == 40
    assert scheduler.tick(job.next_run - 1) == []
    assert scheduler.tick(job.next_run) == ["gamma_dest_health"]
    # Still running at the next due time: not started twice.
    assert scheduler.jobs["gamma_dest_health"].status() == "running"
    with pytest.raises(JobBusy):
        scheduler.trigger("gamma_dest_health")
    assert scheduler.tick(job.next_run + 3600) == []
    fake_job["release"].set()  # type: ignore[attr-defined]
    run = wait_finished(store, "gamma_dest_health")
    assert (run["status"], run["records"], run["trigger"]) == ("SUCCESS", 3, "schedule")
    assert "working" in str(run["log"])
    assert fake_job["calls"] == 1
    scheduler.stop()


def test_failure_is_recorded_with_the_error(
    tmp_path: Path, store: StateStore, fake_job: dict[str, object]
) -> None:
    fake_job["fail"] = True
    fake_job["release"].set()  # type: ignore[attr-defined]
    scheduler = make_scheduler(tmp_path, store)
    scheduler.trigger("gamma_dest_health")
    run = wait_finished(store, "gamma_dest_health")
    assert run["status"] == "FAILED"
    assert "destination exploded" in str(run["message"])
    assert "Traceback" in str(run["log"])
    scheduler.stop()


def test_overrun_is_flagged(tmp_path: Path, store: StateStore, fake_job: dict[str, object]) -> None:
    scheduler = make_scheduler(tmp_path, store)
    scheduler.trigger("gamma_dest_health")
    job = scheduler.jobs["gamma_dest_health"]
    assert job.running_since is not None
    scheduler.tick(job.running_since + 61)  # expected: 1 minute (the patched spec)
    assert scheduler.status("gamma_dest_health")["overrun"] is True
    fake_job["release"].set()  # type: ignore[attr-defined]
    wait_finished(store, "gamma_dest_health")
    scheduler.stop()


def test_unknown_and_inactive_jobs(tmp_path: Path, store: StateStore) -> None:
    scheduler = make_scheduler(tmp_path, store)
    with pytest.raises(UnknownJob):
        scheduler.trigger("no_such_job")
    with pytest.raises(JobInactive, match="alpha_source_sync"):
        scheduler.trigger("alpha_source_sync")
    assert scheduler.status("alpha_source_sync")["status"] == "inactive"


def test_suspension_survives_a_restart_and_skips_schedules(
    tmp_path: Path, store: StateStore, fake_job: dict[str, object]
) -> None:
    scheduler = make_scheduler(tmp_path, store)
    scheduler.suspend("gamma_dest_health")
    job = scheduler.jobs["gamma_dest_health"]
    assert job.next_run is not None
    assert scheduler.tick(job.next_run) == []
    again = make_scheduler(tmp_path, store)
    assert again.jobs["gamma_dest_health"].status() == "suspended"
    suspended = again.suspend_all()
    assert all(again.jobs[n].suspended for n in suspended)
    assert suspended == []  # gamma_dest_health, the only job, was suspended already
    assert again.resume_all() == ["gamma_dest_health"]
    assert again.jobs["gamma_dest_health"].status() == "scheduled"


def test_runs_left_running_by_a_crash_are_closed(tmp_path: Path, store: StateStore) -> None:
    # A run of this host whose process is gone ...
    gone = subprocess.Popen(["true"])
    gone.wait()
    owner = f"{socket.gethostname()}:{gone.pid}"
    dead = store.start_job_run("daily_audit_export", "schedule", owner=owner)
    # ... and a run of another control instance, started just now.
    other = store.start_job_run("gamma_dest_health", "schedule", owner="other-host:4242")
    scheduler = make_scheduler(tmp_path, store)
    runs = {r["run_id"]: r for r in store.list_job_runs()}
    assert runs[dead]["status"] == "FAILED" and "Interrupted" in runs[dead]["message"]
    assert runs[other]["status"] == "RUNNING"
    # The other instance's run keeps this one from starting the same job.
    with pytest.raises(JobBusy, match="another control instance"):
        scheduler.trigger("gamma_dest_health")
    assert scheduler.jobs["gamma_dest_health"].status() == "scheduled"  # its lock was released


def test_the_state_store_refuses_a_second_running_run(store: StateStore) -> None:
    from dps.state.base import JobRunConflict

    first = store.start_job_run("daily_audit_export", "manual")
    with pytest.raises(JobRunConflict):
        store.start_job_run("daily_audit_export", "schedule")
    store.finish_job_run(first, "SUCCESS")
    store.start_job_run("daily_audit_export", "schedule")
