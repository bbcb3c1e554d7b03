"""Trying rules on sample records: what ``beta-rule-tester`` and ``dps test`` run.

``run_samples`` puts sample records through rules (disabled ones included: B.1 tests a rule
before it is enabled) and reports per record and in a ``summary``. ``run_test_file`` runs the
test cases of a ``*_test.yaml`` file kept beside the rules (the Benthos/Vector way: input
records, the rules or the whole stage, the expected fields, score or DLQ outcome) and returns
the failures as readable differences. Both go through :class:`~dps.beta.stage.Stage`, the code
the running module uses.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from dps.beta.enrichment.cache import Enrichment
from dps.beta.quality import QualityScorer
from dps.beta.rules import RuleSet
from dps.beta.schemas import SchemaRegistry
from dps.beta.stage import Stage
from dps.config.documents import parse_yaml
from dps.config.messages import issues_from_error
from dps.config.models import PipelineConfig, RuleConfig
from dps.core.model import StrictModel
from dps.core.record import Record, get_path, make_record_id

_ABSENT = object()
_ENVELOPE_KEYS = frozenset({"payload", "source_id", "record_id", "event_time"})


def to_record(item: Any, index: int, source_id: str = "rule_tester") -> Record:
    """A sample as a record: a payload mapping, or ``{"payload": ..., "source_id": ...}``."""
    if not isinstance(item, dict):
        raise ValueError(f"sample {index} is {type(item).__name__}; expected a JSON object.")
    if "payload" in item and set(item) <= _ENVELOPE_KEYS and isinstance(item["payload"], dict):
        payload = copy.deepcopy(item["payload"])
        source = str(item.get("source_id", source_id))
        return Record(
            record_id=str(item.get("record_id") or make_record_id(source, payload, None)),
            source_id=source,
            correlation_id=f"sample-{index}",
            ingested_at=time.time(),
            payload=payload,
            event_time=item.get("event_time"),
        )
    payload = copy.deepcopy(item)
    return Record(
        record_id=make_record_id(source_id, payload, None),
        source_id=source_id,
        correlation_id=f"sample-{index}",
        ingested_at=time.time(),
        payload=payload,
    )


def read_samples(path: Path) -> list[Any]:
    """A JSON array, ``{"records": [...]}``, one JSON object, or NDJSON lines."""
    text = path.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    if isinstance(data, dict) and isinstance(data.get("records"), list):
        return list(data["records"])
    return data if isinstance(data, list) else [data]


def run_samples(
    rules: Sequence[RuleConfig], samples: Sequence[Any], enrichment: Enrichment | None = None
) -> dict[str, Any]:
    """Per-record results and a summary (matched, transformed, failed, skipped, timing).

    ``enrichment`` serves ``lookup`` rules, as in the running module.
    """
    ordered = sorted(rules, key=lambda r: (-r.priority, r.rule_id))
    stage = Stage(RuleSet(ordered, include_disabled=True, enrichment=enrichment), None)
    results: list[dict[str, Any]] = []
    counts = dict.fromkeys(
        ("matched", "transformed", "unchanged", "failed", "skipped", "dropped"), 0
    )
    per_rule = {r.rule_id: dict.fromkeys(("applied", "skipped", "failed"), 0) for r in ordered}
    timings: list[float] = []
    started = time.perf_counter()
    for index, item in enumerate(samples):
        record = to_record(item, index)
        before = copy.deepcopy(record.payload)
        result = stage.process(record)
        outcome = result.outcome
        timings.append(result.seconds)
        matched = (
            outcome.applied
            + outcome.skipped
            + ([outcome.failed_rule] if outcome.failed_rule else [])
        )
        for rule_id in outcome.applied:
            per_rule[rule_id]["applied"] += 1
        for rule_id in outcome.skipped:
            per_rule[rule_id]["skipped"] += 1
        if outcome.failed_rule:
            per_rule[outcome.failed_rule]["failed"] += 1
        if outcome.failure is not None:
            status = "failed"
        elif outcome.dropped:
            status = "dropped"
        elif record.payload != before:
            status = "transformed"
        elif outcome.skipped:
            status = "skipped"
        else:
            status = "unchanged"
        counts[status] += 1
        if matched:
            counts["matched"] += 1
        entry: dict[str, Any] = {
            "index": index,
            "record_id": record.record_id,
            "status": status,
            "matched_rules": matched,
            "applied_rules": outcome.applied,
            "skipped_rules": outcome.skipped,
            "input": before,
            "output": record.payload,
            "duration_ms": round(result.seconds * 1000, 4),
        }
        if outcome.failure is not None:
            entry["failed_rule"] = outcome.failed_rule
            entry["error"] = str(outcome.failure)
            entry["dlq_reason"] = result.reason
        results.append(entry)
    total = time.perf_counter() - started
    summary = {
        "total": len(samples),
        **counts,
        "rules": [r.rule_id for r in ordered],
        "per_rule": per_rule,
        "timing": {
            "total_ms": round(total * 1000, 3),
            "avg_ms": round(sum(timings) / len(timings) * 1000, 4) if timings else 0.0,
            "max_ms": round(max(timings) * 1000, 4) if timings else 0.0,
            "records_per_second": round(len(samples) / total, 1) if total > 0 else None,
        },
    }
    return {"summary": summary, "results": results}


# -- *_test.yaml ------------------------------------------------------------------------------


class Expectation(StrictModel):
    """What one input record must come out as."""

    outcome: Literal["delivered", "dlq", "dropped"] = Field(
        default="delivered", description="Where the record ends: delivered, dlq or dropped."
    )
    fields: dict[str, Any] = Field(
        default_factory=dict, description="Dotted path -> expected value in the output payload."
    )
    absent: list[str] = Field(default_factory=list, description="Paths that must not exist.")
    reason: str | None = Field(
        default=None, description="Text the DLQ reason must contain (rule_failed:RULE_ID, ...)."
    )
    score: float | None = Field(default=None, description="Expected quality score (±0.0001).")
    score_min: float | None = Field(default=None, description="Lowest acceptable score.")
    score_max: float | None = Field(default=None, description="Highest acceptable score.")
    dimensions: dict[str, float] = Field(
        default_factory=dict, description="Expected per-dimension scores (±0.0001)."
    )
    level: Literal["ok", "warn", "error", "reject"] | None = Field(
        default=None, description="Expected threshold level of the score."
    )


class TestCase(StrictModel):
    """One test case of a ``*_test.yaml`` file."""

    name: str = Field(description="What the case checks (shown on failure).")
    rules: list[str] | None = Field(
        default=None,
        description="Rule ids to run (disabled ones too), without scoring; none: the whole "
        "stage (enabled rules and quality scoring), as the running module does.",
    )
    source_id: str = Field(default="test", description="source_id of the input records.")
    input: list[dict[str, Any]] = Field(min_length=1, description="Input payloads.")
    expect: list[Expectation] = Field(
        min_length=1, description="One expectation per input record, in order (or one for all)."
    )

    @model_validator(mode="after")
    def _lengths(self) -> TestCase:
        if len(self.expect) not in (1, len(self.input)):
            raise ValueError(
                f"{len(self.expect)} expectations for {len(self.input)} inputs; expected one "
                "per input, or one for all."
            )
        return self


class TestFile(StrictModel):
    """A ``*_test.yaml`` file: ``tests:`` and its cases."""

    tests: list[TestCase] = Field(min_length=1, description="The test cases.")


def run_test_file(path: Path, config: PipelineConfig) -> tuple[int, list[str]]:
    """Run one test file against a loaded configuration: ``(cases run, failure messages)``."""
    doc = parse_yaml(path.read_text(), str(path))
    if doc.issues:
        return 0, [str(issue) for issue in doc.issues]
    try:
        spec = TestFile.model_validate(doc.data)
    except ValidationError as exc:
        return 0, [str(issue) for issue in issues_from_error(exc, doc, TestFile)]
    # Lookups go to the configured enrichment sources, as in the running module.
    enrichment = Enrichment(config.beta.enrichment, config.beta.settings)
    try:
        return len(spec.tests), _run_cases(path, spec, config, enrichment)
    finally:
        enrichment.close()


def _run_cases(
    path: Path, spec: TestFile, config: PipelineConfig, enrichment: Enrichment
) -> list[str]:
    by_id = {rule.rule_id: rule for rule in config.beta.rules}
    failures: list[str] = []
    for case in spec.tests:
        if case.rules is None:
            stage = Stage(
                RuleSet(config.beta.rules, enrichment=enrichment),
                QualityScorer(config.beta.scoring, config.root / "beta" / "schemas"),
                SchemaRegistry(config.root / "beta" / "schemas"),
            )
        else:
            unknown = [r for r in case.rules if r not in by_id]
            if unknown:
                failures.append(
                    f"{case.name}: unknown rule {', '.join(unknown)}; known: "
                    f"{', '.join(sorted(by_id)) or 'none'}."
                )
                continue
            chosen = sorted((by_id[r] for r in case.rules), key=lambda r: (-r.priority, r.rule_id))
            stage = Stage(RuleSet(chosen, include_disabled=True, enrichment=enrichment), None)
        for index, payload in enumerate(case.input):
            expect = case.expect[index] if len(case.expect) > 1 else case.expect[0]
            record = to_record({"payload": payload, "source_id": case.source_id}, index)
            result = stage.process(record)
            diffs = _compare(expect, result.verdict, result.reason, result.level, record)
            if diffs:
                got = json.dumps(record.payload, indent=2, sort_keys=True, default=str)
                failures.append(
                    f"{path.name}: {case.name} [input {index}]\n"
                    + "\n".join(f"    {d}" for d in diffs)
                    + (f"\n    error: {result.message}" if result.message else "")
                    + "\n    output payload:\n"
                    + "\n".join(f"      {line}" for line in got.splitlines())
                )
    return failures


def _compare(
    expect: Expectation, verdict: str, reason: str, level: str, record: Record
) -> list[str]:
    diffs: list[str] = []
    if verdict != expect.outcome:
        diffs.append(f"outcome: expected {expect.outcome}, got {verdict} {reason}".rstrip())
    if expect.reason is not None and expect.reason not in reason:
        diffs.append(f"reason: expected {expect.reason!r} in it, got {reason!r}")
    for path, wanted in expect.fields.items():
        got = get_path(record.payload, path, _ABSENT)
        if got is _ABSENT:
            diffs.append(f"- {path}: {wanted!r}\n    + {path}: (missing)")
        elif got != wanted:
            diffs.append(f"- {path}: {wanted!r}\n    + {path}: {got!r}")
    for path in expect.absent:
        got = get_path(record.payload, path, _ABSENT)
        if got is not _ABSENT:
            diffs.append(f"{path}: expected absent, got {got!r}")
    quality = record.quality
    wants_score = expect.score is not None or expect.score_min is not None
    wants_score = wants_score or expect.score_max is not None or bool(expect.dimensions)
    if quality is None:
        if wants_score or expect.level:
            diffs.append("score: expected a quality score, but the record was not scored")
        return diffs
    if expect.score is not None and abs(quality.score - expect.score) > 1e-4:
        diffs.append(f"score: expected {expect.score:g}, got {quality.score:g} ({quality.checks})")
    if expect.score_min is not None and quality.score < expect.score_min:
        diffs.append(f"score: expected at least {expect.score_min:g}, got {quality.score:g}")
    if expect.score_max is not None and quality.score > expect.score_max:
        diffs.append(f"score: expected at most {expect.score_max:g}, got {quality.score:g}")
    for name, wanted_dim in expect.dimensions.items():
        got_dim = quality.dimensions.get(name)
        if got_dim is None or abs(got_dim - wanted_dim) > 1e-4:
            diffs.append(f"dimensions.{name}: expected {wanted_dim:g}, got {got_dim}")
    if expect.level is not None and level != expect.level:
        diffs.append(f"level: expected {expect.level}, got {level}")
    return diffs
