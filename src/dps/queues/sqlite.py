"""The embedded queue backend: one SQLite file per queue, shared by every process on the host.

Each queue is ``<data_dir>/queues/<name>.db`` in WAL mode, so one producer process and any number
of consumer processes open the same file at once: readers never block the writer, and writers
take turns through SQLite's lock (``busy_timeout`` is generous because a writer only holds it for
one short batch transaction). Every batch is one transaction, and with ``synchronous=FULL`` the
WAL is fsynced on each commit, so a batch is on disk when ``put``/``ack`` return (a lease commits
without its own fsync: see ``_write``).

Why by hand: no maintained Python library gives a multi-process, fsync-durable, bounded
visibility-timeout queue on SQLite (``persist-queue`` and ``litequeue`` are single-process, have
no leases that expire across processes, no idempotent put and no bounded capacity). The whole
queue is four SQL statements, written here.

Tables:

- ``messages(seq, msg_id UNIQUE, body, attempts, visible_at, lease_token)``: ``seq`` is the
  insertion order (FIFO). A row is visible when ``visible_at <= now``; leasing a row stamps it
  with a fresh ``lease_token`` and pushes ``visible_at`` out by the visibility timeout.
- ``removed(msg_id, removed_at)``: ids acked or dead-lettered during the last ``dedupe_window``
  seconds. A producer that crashed after ``put`` and re-puts from its last checkpoint would
  otherwise re-insert records a consumer has already acked; JetStream's duplicate window gives
  the same protection on the ``nats`` backend.
- ``meta(key, value)``: ``depth``, the row count kept in the same transactions as the rows, so
  backpressure checks and ``depth()`` do not count the table on every batch.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from dps.core.errors import QueueFullError, TransientError
from dps.core.registry import register
from dps.core.sqlite import enable_wal
from dps.queues.base import (
    Lease,
    Message,
    Queue,
    QueueBackend,
    QueueSpec,
    backend_settings,
    check_queue_name,
)

P = ParamSpec("P")
R = TypeVar("R")

#: Reason given to the dead-letter sink for a message leased once more after its last attempt.
REASON_MAX_ATTEMPTS = "max_attempts_exceeded"

#: Polling backs off from the first to the last value; the first keeps an idle consumer's
#: pick-up latency at a few ms, the cap bounds it at 20 ms (an idle poll loop then makes ~50
#: reads a second of the depth index, tens of microseconds each).
_POLL_FIRST = 0.005
_POLL_MAX = 0.02

#: SQLite's limit on bound parameters is 32766; batches larger than this are split.
_CHUNK = 500

#: How often (seconds) a queue instance prunes tombstones older than the dedupe window.
_PRUNE_EVERY = 10.0


_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq         INTEGER PRIMARY KEY,
    msg_id      TEXT    NOT NULL UNIQUE,
    body        BLOB    NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    visible_at  REAL    NOT NULL DEFAULT 0,
    lease_token TEXT
);
CREATE INDEX IF NOT EXISTS messages_visible_at ON messages (visible_at);
CREATE TABLE IF NOT EXISTS removed (
    msg_id     TEXT PRIMARY KEY,
    removed_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS removed_removed_at ON removed (removed_at);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
"""


class SqliteQueueSettings(BaseModel):
    """The ``transport`` section of ``pipeline.yaml`` when ``backend: sqlite``."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["sqlite"] | None = Field(
        default=None,
        description="The backend name; accepted so the whole `transport` section can be passed.",
    )
    synchronous: Literal["full", "normal"] = Field(
        default="full",
        description=(
            "SQLite `synchronous` mode. `full` fsyncs the WAL on every batch commit: an acked "
            "put survives power loss. `normal` fsyncs only at checkpoints: faster, and a power "
            "loss (not a process crash) can lose the batches committed since the last checkpoint."
        ),
    )
    busy_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Seconds a process waits for another one's write lock before failing.",
    )
    dedupe_window: float = Field(
        default=120.0,
        ge=0,
        description=(
            "Seconds an acked or dead-lettered message id is remembered, so that a producer "
            "re-putting it after a crash does not deliver it again. 0 turns this off."
        ),
    )


def _transient(method: Callable[P, R]) -> Callable[P, R]:
    """Report SQLite's operational failures (lock timeout, disk I/O, full disk) as transient."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except sqlite3.OperationalError as exc:
            raise TransientError(f"SQLite queue operation failed: {exc}.") from exc

    return wrapper


