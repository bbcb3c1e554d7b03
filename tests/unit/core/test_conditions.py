"""The condition language: B.1 single tests, C.1 field tests, all/any/not, and compile errors."""

from __future__ import annotations

from typing import Any

import pytest

from dps.core.conditions import ConditionError, compile_condition
from dps.core.record import Quality, Record


def _record(
    payload: dict[str, Any] | None = None,
    *,
    source_id: str = "api_source_1",
    score: float | None = None,
) -> Record:
    return Record(
        record_id=f"{source_id}:1",
        source_id=source_id,
        correlation_id="c",
        ingested_at=0.0,
        payload=payload if payload is not None else {},
        quality=Quality(score=score) if score is not None else None,
    )


def _matches(spec: Any, record: Record) -> bool:
    return compile_condition(spec)(record)


# -- B.1: one test ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "payload", "expected"),
    [
        ({"field": "phone_number", "condition": "exists"}, {"phone_number": "555"}, True),
        ({"field": "phone_number", "condition": "exists"}, {"phone_number": None}, False),
        ({"field": "phone_number", "condition": "exists"}, {}, False),
        ({"field": "phone_number"}, {"phone_number": ""}, True),  # exists is the default
        ({"field": "phone_number", "condition": "not_exists"}, {}, True),
        ({"field": "phone_number", "condition": "not_exists"}, {"phone_number": 1}, False),
        ({"field": "country", "condition": "equals", "value": "US"}, {"country": "US"}, True),
        ({"field": "country", "condition": "equals", "value": "US"}, {"country": "us"}, False),
        ({"field": "country", "condition": "not_equals", "value": "US"}, {"country": "CA"}, True),
        ({"field": "country", "condition": "in", "value": ["US", "CA"]}, {"country": "CA"}, True),
        ({"field": "country", "condition": "in", "value": ["US", "CA"]}, {"country": "MX"}, False),
        ({"field": "country", "condition": "in", "value": ["US"]}, {"country": ["US"]}, False),
        ({"field": "country", "condition": "not_in", "value": ["US"]}, {"country": "MX"}, True),
        ({"field": "country", "condition": "not_in", "value": ["US"]}, {}, True),
        (
            {"field": "email", "condition": "regex", "value": "@example\\.com$"},
            {"email": "a@example.com"},
            True,
        ),
        (
            {"field": "email", "condition": "regex", "value": "example"},
            {"email": "x-example-y"},
            True,
        ),
        ({"field": "email", "condition": "regex", "value": "\\d"}, {"email": 5}, False),
        ({"field": "amount", "condition": "gt", "value": 10}, {"amount": 10.5}, True),
        ({"field": "amount", "condition": "gt", "value": 10}, {"amount": 10}, False),
        ({"field": "amount", "condition": "gte", "value": 10}, {"amount": 10}, True),
        ({"field": "amount", "condition": "lt", "value": 10}, {"amount": -1}, True),
        ({"field": "amount", "condition": "lte", "value": 10}, {"amount": 11}, False),
        ({"field": "amount", "condition": "gt", "value": 10}, {"amount": "99"}, False),
        ({"field": "amount", "condition": "gt", "value": 0}, {"amount": True}, False),
        ({"field": "amount", "condition": "lt", "value": 10}, {}, False),
        (
            {"field": "customer.tier", "condition": "equals", "value": "gold"},
            {"customer": {"tier": "gold"}},
            True,
        ),
        (
            {"field": "payload.customer.tier", "condition": "exists"},
            {"customer": {"tier": "gold"}},
            True,
        ),
        (
            {"field": "items.0.sku", "condition": "equals", "value": "X1"},
            {"items": [{"sku": "X1"}]},
            True,
        ),
    ],
)
def test_single_test_form(spec: dict[str, Any], payload: dict[str, Any], expected: bool) -> None:
    assert _matches(spec, _record(payload)) is expected


# -- C.1: field tests by name ---------------------------------------------------------------------


def test_the_manual_routing_match_needs_every_field_test() -> None:
    spec = {"source_id": {"in": ["api_source_1", "file_source_1"]}, "quality_score": {"gte": 0.7}}

    assert _matches(spec, _record(source_id="file_source_1", score=0.7))
    assert not _matches(spec, _record(source_id="file_source_1", score=0.69))
    assert not _matches(spec, _record(source_id="other_source", score=0.9))
    assert not _matches(spec, _record(source_id="api_source_1"))  # not scored yet


def test_several_operators_on_one_field_are_anded() -> None:
    spec = {"amount": {"gte": 10, "lt": 100}}
    assert [_matches(spec, _record({"amount": a})) for a in (9, 10, 99.9, 100)] == [
        False,
        True,
        True,
        False,
    ]


