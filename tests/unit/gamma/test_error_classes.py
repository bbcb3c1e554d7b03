"""Every destination type maps what it sees to one error class (retryable, throttle, permanent,
poison); the policy then depends only on the class."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from dps.core.errors import TerminalError, TransientError
from dps.core.record import Record
from dps.gamma.destinations.base import (
    DeliveryError,
    RecordError,
    classify_exception,
    classify_http_status,
    classify_sqlstate,
    parse_retry_after,
    record_error_class,
)
from dps.gamma.destinations.database import DatabaseDestination, DatabaseDestinationConfig
from dps.gamma.destinations.http import HttpDestination, HttpDestinationConfig


@pytest.mark.parametrize(
    ("status", "retry_after", "expected"),
    [
        (429, None, "throttle"),
        (429, "5", "throttle"),
        (503, "10", "throttle"),
        (503, None, "retryable"),
        (500, None, "retryable"),
        (502, None, "retryable"),
        (504, None, "retryable"),
        (408, None, "retryable"),
        (400, None, "permanent"),
        (401, None, "permanent"),
        (403, None, "permanent"),
        (404, None, "permanent"),
        (409, None, "permanent"),
        (413, None, "permanent"),
        (422, None, "permanent"),
        (302, None, "retryable"),
    ],
)
def test_http_status_classes(status: int, retry_after: str | None, expected: str) -> None:
    assert classify_http_status(status, retry_after) == expected


@pytest.mark.parametrize(
    ("sqlstate", "expected"),
    [
        ("08006", "retryable"),  # connection failure
        ("08001", "retryable"),  # cannot connect
        ("57P01", "retryable"),  # admin shutdown
        ("57014", "retryable"),  # query cancelled (statement timeout)
        ("40001", "retryable"),  # serialization failure
        ("40P01", "retryable"),  # deadlock
        ("53100", "retryable"),  # disk full
        ("53300", "throttle"),  # too many connections
        ("23505", "permanent"),  # unique violation
        ("23502", "permanent"),  # not null violation
        ("23514", "permanent"),  # check violation
        ("22001", "permanent"),  # string too long
        ("22P02", "permanent"),  # invalid text representation
        ("42P01", "permanent"),  # undefined table
        ("42703", "permanent"),  # undefined column
        (None, "retryable"),
        ("ZZ999", "retryable"),
    ],
)
def test_sqlstate_classes(sqlstate: str | None, expected: str) -> None:
    assert classify_sqlstate(sqlstate) == expected


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (TimeoutError("slow"), "retryable"),
        (ConnectionRefusedError("refused"), "retryable"),
        (ConnectionResetError("reset"), "retryable"),
        (OSError("io"), "retryable"),
        (TransientError("queue full"), "retryable"),
        (DeliveryError("x", "throttle"), "throttle"),
        (DeliveryError("x", "permanent"), "permanent"),
        (RecordError("too_big", "x", "poison"), "poison"),
        (TerminalError("bad", "x"), "permanent"),
    ],
)
def test_exception_classes(exc: BaseException, expected: str) -> None:
    assert classify_exception(exc) == expected


def test_record_errors_default_to_permanent() -> None:
    assert record_error_class(TerminalError("x", "y")) == "permanent"
    assert record_error_class(RecordError("x", "y", "poison")) == "poison"


def test_retry_after_seconds_and_dates() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("100000") == 300.0
    assert parse_retry_after(None, 1.5) == 1.5
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert parse_retry_after("soon", 2.0) == 2.0


# -- the database type: SQLite's own errors ----------------------------------------------------


def _record(n: int, **payload: object) -> Record:
    return Record(
        record_id=f"s:{n}", source_id="s", correlation_id="c", ingested_at=0.0, payload=payload
    )


def test_sqlite_missing_table_is_permanent_and_a_constraint_row_is_permanent(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db.sqlite"
    spec = DatabaseDestinationConfig.model_validate(
        {
            "connection": {"type": "sqlite", "path": str(path)},
            "format": {
                "table": "t",
                "create_table": False,
                "column_mapping": {"record_id": "id", "amount": "amount"},
            },
        }
    )
    dest = DatabaseDestination("db", spec)
    dest.open()
    try:
        with pytest.raises(DeliveryError) as info:
            dest.deliver([_record(1, amount=1)])
        assert info.value.error_class == "permanent"
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE t (id TEXT PRIMARY KEY, amount INTEGER CHECK (amount > 0))")
        rejected = dest.deliver([_record(1, amount=1), _record(2, amount=-1), _record(3, amount=3)])
        assert [(r.record_id, record_error_class(e)) for r, e in rejected] == [("s:2", "permanent")]
    finally:
        dest.close()


def test_sqlite_locked_database_is_retryable(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    spec = DatabaseDestinationConfig.model_validate(
        {"connection": {"type": "sqlite", "path": str(path)}, "format": {"table": "t"}}
    )
    dest = DatabaseDestination("db", spec)
    dest.open()
    assert dest._sqlite is not None
    dest._sqlite.execute("PRAGMA busy_timeout = 50")
    dest._sqlite.close()
    dest._sqlite = sqlite3.connect(str(path), timeout=0.05, check_same_thread=False)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(DeliveryError) as info:
            dest.deliver([_record(1)])
        assert info.value.error_class == "retryable"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        dest.close()


# -- the http type: a real local server --------------------------------------------------------


def _http(url: str, **fmt: object) -> HttpDestination:
    spec = HttpDestinationConfig.model_validate({"connection": {"url": url}, "format": fmt})
    dest = HttpDestination("api", spec)
    dest.timeout_s = 1.0
    dest.open()
    return dest


def test_http_connection_refused_is_retryable(free_port: int) -> None:
    dest = _http(f"http://127.0.0.1:{free_port}/in")
    try:
        with pytest.raises(DeliveryError) as info:
            dest.deliver([_record(1)])
        assert info.value.error_class == "retryable"
    finally:
        dest.close()


def test_http_answers_are_classified(http_server: Any) -> None:
    dest = _http(http_server.url)
    try:
        for status, headers, expected, retry_after in (
            (429, {"Retry-After": "3"}, "throttle", 3.0),
            (500, {}, "retryable", None),
            (422, {}, "permanent", None),
        ):
            http_server.script.append((status, headers))
            with pytest.raises(DeliveryError) as info:
                dest.deliver([_record(1), _record(2)])
            assert info.value.error_class == expected
            assert info.value.retry_after == retry_after
        http_server.script.append((200, {}))
        assert dest.deliver([_record(1), _record(2)]) == []
        assert http_server.requests[-1]["headers"]["idempotency-key"]
    finally:
        dest.close()


def test_http_hanging_server_is_a_retryable_timeout(http_server: Any) -> None:
    http_server.delay = 3.0
    dest = _http(http_server.url)
    try:
        with pytest.raises(DeliveryError) as info:
            dest.deliver([_record(1)])
        assert info.value.error_class == "retryable"
        assert isinstance(info.value.__cause__, httpx.TimeoutException)
    finally:
        dest.close()


def test_http_single_mode_rejects_only_the_refused_record_and_a_huge_one_is_poison(
    http_server: Any,
) -> None:
    spec = HttpDestinationConfig.model_validate(
        {
            "connection": {"url": http_server.url, "max_body_bytes": 500},
            "format": {"mode": "single"},
        }
    )
    dest = HttpDestination("api", spec)
    dest.open()
    try:
        http_server.script.extend([(200, {}), (400, {})])
        rejected = dest.deliver([_record(1), _record(2), _record(3, blob="x" * 1000)])
        assert [(r.record_id, record_error_class(e)) for r, e in rejected] == [
            ("s:2", "permanent"),
            ("s:3", "poison"),
        ]
        assert http_server.requests[0]["headers"]["idempotency-key"] == "s:1"
    finally:
        dest.close()
