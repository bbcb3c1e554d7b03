"""The control service's scheduler: the job catalog on cron schedules, runs persisted.

Each job's schedule is the catalog's (``dps.control.jobs``) unless ``pipeline.yaml`` overrides it
(``jobs.overrides.<name>.schedule``); schedules are cron expressions in UTC, computed with
croniter. A thread wakes every second and starts the jobs that are due. A job runs in its own
thread, never twice at once (a trigger while it runs answers "already running"); each run is
recorded in the state store's ``job_runs`` (start, end, status, records, message and the job's
log) and in the audit log. A run still going after the job's expected duration is flagged as
overrunning (``/admin/jobs/<job>/status``, the ``control_job_overrun`` gauge, a warning in the
log). Suspensions are kept in ``<data_dir>/scheduler.json`` so they survive a restart.

A missed schedule (control was down at the time) is not caught up: the next run is computed
from now, as cron does. Runs found ``RUNNING`` when it starts whose runner is gone are closed
as ``FAILED`` (see :meth:`Scheduler._close_interrupted_runs`). With several control instances on
one state store (scale-out) each runs the clock, and the state store's unique index on RUNNING
runs lets only one of them start a given job: the others find it already running.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from croniter import croniter
from prometheus_client import Counter, Gauge

from dps.config import PipelineConfig
from dps.config.models import JobsSettings
from dps.control.jobs import CATALOG, JobContext, JobResult, JobSpec
from dps.core.errors import ConfigError
from dps.core.logging import get_logger
from dps.state import StateStore
from dps.state.base import JobRunConflict

JOB_RUNS = Counter("control_job_runs_total", "Job runs by job and outcome.", ["job", "status"])
JOB_DURATION = Gauge("control_job_last_duration_seconds", "Duration of the last run.", ["job"])
JOB_OVERRUN = Gauge("control_job_overrun", "1 while a run exceeds its expected duration.", ["job"])
JOB_LAST_SUCCESS = Gauge(
    "control_job_last_success_timestamp_seconds", "Unix time of the last successful run.", ["job"]
)

ContextFactory = Callable[[str, str], JobContext]


class UnknownJob(LookupError):
    """No job of that name in the catalog."""


class JobBusy(RuntimeError):
    """The job is already running."""


class JobInactive(RuntimeError):
    """The job has no meaning here or its capability is not built (see its reason)."""


@dataclass(slots=True)
class ScheduledJob:
    spec: JobSpec
    schedule: str
    expected_seconds: float
    suspended: bool = False
    next_run: float | None = None
    running_run_id: str | None = None
    running_since: float | None = None
    overrun: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def status(self) -> str:
        if not self.spec.active:
            return "inactive"
        if self.running_run_id is not None:
            return "running"
        return "suspended" if self.suspended else "scheduled"


#: Who runs a job: this control process (``host:pid``), kept with RUNNING runs.
_OWNER = f"{socket.gethostname()}:{os.getpid()}"


def _alive(pid: int) -> bool:
    if pid <= 0 or pid == os.getpid():
        return False  # this process is starting: any run it owned before is not running
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _next(schedule: str, after: float) -> float:
    return float(croniter(schedule, datetime.fromtimestamp(after, UTC)).get_next(float))


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def build_jobs(settings: JobsSettings, *, source: str = "pipeline.yaml") -> dict[str, ScheduledJob]:
    """The catalog with ``pipeline.yaml``'s overrides applied; unknown names are refused."""
    known = {spec.name for spec in CATALOG}
    unknown = sorted(set(settings.overrides) - known)
    if unknown:
        raise ConfigError(
            f"{source}: jobs.overrides: {', '.join(repr(u) for u in unknown)} "
            f"{'is not a job' if len(unknown) == 1 else 'are not jobs'}; expected one of the "
            "catalog's names (GET /admin/jobs/list, docs/jobs.md)."
        )
    jobs: dict[str, ScheduledJob] = {}
    for spec in CATALOG:
        override = settings.overrides.get(spec.name)
        schedule = (override.schedule if override else None) or spec.schedule
        minutes = (
            override.expected_duration_minutes if override else None
        ) or spec.expected_minutes
        job = ScheduledJob(spec, schedule, minutes * 60.0)
        if override is not None and override.enabled is False:
            job.suspended = True
        jobs[spec.name] = job
    return jobs


