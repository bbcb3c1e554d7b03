"""``file``: append records as JSON lines to a file, fsynced before a batch is acknowledged.

Idempotency: a JSON-lines file cannot update a line in place, so the destination remembers the
record ids it has written (read back from the file on open) and skips a record it already holds.
"""

from __future__ import annotations

import os
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


class FileConnection(StrictModel):
    """``connection:`` of a ``file`` destination."""

    path: str = Field(description="The JSON-lines file records are appended to.")


class FileFormat(StrictModel):
    """``format:`` of a ``file`` destination."""

    type: Literal["jsonl"] = Field(default="jsonl", description="Output format.")
    envelope: bool = Field(
        default=True,
        description="Write the whole envelope (id, source, quality, payload); else the payload.",
    )


class FileDestinationConfig(StrictModel):
    """The type-specific sections of a ``file`` destination."""

    connection: FileConnection
    format: FileFormat = Field(default_factory=FileFormat)


_encode = msgspec.json.Encoder().encode


@register("destinations", "file")
class FileDestination(Destination):
    """Appends JSON lines; see the module docstring."""

    Config = FileDestinationConfig
    spec: FileDestinationConfig

    def open(self) -> None:
        self.path = Path(self.spec.connection.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._written: set[str] = set()
        if self.path.exists():
            decode = msgspec.json.Decoder().decode
            with self.path.open("rb") as fh:
                for line in fh:
                    if not line.endswith(b"\n"):
                        break  # a torn last line from a crash: it is rewritten below
                    try:
                        rid = decode(line).get("record_id")
                    except msgspec.DecodeError:
                        continue
                    if rid:
                        self._written.add(rid)
            self._truncate_torn_tail()
        self._fh = self.path.open("ab")

    def _truncate_torn_tail(self) -> None:
        data_len = self.path.stat().st_size
        if data_len == 0:
            return
        with self.path.open("rb+") as fh:
            fh.seek(max(0, data_len - 1))
            if fh.read(1) != b"\n":
                content = self.path.read_bytes()
                fh.truncate(content.rfind(b"\n") + 1)

    def _line(self, record: Record) -> bytes:
        if self.spec.format.envelope:
            body: dict[str, Any] = {
                "record_id": record.record_id,
                "source_id": record.source_id,
                "quality_score": record.quality.score if record.quality else None,
                "payload": record.payload,
            }
        else:
            body = {"record_id": record.record_id, **record.payload}
            # The envelope's id, not a payload field of that name: open() reads it back.
            body["record_id"] = record.record_id
        return _encode(body) + b"\n"

    def deliver(self, records: Sequence[Record]) -> Rejected:
        fresh: list[Record] = []
        seen: set[str] = set()
        for r in records:  # a record twice in one batch is written once too
            if r.record_id not in self._written and r.record_id not in seen:
                seen.add(r.record_id)
                fresh.append(r)
        if not fresh:
            return []
        data = b"".join(self._line(r) for r in fresh)
        try:
            self._fh.write(data)
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as exc:
            raise TransientError(f"Cannot write {self.path}: {exc.strerror}.") from exc
        self._written.update(r.record_id for r in fresh)
        return []

    def test(self) -> dict[str, Any]:
        return {"ok": os.access(self.path.parent, os.W_OK), "path": str(self.path)}

    def close(self) -> None:
        fh = getattr(self, "_fh", None)
        if fh is not None:
            fh.close()
