"""``file``: read records from a file or from the files of a directory that match a pattern.

Offsets are byte positions per file, committed in the state store only after the records are
durable in the transform queue, so a restart resumes exactly where the last commit left off and
re-reads at most one uncommitted batch (whose records keep their ids and origins: the dedupe
cache recognises them as replays, the queue's idempotent put drops the copies).

NDJSON files are read line by line (a last line without its newline is left until it is complete,
or until the file has not changed for ``partial_line_grace_seconds``); a JSON document
(``parsing.format: json``) is read whole, as one item.
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


class FileConnection(StrictModel):
    """``connection:`` of a ``file`` source."""

    path: str = Field(description="A file, or a directory whose matching files are read.")
    pattern: str = Field(
        default="*", description="Glob of the files to read inside a directory (e.g. '*.ndjson')."
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
            fh.seek(offset)
            while room > 0:
                line = fh.readline()
                if not line.endswith(b"\n") and not (line and settled):
                    # End of file, or a last line still being written: wait for its newline,
                    # or for the file to settle.
                    break
                offset += len(line)
                line_no += 1
                if line.strip():
                    out.items.append(RawItem(line, f"{key}:{line_no}", key))
                    room -= 1
        self._cursor[key] = (offset, line_no)
        self._line_at[key, offset] = line_no
        out.ends[key] = offset

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
