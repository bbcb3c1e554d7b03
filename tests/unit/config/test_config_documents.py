"""YAML documents: line of every key, ${VAR} interpolation, duplicate keys, syntax errors."""

from __future__ import annotations

from dps.config.documents import format_path, interpolate, parse_yaml

TEXT = """\
# a comment
name: demo
connection:
  host: ${DB_HOST}
  port: ${DB_PORT:-5432}
  quoted: "${DB_PORT:-5432}"
  list:
    - first
    - ${ITEM:-second}
"""


def test_lines_of_keys_and_items() -> None:
    doc = parse_yaml(TEXT, "f.yaml", {"DB_HOST": "db"})
    assert doc.ok
    assert doc.lines[("name",)] == 2
    assert doc.lines[("connection", "port")] == 5
    assert doc.lines[("connection", "list", 1)] == 9
    assert doc.line_of(("connection", "missing_key")) == 3  # nearest parent
    assert doc.line_of(()) == 2  # the first key, after comments


def test_interpolation_types_plain_scalars_and_keeps_quoted_strings() -> None:
    doc = parse_yaml(TEXT, "f.yaml", {"DB_HOST": "db"})
    conn = doc.data["connection"]
    assert conn["host"] == "db"
    assert conn["port"] == 5432  # unquoted: typed after interpolation
    assert conn["quoted"] == "5432"
    assert conn["list"] == ["first", "second"]


def test_default_used_when_variable_is_empty_and_set_value_wins() -> None:
    assert interpolate("${A:-x}", {"A": ""}) == ("x", [])
    assert interpolate("${A:-x}", {"A": "y"}) == ("y", [])
    assert interpolate("${A}", {"A": ""}) == ("", [])
    assert interpolate("pre-${A}-post", {"A": "y"}) == ("pre-y-post", [])


def test_escape_and_non_variables_are_left_alone() -> None:
    assert interpolate("$${HOME}", {}) == ("${HOME}", [])
    # Regular expressions and B.1's "+1$1$2$3" replacement are not variables.
    assert interpolate("+1$1$2$3", {}) == ("+1$1$2$3", [])
    assert interpolate("a${2,3}", {}) == ("a${2,3}", [])


def test_unset_variable_is_an_issue_at_its_key_and_line() -> None:
    doc = parse_yaml(TEXT, "f.yaml", {})
    assert len(doc.issues) == 1
    issue = doc.issues[0]
    assert (issue.file, issue.key, issue.line) == ("f.yaml", "connection.host", 4)
    assert "DB_HOST" in issue.message and "${DB_HOST:-value}" in issue.message
    assert ("connection", "host") in doc.unresolved


def test_duplicate_key_is_an_issue_naming_both_lines() -> None:
    doc = parse_yaml("a: 1\nb:\n  c: 1\n  c: 2\n", "f.yaml", {})
    [issue] = doc.issues
    assert (issue.key, issue.line) == ("b.c", 4)
    assert "first on line 3" in issue.message


def test_syntax_error_has_the_line_of_the_mark() -> None:
    doc = parse_yaml("a: 1\nb: [1, 2\nc: 3\n", "f.yaml", {})
    assert doc.data is None
    [issue] = doc.issues
    assert issue.line is not None and issue.line >= 2
    assert "is not valid YAML" in issue.message


def test_yaml_12_booleans_and_no_implicit_dates() -> None:
    doc = parse_yaml("country: NO\nflag: true\nwhen: 2024-01-15\nyes_word: yes\n", "f", {})
    assert doc.data == {"country": "NO", "flag": True, "when": "2024-01-15", "yes_word": "yes"}


def test_empty_document_is_an_empty_mapping() -> None:
    doc = parse_yaml("# only a comment\n", "f.yaml", {})
    assert doc.ok and doc.data == {}


def test_merge_keys_and_recursive_aliases() -> None:
    doc = parse_yaml("base: &b {x: 1}\nuse:\n  <<: *b\n  y: 2\n", "f.yaml", {})
    assert doc.data["use"] == {"x": 1, "y": 2}
    loop = parse_yaml("a: &x [1, *x]\n", "f.yaml", {})
    assert any("refers to itself" in i.message for i in loop.issues)


def test_format_path() -> None:
    assert format_path(("validation", "required_fields", 0)) == "validation.required_fields[0]"
    assert format_path(()) == ""
