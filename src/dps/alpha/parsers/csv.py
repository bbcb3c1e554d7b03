"""``csv``: delimited text with a header line (or configured column names) and column types.

Options are ``parsing.csv`` (:class:`~dps.config.models.CsvOptions`): ``header``, ``columns``,
``delimiter``, ``quote``, ``types``, ``skip_empty``. An item is a small CSV document: the
``file`` source hands out one row at a time *preceded by its file's header line* (so each item
parses alone and its origin stays ``file:line``); a fetched document (a REST page, a pushed
body) holds a header and many rows.

A row whose field count differs from the columns (a ragged row) or whose typed cell does not
convert is a :class:`~dps.alpha.parsers.base.BadRecord`: that row alone goes to the DLQ with its
bytes and line number, the other rows go on. The standard library's ``csv`` module does the
quoting rules (quoted delimiters, doubled quotes, newlines inside quotes); only the typing and
the per-row error handling are ours, since no small library does per-row recovery.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dps.alpha.parsers.base import BadRecord, Parser, parse_error
from dps.config.models import CsvOptions
from dps.core.errors import TerminalError
from dps.core.registry import register

if TYPE_CHECKING:
    from dps.config.models import ParsingConfig

_TRUE = frozenset({"true", "t", "yes", "y", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "0"})


def _boolean(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"{value!r} is not a boolean (true/false, yes/no, 1/0)")


_CONVERT: dict[str, Callable[[str], Any]] = {
    "string": str,
    "integer": lambda v: int(v.strip()),
    "number": lambda v: float(v.strip()),
    "boolean": _boolean,
}


@register("parsers", "csv")
class CsvParser(Parser):
    """Rows to records named by the header or ``parsing.csv.columns``; see the module docstring."""

    Config = CsvOptions

    def __init__(
        self, record_path: str | None = None, *, parsing: ParsingConfig | None = None
    ) -> None:
        super().__init__(record_path, parsing=parsing)
        self.options = parsing.csv if parsing is not None else CsvOptions()
        self._convert = {name: _CONVERT[kind] for name, kind in self.options.types.items()}

    def parse(self, data: bytes) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for value in self.parse_each(data):
            if isinstance(value, BadRecord):
                raise value.error
            out.append(value)
        return out

    def parse_each(self, data: bytes) -> list[dict[str, Any] | BadRecord]:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            return [BadRecord(data, parse_error(f"Not UTF-8 text: {exc}."))]
        lines = text.splitlines(keepends=True)
        reader = csv.reader(
            io.StringIO(text, newline=""),
            delimiter=self.options.delimiter,
            quotechar=self.options.quote,
            strict=True,
        )
        names = self.options.columns
        header_pending = self.options.header
        rows: list[tuple[int, int, list[str] | TerminalError]] = []
        previous = 0
        while True:
            try:
                row: list[str] | TerminalError = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                row = parse_error(f"Not valid CSV: {exc}.")
            start, previous = previous, reader.line_num
            if isinstance(row, list) and len(row) <= 1 and not "".join(row).strip():
                continue  # a blank line
            if header_pending:
                header_pending = False
                if isinstance(row, TerminalError):
                    return [BadRecord(data, row)]
                if names is None:  # configured columns replace the header's names
                    names = [cell.strip() for cell in row]
                continue
            rows.append((start, previous, row))
        if names is None:
            return [] if not rows else [BadRecord(data, parse_error("No header line found."))]
        single = len(rows) == 1
        out: list[dict[str, Any] | BadRecord] = []
        for index, (start, end, row) in enumerate(rows):
            where = "" if single else f"#{index}"
            # One row: the whole item (header and row), which parses again on its own on replay.
            raw = data if single else "".join(lines[start:end]).encode()
            at = "" if single else f" at line {start + 1} of the document"
            if isinstance(row, TerminalError):
                out.append(BadRecord(raw, row, where))
                continue
            if len(row) != len(names):
                message = (
                    f"The row{at} has {len(row)} fields; expected {len(names)} "
                    f"({', '.join(names)})."
                )
                out.append(BadRecord(raw, parse_error(message), where))
                continue
            try:
                out.append(self._record(names, row))
            except ValueError as exc:
                out.append(BadRecord(raw, parse_error(f"The row{at}: {exc}."), where))
        return out

    def _record(self, names: list[str], row: list[str]) -> dict[str, Any]:
        record: dict[str, Any] = {}
        for name, cell in zip(names, row, strict=True):
            if cell == "":
                if not self.options.skip_empty:
                    record[name] = None if name in self._convert else ""
                continue
            convert = self._convert.get(name)
            if convert is None:
                record[name] = cell
                continue
            try:
                record[name] = convert(cell)
            except ValueError:
                kind = self.options.types[name]
                raise ValueError(f"column {name}: {cell!r} is not a {kind}") from None
        return record
