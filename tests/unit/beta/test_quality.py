"""Quality scoring: the four dimensions, weights, enabled/disabled dimensions, thresholds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from dps.beta.quality import QualityScorer, QualityStats
from dps.config import load_file
from dps.config.models import QualityScoringConfig
from dps.core.errors import ConfigError
from dps.core.record import Quality, Record, decode, encode

# The manual's Runbook B.3 scoring file.
B3_SCORING = """\
quality_scoring:
  weights:
    completeness: 0.30
    consistency: 0.25
    conformance: 0.25
    timeliness: 0.20

  thresholds:
    warn: 0.7
    error: 0.5
    reject: 0.3

  rules:
    completeness:
      required_fields:
        - customer_id
        - transaction_date
        - amount
      penalty_per_missing: 0.2

    timeliness:
      max_age_hours: 24
      penalty_per_hour: 0.01
"""

COMPLETE = {"customer_id": "C-1", "transaction_date": "2026-11-27", "amount": 10}


NOW = 1_800_000_000.0  # a fixed "now" for timeliness


def _record(payload: dict[str, Any], event_time: str | None = None) -> Record:
    return Record(
        record_id="s:1",
        source_id="s",
        correlation_id="c",
        ingested_at=0.0,
        payload=payload,
        event_time=event_time,
    )


def _iso(hours_ago: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(NOW - hours_ago * 3600, dt.UTC).isoformat()


def _scorer(**scoring: Any) -> QualityScorer:
    return QualityScorer(QualityScoringConfig.model_validate(scoring))


@pytest.fixture
def b3(tmp_path: Path) -> QualityScorer:
    path = tmp_path / "beta" / "quality" / "scoring.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(B3_SCORING)
    config = load_file(path)
    assert isinstance(config, QualityScoringConfig)
    return QualityScorer(config)


def test_a_complete_fresh_record_scores_one_on_every_dimension(b3: QualityScorer) -> None:
    quality = b3.score(_record(COMPLETE, event_time=_iso(1)), now=NOW)
    assert quality.score == 1.0
    assert quality.dimensions == {
        "completeness": 1.0,
        "consistency": 1.0,
        "conformance": 1.0,
        "timeliness": 1.0,
    }
    assert quality.checks == []


@pytest.mark.parametrize(
    ("drop", "completeness"),
    [
        (["amount"], 0.8),
        (["amount", "customer_id"], 0.6),
        (["amount", "customer_id", "transaction_date"], 0.4),
    ],
)
def test_each_missing_required_field_costs_the_penalty_weighted(
    b3: QualityScorer, drop: list[str], completeness: float
) -> None:
    payload = {k: v for k, v in COMPLETE.items() if k not in drop}

    quality = b3.score(_record(payload), now=NOW)

    assert quality.dimensions["completeness"] == pytest.approx(completeness)
    assert quality.score == pytest.approx(0.30 * completeness + 0.70)
    assert [c.split(":")[0] for c in quality.checks] == ["completeness"] * len(drop)
    assert f"completeness: {drop[0]} is missing (-0.2)" in quality.checks


@pytest.mark.parametrize("empty", [None, ""])
def test_null_and_empty_string_count_as_missing(b3: QualityScorer, empty: Any) -> None:
    quality = b3.score(_record(COMPLETE | {"amount": empty}))
    assert quality.dimensions["completeness"] == pytest.approx(0.8)


@pytest.mark.parametrize("falsy", [0, False, [], {}])
def test_other_falsy_values_are_present(b3: QualityScorer, falsy: Any) -> None:
    assert b3.score(_record(COMPLETE | {"amount": falsy})).score == 1.0


def test_completeness_is_floored_at_zero() -> None:
    scorer = _scorer(
        weights={"completeness": 1.0, "consistency": 0, "conformance": 0, "timeliness": 0},
        rules={"completeness": {"required_fields": ["a", "b", "c"], "penalty_per_missing": 0.5}},
    )
    assert scorer.score(_record({})).score == 0.0


def test_nested_required_fields_are_read_by_path() -> None:
    scorer = _scorer(
        enabled_dimensions=["completeness"],
        rules={"completeness": {"required_fields": ["customer.id", "customer.email"]}},
    )
    assert scorer.score(_record({"customer": {"id": 1, "email": "a@b"}})).score == 1.0
    assert scorer.score(_record({"customer": {"id": 1}})).score == pytest.approx(0.8)
    assert scorer.score(_record({"customer": "C-1"})).score == pytest.approx(0.6)


def test_without_a_scoring_file_completeness_alone_counts_and_scores_one() -> None:
    quality = QualityScorer(None).score(_record({}))
    assert quality.score == 1.0


# -- timeliness --------------------------------------------------------------------------------


@pytest.mark.parametrize(("hours", "expected"), [(1, 1.0), (24, 1.0), (34, 0.9), (200, 0.0)])
def test_timeliness_loses_penalty_per_hour_beyond_max_age(
    b3: QualityScorer, hours: float, expected: float
) -> None:
    quality = b3.score(_record(COMPLETE, event_time=_iso(hours)), now=NOW)
    assert quality.dimensions["timeliness"] == pytest.approx(expected)
    assert quality.score == pytest.approx(0.8 + 0.2 * expected)
    if expected < 1:
        assert any(c.startswith("timeliness: ") for c in quality.checks)


def test_timeliness_reads_a_configured_payload_field() -> None:
    scorer = _scorer(
        enabled_dimensions=["timeliness"],
        rules={"timeliness": {"field": "meta.ts", "max_age_hours": 1, "penalty_per_hour": 0.5}},
    )
    assert scorer.score(_record({"meta": {"ts": _iso(2)}}), now=NOW).score == pytest.approx(0.5)
    bad = scorer.score(_record({"meta": {"ts": "yesterday"}}), now=NOW)
    assert bad.score == 0.0 and "not a timestamp" in bad.checks[0]


# -- consistency -------------------------------------------------------------------------------


def test_consistency_compares_fields_and_requires_conditions() -> None:
    scorer = _scorer(
        enabled_dimensions=["consistency"],
        rules={
            "consistency": {
                "penalty_per_failure": 0.3,
                "rules": [
                    {
                        "name": "ship_after_order",
                        "compare": {"left": "ship_date", "op": "gte", "right": "order_date"},
                    },
                    {
                        "name": "refund_is_negative",
                        "when": {"field": "kind", "condition": "equals", "value": "refund"},
                        "require": {"field": "amount", "condition": "lt", "value": 0},
                        "penalty": 0.5,
                    },
                ],
            }
        },
    )
    good = {"order_date": "2024-01-01", "ship_date": "2024-01-02", "kind": "refund", "amount": -5}
    assert scorer.score(_record(good)).score == 1.0
    bad = good | {"ship_date": "2023-12-31", "amount": 5}
    quality = scorer.score(_record(bad))
    assert quality.score == pytest.approx(0.2)
    assert quality.checks == [
        "consistency: ship_after_order failed (-0.3)",
        "consistency: refund_is_negative failed (-0.5)",
    ]
    # Not a refund: the conditional check does not apply; a missing field is not inconsistent.
    assert scorer.score(_record({"kind": "sale", "amount": 5})).score == 1.0


def test_a_consistency_check_needs_exactly_one_test() -> None:
    with pytest.raises(ValueError, match="exactly one of require and compare"):
        _scorer(rules={"consistency": {"rules": [{"name": "x"}]}})
    with pytest.raises(ValueError, match="not a comparison"):
        _scorer(
            rules={
                "consistency": {
                    "rules": [{"name": "x", "compare": {"left": "a", "op": "~", "right": "b"}}]
                }
            }
        )


# -- conformance -------------------------------------------------------------------------------


def test_conformance_checks_named_formats_and_regexes() -> None:
    scorer = _scorer(
        enabled_dimensions=["conformance"],
        rules={
            "conformance": {
                "formats": {"email": "email", "phone": "e164", "sku": "^SKU-[0-9]+$"},
                "penalty_per_violation": 0.25,
            }
        },
    )
    ok = {"email": "a@b.co", "phone": "+15551234567", "sku": "SKU-9"}
    assert scorer.score(_record(ok)).score == 1.0
    quality = scorer.score(_record({"email": "nope", "phone": "555", "sku": "SKU-9"}))
    assert quality.score == pytest.approx(0.5)
    assert quality.checks == [
        "conformance: email is not email (-0.25)",
        "conformance: phone is not e164 (-0.25)",
    ]


def test_conformance_checks_the_payload_against_a_json_schema(tmp_path: Path) -> None:
    (tmp_path / "order.json").write_text(
        '{"type": "object", "required": ["id"], "properties": {"id": {"type": "integer"}}}'
    )
    config = QualityScoringConfig.model_validate(
        {
            "enabled_dimensions": ["conformance"],
            "rules": {"conformance": {"schema_ref": "order.json"}},
        }
    )
    scorer = QualityScorer(config, tmp_path)
    assert scorer.score(_record({"id": 1})).score == 1.0
    quality = scorer.score(_record({"id": "x"}))
    assert quality.score == pytest.approx(0.5)
    assert quality.checks[0].startswith("conformance: schema: ")
    with pytest.raises(ConfigError, match="schema_ref"):
        QualityScorer(config, tmp_path / "missing")


def test_a_batch_scores_each_record_as_it_scores_alone(tmp_path: Path) -> None:
    """Consistency and conformance run check by check over the whole batch: every record's
    dimensions and checks (in order) are those it gets scored on its own."""
    (tmp_path / "order.json").write_text(
        '{"type": "object", "properties": {"amount": {"type": "number"}}}'
    )
    config = QualityScoringConfig.model_validate(
        {
            "rules": {
                "consistency": {
                    "penalty_per_failure": 0.3,
                    "rules": [
                        {
                            "name": "ship_after_order",
                            "compare": {"left": "ship_date", "op": "gte", "right": "order_date"},
                        },
                        {
                            "name": "refund_is_negative",
                            "when": {"field": "kind", "condition": "equals", "value": "refund"},
                            "require": {"field": "amount", "condition": "lt", "value": 0},
                            "penalty": 0.5,
                        },
                    ],
                },
                "conformance": {
                    "formats": {"email": "email", "meta.code": "^[A-Z]+$", "amount": "integer"},
                    "penalty_per_violation": 0.25,
                    "schema_ref": "order.json",
                },
            }
        }
    )
    scorer = QualityScorer(config, tmp_path)
    payloads = [
        {"order_date": "2024-01-02", "ship_date": "2024-01-01", "kind": "refund", "amount": 5},
        {"email": "a@b.co", "meta": {"code": "AB"}, "amount": -3, "kind": "refund"},
        {"email": "nope", "meta": {"code": "ab"}, "amount": "x"},
        {"kind": "sale", "amount": 2.5, "meta": {"code": 7}},
        {},
        {"email": "c@d.ef", "kind": "refund", "amount": -1, "ship_date": "2024-02-01"},
    ]
    records = [_record(p) for p in payloads]
    together = scorer.score_batch(records, NOW)
    alone = [scorer.score_batch([_record(p)], NOW)[0] for p in payloads]
    assert together == alone
    assert [len(q.checks) for q in together] == [2, 0, 4, 2, 0, 0]


# -- dimensions on and off (H.2), weights ------------------------------------------------------


def test_h2_disabled_timeliness_is_neither_scored_nor_reported(b3: QualityScorer) -> None:
    scorer = _scorer(
        weights={"completeness": 0.3, "consistency": 0.25, "conformance": 0.25, "timeliness": 0.2},
        enabled_dimensions=["completeness", "conformance"],
        disabled_dimensions=["timeliness"],
        rules={"completeness": {"required_fields": ["a"]}},
    )
    quality = scorer.score(_record({}, event_time=_iso(500)), now=NOW)
    assert set(quality.dimensions) == {"completeness", "conformance"}
    # weights renormalised over the two: 0.3/0.55 * 0.8 + 0.25/0.55 * 1.0
    assert quality.score == pytest.approx((0.3 * 0.8 + 0.25) / 0.55)


def test_a_zero_weight_dimension_is_reported_but_does_not_count() -> None:
    scorer = _scorer(
        weights={"completeness": 0, "consistency": 0.5, "conformance": 0.5, "timeliness": 0},
        rules={"completeness": {"required_fields": ["a"]}},
    )
    quality = scorer.score(_record({}))
    assert quality.score == 1.0
    assert quality.dimensions["completeness"] == pytest.approx(0.8)


# -- thresholds and the explanation travelling with the record --------------------------------


@pytest.mark.parametrize(
    ("score", "level"),
    [(0.9, "ok"), (0.7, "ok"), (0.69, "warn"), (0.49, "error"), (0.29, "reject")],
)
def test_levels_from_the_b3_thresholds(b3: QualityScorer, score: float, level: str) -> None:
    assert b3.level(score) == level


class OldQuality(msgspec.Struct, kw_only=True):
    score: float
    dimensions: dict[str, float] = {}


class OldRecord(msgspec.Struct, kw_only=True):
    record_id: str
    source_id: str
    correlation_id: str
    ingested_at: float
    payload: dict[str, Any]
    quality: OldQuality | None = None


def test_the_breakdown_survives_the_codec_and_old_records_still_decode() -> None:
    record = _record({})
    record.quality = Quality(score=0.5, dimensions={"completeness": 0.5}, checks=["x (-0.5)"])
    again = decode(encode(record))
    assert again.quality == record.quality

    old = msgspec.msgpack.encode(
        OldRecord(
            record_id="r",
            source_id="s",
            correlation_id="c",
            ingested_at=0.0,
            payload={},
            quality=OldQuality(score=0.9, dimensions={"completeness": 0.9}),
        )
    )
    decoded = decode(old)
    assert decoded.quality is not None and decoded.quality.checks == []
    # and a reader without the field skips it
    assert msgspec.msgpack.decode(encode(record), type=OldRecord).quality is not None


# -- what the E.2 endpoints show ------------------------------------------------------------------


def test_e2_stats_distribution_dimensions_and_low_scores(b3: QualityScorer) -> None:
    stats = QualityStats()
    # Six records, each late by another number of hours, two without transaction_date.
    records = [
        _record(
            {**COMPLETE, "transaction_date": None if n % 3 == 0 else "2026-11-27"},
            event_time=_iso(30 + n),
        )
        for n in range(6)
    ]
    scored = []
    for record in records:
        record.quality = b3.score(record, now=NOW)
        scored.append((record, b3.level(record.quality.score)))
    stats.add(scored, 1.0)

    summary = stats.stats(b3)
    assert summary["records_scored"] == 6
    assert summary["levels"]["ok"] == 6
    assert sum(b["count"] for b in stats.distribution()["buckets"]) == 6
    dimensions = stats.dimensions(b3)
    assert dimensions["dimensions"]["completeness"]["average"] == pytest.approx((4 + 2 * 0.8) / 6)
    # Each record's age is its own, but the checks that cost points are ranked by kind.
    assert dimensions["top_failed_checks"] == [
        {"check": "timeliness: older than max_age_hours", "count": 6},
        {"check": "completeness: transaction_date is missing", "count": 2},
    ]
    low = stats.low_scores(0.99, 10)
    assert low["count"] == 6
    assert any(c.startswith("timeliness: 35.0 h old") for c in low["records"][0]["checks"])


def test_unreadable_timestamps_are_one_kind_of_failed_check() -> None:
    scorer = _scorer(
        enabled_dimensions=["timeliness"],
        rules={"timeliness": {"field": "ts", "max_age_hours": 1, "penalty_per_hour": 0.5}},
    )
    stats = QualityStats()
    batch = []
    for text in ("yesterday", "soon", "n/a"):
        record = _record({"ts": text})
        record.quality = scorer.score(record, now=NOW)
        batch.append((record, scorer.level(record.quality.score)))
    stats.add(batch, 1.0)
    assert stats.dimensions(scorer)["top_failed_checks"] == [
        {"check": "timeliness: event time is not a timestamp", "count": 3}
    ]