class Scheduler:
    """Runs the catalog's jobs on their schedules and on demand (see the module docstring)."""

    def __init__(
        self,
        config: PipelineConfig,
        store: StateStore,
        context_factory: ContextFactory,
        state_path: Path,
        *,
        audit: Callable[[str, str, str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.store = store
        self.context_factory = context_factory
        self.state_path = state_path
        self.audit = audit
        self.log = get_logger("scheduler")
        self.schedule_enabled = config.pipeline.jobs.enabled
        self.jobs = build_jobs(config.pipeline.jobs)
        self._apply_saved_suspensions()
        now = time.time()
        for job in self.jobs.values():
            job.next_run = _next(job.schedule, now)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._runs: list[threading.Thread] = []
        self._close_interrupted_runs()

    # -- persistence of suspensions ---------------------------------------------------------
    def _apply_saved_suspensions(self) -> None:
        try:
            saved = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return
        for name, suspended in saved.get("suspended", {}).items():
            if name in self.jobs:
                self.jobs[name].suspended = bool(suspended)

    def _save(self) -> None:
        data = {"suspended": {n: j.suspended for n, j in self.jobs.items() if j.spec.active}}
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(self.state_path)

    def _close_interrupted_runs(self) -> None:
        """Close RUNNING runs whose runner is gone, so their jobs can run again.

        A run's owner is ``host:pid``: a run of this host whose process is not alive was
        interrupted by a stop; a run of another host is closed once it has lasted three times
        its expected duration (its control instance is presumed lost).
        """
        now = time.time()
        for run in self.store.list_job_runs(limit=500):
            if run["status"] != "RUNNING":
                continue
            host, _, pid = str(run["message"]).rpartition(":")
            job = self.jobs.get(run["job_name"])
            expected = job.expected_seconds if job else 3600.0
            if host == socket.gethostname() and pid.isdigit():
                gone = not _alive(int(pid))
            else:
                gone = now - run["started_at"] > 3 * expected
            if gone:
                self.store.finish_job_run(
                    run["run_id"],
                    "FAILED",
                    0,
                    "Interrupted: the control service stopped during the run.",
                )

    def apply_config(self, config: PipelineConfig) -> None:
        """Take a reloaded configuration's schedules (suspensions made at runtime are kept)."""
        new = build_jobs(config.pipeline.jobs)
        now = time.time()
        for name, job in self.jobs.items():
            fresh = new[name]
            job.schedule, job.expected_seconds = fresh.schedule, fresh.expected_seconds
            if fresh.suspended:
                job.suspended = True
            job.next_run = _next(job.schedule, now)
        self.schedule_enabled = config.pipeline.jobs.enabled

    # -- the clock ----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        for run in list(self._runs):
            run.join(timeout)

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.tick(time.time())
            except Exception as exc:  # the clock must keep going whatever a tick meets
                self.log.error("Scheduler tick failed.", error=f"{type(exc).__name__}: {exc}")

    def tick(self, now: float) -> list[str]:
        """Start the jobs that are due at ``now``; flag overruns. Returns the jobs started."""
        started = []
        for job in self.jobs.values():
            running = job.running_since
            if running is not None and not job.overrun and now - running > job.expected_seconds:
                job.overrun = True
                JOB_OVERRUN.labels(job.spec.name).set(1)
                self.log.warning(
                    "Job overrunning its expected duration.",
                    job=job.spec.name,
                    expected_seconds=job.expected_seconds,
                )
            if job.next_run is None or now < job.next_run:
                continue
            job.next_run = _next(job.schedule, now)
            if not job.spec.active or job.suspended or not self.schedule_enabled:
                continue
            try:
                self.trigger(job.spec.name, trigger="schedule", actor="scheduler")
                started.append(job.spec.name)
            except JobBusy:
                self.log.warning(
                    "Scheduled run skipped: the job is still running.", job=job.spec.name
                )
        return started

    # -- operations ---------------------------------------------------------------------------
    def get(self, name: str) -> ScheduledJob:
        job = self.jobs.get(name)
        if job is None:
            raise UnknownJob(
                f"No job {name!r}; GET /admin/jobs/list shows the catalog's {len(self.jobs)} jobs."
            )
        return job

    def trigger(self, name: str, *, trigger: str = "manual", actor: str = "operator") -> str:
        """Start a run now in its own thread; returns its run id."""
        job = self.get(name)
        if not job.spec.active:
            raise JobInactive(f"Job {name!r} is inactive: {job.spec.inactive_reason}.")
        if not job.lock.acquire(blocking=False):
            raise JobBusy(f"Job {name!r} is already running (run {job.running_run_id}).")
        try:
            run_id = self.store.start_job_run(name, trigger, owner=_OWNER)
        except JobRunConflict as exc:
            job.lock.release()
            raise JobBusy(
                f"Job {name!r} is already running (on another control instance)."
            ) from exc
        except BaseException:
            job.lock.release()
            raise
        job.running_run_id, job.running_since, job.overrun = run_id, time.time(), False
        thread = threading.Thread(
            target=self._run, args=(job, run_id, trigger, actor), name=f"job-{name}", daemon=True
        )
        self._runs = [t for t in self._runs if t.is_alive()] + [thread]
        thread.start()
        return run_id

    def _run(self, job: ScheduledJob, run_id: str, trigger: str, actor: str) -> None:
        name = job.spec.name
        assert job.spec.run is not None
        started = time.time()
        ctx = self.context_factory(name, run_id)
        self.log.info("Job started.", job=name, run_id=run_id, trigger=trigger)
        try:
            result = job.spec.run(ctx)
        except Exception as exc:
            ctx.log(f"Failed: {type(exc).__name__}: {exc}")
            ctx.lines.extend(traceback.format_exc().rstrip().splitlines())
            result = JobResult(0, f"{type(exc).__name__}: {exc}", ok=False)
        duration = time.time() - started
        status = "SUCCESS" if result.ok else "FAILED"
        message = result.message
        if duration > job.expected_seconds or job.overrun:
            message += f" Overran its expected {job.expected_seconds / 60:g} minutes."
        try:
            self.store.finish_job_run(run_id, status, result.records, message, "\n".join(ctx.lines))
            if self.audit is not None:
                self.audit(
                    actor,
                    "job.run",
                    f"job:{name}",
                    {
                        "run_id": run_id,
                        "trigger": trigger,
                        "outcome": status,
                        "duration_seconds": round(duration, 3),
                        "records": result.records,
                        "message": message,
                    },
                )
        except Exception as exc:
            self.log.error("Job run could not be recorded.", job=name, error=str(exc))
        finally:
            JOB_RUNS.labels(name, status).inc()
            JOB_DURATION.labels(name).set(duration)
            JOB_OVERRUN.labels(name).set(0)
            if result.ok:
                JOB_LAST_SUCCESS.labels(name).set(time.time())
            job.running_run_id = job.running_since = None
            job.lock.release()
            self.log.info("Job finished.", job=name, run_id=run_id, status=status, outcome=message)

    def suspend(self, name: str) -> dict[str, Any]:
        job = self.get(name)
        if not job.spec.active:
            raise JobInactive(f"Job {name!r} is inactive: {job.spec.inactive_reason}.")
        job.suspended = True
        self._save()
        return self.describe(job)

    def resume(self, name: str) -> dict[str, Any]:
        job = self.get(name)
        if not job.spec.active:
            raise JobInactive(f"Job {name!r} is inactive: {job.spec.inactive_reason}.")
        job.suspended = False
        job.next_run = _next(job.schedule, time.time())
        self._save()
        return self.describe(job)

    def suspend_all(self) -> list[str]:
        names = [n for n, j in self.jobs.items() if j.spec.active and not j.suspended]
        for name in names:
            self.jobs[name].suspended = True
        self._save()
        return names

    def resume_all(self) -> list[str]:
        now = time.time()
        names = [n for n, j in self.jobs.items() if j.spec.active and j.suspended]
        for name in names:
            self.jobs[name].suspended = False
            self.jobs[name].next_run = _next(self.jobs[name].schedule, now)
        self._save()
        return names

    # -- views ----------------------------------------------------------------------------------
    def describe(self, job: ScheduledJob, *, last_run: bool = False) -> dict[str, Any]:
        spec = job.spec
        view: dict[str, Any] = {
            "name": spec.name,
            "module": spec.module,
            "description": spec.description,
            "schedule": job.schedule,
            "status": job.status(),
            "active": spec.active,
            "inactive_reason": spec.inactive_reason,
            "suspended": job.suspended,
            "next_run": _iso(job.next_run) if spec.active and not job.suspended else None,
            "expected_duration_seconds": job.expected_seconds,
            "running": job.running_run_id is not None,
            "run_id": job.running_run_id,
            "running_seconds": None
            if job.running_since is None
            else round(time.time() - job.running_since, 3),
            "overrun": job.overrun,
        }
        if last_run:
            runs = self.store.list_job_runs(spec.name, limit=1)
            view["last_run"] = _run_view(runs[0], job.expected_seconds) if runs else None
        return view

    def list(self) -> list[dict[str, Any]]:
        return [self.describe(job) for job in self.jobs.values()]

    def status(self, name: str) -> dict[str, Any]:
        return self.describe(self.get(name), last_run=True)

    def logs(self, name: str, limit: int = 20) -> dict[str, Any]:
        job = self.get(name)
        runs = self.store.list_job_runs(name, limit=limit)
        return {
            "job": name,
            "runs": [_run_view(r, job.expected_seconds) | {"log": r.get("log", "")} for r in runs],
        }


def _run_view(run: dict[str, Any], expected_seconds: float) -> dict[str, Any]:
    duration = run.get("duration_seconds")
    return {
        "run_id": run["run_id"],
        "trigger": run["trigger"],
        "status": run["status"],
        "started_at": _iso(run["started_at"]),
        "finished_at": _iso(run["finished_at"]),
        "duration_seconds": duration,
        "overrun": duration is not None and duration > expected_seconds,
        "records": run["records"],
        "message": run["message"],
    }
