"""HEALTHY / DEGRADED / UNHEALTHY from the manual's "Operational Metrics and Thresholds" tables.

A module measures a value, grades it against the table's row and combines its checks, the worst
winning::

    report = combine({
        "buffer_utilization": evaluate("alpha.buffer_utilization", 0.72),   # DEGRADED
        "queue": Check.ok(),
    })

How the tables read: "Normal" is strict (``<60%``, ``>85%``), "Warning" is a closed range
(``60-80%``: 60 and 80 are both warning) and "Critical" is strict (``>80%``). So a bound given to
``grade`` is where its level *begins*: ``warning=(None, 0.60)`` is DEGRADED from 0.60 on,
``critical=(None, 0.80)`` is UNHEALTHY above 0.80. Two-sided rows (ingestion rate
``<500 or >7500``) give both bounds.

Percentages are ratios here (60% is ``0.60``), the unit of the gauges and of the alert rules
(``alpha_buffer_utilization > 0.9``, ``beta_enrichment_cache_hit_rate < 0.7``); latencies are
seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final


class Health(StrEnum):
    """The manual's three health states."""

    HEALTHY = "HEALTHY"
    DEGRADED = "DEGRADED"
    UNHEALTHY = "UNHEALTHY"


@dataclass(slots=True)
class HealthReport:
    """A module's health with the checks that decided it (``/admin/health``)."""

    status: Health
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status.value, "checks": self.checks}


__all__ = [
    "THRESHOLDS",
    "Bounds",
    "Check",
    "Threshold",
    "combine",
    "evaluate",
    "grade",
    "worst",
]

#: ``(low, high)``: a level begins at or beyond these; ``None`` means no bound on that side.
Bounds = tuple[float | None, float | None]

_RANK: Final = {Health.HEALTHY: 0, Health.DEGRADED: 1, Health.UNHEALTHY: 2}


def grade(value: float, *, warning: Bounds | None = None, critical: Bounds | None = None) -> Health:
    """UNHEALTHY strictly beyond ``critical``, else DEGRADED at or beyond ``warning``."""
    if critical is not None:
        low, high = critical
        if (low is not None and value < low) or (high is not None and value > high):
            return Health.UNHEALTHY
    if warning is not None:
        low, high = warning
        if (low is not None and value <= low) or (high is not None and value >= high):
            return Health.DEGRADED
    return Health.HEALTHY


def worst(*states: Health) -> Health:
    """The worst of ``states`` (HEALTHY when there are none)."""
    return max(states, key=_RANK.__getitem__, default=Health.HEALTHY)


@dataclass(frozen=True, slots=True)
class Threshold:
    """One row of the manual's threshold tables."""

    name: str
    description: str
    warning: Bounds | None
    critical: Bounds | None
    unit: str = ""

    def grade(self, value: float) -> Health:
        """The health of ``value`` by this row."""
        return grade(value, warning=self.warning, critical=self.critical)


