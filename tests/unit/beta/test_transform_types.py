"""The transform types beyond regex_replace/rename/set, each through a rule loaded from YAML.

Every case loads a real rule file through the config loader and runs it with the rule engine,
the way Beta does, so config validation, defaults and ``on_failure`` are all exercised.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Any

import pytest
import yaml

from dps.beta.rules import RuleSet
from dps.config import load_config
from dps.core.errors import ConfigError
from dps.core.record import Record, decode, encode


def _rules(tmp_path: Path, *rules: dict[str, Any]) -> RuleSet:
    folder = tmp_path / "config" / "beta" / "transforms" / "rules"
    folder.mkdir(parents=True, exist_ok=True)
    for index, rule in enumerate(rules):
        (folder / f"rule_{index}.yaml").write_text(yaml.safe_dump(rule))
    return RuleSet(load_config(tmp_path / "config", environ={}).beta.rules)


def _rule(type_: str, config: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    rule: dict[str, Any] = {"rule_id": f"R_{type_.upper()}", "transform": {"type": type_}}
    if config is not None:
        rule["transform"]["config"] = config
    rule.update(extra)
    return rule


def _record(payload: dict[str, Any], **envelope: Any) -> Record:
    return Record(
        record_id="s:1",
        source_id=envelope.get("source_id", "s"),
        correlation_id="c",
        ingested_at=0.0,
        payload=payload,
    )


def _run(tmp_path: Path, rule: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    record = _record(payload)
    outcome = _rules(tmp_path, rule).apply(record)
    assert outcome.failure is None, outcome.failure
    return record.payload


# -- copy, remove, default --------------------------------------------------------------------


def test_copy_copies_nested_values_without_sharing_them(tmp_path: Path) -> None:
    payload = _run(
        tmp_path,
        _rule("copy", {"field": "customer", "to": "backup.customer"}),
        {"customer": {"n": 1}},
    )
    assert payload["backup"]["customer"] == {"n": 1}
    payload["customer"]["n"] = 2
    assert payload["backup"]["customer"] == {"n": 1}


def test_copy_of_a_missing_field_changes_nothing(tmp_path: Path) -> None:
    assert _run(tmp_path, _rule("copy", {"field": "x", "to": "y"}), {"a": 1}) == {"a": 1}


def test_remove_deletes_fields_and_ignores_absent_ones(tmp_path: Path) -> None:
    payload = _run(
        tmp_path,
        _rule("remove", {"fields": ["secret", "debug.trace", "nope.nothing"]}),
        {"secret": 1, "keep": 2, "debug": {"trace": "t", "level": 3}},
    )
    assert payload == {"keep": 2, "debug": {"level": 3}}


def test_default_fills_missing_and_null_but_not_present_values(tmp_path: Path) -> None:
    rule = _rule("default", {"field": "currency", "value": "USD"})
    assert _run(tmp_path / "a", rule, {})["currency"] == "USD"
    assert _run(tmp_path / "b", rule, {"currency": None})["currency"] == "USD"
    assert _run(tmp_path / "c", rule, {"currency": "EUR"})["currency"] == "EUR"
    assert _run(tmp_path / "d", rule, {"currency": ""})["currency"] == ""
    empty = _rule("default", {"field": "currency", "value": "USD", "when_empty": True})
    assert _run(tmp_path / "e", empty, {"currency": ""})["currency"] == "USD"


# -- case and whitespace ---------------------------------------------------------------------


def test_lowercase_uppercase_and_trim_use_the_matched_field(tmp_path: Path) -> None:
    match = {"field": "v", "condition": "exists"}
    assert _run(tmp_path / "a", _rule("lowercase", match=match), {"v": "MiXeD"})["v"] == "mixed"
    assert _run(tmp_path / "b", _rule("uppercase", match=match), {"v": "us"})["v"] == "US"
    assert _run(tmp_path / "c", _rule("trim", match=match), {"v": "  x \t"})["v"] == "x"
    right = _rule("trim", {"characters": "0", "side": "left"}, match=match)
    assert _run(tmp_path / "d", right, {"v": "00420"})["v"] == "420"


def test_lowercase_of_a_number_fails_the_rule_and_skip_leaves_it(tmp_path: Path) -> None:
    rule = _rule("lowercase", {"field": "v"}, on_failure="skip")
    record = _record({"v": 5})
    outcome = _rules(tmp_path, rule).apply(record)
    assert outcome.failure is None and outcome.skipped == ["R_LOWERCASE"]
    assert record.payload == {"v": 5}


# -- map --------------------------------------------------------------------------------------


def test_map_uses_the_table_then_the_default(tmp_path: Path) -> None:
    rule = _rule("map", {"field": "s", "values": {"A": "active", "1": "one"}, "default": "other"})
    assert _run(tmp_path / "a", rule, {"s": "A"})["s"] == "active"
    assert _run(tmp_path / "b", rule, {"s": 1})["s"] == "one"
    assert _run(tmp_path / "c", rule, {"s": "Z"})["s"] == "other"


def test_map_without_default_keeps_unmapped_values_or_fails_when_asked(tmp_path: Path) -> None:
    keep = _rule("map", {"field": "s", "values": {"a": "x"}, "case_insensitive": True})
    assert _run(tmp_path / "a", keep, {"s": "A"})["s"] == "x"
    assert _run(tmp_path / "b", keep, {"s": "q"})["s"] == "q"
    fail = _rule(
        "map", {"field": "s", "values": {"a": "x"}, "fail_unmapped": True}, on_failure="dlq"
    )
    outcome = _rules(tmp_path / "c", fail).apply(_record({"s": "q"}))
    assert outcome.failed_rule == "R_MAP" and "not in the value table" in str(outcome.failure)


# -- concat, split ----------------------------------------------------------------------------


def test_concat_joins_fields_and_a_missing_one_fails_unless_skipped(tmp_path: Path) -> None:
    rule = _rule("concat", {"fields": ["a", "b.c", "n"], "separator": "-", "to": "out"})
    assert _run(tmp_path / "a", rule, {"a": "x", "b": {"c": "y"}, "n": 3})["out"] == "x-y-3"
    outcome = _rules(tmp_path / "b", {**rule, "on_failure": "dlq"}).apply(_record({"a": "x"}))
    assert "Field b.c is missing" in str(outcome.failure)
    skip = _rule("concat", {"fields": ["a", "b"], "to": "out", "skip_missing": True})
    assert _run(tmp_path / "c", skip, {"a": "x"})["out"] == "x"


def test_split_into_a_list_or_into_fields(tmp_path: Path) -> None:
    listed = _rule("split", {"field": "tags", "separator": ","})
    assert _run(tmp_path / "a", listed, {"tags": "a, b,c"})["tags"] == ["a", "b", "c"]
    named = _rule("split", {"field": "name", "separator": " ", "into": ["first", "last"]})
    payload = _run(tmp_path / "b", named, {"name": "Ada King Lovelace"})
    assert (payload["first"], payload["last"]) == ("Ada", "King Lovelace")
    short = _run(tmp_path / "c", named, {"name": "Plato"})
    assert (short["first"], short["last"]) == ("Plato", None)


# -- hash, mask -------------------------------------------------------------------------------


def test_hash_plain_and_keyed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = _run(tmp_path / "a", _rule("hash", {"field": "ssn"}), {"ssn": "123-45-6789"})
    assert plain["ssn"] == hashlib.sha256(b"123-45-6789").hexdigest()
    monkeypatch.setenv("PII_SALT", "pepper")
    keyed = _rule("hash", {"field": "ssn", "salt_ref": "env:PII_SALT", "to": "ssn_hash"})
    payload = _run(tmp_path / "b", keyed, {"ssn": "123-45-6789"})
    expected = hmac.new(b"pepper", b"123-45-6789", "sha256").hexdigest()
    assert payload == {"ssn": "123-45-6789", "ssn_hash": expected}


def test_mask_keeps_the_ends_and_separators(tmp_path: Path) -> None:
    rule = _rule("mask", {"field": "card", "keep_last": 4, "keep": "-"})
    assert _run(tmp_path / "a", rule, {"card": "4111-1111-1111-1234"})["card"] == (
        "****-****-****-1234"
    )
    both = _rule("mask", {"field": "phone", "keep_first": 2, "keep_last": 2, "char": "#"})
    assert _run(tmp_path / "b", both, {"phone": 5551234567})["phone"] == "55######67"
    assert _run(tmp_path / "c", both, {"phone": "123"})["phone"] == "###"


# -- cast -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("to", "value", "expected", "extra"),
    [
        ("int", "42", 42, {}),
        ("int", " 7.0 ", 7, {}),
        ("int", 3.0, 3, {}),
        ("float", "2.5", 2.5, {}),
        ("decimal", "19.9", "19.90", {"scale": 2}),
        ("decimal", 0.1, "0.1", {}),
        ("bool", "yes", True, {}),
        ("bool", "0", False, {}),
        ("string", 12, "12", {}),
        ("timestamp", "2024-03-01T10:00:00Z", "2024-03-01T10:00:00+00:00", {}),
        (
            "timestamp",
            "01/03/2024 10:00",
            "2024-03-01T10:00:00+00:00",
            {"formats": ["%d/%m/%Y %H:%M"]},
        ),
        ("timestamp", 0, "1970-01-01T00:00:00+00:00", {}),
        ("timestamp", 1000, "1970-01-01T00:00:01+00:00", {"epoch_unit": "ms"}),
    ],
)
def test_cast_converts(
    tmp_path: Path, to: str, value: Any, expected: Any, extra: dict[str, Any]
) -> None:
    payload = _run(tmp_path, _rule("cast", {"field": "v", "to": to, **extra}), {"v": value})
    assert payload["v"] == expected and type(payload["v"]) is type(expected)


@pytest.mark.parametrize(
    ("to", "value"),
    [
        ("decimal", "abc"),
        ("int", "4.5"),
        ("int", True),
        ("bool", "maybe"),
        ("timestamp", "soon"),
        ("decimal", "NaN"),
        ("float", [1]),
    ],
)
def test_cast_of_a_bad_value_fails_with_the_rule_id(tmp_path: Path, to: str, value: Any) -> None:
    rule = _rule("cast", {"field": "v", "to": to}, rule_id="TRX_CAST", on_failure="dlq")
    outcome = _rules(tmp_path, rule).apply(_record({"v": value}))
    assert outcome.failed_rule == "TRX_CAST"
    assert outcome.failure is not None and f"cannot be cast to {to}" in str(outcome.failure)


# -- drop_record and conditions on record type and source ------------------------------------


def test_drop_record_on_record_type(tmp_path: Path) -> None:
    rules = _rules(
        tmp_path,
        _rule(
            "drop_record",
            {"reason": "noise"},
            match={"field": "record_type", "condition": "equals", "value": "heartbeat"},
        ),
    )
    assert rules.apply(_record({"type": "heartbeat"})).dropped
    assert not rules.apply(_record({"type": "order"})).dropped


def test_conditions_combine_on_source_and_nested_paths(tmp_path: Path) -> None:
    rule = _rule(
        "default",
        {"field": "flag", "value": True},
        match={
            "all": [
                {"field": "source_id", "condition": "in", "value": ["crm", "erp"]},
                {"field": "customer.address.country", "condition": "regex", "value": "^(US|CA)$"},
                {"not": {"field": "amount", "condition": "gte", "value": 1000}},
            ]
        },
    )
    rules = _rules(tmp_path, rule)
    hit = Record(
        record_id="x",
        source_id="crm",
        correlation_id="c",
        ingested_at=0,
        payload={"customer": {"address": {"country": "US"}}, "amount": 5},
    )
    rules.apply(hit)
    assert hit.payload["flag"] is True
    for source, country, amount in (("web", "US", 5), ("crm", "FR", 5), ("crm", "US", 5000)):
        miss = Record(
            record_id="x",
            source_id=source,
            correlation_id="c",
            ingested_at=0,
            payload={"customer": {"address": {"country": country}}, "amount": amount},
        )
        rules.apply(miss)
        assert "flag" not in miss.payload


# -- bad input ---------------------------------------------------------------------------------


def test_a_regex_that_does_not_compile_is_a_load_error_naming_the_key(tmp_path: Path) -> None:
    rule = _rule("regex_replace", {"field": "p", "pattern": "([0-9]", "replacement": "x"})
    with pytest.raises(ConfigError) as caught:
        _rules(tmp_path, rule)
    message = str(caught.value)
    assert "rule_0.yaml" in message and "transform.config.pattern" in message
    assert "not a valid regular expression" in message


def test_a_bad_match_regex_is_a_load_error_too(tmp_path: Path) -> None:
    rule = _rule("trim", {"field": "p"}, match={"field": "p", "condition": "regex", "value": "(("})
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        _rules(tmp_path, rule)


def test_an_unknown_transform_setting_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="keep_lats"):
        _rules(tmp_path, _rule("mask", {"field": "c", "keep_lats": 4}))


def test_a_template_naming_a_missing_field_fails_with_the_rule_id(tmp_path: Path) -> None:
    rule = {
        "rule_id": "TRX_TEMPLATE",
        "transform": {"type": "set", "config": {"field": "x", "template": "{first} {last}"}},
        "on_failure": "dlq",
    }
    outcome = _rules(tmp_path, rule).apply(_record({"first": "Ada"}))
    assert outcome.failed_rule == "TRX_TEMPLATE"
    assert "Template field 'last' is missing" in str(outcome.failure)


def test_a_record_nested_200_levels_deep_is_transformed_and_encodes(tmp_path: Path) -> None:
    payload: dict[str, Any] = {}
    node = payload
    for _ in range(200):
        node["n"] = {}
        node = node["n"]
    node["name"] = "  DEEP  "
    path = ".".join(["n"] * 200 + ["name"])
    record = _record(payload)
    rules = _rules(
        tmp_path,
        _rule("trim", {"field": path}, priority=10),
        _rule("copy", {"field": "n", "to": "m"}, rule_id="R_COPY"),
    )
    assert rules.apply(record).failure is None
    again = decode(encode(record))
    deep: Any = again.payload["m"]
    for _ in range(199):
        deep = deep["n"]
    assert deep["name"] == "DEEP"