def test_a_plain_value_is_an_equality_test() -> None:
    assert _matches({"source_id": "api_source_1"}, _record())
    assert not _matches({"source_id": "file_source_1"}, _record())


def test_exists_false_and_not_exists_false_invert_the_test() -> None:
    assert _matches({"email": {"exists": False}}, _record({}))
    assert not _matches({"email": {"exists": False}}, _record({"email": "a@b"}))
    assert _matches({"email": {"not_exists": False}}, _record({"email": "a@b"}))


def test_envelope_subjects_read_the_envelope_not_the_payload() -> None:
    record = _record({"source_id": "spoofed", "record_id": "spoofed"}, source_id="real")

    assert _matches({"source_id": "real"}, record)
    assert _matches({"record_id": "real:1"}, record)
    assert _matches({"payload.source_id": "spoofed"}, record)


def test_record_type_reads_the_payload_type_field() -> None:
    assert _matches({"record_type": {"in": ["order", "refund"]}}, _record({"type": "refund"}))
    assert not _matches({"record_type": {"exists": True}}, _record({}))


def test_quality_score_is_absent_until_the_record_is_scored() -> None:
    assert _matches({"quality_score": {"not_exists": True}}, _record())
    assert _matches({"quality_score": {"exists": True}}, _record(score=0.0))


# -- combinators --------------------------------------------------------------------------------


def test_all_any_and_not_combine_both_forms() -> None:
    spec = {
        "all": [
            {"field": "country", "condition": "in", "value": ["US", "CA"]},
            {"any": [{"amount": {"gte": 1000}}, {"customer.tier": "gold"}]},
        ],
        "not": {"field": "test", "condition": "exists"},
    }

    assert _matches(spec, _record({"country": "US", "amount": 1500}))
    assert _matches(spec, _record({"country": "CA", "amount": 1, "customer": {"tier": "gold"}}))
    assert not _matches(spec, _record({"country": "US", "amount": 1}))
    assert not _matches(spec, _record({"country": "MX", "amount": 1500}))
    assert not _matches(spec, _record({"country": "US", "amount": 1500, "test": True}))


@pytest.mark.parametrize("spec", [None, {}])
def test_an_empty_match_matches_every_record(spec: Any) -> None:
    assert _matches(spec, _record())


# -- compile errors: ConditionError with the key path ---------------------------------------------


@pytest.mark.parametrize(
    ("spec", "key", "words"),
    [
        ({"field": "x", "condition": "like", "value": 1}, "match.condition", "not a known"),
        ({"field": "x", "condition": "equals"}, "match.value", "is required"),
        ({"field": "x", "condition": "in", "value": "US"}, "match.value", "not a list"),
        ({"field": "x", "condition": "regex", "value": "("}, "match.value", "regular expression"),
        ({"field": "x", "condition": "regex", "value": 5}, "match.value", "not a string"),
        ({"field": "x", "condition": "gt", "value": "ten"}, "match.value", "not a number"),
        ({"field": "x", "condition": "gt", "value": True}, "match.value", "not a number"),
        ({"condition": "exists"}, "match.field", "not a field path"),
        ({"field": "x", "condition": "exists", "op": 1}, "match.op", "not allowed"),
        ({"amount": {"between": [1, 2]}}, "match.amount.between", "not a known"),
        ({"amount": {"gte": "high"}}, "match.amount.gte", "not a number"),
        ({"amount": {}}, "match.amount", "is empty"),
        ({"all": []}, "match.all", "non-empty list"),
        ({"any": {"x": 1}}, "match.any", "non-empty list"),
        ({"all": [{"x": {"exists": True}}, {"y": {"nope": 1}}]}, "match.all[1].y.nope", "known"),
        ({"any": [{"field": "x", "condition": "in", "value": 3}]}, "match.any[0].value", "list"),
        ({"not": {"email": {"regex": "[a-"}}}, "match.not.email.regex", "regular expression"),
        ({"not": ["x"]}, "match.not", "not a mapping"),
        (["x"], "match", "not a mapping"),
    ],
)
def test_bad_conditions_fail_at_compile_time_naming_the_key(
    spec: Any, key: str, words: str
) -> None:
    with pytest.raises(ConditionError) as caught:
        compile_condition(spec)
    assert caught.value.key == key
    assert words in str(caught.value)


def test_condition_error_key_starts_at_the_given_prefix() -> None:
    with pytest.raises(ConditionError) as caught:
        compile_condition({"x": {"gt": "a"}}, key="routing.match")
    assert caught.value.key == "routing.match.x.gt"
    assert isinstance(caught.value, ValueError)