@dataclass(frozen=True, slots=True)
class Check:
    """The outcome of one health check, as shown under ``checks`` in ``/admin/health``."""

    status: Health
    value: float | None = None
    message: str = ""
    threshold: Threshold | None = None

    @classmethod
    def ok(cls, message: str = "") -> Check:
        """A check that passed."""
        return cls(Health.HEALTHY, message=message)

    @classmethod
    def failed(cls, message: str, status: Health = Health.UNHEALTHY) -> Check:
        """A check that failed outright (a queue unreachable, a worker dead)."""
        return cls(status, message=message)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form: status, and value, thresholds and message when known."""
        out: dict[str, Any] = {"status": self.status.value}
        if self.value is not None:
            out["value"] = self.value
        if self.threshold is not None:
            out["warning"] = _bounds_dict(self.threshold.warning)
            out["critical"] = _bounds_dict(self.threshold.critical)
            if self.threshold.unit:
                out["unit"] = self.threshold.unit
        if self.message:
            out["message"] = self.message
        return out


def _bounds_dict(bounds: Bounds | None) -> dict[str, float] | None:
    if bounds is None:
        return None
    low, high = bounds
    return {side: bound for side, bound in (("below", low), ("above", high)) if bound is not None}


def _rows(*rows: Threshold) -> dict[str, Threshold]:
    return {row.name: row for row in rows}


#: The manual's threshold tables, keyed ``<module>.<metric>``. Rows that need a baseline
#: (overall throughput) are not here: the control service judges them from history.
THRESHOLDS: Final[Mapping[str, Threshold]] = _rows(
    # Module Alpha
    Threshold("alpha.ingestion_rate", "Ingestion rate", (500, 7500), (100, 10000), "records/s"),
    Threshold("alpha.parse_error_rate", "Parse error rate", (None, 0.001), (None, 0.005), "ratio"),
    Threshold(
        "alpha.validation_failure_rate",
        "Validation failure rate",
        (None, 0.01),
        (None, 0.03),
        "ratio",
    ),
    Threshold(
        "alpha.buffer_utilization", "Buffer utilization", (None, 0.60), (None, 0.80), "ratio"
    ),
    Threshold(
        "alpha.source_connection_success",
        "Source connection success",
        (0.99, None),
        (0.95, None),
        "ratio",
    ),
    Threshold("alpha.parse_latency", "Average parse latency", (None, 0.010), (None, 0.050), "s"),
    # Module Beta
    Threshold("beta.transform_rate", "Transform rate", (400, 6000), (100, 8000), "records/s"),
    Threshold(
        "beta.transform_error_rate", "Transform error rate", (None, 0.005), (None, 0.01), "ratio"
    ),
    Threshold(
        "beta.enrichment_cache_hit_rate",
        "Enrichment cache hit rate",
        (0.85, None),
        (0.70, None),
        "ratio",
    ),
    Threshold("beta.quality_score", "Average quality score", (0.8, None), (0.6, None), "score"),
    Threshold("beta.queue_depth", "Queue depth", (None, 3000), (None, 5000), "records"),
    Threshold("beta.transform_latency_p99", "Transform latency P99", (None, 0.1), (None, 0.5), "s"),
    # Module Gamma
    Threshold("gamma.delivery_rate", "Delivery rate", (400, 6000), (100, 8000), "records/s"),
    Threshold(
        "gamma.delivery_success_rate",
        "Delivery success rate",
        (0.995, None),
        (0.98, None),
        "ratio",
    ),
    Threshold("gamma.dlq_entry_rate", "DLQ entry rate", (None, 10), (None, 50), "entries/h"),
    Threshold(
        "gamma.ack_timeout_rate",
        "Acknowledgment timeout rate",
        (None, 0.001),
        (None, 0.005),
        "ratio",
    ),
    Threshold(
        "gamma.destination_availability",
        "Destination availability",
        (0.999, None),
        (0.99, None),
        "ratio",
    ),
    Threshold("gamma.delivery_latency_p99", "Delivery latency P99", (None, 0.2), (None, 1.0), "s"),
    # System-wide
    Threshold(
        "pipeline.end_to_end_latency_p99", "End-to-end latency P99", (None, 0.5), (None, 2.0), "s"
    ),
    Threshold(
        "pipeline.error_queue_total",
        "Error queue total size",
        (None, 1000),
        (None, 5000),
        "entries",
    ),
    Threshold(
        "pipeline.circuit_breakers_open", "Circuit breakers open", (None, 1), (None, 2), "breakers"
    ),
    Threshold("pipeline.data_loss_incidents", "Data loss incidents", None, (None, 0), "incidents"),
)


def evaluate(name: str, value: float | None) -> Check:
    """Grade ``value`` by the manual's row ``name`` (a key of ``THRESHOLDS``).

    ``None`` (nothing measured yet, e.g. a rate before the first window) is HEALTHY: a module that
    has just started is not degraded for lack of data. Raises ``KeyError`` for an unknown row.
    """
    threshold = THRESHOLDS[name]
    if value is None:
        return Check(Health.HEALTHY, None, "No data yet.", threshold)
    return Check(threshold.grade(value), value, "", threshold)


def combine(checks: Mapping[str, Check | Health]) -> HealthReport:
    """A ``HealthReport`` whose status is the worst of ``checks``."""
    rendered: dict[str, dict[str, Any]] = {}
    states: list[Health] = []
    for name, check in checks.items():
        if isinstance(check, Health):
            check = Check(check)
        rendered[name] = check.as_dict()
        states.append(check.status)
    return HealthReport(worst(*states), rendered)
