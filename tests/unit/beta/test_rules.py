"""The rule engine: priority order, enabled, on_failure, lineage, drop, per-rule metrics.

Rules are written as YAML files into a CONFIG_DIR and loaded with ``load_config``, the way Beta
gets them (the loader puts them in priority order).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

from dps.beta.rules import CompiledRule, RuleSet
from dps.beta.transforms.base import DROP, Transform
from dps.config import load_config
from dps.config.models import RuleConfig
from dps.core.record import Record

# A regex_replace that fails (TerminalError) on a non-string phone.
PHONE = {
    "type": "regex_replace",
    "config": {"pattern": r"^(\d{3})(\d{4})$", "replacement": "$1-$2"},
}
HAS_PHONE = {"field": "phone", "condition": "exists"}


def _set(field: str, value: Any = None, *, template: str | None = None) -> dict[str, Any]:
    config = (
        {"field": field, "template": template} if template else {"field": field, "value": value}
    )
    return {"type": "set", "config": config}


def _rule(rule_id: str, transform: dict[str, Any], **settings: Any) -> dict[str, Any]:
    return {"rule_id": rule_id, "enabled": True, "transform": transform, **settings}


def _load_rules(tmp_path: Path, *rules: dict[str, Any]) -> list[RuleConfig]:
    folder = tmp_path / "config" / "beta" / "transforms" / "rules"
    folder.mkdir(parents=True)
    for index, rule in enumerate(rules):  # not "<id>.yaml": "*_test.yaml" files are rule tests
        (folder / f"rule_{index}.yaml").write_text(yaml.safe_dump(rule))
    return load_config(tmp_path / "config").beta.rules


def _record(payload: dict[str, Any]) -> Record:
    return Record(
        record_id="s:1", source_id="s", correlation_id="c", ingested_at=0.0, payload=payload
    )


def test_rules_apply_highest_priority_first_ties_by_rule_id(tmp_path: Path) -> None:
    rules = _load_rules(
        tmp_path,
        _rule("R_LOW", _set("trail", template="{trail}>low"), priority=1),
        _rule("R_HIGH", _set("trail", "high"), priority=900),
        _rule("R_MID_B", _set("trail", template="{trail}>b"), priority=50),
        _rule("R_MID_A", _set("trail", template="{trail}>a"), priority=50),
    )
    record = _record({})

    outcome = RuleSet(rules).apply(record)

    assert outcome.applied == ["R_HIGH", "R_MID_A", "R_MID_B", "R_LOW"]
    assert record.payload["trail"] == "high>a>b>low"


def test_a_rule_sees_what_a_higher_priority_rule_did(tmp_path: Path) -> None:
    rules = _load_rules(
        tmp_path,
        _rule(
            "TAG",
            _set("tagged", "yes"),
            priority=100,
            match={"field": "customer_id", "condition": "exists"},
        ),
        _rule(
            "RENAME",
            {"type": "rename", "config": {"to": "customer_id"}},
            priority=900,
            match={"field": "cust", "condition": "exists"},
        ),
    )
    record = _record({"cust": "C-1"})

    outcome = RuleSet(rules).apply(record)

    assert outcome.applied == ["RENAME", "TAG"]
    assert record.payload == {"customer_id": "C-1", "tagged": "yes"}


def test_disabled_rules_are_not_applied(tmp_path: Path) -> None:
    rules = _load_rules(
        tmp_path,
        _rule("ON", _set("a", 1)),
        _rule("OFF", _set("b", 2), enabled=False),
    )
    ruleset = RuleSet(rules)
    record = _record({})

    outcome = ruleset.apply(record)

    assert [r.rule_id for r in ruleset.rules] == ["ON"]
    assert outcome.applied == ["ON"]
    assert record.payload == {"a": 1}


def test_a_rule_whose_match_fails_is_neither_applied_nor_skipped(tmp_path: Path) -> None:
    rules = _load_rules(
        tmp_path,
        _rule(
            "EU",
            _set("region", "EU"),
            match={"field": "country", "condition": "in", "value": ["DE", "FR"]},
        ),
    )
    ruleset = RuleSet(rules)
    us, de = _record({"country": "US"}), _record({"country": "DE"})

    us_outcome, de_outcome = ruleset.apply(us), ruleset.apply(de)

    assert (us_outcome.applied, us_outcome.skipped, us.payload) == ([], [], {"country": "US"})
    assert us.lineage == []
    assert de_outcome.applied == ["EU"] and de.payload["region"] == "EU"


def test_on_failure_skip_skips_the_rule_and_goes_on(tmp_path: Path) -> None:
    rules = _load_rules(
        tmp_path,
        _rule("PHONE", PHONE, priority=10, match=HAS_PHONE, on_failure="skip"),
        _rule("AFTER", _set("after", "yes"), priority=1),
    )
    record = _record({"phone": 5551234})

    outcome = RuleSet(rules).apply(record)

    assert outcome.failure is None and not outcome.dropped
    assert outcome.skipped == ["PHONE"]
    assert outcome.applied == ["AFTER"]
    assert record.payload == {"phone": 5551234, "after": "yes"}
    assert [step.action for step in record.lineage] == ["AFTER"]


def test_on_failure_defaults_to_skip(tmp_path: Path) -> None:
    (rule,) = _load_rules(tmp_path, _rule("PHONE", PHONE, match=HAS_PHONE))
    assert rule.on_failure == "skip"
    assert RuleSet([rule]).apply(_record({"phone": 1})).skipped == ["PHONE"]


@pytest.mark.parametrize("on_failure", ["fail", "dlq"])
def test_on_failure_fail_or_dlq_stops_the_record_with_the_reason(
    tmp_path: Path, on_failure: str
) -> None:
    rules = _load_rules(
        tmp_path,
        _rule("FIRST", _set("first", "yes"), priority=20),
        _rule("PHONE", PHONE, priority=10, match=HAS_PHONE, on_failure=on_failure),
        _rule("AFTER", _set("after", "yes"), priority=1),
    )
    record = _record({"phone": 5551234})

    outcome = RuleSet(rules).apply(record)

    assert outcome.failed_rule == "PHONE"
    assert outcome.failure is not None
    assert outcome.failure.reason == "transform_failed"
    assert "phone is a int; expected a string" in str(outcome.failure)
    assert outcome.applied == ["FIRST"] and outcome.skipped == []
    assert "after" not in record.payload


def test_a_good_record_passes_a_fail_rule(tmp_path: Path) -> None:
    (rule,) = _load_rules(tmp_path, _rule("PHONE", PHONE, match=HAS_PHONE, on_failure="fail"))
    record = _record({"phone": "5551234"})

    outcome = RuleSet([rule]).apply(record)

    assert outcome.failure is None and outcome.applied == ["PHONE"]
    assert record.payload == {"phone": "555-1234"}


def test_lineage_records_each_applied_rule_in_order(tmp_path: Path) -> None:
    rules = _load_rules(
        tmp_path,
        _rule("B_SECOND", _set("b", 2), priority=1),
        _rule("A_FIRST", _set("a", 1), priority=2),
        _rule("NOT_MATCHING", _set("c", 3), match={"field": "nope", "condition": "exists"}),
    )
    record = _record({})

    RuleSet(rules).apply(record)

    assert [(step.stage, step.action) for step in record.lineage] == [
        ("beta", "A_FIRST"),
        ("beta", "B_SECOND"),
    ]
    assert record.lineage[0].at <= record.lineage[1].at


class _DropEverything(Transform):
    def apply(self, record: Record) -> str | None:
        return DROP


def test_a_transform_returning_drop_stops_the_rules(tmp_path: Path) -> None:
    rules = _load_rules(
        tmp_path,
        _rule("DROP_TEST", _set("x", 1), priority=5),
        _rule("LATER", _set("later", "yes"), priority=1),
    )
    ruleset = RuleSet(rules)
    first = ruleset.rules[0]
    ruleset.rules[0] = CompiledRule(first.config, first.matches, _DropEverything(None, None))
    ruleset._plan = ruleset._unpack()
    record = _record({})

    outcome = ruleset.apply(record)

    assert outcome.dropped and outcome.applied == ["DROP_TEST"]
    assert record.payload == {}


def _applications(rule_id: str, rule_type: str, target_field: str, result: str) -> float | None:
    labels = {
        "rule_id": rule_id,
        "rule_type": rule_type,
        "target_field": target_field,
        "result": result,
    }
    return REGISTRY.get_sample_value("beta_rule_applications_total", labels)


def test_rules_with_metrics_emit_are_counted_once_per_flush(tmp_path: Path) -> None:
    metrics = {"emit": True, "tags": {"rule_type": "normalization"}}
    rules = _load_rules(
        tmp_path,
        _rule("TRX_METRIC_TEST", PHONE, match=HAS_PHONE, metrics=metrics),
        _rule("TRX_SILENT", _set("x", 1)),
    )
    ruleset = RuleSet(rules)

    def count(result: str) -> float:
        return _applications("TRX_METRIC_TEST", "normalization", "phone", result) or 0.0

    applied, skipped = count("applied"), count("skipped")
    for phone in ("5551234", "5559876", 42):
        ruleset.apply(_record({"phone": phone}))
    assert count("applied") == applied  # not until the flush

    ruleset.flush_metrics()
    ruleset.flush_metrics()  # a second flush adds nothing

    assert count("applied") == applied + 2
    assert count("skipped") == skipped + 1
    assert _applications("TRX_SILENT", "set", "", "applied") is None
