"""The parser contract.

A parser turns the bytes of one :class:`~dps.alpha.sources.base.RawItem` into payload dicts.
It is built once per source from the source's ``parsing:`` section and must be cheap per call.
Bad bytes raise :class:`~dps.core.errors.TerminalError` (reason ``parse_error``) with what was
wrong and where; Alpha sends the raw bytes to its DLQ and goes on with the rest of the batch.
Parsers never see more than one item at a time and keep no state between items.
"""

from __future__ import annotations

import abc
from typing import Any

from dps.core.errors import TerminalError


class Parser(abc.ABC):
    """Bytes to payloads."""

    def __init__(self, record_path: str | None = None) -> None:
        self.record_path = record_path

    @abc.abstractmethod
    def parse(self, data: bytes) -> list[dict[str, Any]]:
        """The payloads in ``data``; raises ``TerminalError("parse_error", ...)``."""


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
