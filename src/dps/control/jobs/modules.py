"""Jobs that act on a processing module through its admin API (gamma_dest_health, ...)."""

from __future__ import annotations

from typing import Any

from dps.config import load_config
from dps.control.jobs.base import JobContext, JobResult
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
