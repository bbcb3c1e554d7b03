"""System-wide jobs: audit export and archive, metric roll-ups, reports, drift, maintenance."""

from __future__ import annotations

import gzip
import json
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from dps.control.configs import detect_drift
from dps.control.jobs.base import JobContext, JobResult
from dps.control.modules import ModuleUnreachable

#: Audit entries older than this are moved to audit_log_archive (the manual's log maintenance).
AUDIT_RETENTION_DAYS = 90
#: Log files older than this are compressed (weekly_log_archive).
LOG_ARCHIVE_DAYS = 30
DAY = 86400.0


def daily_audit_export(ctx: JobContext) -> JobResult:
    """Export the last 24 hours of the audit log to ``<data_dir>/exports/audit/``."""
    now = time.time()
    entries = ctx.store.export_audit(since=now - DAY, until=now)
    folder = ctx.data_dir / "exports" / "audit"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"audit-{datetime.fromtimestamp(now, UTC):%Y%m%d}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(entries, indent=2, default=str) + "\n")
    tmp.replace(path)
    ctx.log("Audit log exported.", path=str(path), entries=len(entries))
    return JobResult(
        len(entries), f"{len(entries)} audit entries exported to {path}.", outputs=[str(path)]
    )


def _previous_report(ctx: JobContext) -> dict[str, Any] | None:
    folder = ctx.data_dir / "reports" / ctx.job_name
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not files:
        return None
    data: dict[str, Any] = json.loads(files[-1].read_text())
    return data


def daily_metrics_rollup(ctx: JobContext) -> JobResult:
    """Today's totals from the durable accounting, and the change since the previous roll-up."""
    acc = ctx.store.accounting()
    previous = _previous_report(ctx)
    totals = {
        "ingested": int(acc["ingested"]),
        "duplicates": int(acc["duplicates"]),
        "dlq": int(sum(acc.get("dlq", {}).values())),
        "delivered_records": int(acc.get("delivered_records", 0)),
    }
    since = (previous or {}).get("totals", {})
    delta = {k: v - int(since.get(k, 0)) for k, v in totals.items()}
    data = {
        "totals": totals,
        "since_previous": delta,
        "previous_generated_at": (previous or {}).get("generated_at"),
        "delivered_by_destination": acc.get("delivered", {}),
        "ingested_by_source": acc.get("ingested_by_source", {}),
    }
    outputs = ctx.write_report("Daily metrics roll-up", data)
    return JobResult(
        delta["ingested"],
        f"{delta['ingested']} records ingested since the previous roll-up.",
        outputs=outputs,
    )


def daily_compliance_check(ctx: JobContext) -> JobResult:
    """Verify the audit log's hash chain; fail when it was edited or entries were deleted."""
    result = ctx.store.verify_audit()
    for problem in result["problems"]:
        ctx.log("Audit chain problem.", problem=problem)
    outputs = ctx.write_report("Compliance check", {"audit_chain": result})
    message = (
        f"Audit chain intact ({result['chained']} entries)."
        if result["ok"]
        else f"Audit chain broken: {len(result['problems'])} problems."
    )
    return JobResult(int(result["entries"]), message, ok=bool(result["ok"]), outputs=outputs)


def _file_sizes(data_dir: Path) -> dict[str, int]:
    return {
        p.relative_to(data_dir).as_posix(): p.stat().st_size
        for p in sorted(data_dir.rglob("*"))
        if p.is_file() and (p.suffix in {".db", ".sqlite"} or p.name.endswith(("-wal", "-shm")))
    }


def daily_capacity_report(ctx: JobContext) -> JobResult:
    """Queue depths, disk use of the data directory and the size of each database file."""
    usage = shutil.disk_usage(ctx.data_dir)
    depths: dict[str, Any] = {}
    for module in ("beta", "gamma"):
        try:
            depths[module] = ctx.modules.get_json(module, "/admin/queue/depth")
        except (ModuleUnreachable, RuntimeError) as exc:
            depths[module] = {"error": str(exc)}
    data: dict[str, Any] = {
        "disk": {
            "total_bytes": usage.total,
            "used_bytes": usage.used,
            "free_bytes": usage.free,
            "used_percent": round(100 * usage.used / usage.total, 1) if usage.total else None,
        },
        "files": _file_sizes(ctx.data_dir),
        "queue_depths": depths,
    }
    outputs = ctx.write_report("Capacity utilisation", data)
    return JobResult(
        len(data["files"]), f"Disk {data['disk']['used_percent']}% used.", outputs=outputs
    )


def weekly_index_rebuild(ctx: JobContext) -> JobResult:
    """``REINDEX`` and ``ANALYZE`` the state store's tables (as the manual's maintenance)."""
    engine: sa.Engine | None = getattr(ctx.store, "engine", None)
    if engine is None:
        return JobResult(0, "This state store has no SQL engine to maintain.", ok=False)
    started = time.monotonic()
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            for index in (
                "idx_validation_cache_key",
                "idx_validation_cache_timestamp",
                "idx_delivery_record_id",
                "idx_delivery_destination",
            ):
                conn.execute(sa.text(f"REINDEX INDEX {index}"))
                ctx.log("Index rebuilt.", index=index)
            conn.execute(sa.text("ANALYZE"))
    else:
        with engine.begin() as conn:
            conn.execute(sa.text("REINDEX"))
            conn.execute(sa.text("ANALYZE"))
        ctx.log("SQLite database reindexed and analysed.")
    return JobResult(0, f"Indexes rebuilt in {time.monotonic() - started:.1f} s.")


