"""Event times: a record's ``timestamp_field`` normalised to ISO 8601 UTC (``...Z``).

``parsing.timestamp_format`` is a strptime format, ``epoch_s`` or ``epoch_ms``; without one, text
is read as ISO 8601 and numbers as epoch seconds. A time without a zone is taken in
``parsing.timestamp_timezone``. The standard library does all of it (``datetime``, ``zoneinfo``);
dateutil's guessing parser would accept ambiguous dates (01/02) silently, which we do not want.
"""

from __future__ import annotations

import zoneinfo
from datetime import UTC, datetime, tzinfo
from typing import Any

__all__ = ["TimestampParser"]


class TimestampParser:
    """Built once per source; :meth:`normalise` raises ``ValueError`` saying what was expected."""

    def __init__(self, fmt: str | None, timezone: str = "UTC") -> None:
        self.fmt = fmt
        self.zone: tzinfo = UTC if timezone == "UTC" else zoneinfo.ZoneInfo(timezone)

    def normalise(self, value: Any) -> str:
        if self.fmt is None and type(value) is str and _is_canonical(value):
            # try/except, not contextlib.suppress: a context manager per record cost 5 times
            # the check itself.
            try:
                _fromisoformat(value)
            except ValueError:
                pass  # 2026-13-01T00:00:00Z: _parse says why
            else:
                return value
        dt = self._parse(value)
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=self.zone)
        text = dt.astimezone(UTC).isoformat()
        return text.removesuffix("+00:00") + "Z"

    def _parse(self, value: Any) -> datetime:
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not a timestamp.")
        fmt = self.fmt
        if fmt in ("epoch_s", "epoch_ms") or (fmt is None and isinstance(value, int | float)):
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"{value!r} is not an epoch timestamp.") from None
            return datetime.fromtimestamp(number / 1000 if fmt == "epoch_ms" else number, UTC)
        text = str(value).strip()
        if fmt:
            try:
                return datetime.strptime(text, fmt)
            except ValueError:
                raise ValueError(f"{text!r} does not match the format {fmt!r}.") from None
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{text!r} is not an ISO 8601 timestamp.") from None


_fromisoformat = datetime.fromisoformat


def _is_canonical(text: str) -> bool:
    """Already what :meth:`TimestampParser.normalise` returns (``2026-11-27T10:00:00Z``).

    The common case of machine-written records: then the text is only validated, not
    converted and formatted back (about 5 % of Alpha's CPU per record went there).
    """
    return len(text) == 20 and text[19] == "Z" and text[10] == "T" and text[4] == "-"
