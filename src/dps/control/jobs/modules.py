"""Jobs that act on a processing module through its admin API (gamma_dest_health, ...)."""

from __future__ import annotations

import time
from typing import Any

from dps.config import load_config
from dps.control.jobs.base import JobContext, JobResult
from dps.control.modules import ModuleUnreachable
from dps.core.errors import ConfigError


def gamma_dest_health(ctx: JobContext) -> JobResult:
    """Test every enabled destination (``POST /admin/destinations/<id>/test`` on gamma)."""
    destinations = ctx.modules.get_json("gamma", "/admin/destinations")["destinations"]
    results: dict[str, Any] = {}
    for dest in destinations:
        dest_id = dest["destination_id"]
        if not dest.get("enabled", True):
            ctx.log("Destination skipped: disabled.", destination=dest_id)
            results[dest_id] = {"ok": None, "status": "disabled"}
            continue
        response = ctx.modules.request("gamma", "POST", f"/admin/destinations/{dest_id}/test")
        body = response.json()
        ok = response.status_code < 400 and bool(body.get("ok", True))
        results[dest_id] = {"ok": ok, **body}
        ctx.log("Destination tested.", destination=dest_id, ok=ok, error=body.get("error"))
    failed = sorted(d for d, r in results.items() if r["ok"] is False)
    tested = sum(1 for r in results.values() if r["ok"] is not None)
    outputs = ctx.write_report("Destination health", {"destinations": results, "failed": failed})
    message = f"{tested - len(failed)} of {tested} destinations healthy"
    if failed:
        message += f"; failing: {', '.join(failed)}"
    return JobResult(tested, message + ".", ok=not failed, outputs=outputs)


def gamma_dlq_cleanup(ctx: JobContext) -> JobResult:
    """Archive DLQ entries older than ``DLQ_RETENTION_DAYS`` (``POST /admin/dlq/cleanup``)."""
    result = ctx.modules.post_json("gamma", "/admin/dlq/cleanup")
    archived = int(result.get("archived", 0)) if isinstance(result, dict) else 0
    ctx.log("DLQ cleanup done.", result=result)
    return JobResult(archived, f"{archived} expired DLQ entries archived.")


#: Seconds gamma_ack_reconcile waits for gamma's answer.
RECONCILE_TIMEOUT: float = 600.0


def gamma_ack_reconcile(ctx: JobContext) -> JobResult:
    """Ack spool messages already delivered or dead-lettered (``POST /admin/ack/reconcile``)."""
    # A large spool takes a while to scan: longer than the client's usual timeout.
    response = ctx.modules.request(
        "gamma", "POST", "/admin/ack/reconcile", json={}, timeout=RECONCILE_TIMEOUT
    )
    result = response.json()
    if response.status_code >= 400:
        raise RuntimeError(
            f"gamma /admin/ack/reconcile answered {response.status_code}: "
            f"{result.get('error') if isinstance(result, dict) else result}"
        )
    for counts in result.get("destinations", {}).values():
        ctx.log("Spool reconciled.", **counts)
    totals = result.get("totals", {})
    outputs = ctx.write_report("Pending acknowledgements", result)
    acked = int(totals.get("acked_delivered", 0)) + int(totals.get("acked_dead_lettered", 0))
    return JobResult(
        acked,
        f"{acked} pending acknowledgements settled ({totals.get('acked_delivered', 0)} "
        f"delivered, {totals.get('acked_dead_lettered', 0)} dead-lettered); "
        f"{totals.get('pending', 0)} records still to deliver.",
        outputs=outputs,
    )


def gamma_dlq_report(ctx: JobContext) -> JobResult:
    """The DLQ's size, reasons and oldest entry (``/admin/dlq/stats`` on gamma) as a report."""
    stats = ctx.modules.get_json("gamma", "/admin/dlq/stats")
    counts = ctx.store.dlq_counts()
    outputs = ctx.write_report(
        "Dead letter queue status", {"open_by_module": counts, "gamma": stats}
    )
    total = sum(counts.values())
    return JobResult(total, f"{total} open DLQ entries.", outputs=outputs)


