"""Gamma's own admin endpoints: DLQ (C.2), destinations (C.1), circuit breakers (C.3), H.3 views.

The paths are the manual's. ``test`` and ``test-delivery`` build a fresh instance of the
destination from its file (so they work on a destination that is still ``enabled: false``, as
C.1 does it, and never share a connection with the delivery thread).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from dps.admin.common import error_response, json_response, read_json
from dps.core.record import Record
from dps.gamma.circuit_breaker import CircuitBreaker
from dps.gamma.delivery import retry_delay_ms, spool_name
from dps.gamma.dlq import DlqService, entry_view, parse_since, stage_queue_opener
from dps.gamma.reconcile import DEFAULT_LIMIT, reconcile_spool

if TYPE_CHECKING:
    from dps.gamma.module import GammaModule

Handler = Callable[[Request], Awaitable[Response]]


def gamma_routes(gamma: GammaModule) -> list[BaseRoute]:
    """The routes Gamma adds to the common admin API."""

    def dlq() -> DlqService:
        return DlqService(
            gamma.state_store, "gamma", stage_queue_opener(gamma.config, gamma.data_dir)
        )

    def known(dest_id: str) -> Any:
        dc = gamma.config.gamma.destinations.get(dest_id)
        if dc is None:
            return None
        return dc

    def not_found(dest_id: str) -> Response:
        return error_response(
            404,
            f"Destination {dest_id!r} is not configured; known: "
            f"{sorted(gamma.config.gamma.destinations)}.",
        )

    # -- DLQ ----------------------------------------------------------------------------------
    async def dlq_stats(request: Request) -> Response:
        """DLQ size, per reason, class and destination, retry-eligible count, oldest entry."""
        return json_response(await run_in_threadpool(lambda: dlq().stats()))

    async def dlq_entries(request: Request) -> Response:
        """Entries, oldest first: ``?limit=100&offset=0`` (``&status=open|replayed|purged|all``)."""
        q = request.query_params
        try:
            limit, offset = int(q.get("limit", "100")), int(q.get("offset", "0"))
        except ValueError:
            return error_response(400, "limit and offset must be integers.")
        status = q.get("status", "open")
        return json_response(await run_in_threadpool(lambda: dlq().entries(limit, offset, status)))

    async def dlq_analysis(request: Request) -> Response:
        """Open entries grouped: ``failure_reasons``, by error class, destination, stage, source
        and rule (``by_rule``)."""
        return json_response(await run_in_threadpool(lambda: dlq().analysis()))

    async def dlq_replay(request: Request) -> Response:
        """Replay ``{"entry_ids": [...]}`` or ``{"filter": {...}}`` (``"target": "beta"``)."""
        body = await read_json(request)
        return json_response(await run_in_threadpool(lambda: dlq().replay(body)))

    async def dlq_export(request: Request) -> Response:
        """All open entries (or ``?status=all``) as ``format=json`` (an array) or ``ndjson``."""
        fmt = request.query_params.get("format", "json")
        service = dlq()
        spec = {k: v for k, v in request.query_params.items() if k not in ("format",)}
        if "retry_eligible" in spec:
            spec["retry_eligible"] = spec["retry_eligible"].lower() == "true"  # type: ignore[assignment]
        where = service.filter(spec)
        if fmt == "json":
            return json_response(await run_in_threadpool(lambda: service.export(where)))
        if fmt == "ndjson":
            lines = await run_in_threadpool(lambda: list(service.export_ndjson(where)))
            return StreamingResponse(iter(lines), media_type="application/x-ndjson")
        return error_response(400, f"format {fmt!r} is not known; expected json or ndjson.")

    async def dlq_purge(request: Request) -> Response:
        """Mark ``{"entry_ids": [...]}`` or ``{"filter": {...}}`` purged (audited)."""
        body = await read_json(request)
        return json_response(await run_in_threadpool(lambda: dlq().purge(body)))

    async def dlq_cleanup(request: Request) -> Response:
        """Archive entries older than ``DLQ_RETENTION_DAYS`` now (the gamma_dlq_cleanup job).

        Body (optional): ``{"retention_days": 7}`` overrides the setting for this run.
        """
        body = await read_json(request)
        days = body.get("retention_days", gamma.config.gamma.settings.DLQ_RETENTION_DAYS)
        return json_response(await run_in_threadpool(lambda: dlq().cleanup(days)))

    async def dlq_entry(request: Request) -> Response:
        """One entry with its record and attempt history."""
        entry_id = request.path_params["entry_id"]
        rows = await run_in_threadpool(lambda: gamma.state_store.get_dlq_entries([entry_id]))
        if not rows:
            return error_response(404, f"DLQ entry {entry_id!r} does not exist.")
        return json_response(entry_view(rows[0]))

    # -- destinations ---------------------------------------------------------------------------
    def destination_view(dest_id: str) -> dict[str, Any]:
        dc = gamma.config.gamma.destinations[dest_id]
        worker = gamma.workers.get(dest_id)
        stats = gamma.stats.get(dest_id)
        breaker = gamma.breakers.get(dest_id)
        depth = gamma.spool(dest_id).depth()
        if not dc.enabled:
            state = "disabled"
        elif breaker is not None and breaker.state == "OPEN":
            state = "unavailable"
        else:
            state = "active"
        view: dict[str, Any] = {
            "destination_id": dest_id,
            "destination_type": dc.destination_type,
            "enabled": dc.enabled,
            "status": state,
            "circuit_breaker": breaker.state if breaker else "CLOSED",
            "pending": depth,
            "spool": spool_name(dest_id),
            "delivery_mode": dc.delivery_mode,
            "ack_mode": dc.ack_mode,
            "batch_size": dc.delivery.batch_size,
            "retry_count": dc.delivery.retry_count,
            # What the worker backs off from: the destination's own, else RETRY_BACKOFF_MS.
            "retry_delay_ms": retry_delay_ms(dc, gamma.config.gamma.settings),
            "routes": [r.rule_id for r in gamma.router.routes if dest_id in r.destinations],
            "worker_running": bool(worker and worker.alive),
            "data_classification": dc.authorization.data_classification,
            "allowed_sources": dc.authorization.allowed_sources,
        }
        if stats is not None:
            view.update(
                delivered=stats.delivered,
                failed_attempts=stats.failed_attempts,
                dead_lettered=stats.dlq,
                retries=stats.retries,
                throttled=stats.throttled,
                delivered_direct=stats.direct,
                spooled=stats.spooled,
                last_success=stats.last_success,
                last_error=stats.last_error,
            )
        view["delivery_log"] = gamma.state_store.delivery_counts().get(dest_id, {})
        return view

    async def destinations(request: Request) -> Response:
        """Every configured destination with its state, pending records and breaker."""

        def work() -> dict[str, Any]:
            return {
                "destinations": [
                    destination_view(d) for d in sorted(gamma.config.gamma.destinations)
                ]
            }

        return json_response(await run_in_threadpool(work))

    async def destination_status(request: Request) -> Response:
        """One destination: enabled, state, breaker, pending, counters, last error."""
        dest_id = request.path_params["dest_id"]
        if known(dest_id) is None:
            return not_found(dest_id)
        return json_response(await run_in_threadpool(lambda: destination_view(dest_id)))

    async def destination_test(request: Request) -> Response:
        """Connect to the destination with its configuration and report (503 when it fails)."""
        dest_id = request.path_params["dest_id"]
        dc = known(dest_id)
        if dc is None:
            return not_found(dest_id)

        def work() -> dict[str, Any]:
            from dps.gamma.module import destination_factory

            started = time.perf_counter()
            try:
                destination = destination_factory(gamma.config)(dc)
            except Exception as exc:
                return {"destination_id": dest_id, "ok": False, "error": str(exc)}
            try:
                result = destination.test()
            finally:
                destination.close()
            return {
                "destination_id": dest_id,
                **result,
                "latency_seconds": round(time.perf_counter() - started, 6),
            }

        result = await run_in_threadpool(work)
        return json_response(result, 200 if result.get("ok") else 503)

    async def destination_test_delivery(request: Request) -> Response:
        """Deliver the posted JSON object as one test record (record id ``dps_test:<uuid>``)."""
        dest_id = request.path_params["dest_id"]
        dc = known(dest_id)
        if dc is None:
            return not_found(dest_id)
        payload = await read_json(request)

        def work() -> dict[str, Any]:
            from dps.gamma.module import destination_factory

            record = Record(
                record_id=f"dps_test:{uuid.uuid4().hex[:16]}",
                source_id="dps_test",
                correlation_id=uuid.uuid4().hex[:16],
                ingested_at=time.time(),
                payload=payload,
            )
            started = time.perf_counter()
            try:
                destination = destination_factory(gamma.config)(dc)
                try:
                    rejected = destination.deliver([record])
                finally:
                    destination.close()
            except Exception as exc:
                outcome = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            else:
                outcome = (
                    {"ok": False, "error": str(rejected[0][1]), "reason": rejected[0][1].reason}
                    if rejected
                    else {"ok": True}
                )
            gamma.state_store.append_audit(
                "admin_api",
                "destination_test_delivery",
                dest_id,
                {**outcome, "record_id": record.record_id},
            )
            return {
                "destination_id": dest_id,
                "record_id": record.record_id,
                **outcome,
                "latency_seconds": round(time.perf_counter() - started, 6),
            }

        result = await run_in_threadpool(work)
        return json_response(result, 200 if result["ok"] else 502)

    async def destination_errors(request: Request) -> Response:
        """Failed delivery attempts: ``?since=1h`` (also 30m, 2d, ISO-8601), newest first."""
        dest_id = request.path_params["dest_id"]
        if known(dest_id) is None:
            return not_found(dest_id)
        since = parse_since(request.query_params.get("since", "1h")) or 0.0
        limit = int(request.query_params.get("limit", "100"))

        def work() -> dict[str, Any]:
            errors = gamma.state_store.delivery_errors(dest_id, since, limit=limit)
            by_class: dict[str, int] = {}
            for e in errors:
                by_class[e["error_class"]] = by_class.get(e["error_class"], 0) + 1
            return {
                "destination_id": dest_id,
                "since": since,
                "count": len(errors),
                "by_error_class": by_class,
                "errors": errors,
            }

        return json_response(await run_in_threadpool(work))

    # -- circuit breakers ---------------------------------------------------------------------
    def breaker_view(dest_id: str, breaker: CircuitBreaker) -> dict[str, Any]:
        return {
            "destination_id": dest_id,
            **breaker.snapshot(),
            "pending": gamma.spool(dest_id).depth(),
        }

    async def breakers_status(request: Request) -> Response:
        """Every destination's breaker: state, failures in the window, time to the next probe."""

        def work() -> dict[str, Any]:
            views = {d: breaker_view(d, b) for d, b in sorted(gamma.breakers.items())}
            return {
                "circuit_breakers": views,
                "open": sorted(d for d, v in views.items() if v["state"] == "OPEN"),
            }

        return json_response(await run_in_threadpool(work))

    async def breaker_reset(request: Request) -> Response:
        """Close a destination's breaker now (audited)."""
        dest_id = request.path_params["dest_id"]
        breaker = gamma.breakers.get(dest_id)
        if breaker is None:
            return not_found(dest_id)
        before = breaker.state
        breaker.reset()
        await run_in_threadpool(
            lambda: gamma.state_store.append_audit(
                "admin_api", "circuit_breaker_reset", dest_id, {"from": before, "to": "CLOSED"}
            )
        )
        return json_response(
            {"destination_id": dest_id, "previous_state": before, **breaker.snapshot()}
        )

    # -- H.3 ----------------------------------------------------------------------------------
    async def latency_breakdown(request: Request) -> Response:
        """Per destination: time in queue before delivery, render, acknowledgement wait."""
        return json_response(
            {
                "destinations": {
                    d: {
                        "queue_wait": s.queue_wait.summary(),
                        "render": s.render.summary(),
                        "delivery": s.delivery.summary(),
                        "ack_wait": s.ack_wait.summary(),
                    }
                    for d, s in sorted(gamma.stats.items())
                }
            }
        )

    async def parallelism(request: Request) -> Response:
        """Delivery workers: one per enabled destination, batches in flight, modes, pending."""
        settings = gamma.config.gamma.settings
        workers = {}
        for d, w in sorted(gamma.workers.items()):
            workers[d] = {
                "workers": 1,
                "running": w.alive,
                "in_flight_batches": w.stats.in_flight,
                "max_in_flight": w.window,
                "delivery_mode": w.config.delivery_mode,
                "ack_mode": w.config.ack_mode,
                "batch_size": w.config.delivery.batch_size,
                "pending": gamma.spool(d).depth(),
            }
        return json_response(
            {
                "total_workers": len(workers),
                "output_batch_size": settings.OUTPUT_BATCH_SIZE,
                "linger_ms": settings.OUTPUT_LINGER_MS,
                "destinations": workers,
            }
        )

    async def ack_wait_stats(request: Request) -> Response:
        """Acknowledgement waits per destination, timeouts and the timeout action."""
        settings = gamma.config.gamma.settings
        per = {
            d: {
                **s.ack_wait.summary(),
                "timeouts": s.ack_timeouts,
                "timeout_rate": round(s.ack_timeouts / s.batches, 6) if s.batches else 0.0,
            }
            for d, s in sorted(gamma.stats.items())
        }
        return json_response(
            {
                "ack_wait_timeout_ms": settings.ACK_WAIT_TIMEOUT_MS,
                "ack_timeout_action": settings.ACK_TIMEOUT_ACTION,
                "destinations": per,
            }
        )

    async def ack_reconcile(request: Request) -> Response:
        """Ack spool messages already delivered or dead-lettered (the gamma_ack_reconcile job).

        Body (optional): ``{"destinations": [...], "limit": 100000}``; default every configured
        destination, enabled or not. Answers the counts per destination and in total.
        """
        body = await read_json(request)
        chosen = body.get("destinations") or sorted(gamma.config.gamma.destinations)
        if not isinstance(chosen, list) or not all(isinstance(d, str) for d in chosen):
            raise ValueError("destinations must be a list of destination ids.")
        unknown = [d for d in chosen if known(d) is None]
        if unknown:
            return not_found(unknown[0])
        limit = int(body.get("limit", DEFAULT_LIMIT))
        if limit < 1:
            raise ValueError(f"limit is {limit}; expected at least 1.")
        opener = stage_queue_opener(gamma.config, gamma.data_dir)

        def run() -> dict[str, Any]:
            results = {}
            for dest_id in chosen:
                spool = opener(spool_name(dest_id))
                try:
                    results[dest_id] = reconcile_spool(
                        spool, gamma.state_store, dest_id, limit=limit
                    )
                finally:
                    spool.close()
            keys = ("scanned", "acked_delivered", "acked_dead_lettered", "pending")
            totals = {k: sum(int(r[k]) for r in results.values()) for k in keys}
            gamma.log.info("Pending acknowledgements reconciled.", **totals)
            return {"destinations": results, "totals": totals}

        return json_response(await run_in_threadpool(run))

    async def render_stats(request: Request) -> Response:
        """Time to decode and prepare each batch per destination."""
        return json_response(
            {"destinations": {d: s.render.summary() for d, s in sorted(gamma.stats.items())}}
        )

    return [
        Route("/admin/dlq/stats", dlq_stats, methods=["GET"]),
        Route("/admin/dlq/entries", dlq_entries, methods=["GET"]),
        Route("/admin/dlq/entries/{entry_id}", dlq_entry, methods=["GET"]),
        Route("/admin/dlq/analysis", dlq_analysis, methods=["GET"]),
        Route("/admin/dlq/replay", dlq_replay, methods=["POST"]),
        Route("/admin/dlq/export", dlq_export, methods=["GET"]),
        Route("/admin/dlq/purge", dlq_purge, methods=["POST"]),
        Route("/admin/dlq/cleanup", dlq_cleanup, methods=["POST"]),
        Route("/admin/destinations", destinations, methods=["GET"]),
        Route("/admin/destinations/latency-breakdown", latency_breakdown, methods=["GET"]),
        Route("/admin/destinations/{dest_id}/status", destination_status, methods=["GET"]),
        Route("/admin/destinations/{dest_id}/test", destination_test, methods=["GET", "POST"]),
        Route(
            "/admin/destinations/{dest_id}/test-delivery",
            destination_test_delivery,
            methods=["POST"],
        ),
        Route("/admin/destinations/{dest_id}/errors", destination_errors, methods=["GET"]),
        Route("/admin/circuit-breakers/status", breakers_status, methods=["GET"]),
        Route("/admin/circuit-breakers/{dest_id}/reset", breaker_reset, methods=["POST"]),
        Route("/admin/delivery/parallelism", parallelism, methods=["GET"]),
        Route("/admin/ack/wait-stats", ack_wait_stats, methods=["GET"]),
        Route("/admin/ack/reconcile", ack_reconcile, methods=["POST"]),
        Route("/admin/render/stats", render_stats, methods=["GET"]),
    ]
