"""Quality scoring: completeness only, weights renormalised over the computed dimensions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dps.beta.quality import QualityScorer
from dps.config import load_file
from dps.config.models import QualityScoringConfig
from dps.core.record import Record

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


def _record(payload: dict[str, Any]) -> Record:
    return Record(
        record_id="s:1", source_id="s", correlation_id="c", ingested_at=0.0, payload=payload
    )


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


def test_a_complete_record_scores_one(b3: QualityScorer) -> None:
    quality = b3.score(_record(COMPLETE))
    assert quality.score == 1.0
    assert quality.dimensions == {"completeness": 1.0}


@pytest.mark.parametrize(
    ("drop", "expected"),
    [
        (["amount"], 0.8),
        (["amount", "customer_id"], 0.6),
        (["amount", "customer_id", "transaction_date"], 0.4),
    ],
)
def test_each_missing_required_field_costs_the_penalty(
    b3: QualityScorer, drop: list[str], expected: float
) -> None:
    payload = {k: v for k, v in COMPLETE.items() if k not in drop}

    quality = b3.score(_record(payload))

    # Only completeness is computed, so its weight (0.30) is renormalised to 1.
    assert quality.score == pytest.approx(expected)
    assert quality.dimensions == {"completeness": pytest.approx(expected)}


@pytest.mark.parametrize("empty", [None, ""])
def test_null_and_empty_string_count_as_missing(b3: QualityScorer, empty: Any) -> None:
    assert b3.score(_record(COMPLETE | {"amount": empty})).score == pytest.approx(0.8)


@pytest.mark.parametrize("falsy", [0, False, [], {}])
def test_other_falsy_values_are_present(b3: QualityScorer, falsy: Any) -> None:
    assert b3.score(_record(COMPLETE | {"amount": falsy})).score == 1.0


def test_unrated_dimensions_are_not_reported() -> None:
    quality = _scorer(rules={"completeness": {"required_fields": ["a"]}}).score(_record({}))
    assert set(quality.dimensions) == {"completeness"}


def test_completeness_is_floored_at_zero() -> None:
    scorer = _scorer(
        rules={"completeness": {"required_fields": ["a", "b", "c"], "penalty_per_missing": 0.5}}
    )
    assert scorer.score(_record({})).score == 0.0


def test_nested_required_fields_are_read_by_path() -> None:
    scorer = _scorer(rules={"completeness": {"required_fields": ["customer.id", "customer.email"]}})

    assert scorer.score(_record({"customer": {"id": 1, "email": "a@b"}})).score == 1.0
    assert scorer.score(_record({"customer": {"id": 1}})).score == pytest.approx(0.8)
    assert scorer.score(_record({"customer": "C-1"})).score == pytest.approx(0.6)


def test_without_a_scoring_file_every_record_scores_one() -> None:
    quality = QualityScorer(None).score(_record({}))
    assert (quality.score, quality.dimensions) == (1.0, {"completeness": 1.0})


def test_disabled_completeness_leaves_nothing_to_score() -> None:
    scorer = _scorer(
        disabled_dimensions=["completeness"],
        rules={"completeness": {"required_fields": ["a"]}},
    )
    quality = scorer.score(_record({}))
    assert (quality.score, quality.dimensions) == (1.0, {})


def test_enabled_dimensions_without_completeness_leave_nothing_to_score() -> None:
    scorer = _scorer(
        enabled_dimensions=["timeliness"], rules={"completeness": {"required_fields": ["a"]}}
    )
    assert scorer.score(_record({})).score == 1.0


def test_the_score_is_the_completeness_whatever_its_positive_weight() -> None:
    for weight in (0.1, 0.3, 1.0):
        rest = (1 - weight) / 3
        scorer = _scorer(
            weights={
                "completeness": weight,
                "consistency": rest,
                "conformance": rest,
                "timeliness": rest,
            },
            rules={"completeness": {"required_fields": ["a", "b"], "penalty_per_missing": 0.25}},
        )
        assert scorer.score(_record({"a": 1})).score == pytest.approx(0.75)


def test_a_zero_weight_completeness_does_not_count() -> None:
    scorer = _scorer(
        weights={"completeness": 0, "consistency": 0.5, "conformance": 0.5, "timeliness": 0},
        rules={"completeness": {"required_fields": ["a"]}},
    )

    quality = scorer.score(_record({}))

    assert quality.score == 1.0  # not 0.0: no computed dimension carries weight
    assert quality.dimensions == {"completeness": pytest.approx(0.8)}
