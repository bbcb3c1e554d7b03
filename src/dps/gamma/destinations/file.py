"""``file``: append records as JSON lines or CSV rows to a file, fsynced before a batch is acked.

Each batch is written, flushed and ``fsync``-ed before ``deliver`` returns, so what Gamma counts
as delivered is on disk. ``connection.rotation`` starts a new file when the current one would grow
past ``max_bytes`` or is older than ``interval_seconds``: the current file is renamed to
``<stem>-<UTC time><suffix>`` (the directory is fsynced too, so the rename survives a crash) and
the next batch goes to a fresh ``path``. A CSV file, rotated or not, starts with its header row.

Idempotency: a file cannot update a line in place, so the destination remembers the record ids
it has written — read back on open from the current file and its rotated siblings (the
``record_id`` field or column, which is always written) — and skips a record it already holds.
A torn last line (a crash in the middle of a write) is cut off on open; its batch was never
acknowledged, so it is delivered again.

CSV columns are ``format.columns``, else the columns of the destination's output format
(``output_format``), else the envelope's fields; nested values are written as JSON, null as an
empty cell.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import msgspec
from pydantic import Field

from dps.core.errors import TransientError
from dps.core.model import StrictModel
from dps.core.record import Record
from dps.core.registry import register
from dps.gamma.destinations.base import Destination, Rejected

ENVELOPE_COLUMNS = ["record_id", "source_id", "quality_score"]


class FileRotation(StrictModel):
    """``connection.rotation:`` of a ``file`` destination (either or both limits)."""

    max_bytes: int | None = Field(
        default=None, ge=1, description="Start a new file before the current one passes this size."
    )
    interval_seconds: float | None = Field(
        default=None, gt=0, description="Start a new file when the current one is this old."
    )


class FileConnection(StrictModel):
    """``connection:`` of a ``file`` destination."""

    path: str = Field(description="The file records are appended to (the current file).")
    rotation: FileRotation | None = Field(
        default=None, description="Rotation by size and/or time (none: one file)."
    )


class FileFormat(StrictModel):
    """``format:`` of a ``file`` destination."""

    type: Literal["jsonl", "csv"] = Field(
        default="jsonl", description="jsonl: one JSON object per line; csv: a header and rows."
    )
    envelope: bool = Field(
        default=True,
        description="Write the whole envelope (id, source, quality, payload); else the payload.",
    )
    columns: list[str] | None = Field(
        default=None,
        description=(
            "csv: the columns, in order (keys of the written object); record_id is always one."
        ),
    )
    delimiter: str = Field(
        default=",", min_length=1, max_length=1, description="csv: the field delimiter."
    )


class FileDestinationConfig(StrictModel):
    """The type-specific sections of a ``file`` destination."""

    connection: FileConnection
    format: FileFormat = Field(default_factory=FileFormat)


_encode = msgspec.json.Encoder().encode


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return _encode(value).decode()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@register("destinations", "file")
class FileDestination(Destination):
    """Appends JSON lines or CSV rows; see the module docstring."""

    Config = FileDestinationConfig
    spec: FileDestinationConfig

    def open(self) -> None:
        self.path = Path(self.spec.connection.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fmt = self.spec.format
        self.csv = fmt.type == "csv"
        self.columns: list[str] = []
        if self.csv:
            columns = fmt.columns or getattr(self.output, "columns", None)
            if not columns:
                if not fmt.envelope:
                    raise ValueError(
                        f"{self.destination_id}: a csv file without the envelope needs "
                        "format.columns (or an output_format)."
                    )
                columns = [*ENVELOPE_COLUMNS, "payload"]
            self.columns = ["record_id", *[c for c in columns if c != "record_id"]]
        self._written: set[str] = set()
        for old in self._rotated():
            self._read_ids(old)
        if self.path.exists():
            self._truncate_torn_tail()
            self._read_ids(self.path)
        self._fh = self.path.open("ab")
        size = self._fh.tell()
        self._started = self.path.stat().st_mtime if size else time.time()
        if size == 0:
            self._start_file()

    # -- files --------------------------------------------------------------------------------
    def _rotated(self) -> list[Path]:
        return sorted(self.path.parent.glob(f"{self.path.stem}-*{self.path.suffix}"))

    def _read_ids(self, path: Path) -> None:
        if self.csv:
            with path.open(newline="", encoding="utf-8") as fh:
                reader = csv.reader(fh, delimiter=self.spec.format.delimiter)
                header = next(reader, None)
                if not header or "record_id" not in header:
                    return
                at = header.index("record_id")
                self._written.update(row[at] for row in reader if len(row) > at and row[at])
            return
        decode = msgspec.json.Decoder().decode
        with path.open("rb") as fh:
            for line in fh:
                if not line.endswith(b"\n"):
                    break
                try:
                    rid = decode(line).get("record_id")
                except (msgspec.DecodeError, AttributeError):
                    continue
                if rid:
                    self._written.add(rid)

    def _truncate_torn_tail(self) -> None:
        size = self.path.stat().st_size
        if size == 0:
            return
        with self.path.open("rb+") as fh:
            fh.seek(size - 1)
            if fh.read(1) != b"\n":
                content = self.path.read_bytes()
                fh.truncate(content.rfind(b"\n") + 1)

    def _header(self) -> bytes:
        if not self.csv:
            return b""
        return self._rows([dict.fromkeys(self.columns, None)], header=True)

    def _start_file(self) -> None:
        """A new current file: its CSV header, fsynced."""
        header = self._header()
        if header:
            self._fh.write(header)
            self._fh.flush()
            os.fsync(self._fh.fileno())
        self._started = time.time()

    def _rotate(self) -> None:
        self._fh.close()
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        target = self.path.with_name(f"{self.path.stem}-{stamp}{self.path.suffix}")
        n = 1
        while target.exists():
            target = self.path.with_name(f"{self.path.stem}-{stamp}.{n}{self.path.suffix}")
            n += 1
        self.path.rename(target)
        self._fh = self.path.open("ab")
        self._start_file()
        _fsync_dir(self.path.parent)  # the rename and the new file survive a crash

    def _needs_rotation(self, incoming: int) -> bool:
        rotation = self.spec.connection.rotation
        if rotation is None:
            return False
        size = self._fh.tell()
        if size <= len(self._header()):
            return False  # never rotate away an empty file
        if rotation.max_bytes is not None and size + incoming > rotation.max_bytes:
            return True
        return (
            rotation.interval_seconds is not None
            and time.time() - self._started >= rotation.interval_seconds
        )

    # -- delivery -----------------------------------------------------------------------------
    def _rows(self, docs: list[dict[str, Any]], *, header: bool = False) -> bytes:
        out = io.StringIO()
        writer = csv.writer(out, delimiter=self.spec.format.delimiter, lineterminator="\n")
        if header:
            writer.writerow(self.columns)
        else:
            writer.writerows([_cell(doc.get(c)) for c in self.columns] for doc in docs)
        return out.getvalue().encode()

    def _document(self, record: Record) -> dict[str, Any]:
        if self.output is None and self.spec.format.envelope:
            return {
                "record_id": record.record_id,
                "source_id": record.source_id,
                "quality_score": record.quality.score if record.quality else None,
                "payload": record.payload,
            }
        return self.document(record, self.spec.format.envelope)

    def _render(self, records: list[Record]) -> bytes:
        docs = [self._document(r) for r in records]
        for doc, record in zip(docs, records, strict=True):
            # The envelope's id, not a payload field of that name: open() reads it back.
            doc["record_id"] = record.record_id
        if self.csv:
            return self._rows(docs)
        return b"".join(_encode(doc) + b"\n" for doc in docs)

    def deliver(self, records: Sequence[Record]) -> Rejected:
        fresh: list[Record] = []
        seen: set[str] = set()
        for r in records:  # a record twice in one batch is written once too
            if r.record_id not in self._written and r.record_id not in seen:
                seen.add(r.record_id)
                fresh.append(r)
        if not fresh:
            return []
        data = self._render(fresh)
        at: int | None = None
        try:
            if self._needs_rotation(len(data)):
                self._rotate()
            at = self._fh.tell()
            self._fh.write(data)
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as exc:
            self._cut_back(at)
            raise TransientError(f"Cannot write {self.path}: {exc.strerror}.") from exc
        self._written.update(r.record_id for r in fresh)
        return []

    def _cut_back(self, at: int | None) -> None:
        """After a failed write: drop its partial line so the retry does not append to it."""
        if at is None:
            return
        # The file may be gone or closed: open() cuts a torn tail on the next start.
        with contextlib.suppress(OSError, ValueError):
            self._fh.truncate(at)

    def test(self) -> dict[str, Any]:
        return {"ok": os.access(self.path.parent, os.W_OK), "path": str(self.path)}

    def close(self) -> None:
        fh = getattr(self, "_fh", None)
        if fh is not None:
            fh.close()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
