"""``compile_batch_condition``: over a batch, exactly what the per-record predicate answers."""

from __future__ import annotations

from typing import Any

import pytest

from dps.core.conditions import ConditionError, compile_batch_condition, compile_condition
from dps.core.record import Quality, Record

VALUES: list[Any] = [
    "DE",
    "US",
    "",
    None,
    0,
    1,
    1.0,
    0.5,
    -2.5,
    float("nan"),
    2**60 + 1,
    True,
    False,
    ["DE"],
    {"c": "DE"},
    "heartbeat",
    b"DE",
]


def _records() -> list[Record]:
    records = []
    for i, value in enumerate(VALUES):
        for present in (True, False):
            payload: dict[str, Any] = {"other": i}
            if present:
                payload.update(country=value, type=value, nested={"country": value})
            records.append(
                Record(
                    record_id=f"s{i % 3}:{i}",
                    source_id=f"s{i % 3}",
                    correlation_id="c",
                    ingested_at=0.0,
                    payload=payload,
                    quality=Quality(score=i / 20) if i % 2 else None,
                )
            )
    return records


SPECS: list[Any] = [
    None,
    {},
    {"field": "country", "condition": "exists"},
    {"field": "country"},
    {"field": "country", "condition": "not_exists"},
    {"field": "payload.country", "condition": "equals", "value": "DE"},
    {"field": "country", "condition": "equals", "value": 1},
    {"field": "country", "condition": "not_equals", "value": "DE"},
    {"field": "country", "condition": "in", "value": ["DE", "FR", 1]},
    {"field": "country", "condition": "in", "value": [["DE"], "FR"]},  # unhashable members
    {"field": "country", "condition": "not_in", "value": ["DE", None]},
    {"field": "country", "condition": "regex", "value": "^D"},
    {"field": "country", "condition": "gt", "value": 0},
    {"field": "country", "condition": "gte", "value": 0.5},
    {"field": "country", "condition": "lt", "value": 1},
    {"field": "country", "condition": "lte", "value": -2.5},
    {"field": "nested.country", "condition": "gt", "value": 0.25},
    {"country": {"lt": 2**60}},
    {"field": "nested.country", "condition": "exists"},
    {"field": "nested.country", "condition": "in", "value": ["DE"]},
    {"field": "source_id", "condition": "exists"},
    {"field": "source_id", "condition": "in", "value": ["s1", "s2"]},
    {"field": "record_id", "condition": "equals", "value": "s1:1"},
    {"field": "quality_score", "condition": "exists"},
    {"field": "quality_score", "condition": "gte", "value": 0.2},
    {"quality_score": {"lt": 0.3}},
    {"field": "record_type", "condition": "equals", "value": "heartbeat"},
    {"country": "DE"},
    {"country": {"exists": True}},
    {"country": {"exists": False}},
    {"country": {"not_exists": False}},
    {"country": {"in": ["DE", "US"]}},
    {"country": {"not_in": ["DE", "US"]}},
    {"country": {"in": ["DE"], "exists": True}},
    {"country": "DE", "other": 0},
    {"source_id": {"in": ["s0"]}},
    {"all": [{"country": {"exists": True}}, {"source_id": "s1"}]},
    {"any": [{"field": "country", "condition": "equals", "value": ""}, {"type": 0}]},
    {"not": {"field": "country", "condition": "exists"}},
]


@pytest.mark.parametrize("spec", SPECS)
def test_a_batch_gets_what_each_record_gets(spec: Any) -> None:
    records = _records()
    matches = compile_condition(spec)
    assert compile_batch_condition(spec)(records) == [bool(matches(r)) for r in records]


def test_the_columns_answer_with_booleans() -> None:
    records = _records()
    for spec in SPECS:
        assert {type(v) for v in compile_batch_condition(spec)(records)} <= {bool}


@pytest.mark.parametrize(
    "spec",
    [
        {"field": "country", "condition": "in", "value": "DE"},
        {"field": "country", "condition": "nope"},
        {"country": {"regex": "("}},
        "country",
    ],
)
def test_a_bad_condition_fails_as_it_does_per_record(spec: Any) -> None:
    with pytest.raises(ConditionError) as per_record:
        compile_condition(spec)
    with pytest.raises(ConditionError) as batch:
        compile_batch_condition(spec)
    assert (batch.value.key, str(batch.value)) == (per_record.value.key, str(per_record.value))
