"""The control service's own endpoints: ``/admin/jobs/...`` (runbook F) and ``/api/...``.

The paths are the manual's: ``curl http://scheduler:8080/admin/jobs/list | jq '.[] |
select(.status=="suspended")'`` works because the list is a JSON array of jobs.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from dps.admin.common import error_response, json_response
from dps.control.configs import detect_drift
from dps.control.monitoring import errors_summary, health_summary
from dps.control.scheduler import JobBusy, JobInactive, UnknownJob

if TYPE_CHECKING:
    from dps.control.module import ControlModule

T = TypeVar("T")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(value: str, now: float | None = None) -> float:
    """``24h``, ``90m``, ``7d`` (ago), an ISO date or time, or a Unix time -> Unix time."""
    now = time.time() if now is None else now
    value = value.strip()
    match = _DURATION.match(value)
    if match:
        return now - float(match.group(1)) * _UNITS[match.group(2)]
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is not a time; expected a duration such as 24h, 30m or 7d, an ISO date "
            "such as 2024-01-31, or a Unix time."
        ) from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def control_routes(control: ControlModule) -> list[BaseRoute]:
    scheduler = control.scheduler

    async def call(fn: Callable[[], T]) -> T:
        return await run_in_threadpool(fn)

    def job_errors(fn: Callable[[], Any], status: int = 200) -> Callable[[], Response]:
        def work() -> Response:
            try:
                return json_response(fn(), status)
            except UnknownJob as exc:
                return error_response(404, str(exc.args[0]))
            except JobBusy as exc:
                return error_response(409, str(exc))
            except JobInactive as exc:
                return error_response(409, str(exc))

        return work

    # -- runbook F ---------------------------------------------------------------------------
    async def jobs_list(request: Request) -> Response:
        """Every job of the catalog: a JSON array of {name, schedule, status, next_run, ...}.

        ``status`` is ``scheduled``, ``running``, ``suspended`` or ``inactive`` (with
        ``inactive_reason``).
        """
        return json_response(await call(scheduler.list))

    async def job_status(request: Request) -> Response:
        """One job: schedule, status, whether it is running or overrunning, its last run."""
        name = request.path_params["job"]
        return await call(job_errors(lambda: scheduler.status(name)))

    async def job_trigger(request: Request) -> Response:
        """Run the job now (202 with its run id; 409 when it is already running or inactive)."""
        name = request.path_params["job"]

        def work() -> dict[str, Any]:
            run_id = scheduler.trigger(name, actor=_actor(request))
            return {"job": name, "run_id": run_id, "status": "RUNNING"}

        return await call(job_errors(work, 202))

    async def job_suspend(request: Request) -> Response:
        """Stop the job's scheduled runs until resumed (kept across restarts)."""
        name = request.path_params["job"]
        return await call(job_errors(lambda: scheduler.suspend(name)))

    async def job_resume(request: Request) -> Response:
        """Put a suspended job back on its schedule."""
        name = request.path_params["job"]
        return await call(job_errors(lambda: scheduler.resume(name)))

    async def job_logs(request: Request) -> Response:
        """The job's recent runs, newest first, each with its log (``?limit=20``)."""
        name = request.path_params["job"]
        limit = int(request.query_params.get("limit", "20"))
        return await call(job_errors(lambda: scheduler.logs(name, limit)))

    async def suspend_all(request: Request) -> Response:
        """Suspend every active job."""
        return json_response({"suspended": await call(scheduler.suspend_all)})

    async def resume_all(request: Request) -> Response:
        """Resume every suspended job."""
        return json_response({"resumed": await call(scheduler.resume_all)})

    # -- runbook L.1 and the audit chain ------------------------------------------------------
    async def export(request: Request) -> Response:
        """Audit log export ``?since=24h&format=json`` (L.1); lineage ``?start=&end=`` (L.2).

        Audit: a JSON array of entries, oldest first, archived ones included, with their hashes.
        Lineage (``start``/``end`` without ``since``): the deliveries of the period, oldest first,
        at most ``limit`` (10000), each with the record's ``rules``, ``enrichment`` and
        ``quality_score``; ``/api/forward`` gives one record's whole trace.
        """
        q = request.query_params
        fmt = q.get("format", "json")
        if fmt != "json":
            raise ValueError(f"format {fmt!r} is not supported; expected json.")
        since = parse_since(q["since"]) if "since" in q else None
        if "start" in q:
            since = parse_since(q["start"])
        until = parse_since(q["end"]) if "end" in q else None
        if until is not None and re.fullmatch(r"\d{4}-\d{2}-\d{2}", q["end"]):
            until += 86400  # an end date includes that whole day
        if "since" not in q and ("start" in q or "end" in q):
            # Runbook L.2's lineage export: deliveries in the period, oldest first.
            limit = int(q.get("limit", "10000"))
            store = control.state_store
            return json_response(
                await call(lambda: store.delivered_between(since, until, limit=limit))
            )
        return json_response(await call(lambda: control.state_store.export_audit(since, until)))

    # -- runbook L.2 -------------------------------------------------------------------------
    def outcome(trace: dict[str, Any]) -> str:
        if any(d["status"] == "delivered" for d in trace["deliveries"]):
            return "delivered"
        if trace["dlq"]:
            return "dlq"
        if trace["duplicates"] and not trace["ingested"]:
            return "duplicate"
        return "in_flight" if trace["ingested"] or trace["deliveries"] else "unknown"

    async def forward(request: Request) -> Response:
        """Forward lineage: ``?source_id=&record_id=`` -> where the record went.

        ``record_id`` is the source's id (``ORD-1``) or the full record id
        (``orders_file:ORD-1``). The answer includes the record's ``rules``, ``enrichment``
        and ``quality_score`` (see ``StateStore.record_trace``).
        """
        q = request.query_params
        source_id, record_id = q.get("source_id", ""), q.get("record_id", "")
        if not source_id or not record_id:
            raise ValueError("source_id and record_id are both required.")
        full = record_id if record_id.startswith(f"{source_id}:") else f"{source_id}:{record_id}"
        trace = await call(lambda: control.state_store.record_trace(full))
        # The dedupe claim expires with the window; the delivery log still knows the record.
        known = ("ingested", "duplicates", "validation_failures", "dlq", "deliveries")
        if not any(trace[k] for k in known):
            return error_response(404, f"No record {full!r} from source {source_id!r} is known.")
        return json_response(
            {"direction": "forward", "source_id": source_id, "outcome": outcome(trace), **trace}
        )

    async def backward(request: Request) -> Response:
        """Backward lineage: ``?destination_id=&record_id=`` -> where a delivered record came from.

        ``record_id`` is the full record id, as the destination holds it. The answer includes
        the record's ``rules``, ``enrichment`` and ``quality_score``, as stored with the delivery.
        """
        q = request.query_params
        destination_id, record_id = q.get("destination_id", ""), q.get("record_id", "")
        if not destination_id or not record_id:
            raise ValueError("destination_id and record_id are both required.")
        trace = await call(lambda: control.state_store.record_trace(record_id))
        rows = [d for d in trace["deliveries"] if d["destination_id"] == destination_id]
        if not rows:
            return error_response(
                404, f"Record {record_id!r} was never delivered to {destination_id!r}."
            )
        sources = trace["ingested"] or trace["duplicates"]
        return json_response(
            {
                "direction": "backward",
                "destination_id": destination_id,
                "delivery": rows[0],
                "sources": sources,
                **trace,
            }
        )

    async def audit_verify(request: Request) -> Response:
        """Check the audit hash chain: ``{"ok", "entries", "problems"}`` (409 when broken)."""
        result = await call(control.state_store.verify_audit)
        return json_response(result, 200 if result["ok"] else 409)

    # -- runbook J.3 ---------------------------------------------------------------------------
    async def health(request: Request) -> Response:
        """Pipeline status HEALTHY / DEGRADED / UNHEALTHY aggregated from every module's health."""
        own = (await call(control.health)).status.value
        return json_response(await call(lambda: health_summary(control.modules, own)))

    async def throughput(request: Request) -> Response:
        """Totals from the durable accounting, rates over the last 1 and 5 minutes, queue depths."""
        return json_response(await call(lambda: control.sampler.summary(control.queue_depths())))

    async def errors(request: Request) -> Response:
        """Open DLQ entries by module and reason, delivery errors (``?since=24h``), last errors."""
        since = request.query_params.get("since", "24h")
        window = time.time() - parse_since(since)
        return json_response(
            await call(lambda: errors_summary(control.state_store, control.modules, window))
        )

    # -- configuration (J.2) ------------------------------------------------------------------
    async def config_history(request: Request) -> Response:
        """Stored configuration versions, newest first (``?module=alpha``)."""
        module = request.query_params.get("module")
        return json_response(await call(lambda: control.state_store.list_config_versions(module)))

    async def config_drift(request: Request) -> Response:
        """Differences between the files on disk and each module's running configuration."""
        return json_response(await call(lambda: detect_drift(control.config_dir, control.modules)))

    async def accounting(request: Request) -> Response:
        """The durable accounting: ingested, duplicates, DLQ per module, delivered."""
        return json_response(await call(control.accounting))

    return [
        Route("/api/accounting", accounting, methods=["GET"]),
        Route("/admin/jobs/list", jobs_list, methods=["GET"]),
        Route("/admin/jobs/suspend-all", suspend_all, methods=["POST"]),
        Route("/admin/jobs/resume-all", resume_all, methods=["POST"]),
        Route("/admin/jobs/{job}/status", job_status, methods=["GET"]),
        Route("/admin/jobs/{job}/trigger", job_trigger, methods=["POST"]),
        Route("/admin/jobs/{job}/suspend", job_suspend, methods=["POST"]),
        Route("/admin/jobs/{job}/resume", job_resume, methods=["POST"]),
        Route("/admin/jobs/{job}/logs", job_logs, methods=["GET"]),
        Route("/api/export", export, methods=["GET"]),
        Route("/api/audit/verify", audit_verify, methods=["GET"]),
        Route("/api/forward", forward, methods=["GET"]),
        Route("/api/backward", backward, methods=["GET"]),
        Route("/api/health/summary", health, methods=["GET"]),
        Route("/api/throughput/summary", throughput, methods=["GET"]),
        Route("/api/errors/summary", errors, methods=["GET"]),
        Route("/api/config/history", config_history, methods=["GET"]),
        Route("/api/config/drift", config_drift, methods=["GET"]),
    ]


def _actor(request: Request) -> str:
    return request.headers.get("x-dps-actor") or "operator"
