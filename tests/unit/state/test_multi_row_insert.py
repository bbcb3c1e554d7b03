"""SQLite's multi-row inserts: how a batch is split into statements, and what a statement is."""

from __future__ import annotations

import pytest

from dps.state.sql import _rows_sql, _value_chunks, _values_parts


@pytest.mark.parametrize("count", [0, 1, 2, 63, 64, 99, 100, 101, 199, 200, 1937, 2000])
def test_the_pieces_cover_the_batch_in_order_with_few_sizes(count: int) -> None:
    pieces = list(_value_chunks(count))
    covered = [i for start, size in pieces for i in range(start, start + size)]
    assert covered == list(range(count))
    sizes = {size for _, size in pieces}
    assert sizes <= {100, 64, 32, 16, 8, 4, 2, 1}
    # Full statements first, then at most one statement per power of two.
    rest = [size for _, size in pieces if size != 100]
    assert rest == sorted(set(rest), reverse=True)


def test_an_insert_splits_around_its_one_row_of_placeholders() -> None:
    sql = "INSERT INTO t (a, b) VALUES (?, ?) ON CONFLICT (a) DO NOTHING"
    head, row, tail = _values_parts(sql) or ("", "", "")
    assert (head, row, tail) == (
        "INSERT INTO t (a, b) VALUES ",
        "(?, ?)",
        " ON CONFLICT (a) DO NOTHING",
    )
    assert _rows_sql(head, row, tail, 3) == (
        "INSERT INTO t (a, b) VALUES (?, ?), (?, ?), (?, ?) ON CONFLICT (a) DO NOTHING"
    )


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO t (a) SELECT value FROM json_each(?)",
        "INSERT INTO t (a, b) VALUES (?, 'x')",  # a constant in the row: not a plain row
        "UPDATE t SET a = ?",
    ],
)
def test_other_statements_are_left_to_executemany(sql: str) -> None:
    assert _values_parts(sql) is None
