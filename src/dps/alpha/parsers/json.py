"""``json``: one JSON document holding an object, a list of objects, or records at ``record_path``.

``record_path`` is a JSONPath (``$.data.records``) evaluated with python-jsonpath; it is compiled
once per source.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from dps.alpha.parsers.base import Parser, parse_error, require_objects
from dps.core.registry import register

if TYPE_CHECKING:
    from dps.config.models import ParsingConfig

_decode = msgspec.json.Decoder().decode


@register("parsers", "json")
class JsonParser(Parser):
    """A whole JSON document per item."""

    def __init__(
        self, record_path: str | None = None, *, parsing: ParsingConfig | None = None
    ) -> None:
        super().__init__(record_path, parsing=parsing)
        self._path = None
        if record_path and record_path not in ("$", ""):
            import jsonpath

            self._path = jsonpath.compile(record_path)

    def parse(self, data: bytes) -> list[dict[str, Any]]:
        try:
            document = _decode(data)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise parse_error(f"Not valid JSON: {exc}.") from None
        where = "$"
        if self._path is not None:
            matches = self._path.findall(document)
            where = str(self.record_path)
            if not matches:
                raise parse_error(f"Nothing found at record_path {self.record_path}.")
            document = matches[0] if len(matches) == 1 else matches
        values = document if isinstance(document, list) else [document]
        return require_objects(values, where)
