"""JSON log lines: exactly the manual's fields, data in ``details``, one object per line."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest

from dps.core.logging import configure_logging, get_logger

FIELDS = [
    "timestamp",
    "level",
    "module",
    "component",
    "message",
    "correlation_id",
    "source_id",
    "details",
]
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    out = io.StringIO()
    configure_logging("alpha", "INFO", stream=out)
    yield out
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_manual_example_has_exactly_the_manual_fields(stream: io.StringIO) -> None:
    log = get_logger("source_adapter")
    log.info(
        "Successfully connected to source.",
        correlation_id="abc123",
        source_id="api_source_1",
        latency_ms=45,
        connection_pool_size=10,
    )
    [entry] = lines(stream)
    assert list(entry) == FIELDS
    assert TIMESTAMP.match(entry["timestamp"])
    assert entry["level"] == "INFO"
    assert entry["module"] == "alpha"
    assert entry["component"] == "source_adapter"
    assert entry["message"] == "Successfully connected to source."
    assert entry["correlation_id"] == "abc123"
    assert entry["source_id"] == "api_source_1"
    assert entry["details"] == {"latency_ms": 45, "connection_pool_size": 10}


def test_one_object_per_line_even_with_newlines_in_values(stream: io.StringIO) -> None:
    get_logger("parser").warning("Record skipped.", raw="a\nb\n")
    assert len(stream.getvalue().splitlines()) == 1
    assert lines(stream)[0]["details"] == {"raw": "a\nb\n"}


def test_levels_below_the_configured_one_are_dropped(stream: io.StringIO) -> None:
    log = get_logger("delivery")
    log.debug("Not shown.")
    log.error("Shown.")
    assert [e["level"] for e in lines(stream)] == ["ERROR"]


def test_plain_logging_calls_use_extra_for_fields(stream: io.StringIO) -> None:
    logging.getLogger("dps.alpha.source_adapter").info(
        "Connected %s.", "x", extra={"source_id": "s1", "latency_ms": 3}
    )
    logging.getLogger("some.lib").warning("Odd.", extra={"component": "buffer"})
    first, second = lines(stream)
    assert first["component"] == "source_adapter"
    assert first["message"] == "Connected x."
    assert first["source_id"] == "s1"
    assert first["details"] == {"latency_ms": 3}
    assert second["component"] == "buffer"
    assert second["details"] == {}


def test_exception_traceback_goes_to_details(stream: io.StringIO) -> None:
    log = get_logger("transform")
    try:
        raise KeyError("customer_id")
    except KeyError:
        log.exception("Transformation failed.", rule_id="TRX_042")
    [entry] = lines(stream)
    assert entry["level"] == "ERROR"
    assert entry["details"]["rule_id"] == "TRX_042"
    assert "Traceback" in entry["details"]["exception"]
    assert "KeyError" in entry["details"]["exception"]


def test_bind_and_unserialisable_values(stream: io.StringIO) -> None:
    class Thing:
        def __str__(self) -> str:
            return "thing"

    log = get_logger("alpha.dedupe").bind(source_id="s2", shard=1)
    log.info("Checked.", value=Thing(), correlation_id="c1")
    [entry] = lines(stream)
    assert entry["component"] == "dedupe"
    assert entry["source_id"] == "s2"
    assert entry["correlation_id"] == "c1"
    assert entry["details"] == {"shard": 1, "value": "thing"}


def test_reconfiguring_does_not_duplicate_lines(stream: io.StringIO) -> None:
    second = io.StringIO()
    configure_logging("beta", "debug", stream=second)
    get_logger("rules").debug("Rule loaded.")
    assert stream.getvalue() == ""
    [entry] = lines(second)
    assert entry["module"] == "beta"
    assert entry["level"] == "DEBUG"


def test_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="Log level 'LOUD' is not valid"):
        configure_logging("alpha", "LOUD")
