"""Output formats (``gamma/formats/*.yaml``): the document a destination sends for a record.

A destination that names a format in ``output_format`` sends, for each record, the format's
selected ``fields`` (renamed when they are a mapping) with its rendered ``template`` merged over
them, plus ``record_id`` (see :class:`~dps.config.models.OutputFormat`). Without one, it sends
the envelope or the payload (its ``format.envelope``).

Templates are rendered by hand rather than with Jinja: a template is a YAML object whose
strings hold ``{field}`` placeholders, so that a placeholder on its own keeps the value's type (a
number stays a number in the JSON sent) — a text template engine would turn every value into
text. The placeholders are compiled once per format, not per record.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import Any

from dps.config.models import OutputFormat
from dps.core.record import Record, get_path

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.\-]*)\}")

Getter = Callable[[Record], Any]


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC).isoformat()


_ENVELOPE: dict[str, Getter] = {
    "record_id": lambda r: r.record_id,
    "source_id": lambda r: r.source_id,
    "correlation_id": lambda r: r.correlation_id,
    "event_time": lambda r: r.event_time,
    "ingested_at": lambda r: _iso(r.ingested_at),
    "timestamp": lambda r: r.event_time or _iso(r.ingested_at),
    "quality_score": lambda r: r.quality.score if r.quality else None,
    "payload": lambda r: r.payload,
}


def field_getter(name: str) -> Getter:
    """A reader of one record field: an envelope field or a dotted payload path (None if absent)."""
    if name in _ENVELOPE:
        return _ENVELOPE[name]
    return lambda r: get_path(r.payload, name)


def _compile(node: Any) -> Callable[[Record], Any]:
    if isinstance(node, dict):
        parts = [(str(k), _compile(v)) for k, v in node.items()]
        return lambda r: {k: render(r) for k, render in parts}
    if isinstance(node, list):
        items = [_compile(v) for v in node]
        return lambda r: [render(r) for render in items]
    if isinstance(node, str):
        whole = _PLACEHOLDER.fullmatch(node)
        if whole:
            return field_getter(whole.group(1))
        names = _PLACEHOLDER.findall(node)
        if not names:
            return lambda r: node
        getters = {name: field_getter(name) for name in names}

        def interpolate(r: Record) -> str:
            values = {name: get(r) for name, get in getters.items()}
            return _PLACEHOLDER.sub(
                lambda m: "" if values[m.group(1)] is None else str(values[m.group(1)]), node
            )

        return interpolate
    return lambda r: node


class Shaper:
    """Renders records into the documents of one :class:`OutputFormat`."""

    def __init__(self, fmt: OutputFormat) -> None:
        self.format_id = fmt.format_id
        fields = fmt.fields or []
        pairs = list(fields.items()) if isinstance(fields, dict) else [(f, f) for f in fields]
        self._fields = [(out, field_getter(src)) for out, src in pairs]
        self._template = _compile(fmt.template) if fmt.template is not None else None
        self._whole_payload = fmt.fields is None and fmt.template is None
        self._record_id = fmt.include_record_id
        #: The top-level keys of every document, in order (CSV columns).
        self.columns: list[str] = (["record_id"] if self._record_id else []) + [
            out for out, _ in pairs if out != "record_id"
        ]
        if fmt.template is not None:
            self.columns += [str(k) for k in fmt.template if str(k) not in self.columns]

    def __call__(self, record: Record) -> dict[str, Any]:
        doc: dict[str, Any] = dict(record.payload) if self._whole_payload else {}
        for out, get in self._fields:
            doc[out] = get(record)
        if self._template is not None:
            rendered = self._template(record)
            if isinstance(rendered, dict):
                doc.update(rendered)
        if self._record_id:
            doc = {"record_id": record.record_id, **doc}
            doc["record_id"] = record.record_id
        return doc


__all__ = ["Shaper", "field_getter"]
