"""Module Alpha's metrics (ingest): names, types and buckets as in the manual.

Counters that grow per record carry ``source_id`` so that ``curl .../metrics | grep <source>``
(runbook A.1) shows a new source's traffic. Durations are observed once per batch, not per record,
to keep the hot path cheap.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "ALPHA_ACTIVE_CONNECTIONS",
    "ALPHA_BUFFER_UTILIZATION",
    "ALPHA_DLQ_TOTAL",
    "ALPHA_DUPLICATES_TOTAL",
    "ALPHA_PARSE_DURATION_SECONDS",
    "ALPHA_PARSE_ERRORS_TOTAL",
    "ALPHA_RECORDS_INGESTED_TOTAL",
    "ALPHA_RECORDS_VALIDATED_TOTAL",
    "ALPHA_SOURCE_CONNECTION_STATUS",
    "ALPHA_SOURCE_FETCH_DURATION_SECONDS",
    "ALPHA_VALIDATION_DURATION_SECONDS",
    "ALPHA_VALIDATION_FAILURES_TOTAL",
    "FETCH_BUCKETS",
    "PARSE_BUCKETS",
    "VALIDATION_BUCKETS",
]

#: The manual's "Histogram Metrics" table.
PARSE_BUCKETS: Final = (0.001, 0.005, 0.01, 0.05, 0.1)
VALIDATION_BUCKETS: Final = (0.001, 0.005, 0.01, 0.05, 0.1)
#: Not in the manual's table: a network round trip, from a local file read to a slow API page.
FETCH_BUCKETS: Final = (0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)

ALPHA_RECORDS_INGESTED_TOTAL: Final = Counter(
    "alpha_records_ingested_total",
    "Records read from a source (before validation and dedupe).",
    ["source_id"],
)
ALPHA_RECORDS_VALIDATED_TOTAL: Final = Counter(
    "alpha_records_validated_total",
    "Records that passed validation.",
    ["source_id"],
)
ALPHA_VALIDATION_FAILURES_TOTAL: Final = Counter(
    "alpha_validation_failures_total",
    "Records that failed validation.",
    ["source_id"],
)
ALPHA_PARSE_ERRORS_TOTAL: Final = Counter(
    "alpha_parse_errors_total",
    "Raw inputs the parser could not read (alert alpha_high_parse_error_rate).",
    ["source_id"],
)
ALPHA_DUPLICATES_TOTAL: Final = Counter(
    "alpha_duplicates_total",
    "Records dropped because their record_id was already ingested.",
    ["source_id"],
)
ALPHA_DLQ_TOTAL: Final = Counter(
    "alpha_dlq_total",
    "Records sent to the alpha DLQ (parse errors and validation failures).",
    ["source_id"],
)

ALPHA_BUFFER_UTILIZATION: Final = Gauge(
    "alpha_buffer_utilization",
    "Fill ratio of the ingest buffer, 0 to 1 (alert alpha_buffer_critical fires above 0.9).",
)
ALPHA_ACTIVE_CONNECTIONS: Final = Gauge(
    "alpha_active_connections",
    "Source connections currently open.",
)
ALPHA_SOURCE_CONNECTION_STATUS: Final = Gauge(
    "alpha_source_connection_status",
    "1 when the source is connected, 0 when its connection failed.",
    ["source"],
)

ALPHA_PARSE_DURATION_SECONDS: Final = Histogram(
    "alpha_parse_duration_seconds",
    "Seconds to parse one record (a batch's parse time over its records).",
    buckets=PARSE_BUCKETS,
)
ALPHA_VALIDATION_DURATION_SECONDS: Final = Histogram(
    "alpha_validation_duration_seconds",
    "Seconds to validate one record.",
    buckets=VALIDATION_BUCKETS,
)
ALPHA_SOURCE_FETCH_DURATION_SECONDS: Final = Histogram(
    "alpha_source_fetch_duration_seconds",
    "Seconds one fetch from a source took (a poll, a page, a read).",
    ["source_id"],
    buckets=FETCH_BUCKETS,
)
