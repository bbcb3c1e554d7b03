"""The JSON Schema checks' common part: drafts, formats, first violations and their paths."""

from __future__ import annotations

import pytest

from dps.core.json_schema import Schema, instance_path, json_path, schema_problem

ORDER = {
    "type": "object",
    "required": ["id"],
    "properties": {
        "id": {"type": "integer"},
        "at": {"type": "string", "format": "date-time"},
        "items": {"type": "array", "items": {"type": "object", "properties": {"sku": {}}}},
    },
}


@pytest.mark.parametrize(
    ("parts", "where", "path"),
    [([], "", "$"), (["id"], "id", "$.id"), (["items", 0, "sku"], "items[0].sku", "$.items[0].sku"),
     ([3], "[3]", "$[3]")],
)  # fmt: skip
def test_paths_read_as_the_dlq_and_the_failures_table_show_them(
    parts: list[str | int], where: str, path: str
) -> None:
    assert instance_path(parts) == where
    assert json_path(where) == path


def test_a_payload_that_meets_the_schema_has_no_problem() -> None:
    assert Schema(ORDER).problem({"id": 1, "at": "2026-11-29T12:00:00Z", "items": []}) is None


def test_the_first_violation_is_reported_with_its_path() -> None:
    schema = Schema(ORDER)
    assert schema.problem({"id": "x"}) == ("id", '"x" is not of type "integer"')
    where, message = schema.problem({"id": 1, "at": "noon"}) or ("", "")
    assert where == "at" and "date-time" in message  # formats are checked
    assert schema.problem({}) == ("", '"id" is a required property')


def test_a_value_no_json_document_holds_is_a_problem_not_an_exception() -> None:
    where, message = Schema(ORDER).problem({"id": b"1"}) or ("", "")
    assert where == "" and "cannot be checked" in message


def test_the_draft_is_07_unless_the_schema_names_another() -> None:
    # Draft-07 reads "items" as a list of positional schemas; 2020-12 calls that prefixItems.
    tuple_schema = {"type": "array", "items": [{"type": "integer"}]}
    assert Schema(tuple_schema).problem(["x"]) is not None
    assert schema_problem(tuple_schema) == ""
    assert schema_problem({"type": "no-such-type"}) != ""
    named = {"$schema": "https://json-schema.org/draft/2020-12/schema", **ORDER}
    assert Schema(named).problem({"id": 1}) is None
