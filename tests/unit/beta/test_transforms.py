"""Rule transforms: ``regex_replace`` (the manual's E.164 rule), ``rename`` and ``set``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from dps.beta.rules import RuleSet
from dps.beta.transforms.regex_replace import (
    RegexReplace,
    RegexReplaceConfig,
    compiled_replacement,
    python_replacement,
)
from dps.beta.transforms.rename import Rename, RenameConfig
from dps.beta.transforms.set import Set, SetConfig
from dps.config import load_file
from dps.config.models import RuleConfig
from dps.core.errors import TerminalError
from dps.core.record import Record

E164_PATTERN = r"^\+?1?[\s.-]?\(?([0-9]{3})\)?[\s.-]?([0-9]{3})[\s.-]?([0-9]{4})$"
E164_REPLACEMENT = "+1$1$2$3"

# The manual's Runbook B.1 rule file, as an operator writes it (enabled for the test).
B1_RULE = r"""
rule_id: TRX_042_NORMALIZE_PHONE
name: "Normalize Phone Numbers"
description: "Standardize phone numbers to E.164 format"
enabled: true
priority: 500

match:
  field: phone_number
  condition: exists

transform:
  type: regex_replace
  config:
    pattern: "^\\+?1?[\\s.-]?\\(?([0-9]{3})\\)?[\\s.-]?([0-9]{3})[\\s.-]?([0-9]{4})$"
    replacement: "+1$1$2$3"

