"""The stage verdicts: delivered, DLQ on a failed rule (with its id), dropped, quality reject."""

from __future__ import annotations

from dps.beta.quality import QualityScorer
from dps.beta.rules import RuleSet
from dps.beta.stage import Stage
from dps.config.models import QualityScoringConfig, RuleConfig
from dps.core.record import Record


def _record(payload: dict[str, object]) -> Record:
    return Record(
        record_id="s:1", source_id="s", correlation_id="c", ingested_at=0.0, payload=dict(payload)
    )


SCORING = QualityScoringConfig.model_validate(
    {
        "enabled_dimensions": ["completeness"],
        "thresholds": {"warn": 0.9, "error": 0.7, "reject": 0.5},
        "rules": {"completeness": {"required_fields": ["a", "b", "c"], "penalty_per_missing": 0.3}},
    }
)
CAST = RuleConfig.model_validate(
    {
        "rule_id": "TRX_CAST",
        "transform": {"type": "cast", "config": {"field": "a", "to": "int"}},
        "on_failure": "fail",
    }
)


def test_verdicts() -> None:
    stage = Stage(RuleSet([CAST]), QualityScorer(SCORING))
    good = stage.process(_record({"a": "1", "b": 1, "c": 1}))
    assert (good.verdict, good.level, good.record.payload["a"]) == ("delivered", "ok", 1)
    warn = stage.process(_record({"a": "1", "b": 1}))
    assert (warn.verdict, warn.level) == ("delivered", "warn")  # 0.7: not below error
    failed = stage.process(_record({"a": "x"}))
    assert (failed.verdict, failed.reason) == ("dlq", "rule_failed:TRX_CAST")
    assert "TRX_CAST" in failed.message and "cannot be cast to int" in failed.message
    rejected = stage.process(_record({"a": "1"}))
    assert (rejected.verdict, rejected.reason, rejected.level) == (
        "dlq",
        "quality_rejected",
        "reject",
    )
    assert "completeness 0.4" in rejected.message
    assert "completeness: b is missing (-0.3)" in rejected.message
    assert rejected.record.quality is not None and len(rejected.record.quality.checks) == 2
