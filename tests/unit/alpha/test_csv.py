"""The ``csv`` parser and the ``file`` source reading CSV: header, types, ragged rows, restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from dps.alpha.parsers.base import BadRecord
from dps.alpha.parsers.csv import CsvParser
from dps.alpha.sources.base import SourceContext
from dps.alpha.sources.file import FileConnection, FileSource
from dps.config.models import ParsingConfig
from dps.core.errors import TerminalError
from dps.core.registry import get
from dps.state import StateStore, open_state


def _parser(**csv: Any) -> CsvParser:
    return CsvParser(parsing=ParsingConfig.model_validate({"format": "csv", "csv": csv}))


# -- the parser -----------------------------------------------------------------------------


def test_csv_is_registered() -> None:
    assert get("parsers", "csv") is CsvParser


def test_header_names_the_columns_and_cells_stay_strings() -> None:
    data = b"id,name,amount\n1,Ann,9.5\n2,Bob,3\n"
    assert CsvParser().parse(data) == [
        {"id": "1", "name": "Ann", "amount": "9.5"},
        {"id": "2", "name": "Bob", "amount": "3"},
    ]


def test_types_convert_and_empty_cells_are_left_out() -> None:
    parser = _parser(types={"id": "integer", "amount": "number", "vip": "boolean"})
    data = b"id,amount,vip,note\n1,9.5,yes,\n2,,false,x\n"
    assert parser.parse(data) == [
        {"id": 1, "amount": 9.5, "vip": True},
        {"id": 2, "vip": False, "note": "x"},
    ]


def test_empty_cells_are_kept_when_skip_empty_is_false() -> None:
    parser = _parser(types={"id": "integer"}, skip_empty=False)
    assert parser.parse(b"id,note\n,\n") == [{"id": None, "note": ""}]


def test_delimiter_quote_and_quoted_newlines() -> None:
    parser = _parser(delimiter=";", quote="'")
    data = b"id;text\n1;'a;b'\n2;'line one\nline two ''quoted'''\n"
    assert parser.parse(data) == [
        {"id": "1", "text": "a;b"},
        {"id": "2", "text": "line one\nline two 'quoted'"},
    ]


def test_columns_without_a_header() -> None:
    parser = _parser(header=False, columns=["id", "name"])
    assert parser.parse(b"1,Ann\n") == [{"id": "1", "name": "Ann"}]


def test_columns_replace_the_header_names() -> None:
    parser = _parser(columns=["a", "b"])
    assert parser.parse(b"x,y\n1,2\n") == [{"a": "1", "b": "2"}]


def test_a_ragged_row_is_a_bad_record_with_its_line_and_the_rest_goes_on() -> None:
    data = b"id,name\n1,Ann\n2,Bob,extra\n3,Cy\n4\n"
    parsed = _parser().parse_each(data)
    assert parsed[0] == {"id": "1", "name": "Ann"}
    assert parsed[2] == {"id": "3", "name": "Cy"}
    bad = parsed[1]
    assert isinstance(bad, BadRecord)
    assert bad.raw == b"2,Bob,extra\n"
    assert bad.where == "#1"
    assert bad.error.reason == "parse_error"
    assert "line 3" in str(bad.error) and "3 fields; expected 2" in str(bad.error)
    last = parsed[3]
    assert isinstance(last, BadRecord) and "line 5" in str(last.error)


def test_a_cell_that_does_not_convert_is_a_bad_record() -> None:
    parsed = _parser(types={"id": "integer"}).parse_each(b"id\nseven\n")
    assert len(parsed) == 1 and isinstance(parsed[0], BadRecord)
    assert "column id: 'seven' is not a integer" in str(parsed[0].error)
    assert parsed[0].where == ""


def test_parse_raises_for_a_bad_row_and_garbage_is_a_parse_error() -> None:
    with pytest.raises(TerminalError, match="fields"):
        CsvParser().parse(b"a,b\n1\n")
    with pytest.raises(TerminalError, match="Not UTF-8"):
        CsvParser().parse(b"a,b\n\xff\xfe,1\n")


def test_a_header_only_document_has_no_records() -> None:
    assert CsvParser().parse(b"a,b\n") == []


def test_csv_options_are_checked() -> None:
    with pytest.raises(ValidationError, match="columns must list"):
        ParsingConfig.model_validate({"format": "csv", "csv": {"header": False}})
    with pytest.raises(ValidationError, match="different"):
        ParsingConfig.model_validate({"format": "csv", "csv": {"delimiter": '"'}})
    with pytest.raises(ValidationError):
        ParsingConfig.model_validate({"format": "csv", "csv": {"types": {"a": "date"}}})
    with pytest.raises(ValidationError):
        ParsingConfig.model_validate({"format": "csv", "csv": {"delimter": ";"}})


# -- the file source reading CSV ---------------------------------------------------------------


@pytest.fixture
def state(tmp_path: Path) -> Iterator[StateStore]:
    store = open_state("sqlite", {}, tmp_path / "data")
    yield store
    store.close()


def _csv_source(state: StateStore, path: Path, *, header: bool = True) -> FileSource:
    context = SourceContext(parsing_format="csv", csv_header=header)
    return FileSource("orders_csv", FileConnection(path=str(path)), state, context=context)


def test_each_row_comes_with_the_header_and_its_file_line(
    state: StateStore, tmp_path: Path
) -> None:
    path = tmp_path / "orders.csv"
    path.write_bytes(b'id,name\n1,Ann\n\n2,"B\nob"\n3,Cy\n')
    fetch = _csv_source(state, path).fetch(100)
    assert [(i.data, i.origin) for i in fetch.items] == [
        (b"id,name\n1,Ann\n", f"{path}:2"),
        (b'id,name\n2,"B\nob"\n', f"{path}:4"),
        (b"id,name\n3,Cy\n", f"{path}:6"),
    ]
    parser = CsvParser()
    assert [parser.parse(i.data) for i in fetch.items][1] == [{"id": "2", "name": "B\nob"}]


def test_a_restart_reads_the_header_again_and_resumes_after_the_commit(
    state: StateStore, tmp_path: Path
) -> None:
    path = tmp_path / "orders.csv"
    path.write_bytes(b"id,name\n1,Ann\n2,Bob\n3,Cy\n")
    first = _csv_source(state, path)
    fetch = first.fetch(1)
    first.commit(fetch, {str(path): 1})
    again = _csv_source(state, path).fetch(100)
    assert [(i.data, i.origin) for i in again.items] == [
        (b"id,name\n2,Bob\n", f"{path}:3"),
        (b"id,name\n3,Cy\n", f"{path}:4"),
    ]


def test_a_row_with_an_open_quote_waits_for_its_end(state: StateStore, tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_bytes(b'id,name\n1,"An\n')
    source = _csv_source(state, path)
    assert source.fetch(100).items == []
    with path.open("ab") as fh:
        fh.write(b'n"\n')
    assert [i.data for i in source.fetch(100).items] == [b'id,name\n1,"An\nn"\n']


def test_without_a_header_every_line_is_a_row(state: StateStore, tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_bytes(b"1,Ann\n2,Bob\n")
    fetch = _csv_source(state, path, header=False).fetch(100)
    assert [(i.data, i.origin) for i in fetch.items] == [
        (b"1,Ann\n", f"{path}:1"),
        (b"2,Bob\n", f"{path}:2"),
    ]