on_failure: skip
"""


def _record(payload: dict[str, Any]) -> Record:
    return Record(
        record_id="s:1", source_id="s", correlation_id="c", ingested_at=0.0, payload=payload
    )


def _e164(target: str | None = "phone_number", **config: Any) -> RegexReplace:
    settings = {"pattern": E164_PATTERN, "replacement": E164_REPLACEMENT} | config
    return RegexReplace(RegexReplaceConfig.model_validate(settings), target)


# -- regex_replace: the E.164 rule ----------------------------------------------------------------


@pytest.mark.parametrize(
    "phone",
    [
        "(555) 123-4567",
        "555.123.4567",
        "+1 555 123 4567",
        "555-123-4567",
        "5551234567",
        "1-555-123-4567",
        "+15551234567",
    ],
)
def test_e164_rule_normalises_us_numbers(phone: str) -> None:
    record = _record({"phone_number": phone, "name": "Ann"})

    assert _e164().apply(record) is None
    assert record.payload == {"phone_number": "+15551234567", "name": "Ann"}


@pytest.mark.parametrize("phone", ["12345", "call me", "+44 20 7946 0958", "555-123-45678", ""])
def test_e164_rule_leaves_a_non_matching_value_as_it_is(phone: str) -> None:
    record = _record({"phone_number": phone})
    _e164().apply(record)
    assert record.payload == {"phone_number": phone}


@pytest.mark.parametrize("value", [5551234567, 555.1234567, ["555-123-4567"], {"n": 1}, True])
def test_e164_rule_refuses_a_value_that_is_not_a_string(value: Any) -> None:
    record = _record({"phone_number": value})

    with pytest.raises(TerminalError) as caught:
        _e164().apply(record)

    assert caught.value.reason == "transform_failed"
    assert caught.value.field == "phone_number"
    assert "expected a string" in str(caught.value)
    assert record.payload == {"phone_number": value}


def test_e164_rule_leaves_a_record_without_the_field_alone() -> None:
    record = _record({"name": "Ann"})
    assert _e164().apply(record) is None
    assert record.payload == {"name": "Ann"}


def test_the_runbook_b1_rule_file_normalises_phone_numbers(tmp_path: Path) -> None:
    path = tmp_path / "new_rule.yaml"
    path.write_text(B1_RULE)
    rule = load_file(path, "rule")
    assert isinstance(rule, RuleConfig)
    rules = RuleSet([rule])
    records = [_record({"phone_number": p}) for p in ("(555) 123-4567", "555.123.4567", "n/a")]

    outcomes = [rules.apply(r) for r in records]

    assert [r.payload["phone_number"] for r in records] == ["+15551234567", "+15551234567", "n/a"]
    assert all(o.applied == ["TRX_042_NORMALIZE_PHONE"] for o in outcomes)


# -- regex_replace: the general case ----------------------------------------------------------


@pytest.mark.parametrize(
    ("replacement", "expected"),
    [
        ("+1$1$2$3", r"+1\g<1>\g<2>\g<3>"),
        ("${area}-$2", r"\g<area>-\g<2>"),
        (r"\1", r"\1"),
        ("no groups", "no groups"),
        ("$12", r"\g<12>"),
    ],
)
def test_dollar_group_references_become_python_ones(replacement: str, expected: str) -> None:
    assert python_replacement(replacement) == expected


def test_named_groups_and_backslash_references_work() -> None:
    named = _e164(pattern=r"^(?P<area>\d{3})-(?P<rest>\d{4})$", replacement="(${area}) \\g<rest>")
    record = _record({"phone_number": "555-1234"})
    named.apply(record)
    assert record.payload["phone_number"] == "(555) 1234"


def test_count_limits_the_replacements_and_zero_means_all() -> None:
    once = _e164(target="code", pattern="-", replacement="", count=1)
    every = _e164(target="code", pattern="-", replacement="")
    first, second = _record({"code": "a-b-c"}), _record({"code": "a-b-c"})

    once.apply(first)
    every.apply(second)

    assert (first.payload["code"], second.payload["code"]) == ("ab-c", "abc")


def test_config_field_wins_over_the_matched_field_and_may_be_nested() -> None:
    transform = _e164(target="phone_number", field="contact.phone")
    record = _record({"phone_number": "555.123.4567", "contact": {"phone": "(555) 123-4567"}})

    transform.apply(record)

    assert record.payload == {
        "phone_number": "555.123.4567",
        "contact": {"phone": "+15551234567"},
    }


def test_a_replacement_naming_a_missing_group_fails_the_record() -> None:
    transform = _e164(target="x", pattern=r"(\d+)", replacement="$2")
    with pytest.raises(TerminalError, match="Replacement failed"):
        transform.apply(_record({"x": "123"}))


def test_regex_replace_config_refuses_a_bad_pattern() -> None:
    with pytest.raises(ValidationError, match="is not a valid regular expression"):
        RegexReplaceConfig.model_validate({"pattern": "([0-9]", "replacement": "x"})


def test_regex_replace_needs_a_field() -> None:
    with pytest.raises(ValueError, match="regex_replace needs a field"):
        _e164(target=None)


# -- rename -------------------------------------------------------------------------------------


def test_rename_moves_the_value_to_the_new_name() -> None:
    record = _record({"cust": "C-1", "amount": 5})
    Rename(RenameConfig(to="customer_id"), "cust").apply(record)
    assert record.payload == {"amount": 5, "customer_id": "C-1"}


def test_rename_between_nested_paths_creates_the_parents() -> None:
    record = _record({"legacy": {"cust": "C-1", "keep": 1}})
    Rename(RenameConfig(field="legacy.cust", to="customer.id"), None).apply(record)
    assert record.payload == {"legacy": {"keep": 1}, "customer": {"id": "C-1"}}


def test_rename_keeps_a_null_value() -> None:
    record = _record({"cust": None})
    Rename(RenameConfig(to="customer_id"), "cust").apply(record)
    assert record.payload == {"customer_id": None}


@pytest.mark.parametrize("payload", [{"other": 1}, {"legacy": "flat"}, {"legacy": {"x": 1}}])
def test_rename_of_a_missing_field_changes_nothing(payload: dict[str, Any]) -> None:
    record = _record(dict(payload))
    Rename(RenameConfig(field="legacy.cust", to="customer_id"), None).apply(record)
    assert record.payload == payload


def test_rename_needs_a_field_and_a_target() -> None:
    with pytest.raises(ValueError, match="rename needs a field"):
        Rename(RenameConfig(to="x"), None)
    with pytest.raises(ValidationError, match="to"):
        RenameConfig.model_validate({"field": "a"})


# -- set ----------------------------------------------------------------------------------------


def test_set_writes_a_constant_overwriting_the_old_value() -> None:
    record = _record({"country": "DE", "region": "unknown"})
    Set(SetConfig(field="region", value="EU"), "country").apply(record)
    assert record.payload == {"country": "DE", "region": "EU"}


def test_set_without_its_own_field_sets_the_matched_field() -> None:
    record = _record({"status": "new"})
    Set(SetConfig(value=["a", 1]), "status").apply(record)
    assert record.payload == {"status": ["a", 1]}


def test_set_creates_nested_parents() -> None:
    record = _record({})
    Set(SetConfig(field="meta.tags.source", value="crm"), None).apply(record)
    assert record.payload == {"meta": {"tags": {"source": "crm"}}}


def test_set_template_builds_from_top_level_and_nested_fields() -> None:
    record = _record({"first": "Ann", "last": "Lee", "customer": {"tier": "gold"}, "n": 3.14159})
    template = "{first} {last} ({customer[tier]}) {n:.2f}"

    Set(SetConfig(field="label", template=template), None).apply(record)

    assert record.payload["label"] == "Ann Lee (gold) 3.14"


@pytest.mark.parametrize(
    ("template", "payload", "words"),
    [
        ("{first} {last}", {"first": "Ann"}, "Template field 'last' is missing"),
        ("{customer[name]}", {"customer": {}}, "Template field 'name' is missing"),
        ("{customer[name]}", {"customer": "ACME"}, "Template cannot be filled"),
        ("{amount:.2f}", {"amount": "12.5"}, "Template cannot be filled"),
        ("{items[3]}", {"items": [1]}, "Template cannot be filled: list index out of range"),
        ("{name.upper.x}", {"name": "ann"}, "Template cannot be filled"),
    ],
)
def test_set_template_that_cannot_be_filled_fails_the_record(
    template: str, payload: dict[str, Any], words: str
) -> None:
    record = _record(dict(payload))

    with pytest.raises(TerminalError) as caught:
        Set(SetConfig(field="label", template=template), None).apply(record)

    assert caught.value.reason == "transform_failed"
    assert caught.value.field == "label"
    assert words in str(caught.value)
    assert record.payload == payload


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"field": "x", "value": 1, "template": "{a}"}, "either value or template, not both"),
        ({"field": "x", "template": "{first"}, "is not a valid template"),
        ({"field": "x", "template": "{} and {}"}, "positional field"),
        ({"field": "x", "template": "{0}"}, "positional field"),
        ({"field": "x", "val": 1}, "Extra inputs are not permitted"),
    ],
)
def test_set_config_refuses_what_cannot_work(settings: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        SetConfig.model_validate(settings)


def test_set_needs_a_field() -> None:
    with pytest.raises(ValueError, match="set needs a field"):
        Set(SetConfig(value=1), None)


@pytest.mark.parametrize(
    ("pattern", "replacement", "value"),
    [
        (r"^\(?(\d{3})\)?[\s.-]?(\d{3})[\s.-]?(\d{4})$", "+1$1$2$3", "(555) 010-1234"),
        (r"(?P<user>[^@]+)@(?P<host>.+)", "${host}/${user}", "ann@example.com"),
        (r"(a)|(b)", "[$1$2]", "abc"),  # an unmatched group is empty
        (r"(x)", r"\n$1\t", "axb"),  # escapes: left to re.sub
        (r"(x)", r"\1-\1", "xx"),  # a backslash reference: left to re.sub
        (r"o", "0", "foo boo"),  # no group at all
        (r"(\d+)-(\d+)", "$2:$1:$2", "1-2 and 30-40"),  # out of order, twice, several matches
        (r"(\w)(\w)?", "[$0|$2]", "abc"),  # the whole match, an unmatched group
        (r"(\w+)", "{$1}{{}}", "ab cd"),  # braces are literal text
        (r"(?P<a>x)(y)?", "${a}$2", "xyx"),
    ],
)
def test_compiled_replacement_gives_what_re_sub_gives(
    pattern: str, replacement: str, value: str
) -> None:
    compiled = re.compile(pattern)
    template = python_replacement(replacement)
    fast = compiled_replacement(compiled, template)
    assert compiled.sub(fast, value) == compiled.sub(template, value)
    if "\\g<" in template and "\\n" not in template:
        assert callable(fast)  # built once, not re-expanded by re.sub per match


def test_a_reference_to_a_missing_group_still_fails_as_re_sub_does() -> None:
    compiled = re.compile(r"(x)")
    assert compiled_replacement(compiled, r"\g<2>") == r"\g<2>"
    with pytest.raises(re.error):
        compiled.sub(compiled_replacement(compiled, r"\g<2>"), "x")