class _OverCapacity(Exception):
    """Raised inside a put transaction to roll it back: the batch does not fit yet."""


@dataclass(frozen=True, slots=True)
class _Handle:
    """What a lease remembers: its token and the row of each message id."""

    token: str
    seqs: dict[str, int]


def _chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _marks(count: int) -> str:
    return ",".join("?" * count)


class _Backoff:
    """Sleep lengths for a poll loop: 5 ms doubling to 20 ms, never past the deadline."""

    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline
        self.step = _POLL_FIRST

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def sleep(self) -> bool:
        """Sleep one step; False when the deadline has passed (the caller gives up)."""
        remaining = self.remaining()
        if remaining is not None and remaining <= 0:
            return False
        time.sleep(self.step if remaining is None else min(self.step, remaining))
        self.step = min(self.step * 2, _POLL_MAX)
        return True


class SqliteQueue(Queue):
    """One queue in one SQLite file; each process (and each consumer thread) opens its own."""

    def __init__(self, path: Path, spec: QueueSpec, config: SqliteQueueSettings) -> None:
        self.spec = spec
        self.path = path
        self._config = config
        self._lock = threading.Lock()
        self._last_prune = 0.0
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so that a transaction takes
        # the write lock up front (and waits for it) instead of failing when it upgrades.
        self._conn = sqlite3.connect(
            path, timeout=config.busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            self._setup()
        except sqlite3.OperationalError as exc:
            self._conn.close()
            raise TransientError(f"Cannot open the SQLite queue {path}: {exc}.") from exc
        except BaseException:
            self._conn.close()
            raise

    def _setup(self) -> None:
        conn = self._conn
        mode = enable_wal(conn, self._config.busy_timeout)
        if mode != "wal":
            # WAL needs shared memory between processes (no network file systems).
            raise TransientError(
                f"SQLite queue {self.path} cannot use WAL mode (got {mode!r}); put data_dir on "
                "a local file system."
            )
        conn.execute(f"PRAGMA synchronous={self._config.synchronous.upper()}")
        with self._write() as cur:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    cur.execute(statement)
            # Recount on open: cheap once, and heals a counter from an older schema or a file
            # edited by hand.
            cur.execute(
                "INSERT OR REPLACE INTO meta (key, value) "
                "VALUES ('depth', (SELECT count(*) FROM messages))"
            )

    @contextlib.contextmanager
    def _write(self, *, durable: bool = True) -> Iterator[sqlite3.Cursor]:
        """One write transaction, committed (and fsynced) on success, rolled back on error.

        ``durable=False`` commits without the fsync (``synchronous=OFF`` for this transaction):
        for leases, whose loss in a power cut only makes their messages visible again, which
        at-least-once delivery allows. The next durable commit fsyncs the WAL up to it, so a
        put or an ack is never on disk ahead of an earlier lease. A process crash loses nothing
        either way: the operating system has the write.
        """
        relaxed = not durable
        if relaxed:
            self._conn.execute("PRAGMA synchronous=OFF")
        cur = self._conn.cursor()
        try:
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            else:
                self._conn.execute("COMMIT")
            finally:
                cur.close()
        finally:
            if relaxed:
                self._conn.execute(f"PRAGMA synchronous={self._config.synchronous.upper()}")

    def _add_depth(self, cur: sqlite3.Cursor, delta: int) -> None:
        if delta:
            cur.execute("UPDATE meta SET value = value + ? WHERE key = 'depth'", (delta,))

    # ------------------------------------------------------------------ put

    @_transient
    def put(self, messages: Sequence[tuple[str, bytes]], timeout: float | None = None) -> None:
        """Append the batch in one fsynced transaction; wait for room up to ``timeout`` s.

        Ids already queued, or acked within ``dedupe_window``, are skipped. Only the messages
        actually added count against the capacity, so re-putting a batch into a full queue
        returns at once when all of it is already there.
        """
        batch = list(messages)
        if not batch:
            return
        if len(batch) > self.spec.capacity:
            raise QueueFullError(
                f"Queue {self.spec.name!r}: a batch of {len(batch)} messages can never fit its "
                f"capacity of {self.spec.capacity}; put smaller batches."
            )
        backoff = _Backoff(None if timeout is None else time.monotonic() + timeout)
        while not self._try_put(batch):
            if not backoff.sleep():
                raise QueueFullError(
                    f"Queue {self.spec.name!r} is full ({self.spec.capacity} messages) and no "
                    f"room was made within {timeout:g} s; the batch of {len(batch)} was not added."
                )

    def _try_put(self, batch: list[tuple[str, bytes]]) -> bool:
        now = time.time()
        with contextlib.suppress(_OverCapacity), self._lock, self._write() as cur:
            depth = cur.execute("SELECT value FROM meta WHERE key = 'depth'").fetchone()[0]
            if self._config.dedupe_window > 0:
                horizon = now - self._config.dedupe_window
                cur.executemany(
                    "INSERT OR IGNORE INTO messages (msg_id, body) SELECT ?1, ?2 WHERE NOT EXISTS"
                    " (SELECT 1 FROM removed WHERE msg_id = ?1 AND removed_at > ?3)",
                    [(msg_id, body, horizon) for msg_id, body in batch],
                )
            else:
                cur.executemany(
                    "INSERT OR IGNORE INTO messages (msg_id, body) VALUES (?, ?)", batch
                )
            added = max(cur.rowcount, 0)
            if depth + added > self.spec.capacity:
                # Inserting first and rolling back when over capacity is what lets duplicates
                # through a full queue; the rollback writes nothing to disk.
                raise _OverCapacity
            self._add_depth(cur, added)
            return True
        return False

    # ---------------------------------------------------------------- lease

    @_transient
    def lease(self, max_messages: int, wait: float = 0.0) -> Lease:
        """Lease up to ``max_messages`` visible messages (FIFO), polling up to ``wait`` s.

        Messages whose attempts were already used up are dead-lettered here instead of handed
        out (reason ``max_attempts_exceeded``), when the queue has a dead-letter sink.
        """
        if max_messages < 1:
            raise ValueError(f"max_messages is {max_messages}; expected at least 1.")
        backoff = _Backoff(time.monotonic() + max(wait, 0.0))
        while True:
            lease, dead_lettered = self._try_lease(max_messages)
            if lease:
                return lease
            # A pass that only dead-lettered may have left visible messages behind: look again
            # without sleeping.
            if not dead_lettered and not backoff.sleep():
                return lease

    def _try_lease(self, max_messages: int) -> tuple[Lease, int]:
        now = time.time()
        with self._lock:
            # A read through the visible_at index first: an idle poll then costs no write lock,
            # so idle consumers do not slow the producer down.
            visible = self._conn.execute(
                "SELECT 1 FROM messages WHERE visible_at <= ? LIMIT 1", (now,)
            ).fetchall()
            if not visible:
                return Lease(messages=[]), 0
            token = uuid.uuid4().hex
            with self._write(durable=False) as cur:
                # NOT INDEXED: walk rows in seq order (FIFO) and stop after max_messages, rather
                # than collect every visible row through the index and sort them.
                rows = cur.execute(
                    "UPDATE messages SET lease_token = ?, visible_at = ?, attempts = attempts + 1"
                    " WHERE seq IN (SELECT seq FROM messages NOT INDEXED WHERE visible_at <= ?"
                    " ORDER BY seq LIMIT ?) RETURNING seq, msg_id, body, attempts",
                    (token, now + self.spec.visibility_timeout, now, max_messages),
                ).fetchall()
        rows.sort()
        over: list[tuple[int, Message]] = []
        handed: list[tuple[int, Message]] = []
        for seq, msg_id, body, attempts in rows:
            message = Message(msg_id=msg_id, body=body, attempts=attempts)
            exhausted = self.spec.dead_letter is not None and attempts > self.spec.max_attempts
            (over if exhausted else handed).append((seq, message))
        if over:
            self._dead_letter(token, over, REASON_MAX_ATTEMPTS)
        lease = Lease(
            messages=[message for _, message in handed],
            handle=_Handle(token, {message.msg_id: seq for seq, message in handed}),
        )
        return lease, len(over)

    # ------------------------------------------------------------ ack, nack

    def _handle(self, lease: Lease, msg_ids: Sequence[str] | None) -> tuple[str, list[int]]:
        handle = lease.handle
        if not isinstance(handle, _Handle):
            raise ValueError("This lease was not handed out by a SQLite queue.")
        if msg_ids is None:
            return handle.token, list(handle.seqs.values())
        unknown = [msg_id for msg_id in msg_ids if msg_id not in handle.seqs]
        if unknown:
            raise ValueError(f"Message ids {unknown[:5]} are not part of this lease.")
        return handle.token, [handle.seqs[msg_id] for msg_id in msg_ids]

    def _remove(self, cur: sqlite3.Cursor, token: str, seqs: Sequence[int]) -> int:
        """Delete the rows still held by ``token``, remember their ids; return how many."""
        removed = 0
        now = time.time()
        for chunk in _chunks(seqs):
            ids = cur.execute(
                f"DELETE FROM messages WHERE lease_token = ? AND seq IN ({_marks(len(chunk))})"
                " RETURNING msg_id",
                (token, *chunk),
            ).fetchall()
            removed += len(ids)
            if ids and self._config.dedupe_window > 0:
                cur.executemany(
                    "INSERT OR REPLACE INTO removed (msg_id, removed_at) VALUES (?, ?)",
                    [(msg_id, now) for (msg_id,) in ids],
                )
        self._add_depth(cur, -removed)
        if self._config.dedupe_window > 0 and now - self._last_prune > _PRUNE_EVERY:
            self._last_prune = now
            cur.execute(
                "DELETE FROM removed WHERE removed_at <= ?", (now - self._config.dedupe_window,)
            )
        return removed

    @_transient
    def ack(self, lease: Lease, msg_ids: Sequence[str] | None = None) -> None:
        """Delete the leased messages in one fsynced transaction.

        Only rows still held by this lease are deleted: when the lease expired and another
        consumer leased the message again, the new holder owns it and the old ack is a no-op.
        """
        token, seqs = self._handle(lease, msg_ids)
        if not seqs:
            return
        with self._lock, self._write() as cur:
            self._remove(cur, token, seqs)

    @_transient
    def nack(
        self, lease: Lease, msg_ids: Sequence[str] | None = None, *, reason: str, delay: float = 0.0
    ) -> list[Message]:
        """Make the leased messages visible again after ``delay`` s; dead-letter spent ones.

        A message delivered ``max_attempts`` times goes to the dead-letter sink with ``reason``
        and is then deleted. Rows no longer held by this lease are left alone.
        """
        token, seqs = self._handle(lease, msg_ids)
        if not seqs:
            return []
        now = time.time()
        over: list[tuple[int, Message]] = []
        with self._lock, self._write() as cur:
            rows: list[tuple[int, str, bytes, int]] = []
            for chunk in _chunks(seqs):
                rows += cur.execute(
                    "SELECT seq, msg_id, body, attempts FROM messages"
                    f" WHERE lease_token = ? AND seq IN ({_marks(len(chunk))})",
                    (token, *chunk),
                ).fetchall()
            retry: list[int] = []
            for seq, msg_id, body, attempts in sorted(rows):
                if self.spec.dead_letter is not None and attempts >= self.spec.max_attempts:
                    over.append((seq, Message(msg_id=msg_id, body=body, attempts=attempts)))
                else:
                    retry.append(seq)
            for chunk in _chunks(retry):
                cur.execute(
                    "UPDATE messages SET lease_token = NULL, visible_at = ?"
                    f" WHERE seq IN ({_marks(len(chunk))})",
                    (now + max(delay, 0.0), *chunk),
                )
            # Spent messages stay leased, for a fresh visibility window, while the sink runs:
            # nobody else picks them up meanwhile, and a crash before the delete redelivers.
            for chunk in _chunks([seq for seq, _ in over]):
                cur.execute(
                    f"UPDATE messages SET visible_at = ? WHERE seq IN ({_marks(len(chunk))})",
                    (now + self.spec.visibility_timeout, *chunk),
                )
        if over:
            self._dead_letter(token, over, reason)
        return [message for _, message in over]

    def _dead_letter(self, token: str, over: list[tuple[int, Message]], reason: str) -> None:
        """Hand spent messages to the sink first, then delete them (a crash between redelivers)."""
        sink = self.spec.dead_letter
        assert sink is not None
        sink([message for _, message in over], reason)
        with self._lock, self._write() as cur:
            self._remove(cur, token, [seq for seq, _ in over])

    # ---------------------------------------------------------------- other

    @_transient
    def depth(self) -> int:
        """Messages not acked yet, visible or leased (a counter kept with the rows)."""
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key = 'depth'").fetchone()
        return int(row[0])

    def close(self) -> None:
        """Close this instance's connection (other processes keep theirs)."""
        with self._lock:
            self._conn.close()


@register("queues", "sqlite")
class SqliteBackend(QueueBackend):
    """Queues as SQLite files under ``<data_dir>/queues/``; the embedded default."""

    Config = SqliteQueueSettings

    def __init__(self, settings: dict[str, Any], data_dir: Path) -> None:
        self.config = backend_settings(SqliteQueueSettings, settings)
        self.directory = Path(data_dir) / "queues"

    def open(self, spec: QueueSpec) -> SqliteQueue:
        """Open (creating the file if needed) ``<data_dir>/queues/<spec.name>.db``."""
        check_queue_name(spec.name)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TransientError(
                f"Cannot create the queue directory {self.directory}: {exc}."
            ) from exc
        return SqliteQueue(self.directory / f"{spec.name}.db", spec, self.config)

    def describe(self) -> dict[str, Any]:
        """The directory, the durability settings and each queue file's depth."""
        depths: dict[str, int | None] = {}
        for path in sorted(self.directory.glob("*.db")):
            depths[path.stem] = _read_depth(path)
        return {
            "backend": "sqlite",
            "directory": str(self.directory),
            "journal_mode": "wal",
            "synchronous": self.config.synchronous,
            "durability": (
                "fsync of the WAL on every batch commit"
                if self.config.synchronous == "full"
                else "fsync at checkpoints only: a power loss can lose recent batches"
            ),
            "dedupe_window_seconds": self.config.dedupe_window,
            "depths": depths,
        }


def _read_depth(path: Path) -> int | None:
    """The depth counter of a queue file, read-only; None when it cannot be read right now."""
    try:
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=1.0)
    except sqlite3.Error:
        return None
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'depth'").fetchone()
        return None if row is None else int(row[0])
    except sqlite3.Error:
        return None
    finally:
        conn.close()
