"""The parser contract.

A parser turns the bytes of one :class:`~dps.alpha.sources.base.RawItem` into payload dicts.
It is built once per source from the source's ``parsing:`` section and must be cheap per call.
Bad bytes raise :class:`~dps.core.errors.TerminalError` (reason ``parse_error``) with what was
wrong and where; Alpha sends the raw bytes to its DLQ and goes on with the rest of the batch.
Parsers never see more than one item at a time and keep no state between items.

Construction: ``cls(record_path, parsing=<the source's ParsingConfig>)``. ``parsing`` is optional
(unit and contract tests build parsers with the record path alone and get the defaults); a parser
with options of its own reads them from its sub-section of ``parsing:`` (``parsing.csv``).

A document holding several records may have a few bad ones (a ragged CSV row): such a parser
overrides :meth:`Parser.parse_each`, which answers every record or a :class:`BadRecord` in
document order, so Alpha sends just the bad ones to the DLQ (with their own position and bytes)
and goes on with the rest. The default wraps :meth:`Parser.parse`: all or nothing.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dps.core.errors import TerminalError

if TYPE_CHECKING:
    from dps.config.models import ParsingConfig


@dataclass(frozen=True, slots=True)
class BadRecord:
    """One record of a document that did not parse: its bytes, where it was, and why."""

    raw: bytes
    error: TerminalError
    #: Appended to the item's origin (``:12`` for line 12 of a document); "" for the item itself.
    where: str = ""

    def __post_init__(self) -> None:
        # Keep what went wrong, not the stack it was raised through: a traceback holds the
        # frames of the parse, and through them the whole batch being parsed, in a reference
        # cycle that only the collector's full passes free (Alpha's memory grew with each
        # batch holding one broken line, and a full pass over it cost ~15 us per record).
        self.error.__traceback__ = None
        self.error.__context__ = None


class Parser(abc.ABC):
    """Bytes to payloads."""

    def __init__(
        self, record_path: str | None = None, *, parsing: ParsingConfig | None = None
    ) -> None:
        self.record_path = record_path
        self.parsing = parsing

    @abc.abstractmethod
    def parse(self, data: bytes) -> list[dict[str, Any]]:
        """The payloads in ``data``; raises ``TerminalError("parse_error", ...)``."""

    def parse_each(self, data: bytes) -> list[dict[str, Any] | BadRecord]:
        """Every record of ``data`` or, in its place, why it did not parse (see the module doc)."""
        try:
            return list(self.parse(data))
        except TerminalError as exc:
            return [BadRecord(data, exc)]


def parse_error(message: str) -> TerminalError:
    return TerminalError("parse_error", message)


def require_objects(values: list[Any], where: str) -> list[dict[str, Any]]:
    """Every record must be a JSON object; say which one is not."""
    for i, value in enumerate(values):
        if not isinstance(value, dict):
            raise parse_error(
                f"Record {i} at {where} is a {type(value).__name__}; expected a JSON object."
            )
    return values
