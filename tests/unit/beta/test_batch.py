"""The batch path (rule by rule over a batch) against the record-at-a-time path it replaced.

Each test runs the same varied records through :meth:`RuleSet.apply_batch` /
:meth:`Stage.process_batch` and through a reference that applies the rules one record at a time
with each rule's per-record ``matches`` and ``transform.apply`` (the engine as it was before the
batch path): payloads, outcomes, lineage and scores must come out the same.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import random
from pathlib import Path
from typing import Any

import pytest

from dps.beta.enrichment.cache import Enrichment
from dps.beta.quality import QualityScorer, QualityStats, _epoch
from dps.beta.rules import Outcome, RuleSet
from dps.beta.stage import Stage
from dps.beta.transforms.base import DROP
from dps.config.models import BetaSettings, EnrichmentConfig, QualityScoringConfig, RuleConfig
from dps.core.errors import TerminalError
from dps.core.record import LineageStep, Quality, Record, get_path


def _rule(rule_id: str, match: Any, type_: str, config: dict[str, Any], **more: Any) -> RuleConfig:
    spec = {"rule_id": rule_id, "match": match, "transform": {"type": type_, "config": config}}
    return RuleConfig.model_validate({**spec, **more})


# In priority order, as the loader hands them over. Between them they cover every batch kernel
# (set, uppercase, lowercase, rename, regex_replace, lookup, the field transforms) and the
# fallbacks (templates, dotted fields, drop_record, conditions tested record by record), with
# on_failure skip, dlq and fail.
RULES = [
    _rule("DROP_HEARTBEAT", {"record_type": "heartbeat"}, "drop_record", {}),
    _rule(
        "LIFT_CHANNEL",
        {"field": "source_id", "condition": "exists"},
        "rename",
        {"field": "payload.channel", "to": "channel"},
    ),
    _rule(
        "PHONE",
        {"field": "phone", "condition": "exists"},
        "regex_replace",
        {"pattern": r"^\(?(\d{3})\)?[\s.-]?(\d{3})[\s.-]?(\d{4})$", "replacement": "+1$1$2$3"},
        on_failure="skip",
    ),
    _rule(
        "NESTED_PHONE",
        {"field": "contact.phone", "condition": "exists"},
        "regex_replace",
        {"pattern": r"(\d+)", "replacement": "<$1>"},
        on_failure="dlq",
    ),
    _rule(
        "CURRENCY",
        {"currency": {"exists": True}},
        "uppercase",
        {"field": "currency"},
        on_failure="skip",
    ),
    _rule("EMAIL", {"field": "email", "condition": "exists"}, "lowercase", {}, on_failure="dlq"),
    _rule(
        "TAG_EU",
        {"field": "country", "condition": "in", "value": ["DE", "FR", "NL"]},
        "set",
        {"field": "region", "value": "EU"},
    ),
    _rule(
        "TAG_NOT_US",
        {"country": {"not_in": ["US", "CA"]}},
        "set",
        {"field": "meta.flag", "value": {"n": 1}},
    ),
    _rule(
        "LABEL",
        {"any": [{"field": "amount", "condition": "gt", "value": 50}, {"vip": True}]},
        "set",
        {"field": "label", "template": "{name} ({country})"},
        on_failure="skip",
    ),
    _rule(
        "AMOUNT_INT",
        {"field": "amount", "condition": "regex", "value": r"^[\dx.]+$"},
        "cast",
        {"to": "int"},
        on_failure="fail",
    ),
    _rule("NO_EMAIL", {"email": {"exists": False}}, "set", {"field": "email_missing", "value": 1}),
    _rule(
        "ENRICH",
        {"field": "customer_id", "condition": "exists"},
        "lookup",
        {
            "source": "customers",
            "fields": {"tier": "tier", "customer.name": "name"},
            "on_miss": "default",
            "defaults": {"tier": "unknown"},
        },
        on_failure="skip",
    ),
    _rule(
        "ENRICH_STRICT",
        {"field": "strict_id", "condition": "exists"},
        "lookup",
        {"source": "customers", "fields": {"strict_tier": "tier"}, "on_miss": "fail"},
        on_failure="dlq",
    ),
    _rule(
        "NESTED_KEY",
        {"field": "ref.id", "condition": "exists"},
        "lookup",
        {"source": "customers", "fields": {"ref_tier": "tier"}},
    ),
    _rule("TRIM_NAME", {"field": "name", "condition": "equals", "value": " Ada "}, "trim", {}),
    _rule("DONE", None, "set", {"field": "done", "value": True}),
]


def _deep(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


def _payloads(seed: int, n: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)

    def pick(*choices: Any) -> Any:
        return copy.deepcopy(rng.choice(choices))

    out: list[dict[str, Any]] = []
    for i in range(n):
        payload: dict[str, Any] = {"id": i}
        fields = {
            "type": pick("order", "heartbeat", None, ["heartbeat"]),
            "phone": pick("(555) 010-1234", "555.010.1234", "12", None, 5550101234, ""),
            "contact": pick({"phone": "a1b22"}, {"phone": 7}, {}, "flat", {"phone": None}),
            "currency": pick("usd", "Eur", None, 3, ["usd"]),
            "email": pick("Ann@Example.COM", None, "", 12, {"a": 1}),
            "country": pick("DE", "US", "CA", "fr", None, ["DE"], {"c": 1}, 1),
            "vip": pick(True, False, "yes", None),
            "name": pick("Ada", " Ada ", None),
            "amount": pick("100", "7", "12.5", 80, None, "x"),
            "customer_id": pick("C1", "C2", "C404", 1, 1.0, True, None, "", _deep(3)),
            "strict_id": pick("C1", "C404", None),
            "ref": pick({"id": "C2"}, {"id": "C9"}, {"id": None}, None),
            "payload": pick({"channel": "web", "items": 2}, {"items": 1}, "none"),
        }
        for name, value in fields.items():
            if rng.random() < 0.8:
                payload[name] = value
        out.append(payload)
    return out


def _record(n: int, payload: dict[str, Any], source_id: str = "s") -> Record:
    return Record(
        record_id=f"{source_id}:{n}",
        source_id=source_id,
        correlation_id="c",
        ingested_at=0.0,
        payload=payload,
        event_time=None,
    )


@pytest.fixture
def enrichment(tmp_path: Path) -> Any:
    path = tmp_path / "customers.csv"
    path.write_text("id,name,tier\nC1,Ada,gold\nC2,Bob,silver\n1,One,bronze\ntrue,T,t\n")
    config = EnrichmentConfig.model_validate(
        {
            "name": "customers",
            "type": "csv",
            "connection": {"path": str(path), "key_column": "id"},
            "cache": {},
        }
    )
    cache = Enrichment({"customers": config}, BetaSettings.model_validate({}))
    yield cache
    cache.close()


def _reference_apply(rules: RuleSet, record: Record) -> Outcome:
    """The rules on one record, one rule after the other (the engine before the batch path)."""
    outcome = Outcome(applied=[], skipped=[])
    for rule in rules.rules:
        if not rule.matches(record):
            continue
        try:
            result = rule.transform.apply(record)
        except RecursionError:
            exc = TerminalError("transform_failed", "The record is nested too deeply.")
            outcome.failure, outcome.failed_rule = exc, rule.rule_id
            return outcome
        except TerminalError as exc:
            if rule.config.on_failure == "skip":
                outcome.skipped.append(rule.rule_id)
                continue
            outcome.failure, outcome.failed_rule = exc, rule.rule_id
            return outcome
        outcome.applied.append(rule.rule_id)
        record.lineage.append(LineageStep("beta", rule.rule_id, 0.0))
        if result == DROP:
            outcome.dropped = True
            return outcome
    return outcome


def _seen(record: Record, outcome: Outcome) -> tuple[Any, ...]:
    failure = outcome.failure
    return (
        json.dumps(record.payload, sort_keys=True, default=repr),
        [(step.stage, step.action) for step in record.lineage],
        outcome.applied,
        outcome.skipped,
        outcome.dropped,
        outcome.failed_rule,
        None if failure is None else (failure.reason, str(failure), failure.field),
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_apply_batch_gives_what_one_record_at_a_time_gives(seed: int, enrichment: Any) -> None:
    rules = RuleSet(RULES, enrichment=enrichment)
    payloads = _payloads(seed, 400)
    batch = [_record(i, copy.deepcopy(p)) for i, p in enumerate(payloads)]
    alone = [_record(i, copy.deepcopy(p)) for i, p in enumerate(payloads)]
    deep = _deep(5000)  # str() of it raises RecursionError: "nested too deeply"
    batch[7].payload, alone[7].payload = {"customer_id": deep}, {"customer_id": deep}

    outcomes = rules.apply_batch(batch)
    reference = [_reference_apply(rules, r) for r in alone]
    batch[7].payload["customer_id"] = alone[7].payload["customer_id"] = "deep"
    expected = [_seen(r, o) for r, o in zip(alone, reference, strict=True)]

    got = [_seen(r, o) for r, o in zip(batch, outcomes, strict=True)]
    assert got == expected
    # The inputs were varied enough to take every way out of the rules.
    assert any(o.dropped for o in outcomes)
    assert any(o.skipped for o in outcomes)
    assert {o.failed_rule for o in outcomes} >= {
        "EMAIL",
        "AMOUNT_INT",
        "ENRICH_STRICT",
        "NESTED_PHONE",
        "ENRICH",
    }
    assert outcomes[7].failure is not None and "nested too deeply" in str(outcomes[7].failure)
    # A record that failed or was dropped met no later rule.
    for o in outcomes:
        if o.failure is not None or o.dropped:
            assert "DONE" not in o.applied


def test_apply_is_a_batch_of_one(enrichment: Any) -> None:
    rules = RuleSet(RULES, enrichment=enrichment)
    payloads = _payloads(4, 200)
    single = [_record(i, copy.deepcopy(p)) for i, p in enumerate(payloads)]
    batch = [_record(i, copy.deepcopy(p)) for i, p in enumerate(payloads)]
    got = [_seen(r, rules.apply(r)) for r in single]
    assert got == [_seen(r, o) for r, o in zip(batch, rules.apply_batch(batch), strict=True)]


def test_the_records_of_a_batch_share_one_lineage_step_per_rule(enrichment: Any) -> None:
    rules = RuleSet(RULES, enrichment=enrichment)
    batch = [_record(i, {"customer_id": "C1", "currency": "usd"}) for i in range(5)]
    rules.apply_batch(batch)
    for position in range(len(batch[0].lineage)):
        steps = {id(record.lineage[position]) for record in batch}
        assert len(steps) == 1
    assert [s.action for s in batch[0].lineage] == [
        "LIFT_CHANNEL",
        "CURRENCY",
        "TAG_NOT_US",
        "NO_EMAIL",
        "enrichment:customers",
        "ENRICH",
        "DONE",
    ]


def test_rule_counts_are_the_same_in_a_batch(enrichment: Any) -> None:
    payloads = _payloads(5, 300)
    batched, single = RuleSet(RULES, enrichment=enrichment), RuleSet(RULES, enrichment=enrichment)
    batched.apply_batch([_record(i, copy.deepcopy(p)) for i, p in enumerate(payloads)])
    for i, p in enumerate(payloads):
        single.apply(_record(i, copy.deepcopy(p)))
    batched.flush_metrics()
    single.flush_metrics()
    assert batched.totals == single.totals
    assert {result for _, result in batched.totals} == {"applied", "skipped", "failed"}


def test_a_batch_looks_its_keys_up_once_per_rule(enrichment: Any) -> None:
    rules = RuleSet(RULES[11:12], enrichment=enrichment)  # ENRICH
    batch = [_record(i, {"customer_id": f"C{i % 3}"}) for i in range(30)]
    rules.apply_batch(batch)
    stats = enrichment.stats()["sources"]["customers"]
    assert stats["lookups"] == 30
    assert [r.payload.get("tier") for r in batch[:3]] == ["unknown", "gold", "silver"]


# -- the stage and quality scoring ------------------------------------------------------------

SCORING = QualityScoringConfig.model_validate(
    {
        "weights": {
            "completeness": 0.3,
            "consistency": 0.25,
            "conformance": 0.25,
            "timeliness": 0.2,
        },
        "thresholds": {"warn": 0.9, "error": 0.8, "reject": 0.75},
        "rules": {
            "completeness": {
                "required_fields": ["email", "country", "customer.name", "amount"],
                "penalty_per_missing": 0.15,
            },
            "consistency": {
                "rules": [
                    {
                        "name": "vip_named",
                        "when": {"vip": {"equals": True}},
                        "require": {"name": {"exists": True}},
                    }
                ]
            },
            "conformance": {"formats": {"email": "email", "amount": "integer"}},
            "timeliness": {"max_age_hours": 2, "penalty_per_hour": 0.05},
        },
    }
)
NOW = dt.datetime(2026, 11, 27, 12, tzinfo=dt.UTC).timestamp()
EVENT_TIMES = [
    None,
    "2026-11-27T11:30:00Z",
    "2026-11-27T01:00:00Z",
    "2026-11-26T01:00:00+02:00",
    " 2026-11-27T08:00:00Z ",
    "2026-11-27 05:00:00",
    "2026-11-27Z05:00:00",
    "2026-11-27Z",
    "yesterday",
    "",
]


def _reference_quality(scorer: QualityScorer, record: Record, now: float) -> Quality:
    """The per-record scoring the batch scorer replaced (completeness and timeliness as they
    were written; consistency and conformance are the same code either way)."""
    dims: dict[str, float] = {}
    checks: list[str] = []
    value = 1.0
    for field in scorer.required:
        if get_path(record.payload, field) in (None, ""):
            value -= scorer.penalty_missing
            checks.append(f"completeness: {field} is missing (-{scorer.penalty_missing:g})")
    dims["completeness"] = max(0.0, round(value, 6))
    dims["consistency"] = scorer._consistency([record], [checks], now)[0]
    dims["conformance"] = scorer._conformance([record], [checks], now)[0]
    raw = record.event_time if record.event_time is not None else record.payload.get("event_time")
    if raw is None:
        dims["timeliness"] = 1.0
    elif (at := _reference_epoch(raw)) is None:
        checks.append(f"timeliness: event time {raw!r} is not a timestamp (-1)")
        dims["timeliness"] = 0.0
    else:
        hours = (now - at) / 3600
        late = hours - scorer.max_age
        if late <= 0:
            dims["timeliness"] = 1.0
        else:
            lost = min(1.0, late * scorer.penalty_hour)
            checks.append(
                f"timeliness: {hours:.1f} h old, {late:.1f} h over max_age_hours (-{lost:.4g})"
            )
            dims["timeliness"] = max(0.0, round(1.0 - lost, 6))
    dims = {d: v for d, v in dims.items() if d in scorer.dimensions}
    checks = [c for c in checks if c.split(":")[0] in scorer.dimensions]
    score = sum(scorer.weights[d] * v for d, v in dims.items()) if scorer.weights else 1.0
    return Quality(score=round(score, 6), dimensions=dims, checks=checks)


class _Text(str):
    """Text that is not exactly ``str`` (read all the same)."""


def _reference_epoch(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) / (1000 if value > 1e11 else 1)
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


@pytest.mark.parametrize(
    "value",
    [
        *EVENT_TIMES,
        "2026-11-27T10:00:00.123456Z",
        "2026-11-27T10:00Z",
        "20261127T100000Z",
        "2026-11-27T10:00:00z",
        "2026-11-27T10:00:00Z\n",
        "2026-11-27T10:00:00-05:00",
        "2026-W48-5T10:00:00Z",
        "Z",
        "",
        "ZZ",
        _Text("2026-11-27T10:00:00Z"),
        1795773600,
        1795773600123,
        12.5,
        True,
        ["2026-11-27"],
    ],
)
def test_epoch_reads_what_it_read_before(value: Any) -> None:
    assert _epoch(value) == _reference_epoch(value)


def _scored_records(seed: int, n: int) -> list[Record]:
    rng = random.Random(seed)
    records = []
    for i, payload in enumerate(_payloads(seed, n)):
        record = _record(i, payload)
        where = rng.random()
        if where < 0.4:
            record.event_time = rng.choice(EVENT_TIMES)
        elif where < 0.7:
            payload["event_time"] = rng.choice([*EVENT_TIMES, 1795773600, "x", 3.5])
        records.append(record)
    return records


@pytest.mark.parametrize("seed", [11, 12])
def test_score_batch_gives_what_scoring_each_record_gave(seed: int) -> None:
    scorer = QualityScorer(SCORING)
    records = _scored_records(seed, 300)
    got = scorer.score_batch(records, NOW)
    expected = [_reference_quality(scorer, r, NOW) for r in records]
    assert got == expected
    assert len({q.score for q in got}) > 10  # not one score for all
    assert any(c.startswith("timeliness: event time") for q in got for c in q.checks)
    assert any(c.startswith("completeness: customer.name") for q in got for c in q.checks)


@pytest.mark.parametrize(
    "settings",
    [
        {"enabled_dimensions": ["timeliness", "completeness"]},
        {"disabled_dimensions": ["completeness"]},
        # The only active dimension weighs nothing: every record scores 1.0.
        {"enabled_dimensions": ["timeliness"], "weights": {"completeness": 1.0}},
    ],
)
def test_score_batch_with_some_dimensions(settings: dict[str, Any]) -> None:
    config = SCORING.model_dump()
    config.update(settings)
    if "weights" not in settings:
        config["weights"] = SCORING.weights
    scorer = QualityScorer(QualityScoringConfig.model_validate(config))
    records = _scored_records(13, 100)
    expected = [_reference_quality(scorer, r, NOW) for r in records]
    assert scorer.score_batch(records, NOW) == expected
    assert [scorer.score(r, NOW) for r in records] == expected


def test_process_batch_gives_what_process_gives(enrichment: Any) -> None:
    stage = Stage(RuleSet(RULES, enrichment=enrichment), QualityScorer(SCORING))
    batch, alone = _scored_records(21, 300), _scored_records(21, 300)

    results = stage.process_batch(batch, NOW)
    one_by_one = [stage.process(r, NOW) for r in alone]

    def seen(result: Any) -> tuple[Any, ...]:
        return (
            _seen(result.record, result.outcome),
            result.verdict,
            result.reason,
            result.message,
            result.level,
            result.record.quality,
        )

    assert [seen(r) for r in results] == [seen(r) for r in one_by_one]
    assert {r.verdict for r in results} == {"delivered", "dlq", "dropped"}
    assert "quality_rejected" in {r.reason for r in results}
    assert len({r.seconds for r in results}) == 1  # each record's share of the batch's time


def test_quality_stats_add_the_same_whatever_the_dimensions() -> None:
    scorer = QualityScorer(SCORING)
    records = _scored_records(31, 200)
    for record, quality in zip(records, scorer.score_batch(records, NOW), strict=True):
        record.quality = quality
    mixed = [_record(900, {}), _record(901, {})]
    mixed[0].quality = Quality(score=0.5, dimensions={"completeness": 0.5}, checks=["x (-1)"])
    mixed[1].quality = Quality(score=0.25, dimensions={}, checks=[])

    def add(batches: list[list[Record]]) -> dict[str, Any]:
        stats = QualityStats()
        for batch in batches:
            stats.add([(r, scorer.level(r.quality.score if r.quality else 0)) for r in batch], 1.0)
        return {
            "stats": stats.stats(scorer),
            "dims": stats.dimensions(scorer),
            "distribution": stats.distribution(),
        }

    together = add([records + mixed])
    # The same records one by one: each batch takes the other branch of add.
    one_by_one = add([[r] for r in records + mixed])
    assert together == one_by_one
    top = {c["check"]: c["count"] for c in together["dims"]["top_failed_checks"]}
    assert top["timeliness: older than max_age_hours"] > 1
    assert top["x"] == 1
