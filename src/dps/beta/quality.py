"""Quality scoring (the manual's B.3 ``quality_scoring`` format, H.2 enabled/disabled dimensions).

Four dimensions, each from 1.0 down by the penalties of the checks that fail:

- completeness: ``penalty_per_missing`` per missing (absent, null or empty) required field;
- consistency: each cross-field check that fails (``compare`` two fields, or ``require`` a
  condition ``when`` another holds) costs its ``penalty``;
- conformance: each field in the wrong format costs ``penalty_per_violation``; a payload that
  does not meet ``schema_ref`` costs ``schema_penalty``;
- timeliness: ``penalty_per_hour`` for each hour the event is older than ``max_age_hours``.

The score is the weighted mean of the active dimensions, with the weights renormalised over them.
Scores are explainable: the record carries each dimension's score and the checks that cost
points. Thresholds grade a score ``ok``/``warn``/``error``/``reject``; a rejected record goes to
the Beta DLQ with its breakdown. Everything is compiled once per configuration.
"""

from __future__ import annotations

import bisect
import datetime as dt
import json
import operator
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, NamedTuple

from dps.config.models import DIMENSIONS, ConsistencyCheck, QualityScoringConfig
from dps.core.conditions import NUMBERS, BatchPredicate, compile_batch_condition
from dps.core.errors import ConfigError, ConfigIssue
from dps.core.json_schema import Schema, json_path
from dps.core.record import Quality, Record, get_path

#: Named formats for ``rules.conformance.formats`` (anything else is a regular expression).
NAMED_FORMATS: Final[dict[str, str]] = {
    "email": r"^[^@\s]+@[^@\s]+\.[^@\s]+$",
    "uuid": r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
    "e164": r"^\+[1-9][0-9]{6,14}$",
    "iso_date": r"^\d{4}-\d{2}-\d{2}$",
    "iso_datetime": r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?$",
    "country_code": r"^[A-Z]{2}$",
    "currency_code": r"^[A-Z]{3}$",
    "decimal": r"^-?\d+(\.\d+)?$",
    "integer": r"^-?\d+$",
}
LEVELS: Final = ("ok", "warn", "error", "reject")
#: A dimension scored over a batch: ``(records, each record's failed checks, now)`` -> values.
_Dimension = Callable[[Sequence[Record], list[list[str]], float], list[float]]
_MISSING: Final = object()
_OPS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "gte": lambda a, b: a >= b,
}