def beta_quality_report(ctx: JobContext) -> JobResult:
    """Beta's quality score summary (``/admin/quality/stats``) as a report."""
    stats = ctx.modules.get_json("beta", "/admin/quality/stats")
    outputs = ctx.write_report("Quality score summary", {"quality": stats})
    records = int(stats.get("records_scored", stats.get("count", 0)) or 0)
    return JobResult(records, "Quality summary written.", outputs=outputs)


def alpha_error_report(ctx: JobContext) -> JobResult:
    """Alpha's DLQ reasons and each source's state and last error, as a report."""
    reasons = ctx.store.dlq_reasons("alpha")
    sources = ctx.modules.get_json("alpha", "/admin/sources")
    outputs = ctx.write_report(
        "Ingestion error summary", {"dlq_reasons": reasons, "sources": sources}
    )
    total = sum(reasons.values())
    return JobResult(total, f"{total} open alpha DLQ entries.", outputs=outputs)


def alpha_metrics_aggregate(ctx: JobContext) -> JobResult:
    """Records ingested per source (durable counts) and the sources' status, as a report."""
    acc = ctx.store.accounting()
    sources = ctx.modules.get_json("alpha", "/admin/sources")
    data = {"ingested_by_source": acc.get("ingested_by_source", {}), "sources": sources}
    outputs = ctx.write_report("Ingestion metrics", data)
    return JobResult(int(acc.get("ingested", 0)), "Ingestion metrics aggregated.", outputs=outputs)


def beta_rule_validation(ctx: JobContext) -> JobResult:
    """Validate the configuration on disk (rules included) as a reload would."""
    try:
        config = load_config(ctx.config_dir)
    except ConfigError as exc:
        for issue in exc.issues:
            ctx.log("Configuration problem.", issue=str(issue))
        return JobResult(len(exc.issues), f"{len(exc.issues)} configuration problems.", ok=False)
    rules = len(config.beta.rules)
    ctx.log("Rules valid.", rules=rules)
    return JobResult(rules, f"{rules} rules valid.")


# -- beta's enrichment cache and schema registry ------------------------------------------------

#: The longest a cache job waits for beta's refreshes to finish before it fails.
CACHE_WAIT_SECONDS: float = 600.0
#: How often a cache job reads ``/admin/cache/refresh/status`` while it waits.
CACHE_POLL_SECONDS: float = 0.5


def call_module(ctx: JobContext, module: str, method: str, path: str) -> Any:
    """One call to a module's admin API; an unreachable module fails the run with what to
    check."""
    try:
        if method == "POST":
            return ctx.modules.post_json(module, path)
        return ctx.modules.get_json(module, path)
    except ModuleUnreachable as exc:
        raise RuntimeError(
            f"{module.capitalize()} is unreachable, {ctx.job_name} did nothing: {exc}. Check "
            f"that {module} is running (dps status) and its admin URL (pipeline.yaml "
            "admin.ports, DPS_ADMIN_URLS)."
        ) from exc


def _beta(ctx: JobContext, method: str, path: str) -> Any:
    return call_module(ctx, "beta", method, path)


