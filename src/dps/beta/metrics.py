"""Module Beta's metrics (transform): names, types and buckets as in the manual.

``beta_rule_applications_total`` carries the rule's id so that ``curl .../metrics | grep TRX_042``
(runbook B.1) shows one rule's activity. Prometheus labels are fixed per metric, so a rule's
free-form tags are not labels; ``rule_type``, ``target_field`` and ``result`` are.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "BETA_CACHE_SIZE",
    "BETA_ENRICHMENT_CACHE_HIT_RATE",
    "BETA_ENRICHMENT_DURATION_SECONDS",
    "BETA_ENRICHMENT_LOOKUPS_TOTAL",
    "BETA_QUALITY_SCORE",
    "BETA_QUALITY_SCORE_DISTRIBUTION",
    "BETA_QUEUE_DEPTH",
    "BETA_QUEUE_WAIT_DURATION_SECONDS",
    "BETA_RECORDS_TRANSFORMED_TOTAL",
    "BETA_RULE_APPLICATIONS_TOTAL",
    "BETA_TRANSFORM_DURATION_SECONDS",
    "BETA_TRANSFORM_FAILURES_TOTAL",
    "ENRICHMENT_BUCKETS",
    "QUALITY_BUCKETS",
    "QUEUE_WAIT_BUCKETS",
    "TRANSFORM_BUCKETS",
]

#: The manual's "Histogram Metrics" table.
TRANSFORM_BUCKETS: Final = (0.01, 0.05, 0.1, 0.5, 1.0)
ENRICHMENT_BUCKETS: Final = (0.01, 0.05, 0.1, 0.5, 1.0)
#: Not in the manual's table: time a record waited in the transform queue, up to minutes of backlog.
QUEUE_WAIT_BUCKETS: Final = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0)
#: Quality scores are 0..1; 0.6 and 0.8 are the manual's critical and warning edges.
QUALITY_BUCKETS: Final = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

BETA_RECORDS_TRANSFORMED_TOTAL: Final = Counter(
    "beta_records_transformed_total",
    "Records transformed and handed to the delivery queue.",
)
BETA_TRANSFORM_FAILURES_TOTAL: Final = Counter(
    "beta_transform_failures_total",
    "Records that failed transformation and went to the beta DLQ.",
)
BETA_ENRICHMENT_LOOKUPS_TOTAL: Final = Counter(
    "beta_enrichment_lookups_total",
    "Enrichment lookups (cache hits and misses).",
)
BETA_RULE_APPLICATIONS_TOTAL: Final = Counter(
    "beta_rule_applications_total",
    "Transform rule evaluations, by rule and result (applied, skipped, failed).",
    ["rule_id", "rule_type", "target_field", "result"],
)

BETA_QUEUE_DEPTH: Final = Gauge(
    "beta_queue_depth",
    "Records waiting in the transform queue.",
)
BETA_CACHE_SIZE: Final = Gauge(
    "beta_cache_size",
    "Entries in the enrichment cache.",
)
BETA_ENRICHMENT_CACHE_HIT_RATE: Final = Gauge(
    "beta_enrichment_cache_hit_rate",
    "Enrichment cache hit ratio, 0 to 1, over a recent window (alert below 0.7).",
)
BETA_QUALITY_SCORE: Final = Gauge(
    "beta_quality_score",
    "Rolling average quality score, 0 to 1 (alert beta_quality_score_low below 0.6).",
)

BETA_QUALITY_SCORE_DISTRIBUTION: Final = Histogram(
    "beta_quality_score_distribution",
    "Quality scores of transformed records.",
    buckets=QUALITY_BUCKETS,
)
BETA_TRANSFORM_DURATION_SECONDS: Final = Histogram(
    "beta_transform_duration_seconds",
    "Seconds to transform one record.",
    buckets=TRANSFORM_BUCKETS,
)
BETA_ENRICHMENT_DURATION_SECONDS: Final = Histogram(
    "beta_enrichment_duration_seconds",
    "Seconds one enrichment lookup took.",
    buckets=ENRICHMENT_BUCKETS,
)
BETA_QUEUE_WAIT_DURATION_SECONDS: Final = Histogram(
    "beta_queue_wait_duration_seconds",
    "Seconds from a record's ingestion to Beta's lease: its wait in the transform queue.",
    buckets=QUEUE_WAIT_BUCKETS,
)
