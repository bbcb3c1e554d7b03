"""Alpha validation: JSON Schema by schema_ref, rule files, strict mode, dedupe across restarts,
and CSV rows through the whole module (file source -> parser -> DLQ / transform queue).

The module runs on the real SQLite queue and state store; steps are driven by hand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from dps.alpha.module import AlphaModule
from dps.alpha.validation.field_rules import FieldRules
from dps.alpha.validation.json_schema import JsonSchema
from dps.config import load_config
from dps.config.models import ValidationRuleFile
from dps.core.errors import ConfigError
from dps.core.record import decode, new_record

SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "required": ["order_id"],
    "properties": {
        "order_id": {"type": "integer"},
        "items": {
            "type": "array",
            "items": {"type": "object", "properties": {"sku": {"type": "string"}}},
        },
    },
}

RULES = """\
applies_to: [orders]
rules:
  - field: amount
    type: number
    min: 0
    max: 1000
  - field: status
    enum: [new, paid, shipped]
  - field: email
    regex: "^[^@ ]+@[^@ ]+$"
  - name: shipped_needs_date
    field: shipped_at
    required: true
    when: {field: status, condition: equals, value: shipped}
  - field: shipped_at
    compare: {op: gte, other: created_at}
"""


def _record(payload: dict[str, Any]) -> Any:
    return new_record("orders", payload, id_field="order_id", event_time=None, origin="t:1")


# -- the checks on their own -------------------------------------------------------------------


def test_json_schema_reports_the_error_path() -> None:
    check = JsonSchema(SCHEMA, "orders.json")
    assert check.check(_record({"order_id": 1, "items": [{"sku": "a"}]})) == []
    [problem] = check.check(_record({"order_id": 1, "items": [{"sku": 5}]}))
    assert problem.reason == "schema_violation"
    assert problem.field == "items[0].sku"
    assert "$.items[0].sku" in str(problem) and "orders.json" in str(problem)


def _rules(text: str = RULES) -> FieldRules:
    import yaml

    return FieldRules(ValidationRuleFile.model_validate(yaml.safe_load(text)))


@pytest.mark.parametrize(
    ("payload", "codes"),
    [
        ({"amount": 5, "status": "new", "email": "a@b"}, []),
        ({}, []),  # absent fields fail only `required`
        ({"amount": "5"}, ["type_mismatch"]),
        ({"amount": 1001}, ["out_of_range"]),
        ({"status": "lost"}, ["not_in_enum"]),
        ({"email": "nobody"}, ["pattern_mismatch"]),
        ({"status": "shipped"}, ["missing_field"]),
        (
            {"status": "shipped", "shipped_at": "2024-01-01", "created_at": "2024-02-01"},
            ["comparison_failed"],
        ),
        ({"amount": -1, "status": "x"}, ["out_of_range", "not_in_enum"]),
    ],
)
def test_field_rules(payload: dict[str, Any], codes: list[str]) -> None:
    assert [p.reason for p in _rules().check(_record(payload))] == codes


def test_a_failed_rule_names_the_file_the_rule_and_the_field() -> None:
    rules = ValidationRuleFile.model_validate(
        {"rules": [{"field": "amount", "max": 10}], "file": "/x/orders.yaml"}
    )
    [problem] = FieldRules(rules).check(_record({"amount": 11}))
    assert problem.field == "amount"
    assert str(problem) == "orders.yaml: amount: field amount: 11 is outside [-inf, 10]."


# -- configuration: rule files and schemas are checked at load -----------------------------------


def _config(tmp_path: Path, *, rules: str | None = RULES, schema: Any = SCHEMA, **kw: Any) -> Path:
    root = tmp_path / "config"
    for sub in ("sources", "validation", "schemas"):
        (root / "alpha" / sub).mkdir(parents=True, exist_ok=True)
    (root / "pipeline.yaml").write_text("name: validation-test\n")
    settings = f"VALIDATION_STRICT_MODE: {str(kw.get('strict', True)).lower()}\n"
    (root / "alpha" / "alpha.yaml").write_text("DEFAULT_BATCH_SIZE: 100\n" + settings)
    (root / "alpha" / "schemas" / "orders.json").write_text(json.dumps(schema))
    if rules is not None:
        (root / "alpha" / "validation" / "orders.yaml").write_text(rules)
    fmt = kw.get("fmt", "ndjson")
    parsing = kw.get("parsing", "")
    (root / "alpha" / "sources" / "orders.yaml").write_text(
        "source_id: orders\nsource_type: file\n"
        f"connection:\n  path: {tmp_path / 'in'}\n  pattern: '*.{fmt}'\n"
        f"  partial_line_grace_seconds: 0\n"
        f"parsing:\n  format: {fmt}\n  id_field: order_id\n{parsing}"
        "validation:\n  schema_ref: schemas/orders.json\n"
        f"  dedupe:\n    key: [order_id]\n    window_seconds: 3600\n"
    )
    (tmp_path / "in").mkdir(exist_ok=True)
    return root


def test_a_rule_file_loads_into_the_alpha_config(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path))
    [rules] = config.alpha.validation
    assert rules.applies_to == ["orders"] and len(rules.rules) == 5
    assert rules.file.name == "orders.yaml"


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        (
            "applies_to: [nope]\nrules:\n  - field: a\n    required: true\n",
            "applies_to[0]",
            '"nope" is not a configured source; known: orders.',
        ),
        (
            "rules:\n  - field: a\n    required: true\n  - field: b\n    regex: '(['\n",
            "rules[1].regex",
            "is not a valid regular expression",
        ),
        ("rules:\n  - field: a\n", "rules[0]", "checks nothing"),
        ("rules:\n  - field: a\n    min: 5\n    max: 1\n", "rules[0].min", "above max"),
        (
            "rules:\n  - field: a\n    when: {field: b, condition: sometimes}\n"
            "    required: true\n",
            "rules[0].when.condition",
            "not a known condition",
        ),
        ("rules:\n  - field: a\n    compare: {op: about, other: b}\n", "rules[0].compare.op", ""),
    ],
)
def test_a_bad_rule_file_is_refused_with_file_key_and_line(
    tmp_path: Path, text: str, where: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(_config(tmp_path, rules=text))
    [issue] = caught.value.issues
    assert issue.file == "alpha/validation/orders.yaml"
    assert issue.key == where
    assert message in issue.message
    assert issue.line is not None and issue.line >= 1


def test_a_schema_that_is_not_draft_07_is_refused_at_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(_config(tmp_path, schema={"type": "no-such-type"}))
    [issue] = caught.value.issues
    assert issue.file == "alpha/sources/orders.yaml"
    assert issue.key == "validation.schema_ref"
    assert "not a valid JSON Schema" in issue.message


# -- the module ---------------------------------------------------------------------------------


def _alpha(root: Path, tmp_path: Path) -> AlphaModule:
    return AlphaModule(root, data_dir=tmp_path / "data")


def _run(alpha: AlphaModule, steps: int = 5) -> None:
    for _ in range(steps):
        alpha.step()


def _queued(alpha: AlphaModule) -> list[dict[str, Any]]:
    """What reached the transform queue since the last call (taken off it, as Beta would)."""
    lease = alpha.queue.lease(1000)
    out = [decode(m.body).payload for m in lease.messages]
    alpha.queue.ack(lease)
    return out


def _failures(alpha: AlphaModule) -> list[tuple[str, str | None]]:
    engine = alpha.state_store.engine  # type: ignore[attr-defined]
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT error_code, field FROM validation_failures ORDER BY id")
        ).all()
    return [(r[0], r[1]) for r in rows]


ORDERS = [
    {"order_id": 1, "amount": 5, "status": "new"},
    {"order_id": 2, "amount": 5000, "status": "new"},  # rule: out_of_range
    {"order_id": "3"},  # schema: order_id not an integer
    {"order_id": 4, "amount": 7, "status": "paid"},
]


def _write(tmp_path: Path, name: str, rows: list[dict[str, Any]]) -> None:
    (tmp_path / "in" / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_strict_mode_sends_failing_records_to_the_dlq(tmp_path: Path) -> None:
    alpha = _alpha(_config(tmp_path), tmp_path)
    try:
        _write(tmp_path, "a.ndjson", ORDERS)
        _run(alpha)
        assert sorted(p["order_id"] for p in _queued(alpha)) == [1, 4]
        dlq = {e.origin.rsplit(":", 1)[1]: e for e in alpha.state_store.list_dlq("alpha")}
        assert dlq["2"].reason == "out_of_range" and "amount" in dlq["2"].error
        assert dlq["3"].reason == "schema_violation" and "$.order_id" in dlq["3"].error
        assert _failures(alpha) == [("out_of_range", "amount"), ("schema_violation", "order_id")]
    finally:
        alpha.close()


def test_non_strict_mode_records_the_failures_and_passes_the_records_on(tmp_path: Path) -> None:
    alpha = _alpha(_config(tmp_path, strict=False), tmp_path)
    try:
        _write(tmp_path, "a.ndjson", [*ORDERS, {"amount": 1}])  # no order_id: schema `required`
        _run(alpha)
        assert sorted(str(p.get("order_id")) for p in _queued(alpha)) == [
            "1",
            "2",
            "3",
            "4",
            "None",
        ]
        assert alpha.state_store.list_dlq("alpha") == []
        assert [code for code, _ in _failures(alpha)] == [
            "out_of_range",
            "schema_violation",
            "schema_violation",
        ]
    finally:
        alpha.close()


def test_required_fields_send_to_the_dlq_even_when_not_strict(tmp_path: Path) -> None:
    root = _config(tmp_path, strict=False, rules=None)
    source = root / "alpha" / "sources" / "orders.yaml"
    source.write_text(
        source.read_text().replace("validation:\n", "validation:\n  required_fields: [amount]\n")
    )
    alpha = _alpha(root, tmp_path)
    try:
        _write(tmp_path, "a.ndjson", [{"order_id": 1}, {"order_id": 2, "amount": 1}])
        _run(alpha)
        assert [p["order_id"] for p in _queued(alpha)] == [2]
        assert [e.reason for e in alpha.state_store.list_dlq("alpha")] == ["missing_field"]
    finally:
        alpha.close()


def test_a_schema_change_takes_effect_on_reload(tmp_path: Path) -> None:
    root = _config(tmp_path, rules=None)
    alpha = _alpha(root, tmp_path)
    try:
        _write(tmp_path, "a.ndjson", [{"order_id": 1, "note": 5}])
        _run(alpha)
        assert len(_queued(alpha)) == 1
        schema = dict(SCHEMA, properties={"note": {"type": "string"}})
        (root / "alpha" / "schemas" / "orders.json").write_text(json.dumps(schema))
        alpha.apply_config(load_config(root))
        _write(tmp_path, "b.ndjson", [{"order_id": 2, "note": 5}])
        _run(alpha)
        [entry] = alpha.state_store.list_dlq("alpha")
        assert entry.reason == "schema_violation" and "$.note" in entry.error
    finally:
        alpha.close()


def test_dedupe_over_a_configured_key_holds_across_a_restart(tmp_path: Path) -> None:
    root = _config(tmp_path, rules=None)
    alpha = _alpha(root, tmp_path)
    try:
        _write(tmp_path, "a.ndjson", [{"order_id": 1, "v": 1}, {"order_id": 1, "v": 2}])
        _run(alpha)
        assert [p["v"] for p in _queued(alpha)] == [1]
    finally:
        alpha.close()
    alpha = _alpha(root, tmp_path)  # a restart: same data dir, same state store
    try:
        _write(tmp_path, "b.ndjson", [{"order_id": 1, "v": 3}, {"order_id": 5, "v": 4}])
        _run(alpha)
        assert [p["v"] for p in _queued(alpha)] == [4]  # order 1 was seen before the restart
    finally:
        alpha.close()


def test_ragged_csv_rows_go_to_the_dlq_with_their_line_and_the_rest_goes_on(
    tmp_path: Path,
) -> None:
    parsing = "  csv:\n    types: {order_id: integer, amount: number}\n"
    alpha = _alpha(_config(tmp_path, rules=None, fmt="csv", parsing=parsing), tmp_path)
    try:
        path = tmp_path / "in" / "orders.csv"
        path.write_text("order_id,amount\n1,9.5\n2,3,extra\n3,x\n\n4,1\n")
        _run(alpha)
        assert _queued(alpha) == [
            {"order_id": 1, "amount": 9.5},
            {"order_id": 4, "amount": 1.0},
        ]
        dlq = sorted(alpha.state_store.list_dlq("alpha"), key=lambda e: e.origin)
        assert [(e.origin, e.reason) for e in dlq] == [
            (f"{path}:3", "parse_error"),
            (f"{path}:4", "parse_error"),
        ]
        assert "3 fields; expected 2" in dlq[0].error
        assert dlq[0].body == b"order_id,amount\n2,3,extra\n"
        assert "column amount: 'x' is not a number" in dlq[1].error
        assert alpha.state_store.offsets("orders")[("orders", str(path))] == path.stat().st_size
    finally:
        alpha.close()


def test_alpha_config_validator_checks_a_rule_file_with_lines(tmp_path: Path) -> None:
    import subprocess
    import sys

    folder = tmp_path / "alpha" / "validation"
    folder.mkdir(parents=True)
    bad = folder / "orders.yaml"
    bad.write_text(
        "rules:\n  - field: amount\n    min: 5\n    max: 1\n  - field: x\n    regex: '(['\n"
    )
    good = folder / "ok.yaml"
    good.write_text("rules:\n  - field: amount\n    type: number\n    min: 0\n")
    validator = str(Path(sys.executable).parent / "alpha-config-validator")
    done = subprocess.run([validator, str(bad)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"{bad}:3: rules[0].min: min 5.0 is above max 1.0." in done.stdout
    assert f"{bad}:6: rules[1].regex:" in done.stdout
    done = subprocess.run([validator, str(good)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and f"OK {good}" in done.stdout


def test_json_schema_checks_formats_and_reports_the_first_violation() -> None:
    """Formats are checked (``date-time`` here), and a record with several violations is
    reported once, at one of them, with its path."""
    schema = {
        "type": "object",  # no $schema: draft-07
        "properties": {
            "at": {"type": "string", "format": "date-time"},
            "n": {"type": "integer", "minimum": 1},
        },
    }
    check = JsonSchema(schema, "events.json")
    assert check.check(_record({"at": "2026-11-29T12:00:00Z", "n": 1})) == []
    [problem] = check.check(_record({"at": "yesterday", "n": 1}))
    assert (problem.reason, problem.field) == ("schema_violation", "at")
    assert "$.at" in str(problem) and "date-time" in str(problem)
    [problem] = check.check(_record({"at": "yesterday", "n": 0}))
    assert problem.field in ("at", "n")


def test_a_missing_required_property_is_reported_at_the_payload() -> None:
    [problem] = JsonSchema(SCHEMA, "orders.json").check(_record({"items": []}))
    assert problem.field is None
    assert "orders.json: $: " in str(problem) and "order_id" in str(problem)


def test_a_payload_no_json_document_could_hold_is_a_violation_not_a_crash() -> None:
    [problem] = JsonSchema(SCHEMA, "orders.json").check(_record({"order_id": b"1"}))
    assert problem.reason == "schema_violation" and "cannot be checked" in str(problem)