class QualityScorer:
    """Scores records against one scoring configuration (see the module docstring)."""

    def __init__(
        self, config: QualityScoringConfig | None, schemas_dir: Path | None = None
    ) -> None:
        self.config = config = config or QualityScoringConfig(
            weights={"completeness": 1.0, "consistency": 0.0, "conformance": 0.0, "timeliness": 0.0}
        )
        self.dimensions: tuple[str, ...] = tuple(
            d for d in DIMENSIONS if d in config.active_dimensions
        )
        weights = {str(k): v for k, v in config.weights.items()}
        total = sum(weights.get(d, 0.0) for d in self.dimensions)
        # Active dimensions without weight do not count; with none left the score is 1.0 (a zero
        # weight must not make every record score 0).
        self.weights: dict[str, float] = (
            {d: weights.get(d, 0.0) / total for d in self.dimensions} if total else {}
        )
        rules = config.rules
        self.required = list(rules.completeness.required_fields)
        self.penalty_missing = penalty = rules.completeness.penalty_per_missing
        # What completeness needs per record, worked out once: whether every required field is
        # top-level (read with dict.get), each field's check text, and the value after n
        # missing fields (the penalty taken n times, as subtracting it per field gives).
        self._top_level = not any("." in field for field in self.required)
        #: Two or more top-level fields: read together by one C-level getter (half the cost of
        #: a dict.get per field); KeyError means one is absent, and the slow path says which.
        self._read_required = (
            operator.itemgetter(*self.required)
            if self._top_level and len(self.required) > 1
            else None
        )
        self._missing = [f"completeness: {f} is missing (-{penalty:g})" for f in self.required]
        self._after_missing = [
            max(0.0, round(v, 6)) for v in _after_penalties(penalty, len(self.required))
        ]
        self.consistency = [
            _compile_check(c, rules.consistency.penalty_per_failure)
            for c in rules.consistency.rules
        ]
        self.formats = [
            (name, re.compile(NAMED_FORMATS.get(fmt, fmt)), fmt)
            for name, fmt in rules.conformance.formats.items()
        ]
        self.penalty_format = penalty = rules.conformance.penalty_per_violation
        #: Per format: the field, its pattern's bound ``search`` and the check's text.
        self._format_checks = [
            (name, pattern.search, f"conformance: {name} is not {fmt} (-{penalty:g})")
            for name, pattern, fmt in self.formats
        ]
        #: The value after n format failures, and the same as the dimension's value when no
        #: schema follows.
        self._after_format_failures = _after_penalties(penalty, len(self.formats))
        self._format_values = [max(0.0, round(v, 6)) for v in self._after_format_failures]
        self.schema_penalty = rules.conformance.schema_penalty
        self.schema: Schema | None = None
        if rules.conformance.schema_ref:
            self.schema = _load_schema(rules.conformance.schema_ref, schemas_dir)
        self.max_age = rules.timeliness.max_age_hours
        self.penalty_hour = rules.timeliness.penalty_per_hour
        self.time_field = rules.timeliness.field
        thresholds = config.thresholds
        self.thresholds = thresholds
        self._dimension: dict[str, _Dimension] = {
            "completeness": self._completeness,
            "consistency": self._consistency,
            "conformance": self._conformance,
            "timeliness": self._timeliness,
        }

    def level(self, score: float) -> str:
        """``ok``, ``warn``, ``error`` or ``reject`` by the thresholds."""
        t = self.thresholds
        if score < t.reject:
            return "reject"
        if score < t.error:
            return "error"
        if score < t.warn:
            return "warn"
        return "ok"

    def score(self, record: Record, now: float | None = None) -> Quality:
        """One record's score (a batch of one)."""
        return self.score_batch([record], now)[0]

    def score_batch(self, records: Sequence[Record], now: float | None = None) -> list[Quality]:
        """The score of each record, dimension by dimension over the batch."""
        now = now or time.time()
        checks: list[list[str]] = [[] for _ in records]
        columns = [self._dimension[name](records, checks, now) for name in self.dimensions]
        if not columns:
            return [Quality(score=1.0, dimensions={}, checks=c) for c in checks]
        names = self.dimensions
        weights = [self.weights[name] for name in names] if self.weights else None
        scores: list[Quality] = []
        for values, record_checks in zip(zip(*columns, strict=True), checks, strict=True):
            # The weighted sum in dimension order, as sum() over the dimensions adds it up.
            score = sum(map(operator.mul, weights, values)) if weights else 1.0
            scores.append(
                Quality(
                    score=round(score, 6),
                    dimensions=dict(zip(names, values, strict=True)),
                    checks=record_checks,
                )
            )
        return scores

    # -- the dimensions, each over a batch: a value per record; failed checks are appended to
    # -- each record's list of checks ---------------------------------------------------------
    def _completeness(
        self, records: Sequence[Record], checks: list[list[str]], now: float
    ) -> list[float]:
        required, messages, after = self.required, self._missing, self._after_missing
        if not required:
            return [1.0] * len(records)
        top_level, read = self._top_level, self._read_required
        values: list[float] = []
        for record, record_checks in zip(records, checks, strict=True):
            payload = record.payload
            found: Sequence[Any]
            if read is not None:
                try:
                    found = read(payload)
                except KeyError:
                    found = list(map(payload.get, required))
            elif top_level:
                found = list(map(payload.get, required))
            else:
                found = [get_path(payload, field) for field in required]
            if None in found or "" in found:
                missing = [m for v, m in zip(found, messages, strict=True) if v in (None, "")]
                record_checks += missing
                values.append(after[len(missing)])
            else:
                values.append(1.0)
        return values

    def _consistency(
        self, records: Sequence[Record], checks: list[list[str]], now: float
    ) -> list[float]:
        """Check by check over the batch: ``when`` over all records, ``require`` (or the
        comparison) over those it selected; each failure takes its penalty, in check order."""
        if not self.consistency:
            return [1.0] * len(records)
        values = [1.0] * len(records)
        for check in self.consistency:
            selected = [i for i, yes in enumerate(check.when(records)) if yes]
            if not selected:
                continue
            passed = check.test([records[i] for i in selected])
            for i, ok in zip(selected, passed, strict=True):
                if not ok:
                    values[i] -= check.penalty
                    checks[i].append(check.message)
        return [value if value == 1.0 else max(0.0, round(value, 6)) for value in values]

    def _conformance(
        self, records: Sequence[Record], checks: list[list[str]], now: float
    ) -> list[float]:
        """Format by format over the batch (one column read and one bound ``search`` per
        format), then the schema per record; each failure takes its penalty, in that order."""
        if not self.formats and self.schema is None:
            return [1.0] * len(records)
        failed = [0] * len(records)
        for field, search, message in self._format_checks:
            if "." in field:
                column = [get_path(r.payload, field) for r in records]
            else:
                column = [r.payload.get(field) for r in records]
            for i, found in enumerate(column):
                if found is None:
                    continue
                if search(found if found.__class__ is str else _as_text(found)) is None:
                    failed[i] += 1
                    checks[i].append(message)
        if self.schema is None:
            rounded = self._format_values
            return [rounded[n] for n in failed]
        after = self._after_format_failures
        values: list[float] = []
        for record, record_checks, n in zip(records, checks, failed, strict=True):
            value = after[n]
            problem = self.schema.problem(record.payload)
            if problem is not None:
                where, message = problem
                value -= self.schema_penalty
                record_checks.append(
                    f"conformance: schema: {json_path(where)}: {message} (-{self.schema_penalty:g})"
                )
            values.append(max(0.0, round(value, 6)))
        return values

    def _timeliness(
        self, records: Sequence[Record], checks: list[list[str]], now: float
    ) -> list[float]:
        time_field = self.time_field
        if time_field:
            raws = [get_path(record.payload, time_field) for record in records]
        else:
            raws = [
                r.event_time if r.event_time is not None else r.payload.get("event_time")
                for r in records
            ]
        max_age, penalty = self.max_age, self.penalty_hour
        values: list[float] = []
        for raw, record_checks in zip(raws, checks, strict=True):
            if raw is None:
                values.append(1.0)
                continue
            at = _epoch(raw)
            if at is None:
                record_checks.append(f"timeliness: event time {raw!r} is not a timestamp (-1)")
                values.append(0.0)
                continue
            hours = (now - at) / 3600
            late = hours - max_age
            if late <= 0:
                values.append(1.0)
                continue
            lost = late * penalty
            if lost > 1.0:
                lost = 1.0
            record_checks.append(
                f"timeliness: {hours:.1f} h old, {late:.1f} h over max_age_hours (-{lost:.4g})"
            )
            values.append(round(1.0 - lost, 6))  # lost is at most 1: never below 0
        return values


