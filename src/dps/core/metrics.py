"""Metrics every process exports, whatever module it runs.

Each module's own metrics live in ``dps/<module>/metrics.py`` so that a process registers only the
metrics of the code it imports (a gamma process shows no ``alpha_*`` series). All are registered
in prometheus-client's default registry, which ``/metrics`` on the admin API exposes.

Names, types and histogram buckets follow the manual's "Metric Types" tables and alert rules; the
tests parse the manual and fail when a name it uses is missing here or has another type.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from typing import Final

from prometheus_client import Gauge, Histogram, Info, disable_created_metrics

__all__ = [
    "DPS_MODULE_INFO",
    "DPS_QUEUE_DEPTH",
    "LATENCY_BUCKETS",
    "MODULE_LATENCY_SECONDS",
    "PIPELINE_END_TO_END_LATENCY_SECONDS",
    "observe_many",
    "package_version",
    "set_module_info",
]

# The ``*_created`` series (one per counter and histogram) are not used by any dashboard or alert
# in the manual and would double the size of every scrape.
disable_created_metrics()  # type: ignore[no-untyped-call]

#: Buckets for latencies judged against the manual's thresholds: end-to-end P99 is normal under
#: 0.5 s, a warning to 2 s and critical above (alert ``pipeline_latency_sla_breach``), so both
#: edges are bucket bounds and the quantiles around them are exact.
LATENCY_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)

PIPELINE_END_TO_END_LATENCY_SECONDS: Final = Histogram(
    "pipeline_end_to_end_latency_seconds",
    "Seconds from a record's ingestion to its acknowledgement by a destination.",
    buckets=LATENCY_BUCKETS,
)

MODULE_LATENCY_SECONDS: Final = Histogram(
    "module_latency_seconds",
    "Seconds a record spends in one module, from dequeue (or source) to enqueue (or destination).",
    ["module"],
    buckets=LATENCY_BUCKETS,
)

DPS_MODULE_INFO: Final = Info(
    "dps_module",
    "The module this process runs and the dps version (exported as dps_module_info).",
)

DPS_QUEUE_DEPTH: Final = Gauge(
    "dps_queue_depth",
    "Messages waiting in a queue between modules (transform, delivery, DLQ).",
    ["queue"],
)


def package_version() -> str:
    """The installed ``dps`` version, or ``0.0.0`` when running from an uninstalled tree."""
    try:
        return version("dps")
    except PackageNotFoundError:
        return "0.0.0"


def set_module_info(module: str) -> None:
    """Set ``dps_module_info{module=..., version=...} 1`` for this process."""
    DPS_MODULE_INFO.info({"module": module, "version": package_version()})


def observe_many(histogram: Histogram, values: Iterable[float]) -> None:
    """``histogram.observe(v)`` for each value, counted per bucket first.

    The hot paths observe a whole batch at once (a duration or a score per record): this takes
    one lock per bucket touched instead of two per value, and counts the buckets on the sorted
    values with one binary search per bound instead of one per value. It relies on
    prometheus-client's ``Histogram`` layout (``_upper_bounds``, ``_buckets``, ``_sum``; the
    version is pinned) and a test checks it against ``observe``. ``histogram`` is a child when
    it has labels.
    """
    bounds: list[float] = histogram._upper_bounds
    ordered = sorted(values)
    total = sum(ordered)
    if total != total:  # a NaN among them (sorting leaves it anywhere): one value at a time
        _observe_each(histogram, ordered)
        return
    if not ordered:
        return
    histogram._sum.inc(total)
    # The values are sorted: each bucket's count is where its bound falls, less the one before
    # (a value equal to a bound belongs to that bound's bucket, as ``observe`` counts it).
    below = 0
    for index, bound in enumerate(bounds):
        upto = bisect.bisect_right(ordered, bound, lo=below)
        if upto > below:
            histogram._buckets[index].inc(upto - below)
            below = upto
        if below == len(ordered):
            break


def _observe_each(histogram: Histogram, values: Iterable[float]) -> None:
    bounds: list[float] = histogram._upper_bounds
    counts = [0] * len(bounds)
    total = 0.0
    observed = False
    for value in values:
        total += value
        observed = True
        if value == value:  # a NaN is in no bucket (``observe`` compares it with each bound)
            counts[bisect.bisect_left(bounds, value)] += 1
    if not observed:
        return
    histogram._sum.inc(total)
    for index, count in enumerate(counts):
        if count:
            histogram._buckets[index].inc(count)


def observe_n(histogram: Histogram, value: float, count: int) -> None:
    """``histogram.observe(value)`` ``count`` times, in one step (a batch's shared latency)."""
    if count <= 0:
        return
    bounds: list[float] = histogram._upper_bounds
    index = bisect.bisect_left(bounds, value)
    if index >= len(bounds):
        return  # NaN
    histogram._sum.inc(value * count)
    histogram._buckets[index].inc(count)
