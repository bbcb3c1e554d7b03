"""The embedded queue backend: one SQLite file per queue, shared by every process on the host.

Each queue is ``<data_dir>/queues/<name>.db`` in WAL mode, so one producer process and any number
of consumer processes open the same file at once: readers never block the writer, and writers
take turns through SQLite's lock (``busy_timeout`` is generous because a writer only holds it for
one short batch transaction). Every batch is one transaction, and with ``synchronous=FULL`` the
WAL is fsynced on each commit, so a batch is on disk when ``put``/``ack`` return (a lease commits
without its own fsync: see ``_write``).

Why by hand: no maintained Python library gives a multi-process, fsync-durable, bounded
visibility-timeout queue on SQLite (``persist-queue`` and ``litequeue`` are single-process, have
no leases that expire across processes, no idempotent put and no bounded capacity).

A put batch is stored as one row, a *segment* (its messages MessagePack-encoded together), and
leases, acks and nacks work on whole segments: a batch of a thousand messages costs a handful of
row writes, not thousands (a row per message cost ~20 µs of CPU per message and hop, as much as
a stage's own work). Only the rarer cases split a segment: a lease smaller than the segment at the
head of the queue, and an ack or nack of part of a lease.

Tables:

- ``segments(seq, count, attempts, visible_at, lease_token)``: ``seq`` is the order (FIFO). A
  segment is visible when ``visible_at <= now``; leasing it stamps a fresh ``lease_token``,
  pushes ``visible_at`` out by the visibility timeout and counts an attempt for each of its
  messages.
- ``bodies(seq, body)``: a segment's messages, apart, because SQLite rewrites a whole row on
  every update: a lease then writes a few bytes, not the batch.
- ``ids(msg_id)``: every id queued, or removed (acked, dead-lettered) within the last
  ``dedupe_window`` seconds, so that a put is idempotent: a producer that crashed after ``put``
  and re-puts from its last checkpoint neither duplicates what is queued nor re-inserts what a
  consumer has already acked. JetStream's duplicate window gives the same on the ``nats`` backend.
- ``tombstones(seq, ids, removed_at)``: the ids removed together, forgotten (deleted from
  ``ids``) once ``dedupe_window`` has passed.
- ``meta(key, value)``: ``depth``, the message count kept in the same transactions as the rows,
  so backpressure checks and ``depth()`` do not count anything; ``seq``, the last number handed
  to a segment or tombstone.
- ``waiters(name, pid, since)``: the consumers waiting for messages, each by the name of its
  doorbell (``dps.queues.doorbell``): a put rings them once committed, so a waiting consumer
  takes the batch at once instead of at its next poll.

A file written by the earlier row-per-message layout (``messages``, ``removed``) is converted on
open, in one transaction; its leases are dropped, so what was leased is delivered again.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar

import msgspec
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
from dps.queues.doorbell import AVAILABLE as doorbells_available
from dps.queues.doorbell import Doorbell, Ringer, open_doorbell

P = ParamSpec("P")
R = TypeVar("R")

#: Reason given to the dead-letter sink for a message leased once more after its last attempt.
REASON_MAX_ATTEMPTS = "max_attempts_exceeded"

#: Polling backs off from the first to the last value; the first keeps an idle consumer's
#: pick-up latency at a few ms, the cap bounds it at 20 ms (an idle poll loop then makes ~50
#: reads a second of the visible_at index, tens of microseconds each).
_POLL_FIRST = 0.005
_POLL_MAX = 0.02

#: SQLite's limit on bound parameters is 32766; id lists longer than this are split.
_CHUNK = 500

#: Tombstones forgotten per put or ack at most: the pruning keeps pace with the removals a
#: little at a time, rather than stalling every writer for one large delete now and then.
_PRUNE_BATCH = 8

_SCHEMA = """
CREATE TABLE IF NOT EXISTS segments (
    seq         INTEGER PRIMARY KEY,
    count       INTEGER NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    visible_at  REAL    NOT NULL DEFAULT 0,
    lease_token TEXT
);
CREATE INDEX IF NOT EXISTS segments_visible_at ON segments (visible_at);
CREATE TABLE IF NOT EXISTS bodies (
    seq  INTEGER PRIMARY KEY,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS ids (
    msg_id TEXT PRIMARY KEY
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tombstones (
    seq        INTEGER PRIMARY KEY,
    ids        BLOB NOT NULL,
    removed_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS tombstones_removed_at ON tombstones (removed_at);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS waiters (
    name  TEXT PRIMARY KEY,
    pid   INTEGER NOT NULL,
    since REAL NOT NULL
) WITHOUT ROWID;
"""

#: A segment's body: ``[[msg_id, body], ...]`` in put order.
_Pairs = list[tuple[str, bytes]]
_encode = msgspec.msgpack.Encoder().encode
_decode_pairs = msgspec.msgpack.Decoder(list[tuple[str, bytes]]).decode
_decode_ids = msgspec.msgpack.Decoder(list[str]).decode


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


@dataclass(slots=True)
class _Handle:
    """What a lease remembers: its token and the messages of each segment it holds."""

    token: str
    segments: dict[int, list[Message]] = field(default_factory=dict)


def _chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _marks(count: int) -> str:
    return ",".join("?" * count)


_encode_json = msgspec.json.Encoder().encode


def _id_array(ids: Sequence[str]) -> str | None:
    """A batch of ids as one JSON array parameter, read in SQL by ``json_each``; None when an
    id holds a NUL character, which SQLite's JSON functions would cut the text at.

    One statement over the array costs about half of ``executemany`` with a row per id (the
    per-row binding is the expensive part), on every put and every forgotten tombstone.
    """
    text = _encode_json(ids).decode()
    return None if "\\u0000" in text else text


def _known_ids(cur: sqlite3.Cursor, ids: Sequence[str]) -> list[str]:
    """The ids of ``ids`` that the ``ids`` table holds."""
    array = _id_array(ids)
    if array is not None:
        rows = cur.execute(
            "SELECT msg_id FROM ids WHERE msg_id IN (SELECT value FROM json_each(?))", (array,)
        )
        return [msg_id for (msg_id,) in rows]
    known: list[str] = []
    for chunk in _chunks(ids):
        rows = cur.execute(f"SELECT msg_id FROM ids WHERE msg_id IN ({_marks(len(chunk))})", chunk)
        known += [msg_id for (msg_id,) in rows]
    return known


def _for_each_id(cur: sqlite3.Cursor, over_array: str, per_row: str, ids: Sequence[str]) -> None:
    """Run ``over_array`` with the ids as one JSON array, or ``per_row`` once per id (NUL)."""
    array = _id_array(ids)
    if array is not None:
        cur.execute(over_array, (array,))
    else:
        cur.executemany(per_row, [(i,) for i in ids])


def _add_ids(cur: sqlite3.Cursor, ids: Sequence[str]) -> None:
    _for_each_id(
        cur,
        "INSERT INTO ids (msg_id) SELECT value FROM json_each(?)",
        "INSERT INTO ids (msg_id) VALUES (?)",
        ids,
    )


def _forget_ids(cur: sqlite3.Cursor, ids: Sequence[str]) -> None:
    _for_each_id(
        cur,
        "DELETE FROM ids WHERE msg_id IN (SELECT value FROM json_each(?))",
        "DELETE FROM ids WHERE msg_id = ?",
        ids,
    )


class _Backoff:
    """Sleep lengths for a poll loop: 5 ms doubling to 20 ms, never past the deadline.

    With a doorbell, each sleep is a wait on it that a producer's ring ends early.
    """

    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline
        self.step = _POLL_FIRST

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def sleep(self, doorbell: Doorbell | None = None) -> bool:
        """Sleep one step; False when the deadline has passed (the caller gives up)."""
        remaining = self.remaining()
        if remaining is not None and remaining <= 0:
            return False
        step = self.step if remaining is None else min(self.step, remaining)
        if doorbell is None:
            time.sleep(step)
        else:
            doorbell.wait(step)
        self.step = min(self.step * 2, _POLL_MAX)
        return True


class SqliteQueue(Queue):
    """One queue in one SQLite file; each process (and each consumer thread) opens its own."""

    #: The most messages one segment holds: a larger put is stored as several, so that a lease
    #: smaller than a segment rewrites at most this many messages when it splits one.
    segment_max = 1000

    def __init__(self, path: Path, spec: QueueSpec, config: SqliteQueueSettings) -> None:
        self.spec = spec
        self.path = path
        self._config = config
        self._lock = threading.Lock()
        #: This instance's doorbell, made at its first lease that waits (None: poll only).
        self._doorbell: Doorbell | None = None
        self._doorbell_tried = False
        self._ringer = Ringer()
        #: Waiters a ring found gone; deleted from ``waiters`` by the next put.
        self._gone: list[str] = []
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
        # Builds of SQLite with SECURE_DELETE (Debian's) zero every page an ack frees: a second
        # write of each segment's bodies, a third of the queue's CPU per message. FAST clears
        # deleted content where it costs no extra write; freed overflow pages keep their bytes
        # until reused, as a file system does (the data was in this same file a moment ago).
        conn.execute("PRAGMA secure_delete=FAST")
        with self._write() as cur:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    cur.execute(statement)
            cur.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('seq', 0)")
            old = cur.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'messages'"
            ).fetchall()
            if old:
                self._convert(cur)
            # Recount on open: cheap once, and heals a counter from a file edited by hand.
            cur.execute(
                "INSERT OR REPLACE INTO meta (key, value) "
                "VALUES ('depth', (SELECT coalesce(sum(count), 0) FROM segments))"
            )

    def _convert(self, cur: sqlite3.Cursor) -> None:
        """Rewrite a file of the row-per-message layout as segments and tombstones."""
        rows = cur.execute("SELECT msg_id, body, attempts FROM messages ORDER BY seq").fetchall()
        group: _Pairs = []
        attempts = None
        for msg_id, body, tries in rows:
            if group and (tries != attempts or len(group) >= self.segment_max):
                self._insert_segment(cur, group, attempts or 0)
                group = []
            group.append((msg_id, body))
            attempts = tries
        if group:
            self._insert_segment(cur, group, attempts or 0)
        cur.executemany("INSERT OR IGNORE INTO ids (msg_id) VALUES (?)", [(r[0],) for r in rows])
        removed = cur.execute("SELECT msg_id, removed_at FROM removed ORDER BY removed_at")
        gone = removed.fetchall()
        for start in range(0, len(gone), self.segment_max):
            chunk = gone[start : start + self.segment_max]
            ids = [msg_id for msg_id, _ in chunk]
            cur.executemany("INSERT OR IGNORE INTO ids (msg_id) VALUES (?)", [(i,) for i in ids])
            cur.execute(
                "INSERT INTO tombstones (seq, ids, removed_at) VALUES (?, ?, ?)",
                (self._next_seq(cur), _encode(ids), chunk[-1][1]),
            )
        cur.execute("DROP TABLE messages")
        cur.execute("DROP TABLE removed")

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

    def _next_seq(self, cur: sqlite3.Cursor) -> int:
        row = cur.execute(
            "UPDATE meta SET value = value + 1 WHERE key = 'seq' RETURNING value"
        ).fetchone()
        return int(row[0])

    def _insert_segment(
        self,
        cur: sqlite3.Cursor,
        pairs: _Pairs,
        attempts: int = 0,
        visible_at: float = 0.0,
        token: str | None = None,
    ) -> int:
        seq = self._next_seq(cur)
        cur.execute(
            "INSERT INTO segments (seq, count, attempts, visible_at, lease_token)"
            " VALUES (?, ?, ?, ?, ?)",
            (seq, len(pairs), attempts, visible_at, token),
        )
        cur.execute("INSERT INTO bodies (seq, body) VALUES (?, ?)", (seq, _encode(pairs)))
        return seq

    def _rewrite(self, cur: sqlite3.Cursor, seq: int, pairs: _Pairs) -> None:
        """Replace segment ``seq``'s messages (what is left of it after a split)."""
        cur.execute("UPDATE segments SET count = ? WHERE seq = ?", (len(pairs), seq))
        cur.execute("UPDATE bodies SET body = ? WHERE seq = ?", (_encode(pairs), seq))

    # ------------------------------------------------------------------ put

    @_transient
    def put(self, messages: Sequence[tuple[str, bytes]], timeout: float | None = None) -> None:
        """Append the batch in one fsynced transaction; wait for room up to ``timeout`` s.

        Ids already queued, or removed within ``dedupe_window``, are skipped. Only the messages
        actually added count against the capacity, so re-putting a batch into a full queue
        returns at once when all of it is already there.
        """
        batch: dict[str, bytes] = {}
        for msg_id, body in messages:
            batch.setdefault(msg_id, body)
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

    def _try_put(self, batch: dict[str, bytes]) -> bool:
        try:
            with self._lock, self._write() as cur:
                waiters = self._put_fresh(cur, batch)
        except _OverCapacity:
            return False
        self._ring(waiters)
        return True

    def _put_fresh(self, cur: sqlite3.Cursor, batch: dict[str, bytes]) -> list[str]:
        """Add the messages not known yet; the waiters to ring once this commits."""
        self._prune(cur)
        fresh = dict(batch)
        for msg_id in _known_ids(cur, list(fresh)):
            del fresh[msg_id]
        if not fresh:
            return []
        depth = cur.execute("SELECT value FROM meta WHERE key = 'depth'").fetchone()[0]
        if depth + len(fresh) > self.spec.capacity:
            raise _OverCapacity  # nothing was written yet; the rollback is free
        _add_ids(cur, list(fresh))
        pairs = list(fresh.items())
        for start in range(0, len(pairs), self.segment_max):
            self._insert_segment(cur, pairs[start : start + self.segment_max])
        self._add_depth(cur, len(pairs))
        return self._waiters(cur)

    def _waiters(self, cur: sqlite3.Cursor) -> list[str]:
        """The doorbells to ring, after deleting those an earlier ring found gone."""
        if self._gone:
            cur.executemany("DELETE FROM waiters WHERE name = ?", [(n,) for n in self._gone])
            self._gone = []
        return [name for (name,) in cur.execute("SELECT name FROM waiters")]

    def _ring(self, waiters: list[str]) -> None:
        """Wake the waiting consumers (after the commit: what they look for is there now)."""
        if waiters:
            self._gone += self._ringer.ring(waiters)

    def _prune(self, cur: sqlite3.Cursor) -> None:
        """Forget a few of the ids removed longer ago than the dedupe window."""
        window = self._config.dedupe_window
        if window <= 0:
            return
        rows = cur.execute(
            "SELECT seq, ids FROM tombstones WHERE removed_at <= ? LIMIT ?",
            (time.time() - window, _PRUNE_BATCH),
        ).fetchall()
        if not rows:
            return
        _forget_ids(cur, [msg_id for _, blob in rows for msg_id in _decode_ids(blob)])
        for chunk in _chunks([seq for seq, _ in rows]):
            cur.execute(f"DELETE FROM tombstones WHERE seq IN ({_marks(len(chunk))})", chunk)

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
        doorbell = self._doorbell
        while True:
            if doorbell is not None:
                doorbell.drain()  # rings before this look are answered by it
            lease, dead_lettered = self._try_lease(max_messages)
            if lease:
                return lease
            # A pass that only dead-lettered may have left visible messages behind: look again
            # without sleeping.
            if dead_lettered:
                continue
            if doorbell is None and wait > 0 and not self._doorbell_tried:
                doorbell = self._open_doorbell()
            if not backoff.sleep(doorbell):
                return lease

    def _open_doorbell(self) -> Doorbell | None:
        """Make this instance's doorbell and sign it up in ``waiters`` (once per instance)."""
        self._doorbell_tried = True
        doorbell = open_doorbell()
        if doorbell is None:
            return None
        try:
            # Not fsynced: after a power loss the process that waited is gone anyway.
            with self._lock, self._write(durable=False) as cur:
                cur.execute(
                    "INSERT OR REPLACE INTO waiters (name, pid, since) VALUES (?, ?, ?)",
                    (doorbell.name, os.getpid(), time.time()),
                )
        except BaseException:
            doorbell.close()
            raise
        self._doorbell = doorbell
        return doorbell

    def _try_lease(self, max_messages: int) -> tuple[Lease, int]:
        now = time.time()
        with self._lock:
            # A read through the visible_at index first: an idle poll then costs no write lock,
            # so idle consumers do not slow the producer down.
            visible = self._conn.execute(
                "SELECT 1 FROM segments WHERE visible_at <= ? LIMIT 1", (now,)
            ).fetchall()
            if not visible:
                return Lease(messages=[]), 0
            token = uuid.uuid4().hex
            with self._write(durable=False) as cur:
                # NOT INDEXED: walk segments in seq order (FIFO) and stop at enough messages,
                # rather than collect every visible one through the index and sort them.
                candidates = cur.execute(
                    "SELECT seq, count FROM segments NOT INDEXED WHERE visible_at <= ?"
                    " ORDER BY seq LIMIT ?",
                    (now, max_messages),
                ).fetchall()
                picked: list[int] = []
                total = 0
                for seq, count in candidates:
                    if total + count > max_messages:
                        if not picked:  # the head segment alone is too big: lease part of it
                            picked.append(self._split_head(cur, seq, max_messages))
                        break
                    picked.append(seq)
                    total += count
                if not picked:
                    return Lease(messages=[]), 0
                marks = _marks(len(picked))
                attempts = dict(
                    cur.execute(
                        "UPDATE segments SET lease_token = ?, visible_at = ?,"
                        f" attempts = attempts + 1 WHERE seq IN ({marks}) RETURNING seq, attempts",
                        (token, now + self.spec.visibility_timeout, *picked),
                    ).fetchall()
                )
                bodies = cur.execute(
                    f"SELECT seq, body FROM bodies WHERE seq IN ({marks})", picked
                ).fetchall()
        rows = sorted((seq, body, attempts[seq]) for seq, body in bodies)
        handle = _Handle(token)
        over: dict[int, list[Message]] = {}
        handed: list[Message] = []
        for seq, body, attempts in rows:
            messages = [Message(msg_id, data, attempts) for msg_id, data in _decode_pairs(body)]
            if self.spec.dead_letter is not None and attempts > self.spec.max_attempts:
                over[seq] = messages
                continue
            handle.segments[seq] = messages
            handed.extend(messages)
        if over:
            self._dead_letter(_Handle(token, over), REASON_MAX_ATTEMPTS)
        return Lease(messages=handed, handle=handle), sum(len(m) for m in over.values())

    def _split_head(self, cur: sqlite3.Cursor, seq: int, size: int) -> int:
        """Move the first ``size`` messages of visible segment ``seq`` to a new one; its seq."""
        (attempts,) = cur.execute("SELECT attempts FROM segments WHERE seq = ?", (seq,)).fetchone()
        (body,) = cur.execute("SELECT body FROM bodies WHERE seq = ?", (seq,)).fetchone()
        pairs = _decode_pairs(body)
        head, rest = pairs[:size], pairs[size:]
        self._rewrite(cur, seq, rest)
        # The head gets the later seq; it is leased at once, so the queue's order is unchanged.
        return self._insert_segment(cur, head, attempts)

    # ------------------------------------------------------------ ack, nack

    @staticmethod
    def _handle(lease: Lease, msg_ids: Sequence[str] | None) -> _Handle:
        handle = lease.handle
        if not isinstance(handle, _Handle):
            if not lease.messages:
                return _Handle("")  # an empty lease holds nothing
            raise ValueError("This lease was not handed out by a SQLite queue.")
        if msg_ids is not None:
            # Checked against what the lease handed out: an id acked already is no error.
            handed = {m.msg_id for m in lease.messages}
            unknown = [msg_id for msg_id in msg_ids if msg_id not in handed]
            if unknown:
                raise ValueError(f"Message ids {unknown[:5]} are not part of this lease.")
        return handle

    def _select(
        self,
        cur: sqlite3.Cursor,
        token: str,
        segments: dict[int, list[Message]],
        msg_ids: Sequence[str] | None,
    ) -> list[int]:
        """The segments holding exactly ``msg_ids``: a segment named in part is split first.

        ``segments`` (a copy of the lease's) is updated to match; the caller keeps it once the
        transaction has committed.
        """
        if msg_ids is None:
            return list(segments)
        wanted = set(msg_ids)
        seqs: list[int] = []
        for seq, messages in list(segments.items()):
            part = [m for m in messages if m.msg_id in wanted]
            if not part:
                continue
            if len(part) == len(messages):
                seqs.append(seq)
                continue
            rest = [m for m in messages if m.msg_id not in wanted]
            held = cur.execute(
                "SELECT attempts, visible_at FROM segments WHERE seq = ? AND lease_token = ?",
                (seq, token),
            ).fetchone()
            if held is None:
                continue  # the lease expired and someone else holds the segment now
            self._rewrite(cur, seq, [(m.msg_id, m.body) for m in rest])
            new = self._insert_segment(
                cur, [(m.msg_id, m.body) for m in part], held[0], held[1], token
            )
            segments[seq] = rest
            segments[new] = part
            seqs.append(new)
        return seqs

    def _remove(
        self, cur: sqlite3.Cursor, token: str, segments: dict[int, list[Message]], seqs: list[int]
    ) -> int:
        """Delete the segments still held by ``token``, tombstone their ids; return how many."""
        removed = 0
        now = time.time()
        keep_ids = self._config.dedupe_window > 0
        for chunk in _chunks(seqs):
            gone = cur.execute(
                f"DELETE FROM segments WHERE lease_token = ? AND seq IN ({_marks(len(chunk))})"
                " RETURNING seq",
                (token, *chunk),
            ).fetchall()
            if gone:
                cur.execute(
                    f"DELETE FROM bodies WHERE seq IN ({_marks(len(gone))})",
                    [seq for (seq,) in gone],
                )
            for (seq,) in gone:
                ids = [m.msg_id for m in segments.pop(seq)]
                removed += len(ids)
                if keep_ids:
                    cur.execute(
                        "INSERT INTO tombstones (seq, ids, removed_at) VALUES (?, ?, ?)",
                        (seq, _encode(ids), now),
                    )
                else:
                    _forget_ids(cur, ids)
        self._add_depth(cur, -removed)
        return removed

    @_transient
    def ack(self, lease: Lease, msg_ids: Sequence[str] | None = None) -> None:
        """Delete the leased messages in one fsynced transaction.

        Only segments still held by this lease are deleted: when the lease expired and another
        consumer leased them again, the new holder owns them and the old ack is a no-op.
        """
        handle = self._handle(lease, msg_ids)
        if not handle.segments:
            return
        segments = dict(handle.segments)
        with self._lock, self._write() as cur:
            self._prune(cur)
            seqs = self._select(cur, handle.token, segments, msg_ids)
            self._remove(cur, handle.token, segments, seqs)
        for seq in seqs:
            segments.pop(seq, None)  # removed, or no longer ours: either way not held
        handle.segments = segments

    @_transient
    def nack(
        self, lease: Lease, msg_ids: Sequence[str] | None = None, *, reason: str, delay: float = 0.0
    ) -> list[Message]:
        """Make the leased messages visible again after ``delay`` s; dead-letter spent ones.

        A message delivered ``max_attempts`` times goes to the dead-letter sink with ``reason``
        and is then deleted. Segments no longer held by this lease are left alone.
        """
        handle = self._handle(lease, msg_ids)
        if not handle.segments:
            return []
        token = handle.token
        segments = dict(handle.segments)
        now = time.time()
        spent: dict[int, list[Message]] = {}
        waiters: list[str] = []
        with self._lock, self._write() as cur:
            seqs = self._select(cur, token, segments, msg_ids)
            retry: list[int] = []
            for seq in seqs:
                messages = segments[seq]
                exhausted = messages[0].attempts >= self.spec.max_attempts
                if self.spec.dead_letter is not None and exhausted:
                    spent[seq] = messages
                else:
                    retry.append(seq)
            for chunk in _chunks(retry):
                cur.execute(
                    "UPDATE segments SET lease_token = NULL, visible_at = ?"
                    f" WHERE lease_token = ? AND seq IN ({_marks(len(chunk))})",
                    (now + max(delay, 0.0), token, *chunk),
                )
            if retry and delay <= 0:
                waiters = self._waiters(cur)  # visible again at once: wake whoever waits
            # Spent segments stay leased, for a fresh visibility window, while the sink runs:
            # nobody else picks them up meanwhile, and a crash before the delete redelivers.
            held: set[int] = set()
            for chunk in _chunks(list(spent)):
                held.update(
                    seq
                    for (seq,) in cur.execute(
                        f"UPDATE segments SET visible_at = ? WHERE lease_token = ?"
                        f" AND seq IN ({_marks(len(chunk))}) RETURNING seq",
                        (now + self.spec.visibility_timeout, token, *chunk),
                    )
                )
        self._ring(waiters)
        for seq in retry:
            segments.pop(seq, None)
        spent = {seq: messages for seq, messages in spent.items() if seq in held}
        handle.segments = segments
        if spent:
            self._dead_letter(_Handle(token, spent), reason)
            for seq in spent:
                segments.pop(seq, None)
        return [m for messages in spent.values() for m in messages]

    def _dead_letter(self, handle: _Handle, reason: str) -> None:
        """Hand spent messages to the sink first, then delete them (a crash between redelivers)."""
        sink = self.spec.dead_letter
        assert sink is not None
        sink([m for messages in handle.segments.values() for m in messages], reason)
        with self._lock, self._write() as cur:
            self._remove(cur, handle.token, dict(handle.segments), list(handle.segments))

    # ---------------------------------------------------------------- other

    @_transient
    def depth(self) -> int:
        """Messages not acked yet, visible or leased (a counter kept with the rows)."""
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key = 'depth'").fetchone()
        return int(row[0])

    def close(self) -> None:
        """Close this instance's connection (other processes keep theirs).

        A doorbell is signed out of ``waiters`` on the way; if that fails, the first put that
        rings it finds it gone and deletes it.
        """
        doorbell, self._doorbell = self._doorbell, None
        if doorbell is not None:
            signed_out = self._write(durable=False)
            with contextlib.suppress(sqlite3.Error), self._lock, signed_out as cur:
                cur.execute("DELETE FROM waiters WHERE name = ?", (doorbell.name,))
            doorbell.close()
        self._ringer.close()
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
            "wake_ups": (
                "a put wakes the waiting consumers at once (doorbells), polling underneath"
                if doorbells_available
                else f"polling every {_POLL_FIRST * 1000:g} to {_POLL_MAX * 1000:g} ms"
            ),
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