class _Consistency(NamedTuple):
    """One consistency check, compiled for a batch."""

    name: str
    #: The records it checks (``when``; all without one) and whether each passes.
    when: BatchPredicate
    test: BatchPredicate
    penalty: float
    #: The text a failure adds to the record's checks.
    message: str


def _compile_check(check: ConsistencyCheck, default_penalty: float) -> _Consistency:
    when = compile_batch_condition(check.when)
    penalty = check.penalty if check.penalty is not None else default_penalty
    message = f"consistency: {check.name} failed (-{penalty:g})"
    if check.require is not None:
        return _Consistency(
            check.name, when, compile_batch_condition(check.require), penalty, message
        )
    assert check.compare is not None
    left, right, op = check.compare["left"], check.compare["right"], _OPS[check.compare["op"]]

    def compare(record: Record) -> bool:
        a = get_path(record.payload, left, _MISSING)
        b = get_path(record.payload, right, _MISSING)
        if a is _MISSING or b is _MISSING or a is None or b is None:
            return True  # a missing field is completeness' business, not consistency's
        try:
            return bool(op(a, b))
        except TypeError:
            return False  # a number against text: inconsistent

    return _Consistency(
        check.name, when, lambda records: [compare(r) for r in records], penalty, message
    )


def _after_penalties(penalty: float, count: int) -> list[float]:
    """The value after 0..count failures: 1.0 less the penalty n times, subtracted one at a
    time as scoring a record failure by failure does (the same float, not ``1 - n * penalty``)."""
    values = [1.0]
    for _ in range(count):
        values.append(values[-1] - penalty)
    return values


