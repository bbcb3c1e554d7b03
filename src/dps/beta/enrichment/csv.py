"""``csv``: a CSV file with a header row, read whole and indexed by its key column.

The file is read on first use and again whenever its modification time changes, so replacing
the file is how its content is updated. A file that cannot be read makes the source unavailable.
"""

from __future__ import annotations

import csv
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

from dps.beta.enrichment.base import EnrichmentSource, Row, SourceUnavailable
from dps.core.model import StrictModel
from dps.core.registry import register


class CsvEnrichmentConfig(StrictModel):
    """``connection:`` of a ``csv`` enrichment source."""

    path: Path = Field(description="The CSV file (relative paths: from the working directory).")
    key_column: str = Field(description="Column whose value is the lookup key.")
    columns: list[str] | None = Field(
        default=None, description="Columns to keep in the row; not set: all of them."
    )
    delimiter: str = Field(default=",", min_length=1, max_length=1, description="Delimiter.")
    encoding: str = Field(default="utf-8", description="Text encoding of the file.")


@register("enrichment", "csv")
class CsvEnrichment(EnrichmentSource):
    """The whole file in memory, by key (the last row wins for a repeated key)."""

    Config = CsvEnrichmentConfig
    config: CsvEnrichmentConfig
    can_scan = True

    def __init__(self, name: str, config: Any) -> None:
        super().__init__(name, config)
        self._table: dict[str, Row] = {}
        self._mtime: float | None = None
        self._lock = threading.Lock()

    def _load(self) -> dict[str, Row]:
        path = self.config.path
        try:
            mtime = path.stat().st_mtime
            with self._lock:
                if mtime == self._mtime:
                    return self._table
                table: dict[str, Row] = {}
                with path.open(newline="", encoding=self.config.encoding) as fh:
                    reader = csv.DictReader(fh, delimiter=self.config.delimiter)
                    if reader.fieldnames is None or self.config.key_column not in reader.fieldnames:
                        raise SourceUnavailable(
                            f"{path} has no column {self.config.key_column!r} (key_column); "
                            f"its header is {reader.fieldnames}."
                        )
                    keep = self.config.columns
                    for row in reader:
                        key = row[self.config.key_column]
                        table[key] = {c: row.get(c) for c in keep} if keep else dict(row)
                self._table, self._mtime = table, mtime
                return table
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise SourceUnavailable(f"cannot read {path}: {exc}") from exc

    def fetch(self, keys: Sequence[str]) -> dict[str, Row]:
        table = self._load()
        return {key: table[key] for key in keys if key in table}

    def scan(self) -> tuple[int, Iterator[list[tuple[str, Row]]]]:
        items = list(self._load().items())

        def chunks() -> Iterator[list[tuple[str, Row]]]:
            for start in range(0, len(items), 1000):
                yield items[start : start + 1000]

        return len(items), chunks()
