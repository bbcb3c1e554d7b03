"""``file``: read records from a file or from the files of a directory that match a pattern.

Offsets are byte positions per file, committed in the state store only after the records are
durable in the transform queue, so a restart resumes exactly where the last commit left off and
re-reads at most one uncommitted batch (whose records keep their ids and origins: the dedupe
cache recognises them as replays, the queue's idempotent put drops the copies).

NDJSON files are read line by line (a last line without its newline is left until it is complete,
or until the file has not changed for ``partial_line_grace_seconds``); a JSON document
(``parsing.format: json``) is read whole, as one item.

CSV files (``parsing.format: csv``) are read row by row like NDJSON, with two differences: with
``parsing.csv.header`` (the default) a file's first line is its header, which is not a record
but is put in front of every row handed out (so the ``csv`` parser names the columns of each row
on its own, and each row keeps its ``file:line`` origin; after a restart the header is read
again from the top of the file); and a row whose quotes are not balanced continues on the next
line (a quoted field holding a newline), its origin being the line where it starts.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import Field

from dps.alpha.sources.base import Fetch, RawItem, Source, SourceContext
from dps.core.errors import TransientError
from dps.core.model import StrictModel
from dps.core.registry import register
from dps.state.base import StateStore

#: What an oversized line keeps for its DLQ entry.
SAMPLE_BYTES = 64 * 1024


class FileConnection(StrictModel):
    """``connection:`` of a ``file`` source."""

    path: str = Field(description="A file, or a directory whose matching files are read.")
    pattern: str = Field(
        default="*", description="Glob of the files to read inside a directory (e.g. '*.ndjson')."
    )
    max_record_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        description="A longer line is not read into memory: it goes to the DLQ (reason "
        "record_too_large) with its first 64 KiB, and reading goes on after it.",
    )
    partial_line_grace_seconds: float = Field(
        default=2.0,
        ge=0,
        description=(
            "A last line without a newline is taken as complete once the file has not changed "
            "for this long (until then it may still be being written)."
        ),
    )


@register("sources", "file")
class FileSource(Source):
    """Reads files under ``connection.path``; see the module docstring."""

    Config = FileConnection
    connection: FileConnection

    def __init__(
        self,
        source_id: str,
        connection: Any,
        state: StateStore,
        *,
        fmt: str | None = None,
        context: SourceContext | None = None,
    ) -> None:
        super().__init__(source_id, connection, state, context=context)
        if fmt is None:
            fmt = context.parsing_format if context is not None else "ndjson"
        self.whole_documents = fmt == "json"
        self.csv = fmt == "csv"
        self.csv_header = self.csv and (context.csv_header if context is not None else True)
        self.quote = (context.csv_quote if context is not None else '"').encode()
        # CSV file -> its header line (with its newline), read once per file.
        self._headers: dict[str, bytes] = {}
        self._header_skip: dict[str, int] = {}
        self._header_lines: dict[str, int] = {}
        committed = state.offsets(source_id)
        # file -> (byte offset, line number) committed, and fetched-but-not-committed.
        self._committed: dict[str, tuple[int, int]] = {
            key: (offset, self._count_lines(key, offset)) for (_, key), offset in committed.items()
        }
        self._cursor = dict(self._committed)
        # (file, end offset of a fetch) -> line number there, until that fetch is committed:
        # a commit must move the committed position to *its* fetch's end, not to the cursor,
        # which a later uncommitted fetch may already have moved on (rewind would skip it).
        self._line_at: dict[tuple[str, int], int] = {}
        self._drained = False

    @staticmethod
    def _count_lines(path: str, offset: int) -> int:
        try:
            with open(path, "rb") as fh:
                return fh.read(offset).count(b"\n")
        except OSError:
            return 0

    def _files(self) -> list[Path]:
        root = Path(self.connection.path)
        if root.is_file():
            return [root]
        if not root.is_dir():
            raise TransientError(f"Source path {root} does not exist or is not readable.")
        return sorted(p for p in root.glob(self.connection.pattern) if p.is_file())

    def fetch(self, max_items: int) -> Fetch:
        out = Fetch()
        pending = False
        for path in self._files():
            key = str(path)
            start, line_no = self._cursor.get(key, (0, 0))
            stat = path.stat()
            if start >= stat.st_size:
                continue
            pending = True
            if len(out.items) >= max_items:
                break
            if self.whole_documents:
                data = path.read_bytes()
                if data.strip():
                    out.items.append(RawItem(data, key, key))
                self._cursor[key] = (len(data), 0)
                self._line_at[key, len(data)] = 0
                out.ends[key] = len(data)
            else:
                settled = time.time() - stat.st_mtime >= self.connection.partial_line_grace_seconds
                room = max_items - len(out.items)
                self._read_lines(path, key, start, line_no, room, out, settled=settled)
        self._drained = not pending
        return out

    def _read_lines(
        self,
        path: Path,
        key: str,
        offset: int,
        line_no: int,
        room: int,
        out: Fetch,
        *,
        settled: bool,
    ) -> None:
        with path.open("rb") as fh:
            header = b""
            if self.csv_header:
                found = self._header(fh, key, offset, settled=settled)
                if found is None:
                    return  # the header line is not complete yet
                header, header_end, header_lines = found
                if offset < header_end:
                    offset, line_no = header_end, header_lines
            fh.seek(offset)
            # A line is one row unless the format is CSV (quoted newlines): then a complete
            # line is taken as it is, and only the rest (the end of the file, an oversized
            # line) goes through _next_row's checks. Most of the reading cost was per line.
            plain = not self.csv
            readline = fh.readline
            limit = self.connection.max_record_bytes + 1
            while room > 0:
                line = readline(limit) if plain else b""
                if line.endswith(b"\n"):
                    lines, oversized = 1, 0
                    offset += len(line)
                else:
                    fh.seek(offset)
                    line, lines, oversized = self._next_row(fh, settled=settled)
                    if not lines:
                        # End of file, or a last line still being written: wait for its
                        # newline, or for the file to settle.
                        break
                    offset = fh.tell()
                line_no += lines
                if oversized:
                    origin = f"{key}:{line_no - lines + 1}"
                    limit = self.connection.max_record_bytes
                    error = (
                        f"The line is {oversized} bytes, more than max_record_bytes ({limit}); "
                        f"its first {len(line)} bytes are kept."
                    )
                    out.items.append(RawItem(line, origin, key, error=error))
                    room -= 1
                elif not line.isspace() and line:
                    origin = f"{key}:{line_no - lines + 1}"
                    out.items.append(RawItem(header + line, origin, key))
                    room -= 1
        self._cursor[key] = (offset, line_no)
        self._line_at[key, offset] = line_no
        out.ends[key] = offset

    def _next_row(self, fh: Any, *, settled: bool) -> tuple[bytes, int, int]:
        """The next line (a CSV row: the next lines until its quotes balance), its line count,
        and its size when it is larger than ``max_record_bytes`` (else 0).

        ``(b"", 0, 0)`` when nothing complete is there yet. An oversized line is never held in
        memory whole: its first :data:`SAMPLE_BYTES` are returned, the rest is skipped.
        """
        start = fh.tell()
        limit = self.connection.max_record_bytes
        line = fh.readline(limit + 1)
        if len(line) > limit and not line.endswith(b"\n"):
            size = len(line)
            chunk = line
            while chunk and not chunk.endswith(b"\n"):
                chunk = fh.readline(1 << 20)
                size += len(chunk)
            if not chunk.endswith(b"\n") and not settled:
                fh.seek(start)  # still being written
                return b"", 0, 0
            return line[:SAMPLE_BYTES], 1, size
        if not line.endswith(b"\n") and not (line and settled):
            fh.seek(start)
            return b"", 0, 0
        lines = 1
        while self.csv and line.count(self.quote) % 2:
            more = fh.readline()
            if not more.endswith(b"\n") and not (more and settled):
                if settled and not more:
                    break  # an unbalanced quote at the end of the file: the parser reports it
                fh.seek(start)
                return b"", 0, 0
            line += more
            lines += 1
        return line, lines, 0

    def _header(
        self, fh: Any, key: str, offset: int, *, settled: bool
    ) -> tuple[bytes, int, int] | None:
        """The file's header row, the byte offset after it and its line count (None: not yet)."""
        cached = self._headers.get(key)
        fh.seek(0)
        if cached is not None:
            return cached, len(cached) + self._header_skip.get(key, 0), self._header_lines[key]
        skipped = 0
        skipped_lines = 0
        while True:
            row, lines, _ = self._next_row(fh, settled=settled)
            if not lines:
                return None
            if row.strip():
                break
            skipped += len(row)  # blank lines before the header
            skipped_lines += lines
        if not row.endswith(b"\n"):
            row += b"\n"
            skipped -= 1  # the byte offset after the header must not count the added newline
        self._headers[key] = row
        self._header_skip[key] = skipped
        self._header_lines[key] = skipped_lines + lines
        return row, len(row) + skipped, skipped_lines + lines

    def commit(self, fetch: Fetch, records_read: dict[str, int]) -> None:
        for key, end in fetch.ends.items():
            self.state.commit_offset(self.source_id, key, end, records_read.get(key, 0))
            line_no = self._line_at.get((key, end))
            if end >= self._committed.get(key, (0, 0))[0]:
                if line_no is None:
                    line_no = self._count_lines(key, end)
                self._committed[key] = (end, line_no)
            for done in [k for k in self._line_at if k[0] == key and k[1] <= end]:
                del self._line_at[done]

    def rewind(self) -> None:
        self._cursor = dict(self._committed)
        self._line_at.clear()

    def exhausted(self) -> bool:
        return self._drained

    def test(self) -> dict[str, Any]:
        return {"ok": True, "path": self.connection.path, "files": len(self._files())}