def weekly_log_archive(ctx: JobContext) -> JobResult:
    """Move audit entries older than 90 days to the archive; gzip log files older than 30 days."""
    now = time.time()
    archived = ctx.store.archive_audit(now - AUDIT_RETENTION_DAYS * DAY)
    ctx.log("Audit entries archived.", entries=archived, older_than_days=AUDIT_RETENTION_DAYS)
    compressed = 0
    logs = ctx.data_dir / "logs"
    if logs.is_dir():
        for path in sorted(logs.glob("*.log*")):
            if path.suffix == ".gz" or now - path.stat().st_mtime < LOG_ARCHIVE_DAYS * DAY:
                continue
            with path.open("rb") as src, gzip.open(f"{path}.gz", "wb") as dst:
                shutil.copyfileobj(src, dst)
            path.unlink()
            compressed += 1
            ctx.log("Log file compressed.", path=str(path))
    return JobResult(
        archived + compressed,
        f"{archived} audit entries archived, {compressed} log files compressed.",
    )


def midweek_perf_baseline(ctx: JobContext) -> JobResult:
    """Throughput and end-to-end counts now, as the baseline later weeks compare with."""
    acc = ctx.store.accounting()
    previous = _previous_report(ctx)
    data: dict[str, Any] = {"accounting": acc}
    if previous:
        span = time.time() - datetime.fromisoformat(previous["generated_at"]).timestamp()
        moved = acc["ingested"] - previous["accounting"]["ingested"]
        data["ingested_per_second_since_previous"] = round(moved / span, 3) if span > 0 else None
    outputs = ctx.write_report("Performance baseline", data)
    return JobResult(int(acc["ingested"]), "Performance baseline written.", outputs=outputs)


def midweek_config_audit(ctx: JobContext) -> JobResult:
    """Drift between the files on disk and what each module runs (runbook J.2); fails on drift."""
    report = detect_drift(ctx.config_dir, ctx.modules)
    for module, state in report.get("modules", {}).items():
        for difference in state.get("differences", []):
            ctx.log("Drift.", module=module, difference=difference)
    outputs = ctx.write_report("Configuration drift audit", report)
    drifted = sorted(m for m, s in report.get("modules", {}).items() if not s["in_sync"])
    if report.get("error"):
        return JobResult(0, report["error"], ok=False, outputs=outputs)
    message = "No configuration drift." if not drifted else f"Drift in: {', '.join(drifted)}."
    return JobResult(len(drifted), message, ok=not drifted, outputs=outputs)


def _rollups(ctx: JobContext) -> list[dict[str, Any]]:
    folder = ctx.data_dir / "reports" / "daily_metrics_rollup"
    return (
        [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
        if folder.is_dir()
        else []
    )


def monthly_capacity_forecast(ctx: JobContext) -> JobResult:
    """Average daily volume from the daily roll-ups, projected over the next 30 days."""
    rollups = _rollups(ctx)
    daily = [r["since_previous"]["ingested"] for r in rollups]
    average = sum(daily) / len(daily) if daily else 0.0
    data = {
        "days_observed": len(daily),
        "average_ingested_per_day": round(average, 1),
        "forecast_next_30_days": round(average * 30),
        "daily_ingested": daily,
    }
    outputs = ctx.write_report("Capacity forecast", data)
    return JobResult(len(daily), f"Forecast from {len(daily)} daily roll-ups.", outputs=outputs)


def monthly_perf_analysis(ctx: JobContext) -> JobResult:
    """Volume trend from the daily roll-ups: first half against second half of the period."""
    daily = [r["since_previous"]["ingested"] for r in _rollups(ctx)]
    half = len(daily) // 2
    first = sum(daily[:half]) / half if half else 0.0
    second = sum(daily[half:]) / (len(daily) - half) if len(daily) > half else 0.0
    change = round(100 * (second - first) / first, 1) if first else None
    data = {
        "days_observed": len(daily),
        "first_half_avg": first,
        "second_half_avg": second,
        "change_percent": change,
    }
    outputs = ctx.write_report("Performance trend", data)
    return JobResult(len(daily), "Performance trend written.", outputs=outputs)


def monthly_compliance_audit(ctx: JobContext) -> JobResult:
    """Audit chain, configuration versions and failed job runs of the last 31 days."""
    chain = ctx.store.verify_audit()
    since = time.time() - 31 * DAY
    failed_runs = [
        r
        for r in ctx.store.list_job_runs(limit=1000)
        if r["status"] == "FAILED" and r["started_at"] >= since
    ]
    versions = [v for v in ctx.store.list_config_versions() if v["created_at"] >= since]
    data = {"audit_chain": chain, "config_versions": versions, "failed_job_runs": failed_runs}
    outputs = ctx.write_report("Monthly compliance audit", data)
    return JobResult(
        int(chain["entries"]),
        "Audit chain intact." if chain["ok"] else "Audit chain broken.",
        ok=bool(chain["ok"]),
        outputs=outputs,
    )
