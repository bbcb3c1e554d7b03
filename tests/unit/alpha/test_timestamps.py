"""``timestamp_field`` normalisation to ISO 8601 UTC: formats, epochs and time zones."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from dps.alpha.timestamps import TimestampParser
from dps.config.models import ParsingConfig


@pytest.mark.parametrize(
    ("fmt", "zone", "value", "expected"),
    [
        (None, "UTC", "2024-01-15T10:30:00Z", "2024-01-15T10:30:00Z"),
        (None, "UTC", "2024-01-15T10:30:00+02:00", "2024-01-15T08:30:00Z"),
        (None, "Europe/Berlin", "2024-01-15T10:30:00", "2024-01-15T09:30:00Z"),  # CET
        (None, "Europe/Berlin", "2024-07-15T10:30:00", "2024-07-15T08:30:00Z"),  # CEST
        (None, "UTC", "2024-01-15T10:30:00.250Z", "2024-01-15T10:30:00.250000Z"),
        (None, "UTC", 1705314600, "2024-01-15T10:30:00Z"),
        ("epoch_ms", "UTC", 1705314600000, "2024-01-15T10:30:00Z"),
        ("epoch_s", "UTC", "1705314600", "2024-01-15T10:30:00Z"),
        ("%d/%m/%Y %H:%M", "America/New_York", "15/01/2024 05:30", "2024-01-15T10:30:00Z"),
        ("%Y-%m-%d %H:%M:%S %z", "Asia/Tokyo", "2024-01-15 10:30:00 +0000", "2024-01-15T10:30:00Z"),
    ],
)
def test_normalise(fmt: str | None, zone: str, value: Any, expected: str) -> None:
    assert TimestampParser(fmt, zone).normalise(value) == expected


@pytest.mark.parametrize(
    ("fmt", "value", "message"),
    [
        (None, "yesterday", "is not an ISO 8601 timestamp"),
        (None, "2024-13-15T10:30:00Z", "is not an ISO 8601 timestamp"),  # canonical in shape
        ("%d/%m/%Y", "2024-01-15", "does not match the format"),
        ("epoch_ms", "soon", "is not an epoch timestamp"),
        (None, True, "is not a timestamp"),
    ],
)
def test_bad_timestamps_say_what_was_expected(fmt: str | None, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TimestampParser(fmt).normalise(value)


def test_an_unknown_time_zone_is_a_config_error() -> None:
    with pytest.raises(ValidationError, match="not a known time zone"):
        ParsingConfig.model_validate({"timestamp_timezone": "Mars/Olympus"})
