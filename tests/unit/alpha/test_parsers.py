"""The ``json`` and ``ndjson`` parsers: payloads out, ``parse_error`` for anything else."""

from __future__ import annotations

import pytest

from dps.alpha.parsers.json import JsonParser
from dps.alpha.parsers.ndjson import NdjsonParser
from dps.core.errors import TerminalError
from dps.core.registry import get

# -- json ---------------------------------------------------------------------------------------


def test_json_object_is_one_record() -> None:
    assert JsonParser().parse(b'{"id": 1, "name": "Ann"}') == [{"id": 1, "name": "Ann"}]


def test_json_list_is_one_record_per_object() -> None:
    assert JsonParser().parse(b'[{"id": 1}, {"id": 2}]') == [{"id": 1}, {"id": 2}]


@pytest.mark.parametrize("root", [None, "", "$"])
def test_json_root_record_path_means_the_whole_document(root: str | None) -> None:
    assert JsonParser(root).parse(b'[{"id": 1}]') == [{"id": 1}]


def test_json_record_path_selects_the_records() -> None:
    data = b'{"meta": {"page": 1}, "data": {"records": [{"id": 1}, {"id": 2}]}}'
    assert JsonParser("$.data.records").parse(data) == [{"id": 1}, {"id": 2}]


def test_json_record_path_to_one_object_is_one_record() -> None:
    assert JsonParser("$.data.record").parse(b'{"data": {"record": {"id": 9}}}') == [{"id": 9}]


def test_json_record_path_with_a_wildcard_collects_each_match() -> None:
    data = b'{"pages": [{"items": [{"id": 1}]}, {"items": [{"id": 2}, {"id": 3}]}]}'
    assert JsonParser("$.pages[*].items[*]").parse(data) == [{"id": 1}, {"id": 2}, {"id": 3}]


def test_json_record_path_to_an_empty_list_is_no_records() -> None:
    assert JsonParser("$.data.records").parse(b'{"data": {"records": []}}') == []


def test_json_record_path_that_finds_nothing_is_a_parse_error() -> None:
    with pytest.raises(TerminalError) as caught:
        JsonParser("$.data.records").parse(b'{"data": {"rows": []}}')
    assert caught.value.reason == "parse_error"
    assert "$.data.records" in str(caught.value)


@pytest.mark.parametrize("data", [b"{not json", b"", b'{"id": 1} trailing', b"\xff\xfe"])
def test_json_that_is_not_valid_is_a_parse_error(data: bytes) -> None:
    with pytest.raises(TerminalError) as caught:
        JsonParser().parse(data)
    assert caught.value.reason == "parse_error"
    assert str(caught.value).startswith("Not valid JSON")


def test_json_list_with_a_non_object_names_the_record_and_the_path() -> None:
    with pytest.raises(TerminalError) as caught:
        JsonParser("$.rows").parse(b'{"rows": [{"id": 1}, 42]}')
    assert caught.value.reason == "parse_error"
    assert str(caught.value) == "Record 1 at $.rows is a int; expected a JSON object."


@pytest.mark.parametrize("data", [b"42", b'"text"', b"null", b"[[1]]"])
def test_json_scalars_are_not_records(data: bytes) -> None:
    with pytest.raises(TerminalError, match="expected a JSON object"):
        JsonParser().parse(data)


# -- ndjson -------------------------------------------------------------------------------------


def test_ndjson_line_is_one_record() -> None:
    assert NdjsonParser().parse(b'{"order_id": "A1", "amount": 9.5}\n') == [
        {"order_id": "A1", "amount": 9.5}
    ]


def test_ndjson_keeps_nested_values_and_unicode() -> None:
    line = '{"name": "Åse", "tags": ["x"], "addr": {"city": "Bergen"}}\r\n'.encode()
    assert NdjsonParser().parse(line) == [
        {"name": "Åse", "tags": ["x"], "addr": {"city": "Bergen"}}
    ]


@pytest.mark.parametrize(
    ("line", "words"),
    [
        (b"{broken\n", "Not valid JSON"),
        (b'[{"id": 1}]\n', "holds a list; expected a JSON object"),
        (b"17\n", "holds a int; expected a JSON object"),
    ],
)
def test_ndjson_bad_line_is_a_parse_error(line: bytes, words: str) -> None:
    with pytest.raises(TerminalError) as caught:
        NdjsonParser().parse(line)
    assert caught.value.reason == "parse_error"
    assert words in str(caught.value)


def test_parsers_are_registered_under_their_format_names() -> None:
    assert get("parsers", "json") is JsonParser
    assert get("parsers", "ndjson") is NdjsonParser


@pytest.mark.parametrize("fmt", ["json", "ndjson"])
def test_invalid_utf8_is_a_parse_error_not_a_crash(fmt: str) -> None:
    parser = get("parsers", fmt)(None)
    with pytest.raises(TerminalError, match="Not valid JSON"):
        parser.parse('{"name": "caf\xe9"}'.encode("latin-1"))


def test_a_bad_record_keeps_no_stack_so_its_batch_is_freed_at_once() -> None:
    """The error's traceback held the parse's frames, and through them the whole batch, in a
    cycle only the collector's full passes freed: memory grew with each batch."""
    import gc

    from dps.alpha.parsers.base import BadRecord

    gc.collect()
    gc.disable()
    try:
        bad = NdjsonParser().parse_each(b'{"broken": ')
        assert isinstance(bad[0], BadRecord) and "Not valid JSON" in str(bad[0].error)
        assert bad[0].error.__traceback__ is None and bad[0].error.__context__ is None
        del bad
        assert gc.collect() == 0, "parsing a bad line left garbage in a reference cycle"
    finally:
        gc.enable()