def _refresh_and_wait(ctx: JobContext, sources: list[str]) -> JobResult:
    """Start a refresh of ``sources`` (``all``: every one) on beta, wait (at most
    :data:`CACHE_WAIT_SECONDS`) for each to finish, log the progress, report the entries."""
    started: dict[str, float] = {}
    for target in sources:
        answer = _beta(ctx, "POST", f"/admin/cache/refresh/{target}")
        for job in answer.get("refreshes", []):
            started[str(job["source"])] = float(job["started_at"])
            ctx.log(
                "Refresh started.",
                source=job["source"],
                kind=job["kind"],
                strategy=job["strategy"],
            )
    if not started:
        ctx.log("Beta has no enrichment source: nothing to refresh.")
        return JobResult(0, "No enrichment source configured; nothing to refresh.")
    deadline = time.monotonic() + CACHE_WAIT_SECONDS
    last_logged = 0.0
    while True:
        status = _beta(ctx, "GET", "/admin/cache/refresh/status")
        mine = [
            r
            for r in status.get("refreshes", [])
            if r["source"] in started and float(r["started_at"]) >= started[r["source"]]
        ]
        running = [r for r in mine if r["state"] == "running"]
        loaded = sum(int(r["entries_loaded"]) for r in mine)
        totals = [r["entries_total"] for r in mine]
        percent: float | None = None
        if mine and all(t is not None for t in totals):
            total = sum(int(t) for t in totals)
            percent = 100.0 if not running else round(100 * loaded / max(total, 1), 1)
        now = time.monotonic()
        if not running:
            break
        if now - last_logged >= 5:
            ctx.log("Refresh in progress.", entries_loaded=loaded, completion_percent=percent)
            last_logged = now
        if now >= deadline:
            ctx.log("Refresh still running.", sources=sorted(r["source"] for r in running))
            return JobResult(
                loaded,
                f"Refresh not finished after {CACHE_WAIT_SECONDS:g} s "
                f"({percent if percent is not None else '?'}% done); it goes on in beta.",
                ok=False,
            )
        time.sleep(CACHE_POLL_SECONDS)
    for r in mine:
        ctx.log(
            "Refresh finished.",
            source=r["source"],
            state=r["state"],
            entries_loaded=r["entries_loaded"],
            entries_total=r["entries_total"],
            completion_percent=r["completion_percent"],
            elapsed_seconds=r["elapsed_seconds"],
            error=r["error"],
        )
    stats = _beta(ctx, "GET", "/admin/cache/stats")
    entries = {name: s.get("entries", 0) for name, s in stats.get("sources", {}).items()}
    ctx.log(
        "Cache after refresh.",
        entries=stats.get("entries"),
        per_source=entries,
        completion_percent=percent,
    )
    failed = sorted(f"{r['source']} ({r['error']})" for r in mine if r["state"] != "completed")
    message = (
        f"{len(mine)} enrichment sources refreshed, {loaded} entries loaded; "
        f"cache holds {stats.get('entries')} entries ({percent}% complete)."
    )
    if failed:
        message += f" Failed: {', '.join(failed)}."
    return JobResult(loaded, message, ok=not failed)


def beta_cache_refresh(ctx: JobContext) -> JobResult:
    """Reload every enrichment source (``POST /admin/cache/refresh/all`` on beta) and wait."""
    return _refresh_and_wait(ctx, ["all"])


def beta_enrichment_warmup(ctx: JobContext) -> JobResult:
    """Load the sources with ``cache.warmup: true`` (``/admin/cache/status``) again, and wait."""
    status = _beta(ctx, "GET", "/admin/cache/status")
    names = sorted(n for n, s in status.get("sources", {}).items() if s.get("warmup"))
    if not names:
        ctx.log("No enrichment source has cache.warmup: true; nothing to warm.")
        return JobResult(0, "No enrichment source with cache.warmup: true; nothing to warm.")
    return _refresh_and_wait(ctx, names)


def beta_schema_sync(ctx: JobContext) -> JobResult:
    """Read beta/schemas/ again (``POST /admin/schemas/sync``); a wrong file fails the run and
    beta keeps the registry it runs."""
    result = _beta(ctx, "POST", "/admin/schemas/sync")
    schemas = result.get("schemas", {}) if isinstance(result, dict) else {}
    for name, info in sorted(schemas.items()):
        ctx.log("Schema loaded.", schema=name, versions=info.get("versions"))
    ctx.log("Schema registry synchronized.", folder=result.get("folder"), schemas=len(schemas))
    return JobResult(len(schemas), f"Schema registry synchronized: {len(schemas)} schemas.")
