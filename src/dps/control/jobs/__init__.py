"""The job catalog: the manual's Batch Processing Schedules, with what each job does here.

Names, schedules and expected durations are the manual's (the upper end of its range); they are
the defaults that ``pipeline.yaml``'s ``jobs.overrides`` may change. Schedules are cron
expressions in UTC. A job with no ``run`` is listed as ``inactive`` with the reason: either it
has no meaning in this system, or the module capability it needs is not built yet.
"""

from __future__ import annotations

from typing import Final

from dps.control.jobs import alpha as alpha_jobs
from dps.control.jobs import backup as backup_jobs
from dps.control.jobs import certs as cert_jobs
from dps.control.jobs import modules as module_jobs
from dps.control.jobs import system as system_jobs
from dps.control.jobs.base import JobContext, JobResult, JobSpec

_NOT_BUILT = "needs {what}, which is not built yet"
_FILES = (
    "no meaning here: {what} are files loaded at start and on /admin/config/reload, so there is "
    "no separate cache to synchronise (midweek_config_audit detects a module running stale "
    "configuration)"
)

CATALOG: Final[tuple[JobSpec, ...]] = (
    # -- hourly: alpha
    JobSpec(
        "alpha_source_sync",
        "0 * * * *",
        "Synchronize source adapter configurations",
        "alpha",
        5,
        inactive_reason=_FILES.format(what="source definitions (alpha/sources/*.yaml)"),
    ),
    JobSpec(
        "alpha_buffer_flush",
        "15 * * * *",
        "Force flush of any stale buffer contents",
        "alpha",
        3,
        alpha_jobs.alpha_buffer_flush,
    ),
    JobSpec(
        "alpha_metrics_aggregate",
        "30 * * * *",
        "Aggregate hourly metrics for reporting",
        "alpha",
        5,
        module_jobs.alpha_metrics_aggregate,
    ),
    JobSpec(
        "alpha_error_report",
        "45 * * * *",
        "Generate hourly error summary",
        "alpha",
        4,
        module_jobs.alpha_error_report,
    ),
    # -- hourly: beta
    JobSpec(
        "beta_cache_refresh",
        "5 * * * *",
        "Refresh enrichment cache entries nearing expiration",
        "beta",
        10,
        module_jobs.beta_cache_refresh,
    ),
    JobSpec(
        "beta_rule_validation",
        "20 * * * *",
        "Validate transformation rule configurations",
        "beta",
        3,
        module_jobs.beta_rule_validation,
    ),
    JobSpec(
        "beta_quality_report",
        "35 * * * *",
        "Generate hourly quality score summary",
        "beta",
        5,
        module_jobs.beta_quality_report,
    ),
    JobSpec(
        "beta_schema_sync",
        "50 * * * *",
        "Synchronize schema registry",
        "beta",
        4,
        module_jobs.beta_schema_sync,
    ),
    # -- hourly: gamma
    JobSpec(
        "gamma_dlq_report",
        "10 * * * *",
        "Generate dead letter queue status report",
        "gamma",
        3,
        module_jobs.gamma_dlq_report,
    ),
    JobSpec(
        "gamma_ack_reconcile",
        "25 * * * *",
        "Reconcile pending acknowledgments",
        "gamma",
        8,
        module_jobs.gamma_ack_reconcile,
    ),
    JobSpec(
        "gamma_dest_health",
        "40 * * * *",
        "Health check all delivery destinations",
        "gamma",
        5,
        module_jobs.gamma_dest_health,
    ),
    JobSpec(
        "gamma_routing_sync",
        "55 * * * *",
        "Synchronize routing rule cache",
        "gamma",
        3,
        inactive_reason=_FILES.format(what="routing rules (gamma/routing/rules/*.yaml)"),
    ),
    # -- daily: system
    JobSpec(
        "daily_audit_export",
        "0 1 * * *",
        "Export audit logs to long-term storage",
        "system",
        30,
        system_jobs.daily_audit_export,
    ),
    JobSpec(
        "daily_metrics_rollup",
        "0 2 * * *",
        "Roll up detailed metrics to daily summaries",
        "system",
        20,
        system_jobs.daily_metrics_rollup,
    ),
    JobSpec(
        "daily_lineage_index",
        "0 3 * * *",
        "Update data lineage search indexes",
        "system",
        40,
        inactive_reason="no meaning here: lineage is indexed by the state store's database on "
        "write (by record id); there is no separate search index to update",
    ),
    JobSpec(
        "daily_compliance_check",
        "0 4 * * *",
        "Run compliance verification checks",
        "system",
        25,
        system_jobs.daily_compliance_check,
    ),
    JobSpec(
        "daily_capacity_report",
        "0 5 * * *",
        "Generate capacity utilization report",
        "system",
        10,
        system_jobs.daily_capacity_report,
    ),
    JobSpec(
        "daily_backup_verify",
        "0 6 * * *",
        "Verify backup integrity",
        "system",
        60,
        backup_jobs.daily_backup_verify,
    ),
    # -- daily: modules
    JobSpec(
        "alpha_source_discovery",
        "30 0 * * *",
        "Discover new source endpoints",
        "alpha",
        30,
        inactive_reason="no meaning here: sources are declared in alpha/sources/*.yaml, never "
        "discovered",
    ),
    JobSpec(
        "alpha_credential_rotate",
        "30 1 * * *",
        "Check for credential rotation needs",
        "alpha",
        30,
        alpha_jobs.alpha_credential_rotate,
    ),
    JobSpec(
        "beta_enrichment_warmup",
        "30 2 * * *",
        "Pre-warm enrichment caches",
        "beta",
        30,
        module_jobs.beta_enrichment_warmup,
    ),
    JobSpec(
        "beta_rule_optimize",
        "30 3 * * *",
        "Optimize transformation rule execution",
        "beta",
        30,
        inactive_reason="no meaning here: rules are compiled once per load; there is no "
        "execution plan to optimise",
    ),
    JobSpec(
        "gamma_dlq_cleanup",
        "30 4 * * *",
        "Archive expired DLQ entries",
        "gamma",
        30,
        module_jobs.gamma_dlq_cleanup,
    ),
    JobSpec(
        "gamma_route_optimize",
        "30 5 * * *",
        "Optimize delivery routing tables",
        "gamma",
        30,
        inactive_reason="no meaning here: routing rules are evaluated in priority order from "
        "the configuration; there are no routing tables to optimise",
    ),
    # -- weekly
    JobSpec(
        "weekly_full_backup",
        "0 2 * * 0",
        "Full system backup",
        "system",
        240,
        backup_jobs.weekly_full_backup,
    ),
    JobSpec(
        "weekly_index_rebuild",
        "0 3 * * 0",
        "Rebuild database indexes",
        "system",
        120,
        system_jobs.weekly_index_rebuild,
    ),
    JobSpec(
        "weekly_log_archive",
        "0 4 * * 0",
        "Archive logs older than 30 days",
        "system",
        60,
        system_jobs.weekly_log_archive,
    ),
    JobSpec(
        "weekly_cert_check",
        "0 5 * * 0",
        "Check certificate expiration dates",
        "system",
        10,
        cert_jobs.weekly_cert_check,
    ),
    JobSpec(
        "midweek_perf_baseline",
        "0 3 * * 3",
        "Generate performance baseline",
        "system",
        30,
        system_jobs.midweek_perf_baseline,
    ),
    JobSpec(
        "midweek_config_audit",
        "30 3 * * 3",
        "Audit configuration drift",
        "system",
        20,
        system_jobs.midweek_config_audit,
    ),
    # -- monthly
    JobSpec(
        "monthly_capacity_forecast",
        "0 1 1 * *",
        "Generate capacity forecast report",
        "system",
        45,
        system_jobs.monthly_capacity_forecast,
    ),
    JobSpec(
        "monthly_compliance_audit",
        "0 2 1 * *",
        "Comprehensive compliance audit",
        "system",
        120,
        system_jobs.monthly_compliance_audit,
    ),
    JobSpec(
        "monthly_dr_validation",
        "0 3 1 * *",
        "Validate disaster recovery procedures",
        "system",
        180,
        backup_jobs.monthly_dr_validation,
    ),
    JobSpec(
        "monthly_security_scan",
        "0 1 15 * *",
        "Full security vulnerability scan",
        "system",
        120,
        inactive_reason="no meaning here: vulnerability scanning is the platform's, outside "
        "the pipeline",
    ),
    JobSpec(
        "monthly_perf_analysis",
        "0 2 15 * *",
        "Monthly performance trend analysis",
        "system",
        45,
        system_jobs.monthly_perf_analysis,
    ),
)

JOBS: Final = {job.name: job for job in CATALOG}

__all__ = ["CATALOG", "JOBS", "JobContext", "JobResult", "JobSpec"]
