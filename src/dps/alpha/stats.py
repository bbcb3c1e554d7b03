"""Alpha's recent activity, for ``/admin/health`` (the manual's Alpha thresholds) and the H.1
investigation endpoints (``/admin/parser/stats``, ``/admin/connections/stats``,
``/admin/validation/rule-performance``).

The Prometheus counters are cumulative; health needs rates over a recent window, like the alert
rules' ``rate(...[5m])``. The worker appends one entry per ingested batch and per fetch attempt
(a fetch that returned data or failed: the idle fetches of a polling source prove nothing) to
bounded deques; readers copy them (``list(deque)`` is atomic under the GIL), so no lock is taken
on the hot path.

Rates and the average parse latency (per record: a JSON document of thousands of records is one
raw input) are graded only once the window holds :data:`MIN_RECORDS` records: on a trickle, one bad
line in fifty would otherwise make the module UNHEALTHY. The ingestion rate is the manual's
sustained rate — records over the whole window — graded only once the module has run for a full
window and while there is a backlog (the last batch was full): a burst at start-up (a backlog
drained in seconds) is not a sustained 10,000 records/s, and a source that simply has little to
give is not an ingestion problem (``alpha_ingestion_stopped`` covers a stop).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Final

#: Seconds of history the rates are computed over (the alert rules' 5m).
WINDOW_SECONDS: Final = 300.0
#: Records the window must hold before its rates are graded.
MIN_RECORDS: Final = 1000


@dataclass(frozen=True, slots=True)
class BatchStats:
    """One ingested batch."""

    at: float
    source_id: str
    items: int
    records: int
    parse_errors: int
    failed: int
    parse_seconds: float
    validate_seconds: float
    busy_seconds: float
    full: bool


#: A raw item slower to parse than this is remembered for ``/admin/parser/slow-records``.
SLOW_PARSE_SECONDS: Final = 0.001
#: How many slow parses are remembered (the newest).
SLOW_PARSE_KEPT: Final = 500


@dataclass(frozen=True, slots=True)
class SlowParse:
    """One raw item that took long to parse: where it came from and what it looked like."""

    at: float
    source_id: str
    origin: str
    seconds: float
    size_bytes: int
    records: int
    preview: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "source_id": self.source_id,
            "origin": self.origin,
            "parse_ms": round(self.seconds * 1000, 3),
            "size_bytes": self.size_bytes,
            "records": self.records,
            "preview": self.preview,
        }


def parse_duration(text: str) -> float:
    """``50ms``, ``0.05s``, ``50`` (milliseconds) to seconds; ValueError names the form."""
    value = text.strip().lower()
    try:
        if value.endswith("ms"):
            return float(value[:-2]) / 1000
        if value.endswith("s"):
            return float(value[:-1])
        return float(value) / 1000
    except ValueError:
        raise ValueError(f"{text!r} is not a duration; expected e.g. 50ms or 0.05s.") from None


class IngestStats:
    """Bounded recent history of batches and fetch attempts (see the module docstring)."""

    def __init__(self, max_batches: int = 5000, max_attempts: int = 5000) -> None:
        self.started = time.time()
        self._batches: deque[BatchStats] = deque(maxlen=max_batches)
        self._attempts: deque[tuple[float, str, bool]] = deque(maxlen=max_attempts)
        self._slow: deque[SlowParse] = deque(maxlen=SLOW_PARSE_KEPT)

    def batch(self, stats: BatchStats) -> None:
        self._batches.append(stats)

    def slow_parse(self, entry: SlowParse) -> None:
        self._slow.append(entry)

    def slow_parses(self, threshold: float, limit: int) -> list[SlowParse]:
        """The remembered parses at least ``threshold`` seconds long, slowest first."""
        slow = [e for e in list(self._slow) if e.seconds >= threshold]
        return sorted(slow, key=lambda e: e.seconds, reverse=True)[:limit]

    def attempt(self, source_id: str, ok: bool) -> None:
        self._attempts.append((time.time(), source_id, ok))

    def _recent(
        self, now: float | None = None
    ) -> tuple[list[BatchStats], list[tuple[float, str, bool]]]:
        since = (now if now is not None else time.time()) - WINDOW_SECONDS
        batches = [b for b in list(self._batches) if b.at >= since]
        attempts = [a for a in list(self._attempts) if a[0] >= since]
        return batches, attempts

    def window(self, now: float | None = None) -> dict[str, float | None]:
        """Rates of the last :data:`WINDOW_SECONDS` (None: not enough data to grade)."""
        now = now if now is not None else time.time()
        batches, attempts = self._recent(now)
        records = sum(b.records for b in batches)
        enough = records >= MIN_RECORDS
        parse_seconds = sum(b.parse_seconds for b in batches)
        rate: float | None = None
        if batches and batches[-1].full and now - self.started >= WINDOW_SECONDS:
            rate = records / WINDOW_SECONDS
        return {
            "records": float(records),
            "parse_error_rate": sum(b.parse_errors for b in batches) / records if enough else None,
            "validation_failure_rate": sum(b.failed for b in batches) / records if enough else None,
            # Per record: a JSON document of thousands of records is one item.
            "parse_latency": parse_seconds / records if enough else None,
            "ingestion_rate": rate if enough else None,
            "source_connection_success": (
                sum(1 for a in attempts if a[2]) / len(attempts) if attempts else None
            ),
        }

    def per_source(self, now: float | None = None) -> dict[str, dict[str, Any]]:
        """Per source over the window: records, errors, average parse and validation times."""
        batches, attempts = self._recent(now)
        out: dict[str, dict[str, Any]] = {}
        for b in batches:
            s = out.setdefault(
                b.source_id,
                {
                    "batches": 0,
                    "items": 0,
                    "records": 0,
                    "parse_errors": 0,
                    "validation_failures": 0,
                    "parse_seconds": 0.0,
                    "validate_seconds": 0.0,
                    "fetch_attempts": 0,
                    "fetch_failures": 0,
                },
            )
            s["batches"] += 1
            s["items"] += b.items
            s["records"] += b.records
            s["parse_errors"] += b.parse_errors
            s["validation_failures"] += b.failed
            s["parse_seconds"] += b.parse_seconds
            s["validate_seconds"] += b.validate_seconds
        for _, source_id, ok in attempts:
            s = out.setdefault(source_id, {"fetch_attempts": 0, "fetch_failures": 0})
            s["fetch_attempts"] += 1
            s["fetch_failures"] += 0 if ok else 1
        for s in out.values():
            items, records = s.get("items", 0), s.get("records", 0)
            s["avg_parse_ms"] = (
                round(1000 * s.get("parse_seconds", 0.0) / items, 4) if items else None
            )
            s["avg_validate_ms"] = (
                round(1000 * s.get("validate_seconds", 0.0) / records, 4) if records else None
            )
        return out