def _as_text(value: Any) -> str:
    """A non-text value as conformance matches it: its JSON text."""
    return value if isinstance(value, str) else json.dumps(value)


def _load_schema(name: str, folder: Path | None) -> Schema:
    path = (folder or Path("beta/schemas")) / name
    where = "beta/quality/scoring.yaml"
    try:
        return Schema(json.loads(path.read_text()))
    except OSError as exc:
        message = f'"{name}" cannot be read ({exc.strerror}); expected a JSON Schema file '
        message += "in beta/schemas/."
    except ValueError as exc:  # not JSON, or not a valid schema
        message = f'"{name}" is not a valid JSON Schema: {exc}.'
    raise ConfigError([ConfigIssue(where, "quality_scoring.rules.conformance.schema_ref", message)])


def _epoch(value: Any) -> float | None:
    # Text first, by its exact class: it is what event times nearly always are, and the
    # isinstance tests in front of it cost as much as the parse below.
    if value.__class__ is not str:
        if isinstance(value, bool):
            return None
        if isinstance(value, NUMBERS):
            return float(value) / (1000 if value > 1e11 else 1)
        if not isinstance(value, str):
            return None
    parsed = None
    # Python 3.11 reads a trailing "Z" itself; a "Z" anywhere else it would take for the
    # date/time separator, where "Z" -> "+00:00" makes the text invalid: those, and text with
    # spaces around it, go the long way.
    if value.find("Z", 0, -1) < 0:
        try:  # noqa: SIM105 - contextlib.suppress would cost a context manager per record
            parsed = _fromisoformat(value)
        except ValueError:
            pass
    if parsed is None:
        try:
            parsed = _fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


_fromisoformat = dt.datetime.fromisoformat


#: The distribution's buckets: upper edges of 0.1-wide bins.
DISTRIBUTION_EDGES: Final = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def _check_key(check: str) -> str:
    """A failed check as ``top_failed_checks`` counts it: without its penalty
    (``"completeness: amount is missing"``) and, for timeliness, without the record's own age or
    timestamp text, which would make each record a check of its own (E.2 could not rank them, and
    the counts would grow with every new age)."""
    text = check.split(" (-")[0]
    if text.startswith("timeliness: "):
        if text.endswith(" over max_age_hours"):
            return "timeliness: older than max_age_hours"
        return "timeliness: event time is not a timestamp"
    return text


