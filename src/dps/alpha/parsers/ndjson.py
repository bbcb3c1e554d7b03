"""``ndjson``: one JSON object per line."""

from __future__ import annotations

from typing import Any

import msgspec

from dps.alpha.parsers.base import Parser, parse_error
from dps.core.registry import register

_decode = msgspec.json.Decoder().decode


@register("parsers", "ndjson")
class NdjsonParser(Parser):
    """One line per item (the file source already splits lines)."""

    def parse(self, data: bytes) -> list[dict[str, Any]]:
        try:
            value = _decode(data)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise parse_error(f"Not valid JSON: {exc}.") from None
        if not isinstance(value, dict):
            raise parse_error(f"The line holds a {type(value).__name__}; expected a JSON object.")
        return [value]
