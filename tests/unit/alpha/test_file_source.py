"""The ``file`` source on the real SQLite state store: offsets, torn lines, restart, rewind."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from dps.alpha.sources.base import Fetch
from dps.alpha.sources.file import FileConnection, FileSource
from dps.core.errors import TransientError
from dps.state import StateStore, open_state

SOURCE_ID = "orders_file"


@pytest.fixture
def state(tmp_path: Path) -> Iterator[StateStore]:
    store = open_state("sqlite", {}, tmp_path / "data")
    yield store
    store.close()


def _lines(*payloads: str) -> bytes:
    return b"".join(f"{p}\n".encode() for p in payloads)


def _source(
    state: StateStore, path: Path, *, pattern: str = "*", fmt: str = "ndjson"
) -> FileSource:
    return FileSource(SOURCE_ID, FileConnection(path=str(path), pattern=pattern), state, fmt=fmt)


def _origins(fetch: Fetch) -> list[str]:
    return [item.origin for item in fetch.items]


def _commit(source: FileSource, fetch: Fetch) -> None:
    read: dict[str, int] = {}
    for item in fetch.items:
        read[item.position_key] = read.get(item.position_key, 0) + 1
    source.commit(fetch, read)


@pytest.fixture
def orders(tmp_path: Path) -> Path:
    path = tmp_path / "orders.ndjson"
    path.write_bytes(_lines(*(f'{{"order_id": {i}}}' for i in range(1, 6))))
    return path


# -- reading -------------------------------------------------------------------------------


def test_each_line_is_an_item_with_its_file_and_line_number(
    state: StateStore, orders: Path
) -> None:
    fetch = _source(state, orders).fetch(100)

    assert [item.data for item in fetch.items][:2] == [b'{"order_id": 1}\n', b'{"order_id": 2}\n']
    assert _origins(fetch) == [f"{orders}:{n}" for n in range(1, 6)]
    assert {item.position_key for item in fetch.items} == {str(orders)}
    assert fetch.ends == {str(orders): orders.stat().st_size}


def test_lines_at_and_over_the_size_limit_among_others(state: StateStore, tmp_path: Path) -> None:
    """Complete lines are read a line at a time; a line over ``max_record_bytes`` (and the
    torn last line) go through the careful reader: the offsets and line numbers stay exact."""
    limit = 1024
    at_limit = b'{"k": "' + b"x" * (limit - 9) + b'"}\n'  # limit + 1 bytes with its newline
    assert len(at_limit) == limit + 1
    over = b'{"k": "' + b"y" * (3 * limit) + b'"}\n'
    path = tmp_path / "mixed.ndjson"
    path.write_bytes(b'{"a": 1}\n' + at_limit + b" \r\n" + over + b'{"b": 2}\r\n' + b'{"c": 3}')
    connection = FileConnection(path=str(path), max_record_bytes=limit)
    source = FileSource(SOURCE_ID, connection, state, fmt="ndjson")

    fetch = source.fetch(100)
    assert _origins(fetch) == [f"{path}:{n}" for n in (1, 2, 4, 5)]
    assert [item.error is not None for item in fetch.items] == [False, False, True, False]
    assert fetch.items[1].data == at_limit and fetch.items[3].data == b'{"b": 2}\r\n'
    # The unterminated last line waits (the file was just written), and the offset is the
    # byte after the last complete line.
    assert fetch.ends == {str(path): path.stat().st_size - len(b'{"c": 3}')}
    _commit(source, fetch)
    with path.open("ab") as fh:
        fh.write(b"\n")
    again = source.fetch(100)
    assert _origins(again) == [f"{path}:6"] and again.items[0].data == b'{"c": 3}\n'


def test_blank_lines_are_skipped_but_still_counted(state: StateStore, tmp_path: Path) -> None:
    path = tmp_path / "gaps.ndjson"
    path.write_bytes(b'{"a": 1}\n\n   \n{"a": 2}\n')

    fetch = _source(state, path).fetch(100)

    assert _origins(fetch) == [f"{path}:1", f"{path}:4"]
    assert fetch.ends[str(path)] == path.stat().st_size


def test_a_fetch_returns_at_most_max_items_and_the_next_one_goes_on(
    state: StateStore, orders: Path
) -> None:
    source = _source(state, orders)

    first, second, third = source.fetch(2), source.fetch(2), source.fetch(2)

    assert _origins(first) == [f"{orders}:1", f"{orders}:2"]
    assert _origins(second) == [f"{orders}:3", f"{orders}:4"]
    assert _origins(third) == [f"{orders}:5"]
    assert first.ends[str(orders)] == len(_lines('{"order_id": 1}', '{"order_id": 2}'))
    assert not source.fetch(2)


def test_a_last_line_without_newline_waits_until_it_is_complete(
    state: StateStore, tmp_path: Path
) -> None:
    path = tmp_path / "live.ndjson"
    path.write_bytes(b'{"id": 1}\n{"id": 2}\n{"id": 3, "na')
    source = _source(state, path)

    first = source.fetch(100)
    assert _origins(first) == [f"{path}:1", f"{path}:2"]
    assert first.ends[str(path)] == len(b'{"id": 1}\n{"id": 2}\n')
    assert not source.fetch(100).items  # still torn

    with path.open("ab") as fh:
        fh.write(b'me": "x"}\n{"id": 4}\n')
    second = source.fetch(100)

    assert [item.data for item in second.items] == [b'{"id": 3, "name": "x"}\n', b'{"id": 4}\n']
    assert _origins(second) == [f"{path}:3", f"{path}:4"]


def test_a_last_line_without_newline_is_read_once_the_file_has_settled(
    state: StateStore, tmp_path: Path
) -> None:
    path = tmp_path / "final.ndjson"
    path.write_bytes(b'{"id": 1}\n{"id": 2}')
    old = time.time() - 10
    os.utime(path, (old, old))
    source = _source(state, path)

    fetch = source.fetch(100)

    assert [item.data for item in fetch.items] == [b'{"id": 1}\n', b'{"id": 2}']
    assert fetch.ends[str(path)] == path.stat().st_size
    assert not source.fetch(100).items
    assert source.exhausted()


def test_lines_appended_after_the_end_are_read_later(state: StateStore, orders: Path) -> None:
    source = _source(state, orders)
    _commit(source, source.fetch(100))
    assert not source.fetch(100)
    assert source.exhausted()

    with orders.open("ab") as fh:
        fh.write(b'{"order_id": 6}\n')

    assert _origins(source.fetch(100)) == [f"{orders}:6"]
    assert not source.exhausted()


def test_a_directory_is_read_file_by_file_through_the_pattern(
    state: StateStore, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "b.ndjson").write_bytes(_lines('{"f": "b1"}'))
    (folder / "a.ndjson").write_bytes(_lines('{"f": "a1"}', '{"f": "a2"}'))
    (folder / "notes.txt").write_bytes(_lines("not a record"))
    (folder / "sub.ndjson").mkdir()

    source = _source(state, folder, pattern="*.ndjson")
    first = source.fetch(2)
    second = source.fetch(2)

    a, b = folder / "a.ndjson", folder / "b.ndjson"
    assert _origins(first) == [f"{a}:1", f"{a}:2"]
    assert _origins(second) == [f"{b}:1"]
    assert set(second.ends) == {str(b)}
    assert source.test() == {"ok": True, "path": str(folder), "files": 2}


def test_a_json_document_is_one_item_read_once(state: StateStore, tmp_path: Path) -> None:
    path = tmp_path / "export.json"
    path.write_bytes(b'{"data": {"records": [\n  {"id": 1},\n  {"id": 2}\n]}}')
    source = _source(state, path, fmt="json")

    fetch = source.fetch(100)

    assert [(item.data, item.origin) for item in fetch.items] == [(path.read_bytes(), str(path))]
    assert fetch.ends == {str(path): path.stat().st_size}
    _commit(source, fetch)
    assert not source.fetch(100)
    assert source.exhausted()


def test_exhausted_only_after_a_fetch_finds_nothing_left(state: StateStore, orders: Path) -> None:
    source = _source(state, orders)
    assert not source.exhausted()

    source.fetch(100)
    assert not source.exhausted()  # this fetch still found records

    source.fetch(100)
    assert source.exhausted()


def test_a_missing_path_is_a_transient_error(state: StateStore, tmp_path: Path) -> None:
    source = _source(state, tmp_path / "not-there")
    with pytest.raises(TransientError, match="does not exist"):
        source.fetch(10)


# -- commit, restart, rewind -------------------------------------------------------------------


def test_commit_stores_the_byte_offset_and_the_count(state: StateStore, orders: Path) -> None:
    source = _source(state, orders)
    fetch = source.fetch(3)

    assert state.get_offset(SOURCE_ID, str(orders)) == 0  # nothing is committed by a fetch
    _commit(source, fetch)

    assert state.get_offset(SOURCE_ID, str(orders)) == fetch.ends[str(orders)]
    assert state.accounting()["ingested_by_source"][SOURCE_ID] == 3


def test_a_restart_resumes_at_the_committed_offset_with_true_line_numbers(
    tmp_path: Path, orders: Path
) -> None:
    data_dir = tmp_path / "data"
    store = open_state("sqlite", {}, data_dir)
    before = _source(store, orders)
    _commit(before, before.fetch(2))
    before.fetch(2)  # fetched, never committed: lost with the process
    store.close()

    store = open_state("sqlite", {}, data_dir)
    try:
        after = _source(store, orders)
        fetch = after.fetch(100)
    finally:
        store.close()

    assert _origins(fetch) == [f"{orders}:3", f"{orders}:4", f"{orders}:5"]
    assert fetch.items[0].data == b'{"order_id": 3}\n'


def test_a_restart_counts_blank_lines_before_the_offset(tmp_path: Path) -> None:
    path = tmp_path / "gaps.ndjson"
    path.write_bytes(b'{"a": 1}\n\n{"a": 2}\n\n{"a": 3}\n')
    data_dir = tmp_path / "data"
    store = open_state("sqlite", {}, data_dir)
    first = _source(store, path)
    _commit(first, first.fetch(2))
    store.close()

    store = open_state("sqlite", {}, data_dir)
    try:
        assert _origins(_source(store, path).fetch(100)) == [f"{path}:5"]
    finally:
        store.close()


def test_rewind_hands_out_the_uncommitted_items_again(state: StateStore, orders: Path) -> None:
    source = _source(state, orders)
    _commit(source, source.fetch(2))
    lost = source.fetch(2)

    source.rewind()
    again = source.fetch(2)

    assert _origins(again) == _origins(lost) == [f"{orders}:3", f"{orders}:4"]
    assert [item.data for item in again.items] == [item.data for item in lost.items]


def test_rewind_without_a_commit_starts_over(state: StateStore, orders: Path) -> None:
    source = _source(state, orders)
    first = source.fetch(100)

    source.rewind()

    assert _origins(source.fetch(100)) == _origins(first)


def test_rewind_keeps_a_later_fetch_that_was_not_committed(state: StateStore, orders: Path) -> None:
    source = _source(state, orders)
    first, second = source.fetch(2), source.fetch(2)
    _commit(source, first)

    source.rewind()

    assert _origins(source.fetch(2)) == _origins(second)


def test_rewind_after_a_torn_line_waits_for_it_again(state: StateStore, tmp_path: Path) -> None:
    path = tmp_path / "live.ndjson"
    path.write_bytes(b'{"id": 1}\n{"id": 2')
    source = _source(state, path)
    _commit(source, source.fetch(100))
    with path.open("ab") as fh:
        fh.write(b"}\n")
    source.fetch(100)

    source.rewind()

    assert _origins(source.fetch(100)) == [f"{path}:2"]


# -- configuration -----------------------------------------------------------------------


def test_file_connection_defaults_and_strictness() -> None:
    assert FileConnection(path="/in").pattern == "*"
    with pytest.raises(ValidationError, match="patern\n  Extra inputs are not permitted"):
        FileConnection.model_validate({"path": "/in", "patern": "*.json"})
    with pytest.raises(ValidationError, match="path"):
        FileConnection.model_validate({})