class QualityStats:
    """What the E.2 endpoints show: counts, distribution, dimensions, recent low scores.

    Fed once per batch by the worker, read by the admin thread; a lock keeps them consistent.
    Low-scoring records are kept in a bounded ring (``keep`` entries) with their breakdown.
    """

    def __init__(self, keep: int = 1000) -> None:
        self._lock = threading.Lock()
        self.count = 0
        self.total = 0.0
        self.minimum: float | None = None
        self.maximum: float | None = None
        self.bins = [0] * len(DISTRIBUTION_EDGES)
        self.levels: Counter[str] = Counter()
        self.dim_total: dict[str, float] = {}
        self.dim_count: Counter[str] = Counter()
        self.check_counts: Counter[str] = Counter()
        #: ``(record_id, source_id, level, quality, scored_at)``: the dicts the endpoint shows
        #: are built when asked, not for each of the thousands of records a batch scores.
        self.recent: deque[tuple[str, str, str, Quality, float]] = deque(maxlen=keep)
        self.low_edge = 1.0

    def add(self, records: list[tuple[Record, str]], low_edge: float) -> None:
        """Count a batch of scored records (``(record, level)``); keep the low-scoring ones."""
        scored = [(r, level, r.quality) for r, level in records if r.quality is not None]
        if not scored:
            return
        scores = [quality.score for _, _, quality in scored]
        last = len(self.bins) - 1
        bins = Counter([min(bisect.bisect_left(DISTRIBUTION_EDGES, s), last) for s in scores])
        dim_total: dict[str, float] = {}
        dim_count: Counter[str] = Counter()
        dimensions = [quality.dimensions for _, _, quality in scored]
        names = dimensions[0].keys()
        if all(dims.keys() == names for dims in dimensions):
            # One scorer scored the batch: the same dimensions everywhere, summed column-wise.
            for name in names:
                dim_total[name] = sum([dims[name] for dims in dimensions])
                dim_count[name] = len(dimensions)
        else:
            for dims in dimensions:
                for name, value in dims.items():
                    dim_total[name] = dim_total.get(name, 0.0) + value
                    dim_count[name] += 1
        failed = Counter([check for _, _, quality in scored for check in quality.checks])
        checks: Counter[str] = Counter()
        for check, n in failed.items():
            checks[_check_key(check)] += n
        # Only the last ``keep`` low scores of a batch can stay in the ring: build just those.
        keep = self.recent.maxlen or 0
        low = [entry for entry in scored if entry[2].score < low_edge][-keep:] if keep else []
        now = time.time()
        recent = [(r.record_id, r.source_id, level, quality, now) for r, level, quality in low]
        with self._lock:
            self.low_edge = low_edge
            self.count += len(scores)
            self.total += sum(scores)
            low_score, high_score = min(scores), max(scores)
            self.minimum = low_score if self.minimum is None else min(self.minimum, low_score)
            self.maximum = high_score if self.maximum is None else max(self.maximum, high_score)
            for index, n in bins.items():
                self.bins[index] += n
            self.levels.update(level for _, level, _ in scored)
            for name, total in dim_total.items():
                self.dim_total[name] = self.dim_total.get(name, 0.0) + total
            self.dim_count.update(dim_count)
            self.check_counts.update(checks)
            self.recent.extend(recent)

    def stats(self, scorer: QualityScorer) -> dict[str, Any]:
        with self._lock:
            average = self.total / self.count if self.count else None
            return {
                "records_scored": self.count,
                "average_score": round(average, 6) if average is not None else None,
                "min_score": self.minimum,
                "max_score": self.maximum,
                "levels": {level: self.levels.get(level, 0) for level in LEVELS},
                "thresholds": scorer.thresholds.model_dump(),
                "weights": scorer.weights,
                "active_dimensions": list(scorer.dimensions),
            }

    def distribution(self) -> dict[str, Any]:
        with self._lock:
            buckets = []
            low = 0.0
            for edge, count in zip(DISTRIBUTION_EDGES, self.bins, strict=True):
                buckets.append(
                    {"range": f"{low:.1f}-{edge:.1f}", "min": low, "max": edge, "count": count}
                )
                low = edge
            return {"total": self.count, "buckets": buckets}

    def dimensions(self, scorer: QualityScorer) -> dict[str, Any]:
        with self._lock:
            dims = {}
            for name in DIMENSIONS:
                n = self.dim_count.get(name, 0)
                dims[name] = {
                    "enabled": name in scorer.dimensions,
                    "weight": scorer.weights.get(name, 0.0),
                    "average": round(self.dim_total[name] / n, 6) if n else None,
                    "records": n,
                }
            top = [{"check": c, "count": n} for c, n in self.check_counts.most_common(20)]
            return {"dimensions": dims, "top_failed_checks": top}

    def low_scores(self, threshold: float, limit: int) -> dict[str, Any]:
        with self._lock:
            hits = [
                {
                    "record_id": record_id,
                    "source_id": source_id,
                    "score": quality.score,
                    "level": level,
                    "dimensions": dict(quality.dimensions),
                    "checks": list(quality.checks),
                    "scored_at": scored_at,
                }
                for record_id, source_id, level, quality, scored_at in reversed(self.recent)
                if quality.score < threshold
            ][:limit]
            return {
                "threshold": threshold,
                "limit": limit,
                "count": len(hits),
                "retained_below": self.low_edge,
                "records": hits,
            }
