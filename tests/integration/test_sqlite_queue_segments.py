"""The embedded queue's own layout: segments split by leases and partial acks, the dedupe window,
and a file of the earlier row-per-message layout converted on open.

The contract every backend keeps is in ``test_queues.py``; these are the cases it reaches only
by chance on SQLite, where a put batch is stored as one segment.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from dps.queues import Message, QueueSpec, open_queue
from dps.queues.sqlite import SqliteQueue


def open_sqlite(tmp_path: Path, **settings: object) -> SqliteQueue:
    queue = open_queue("sqlite", dict(settings), tmp_path, QueueSpec(name="q", capacity=10_000))
    assert isinstance(queue, SqliteQueue)
    return queue


def put(queue: SqliteQueue, ids: Sequence[str]) -> None:
    queue.put([(i, f"body-{i}".encode()) for i in ids], timeout=5)


def ids_of(messages: Sequence[Message]) -> list[str]:
    return [m.msg_id for m in messages]


def test_leases_smaller_than_a_put_batch_keep_the_order(tmp_path: Path) -> None:
    queue = open_sqlite(tmp_path)
    put(queue, [f"m{i}" for i in range(10)])
    put(queue, ["n0", "n1"])
    first, second, third = queue.lease(3), queue.lease(3), queue.lease(10)
    assert ids_of(first.messages) == ["m0", "m1", "m2"]
    assert ids_of(second.messages) == ["m3", "m4", "m5"]
    assert ids_of(third.messages) == ["m6", "m7", "m8", "m9", "n0", "n1"]
    assert all(m.body == f"body-{m.msg_id}".encode() for m in third.messages)
    queue.ack(second)
    assert queue.depth() == 9
    queue.ack(first)
    queue.ack(third)
    assert queue.depth() == 0
    assert not queue.lease(10)


def test_a_large_put_is_stored_in_bounded_segments(tmp_path: Path) -> None:
    queue = open_sqlite(tmp_path)
    ids = [f"m{i:05d}" for i in range(2 * SqliteQueue.segment_max + 500)]
    put(queue, ids)
    with sqlite3.connect(queue.path) as db:
        counts = [row[0] for row in db.execute("SELECT count FROM segments ORDER BY seq")]
    assert counts == [SqliteQueue.segment_max, SqliteQueue.segment_max, 500]
    lease = queue.lease(2 * SqliteQueue.segment_max)
    assert ids_of(lease.messages) == ids[: 2 * SqliteQueue.segment_max]
    queue.ack(lease)
    assert queue.depth() == 500


def test_part_of_a_lease_nacked_comes_back_alone(tmp_path: Path) -> None:
    queue = open_sqlite(tmp_path)
    put(queue, ["a", "b", "c", "d"])
    lease = queue.lease(10)
    queue.nack(lease, ["b", "d"], reason="test")
    again = queue.lease(10)
    assert [(m.msg_id, m.attempts) for m in again.messages] == [("b", 2), ("d", 2)]
    queue.ack(lease)  # the rest of the first lease: a and c
    queue.ack(again, ["d"])
    assert queue.depth() == 1
    queue.nack(again, reason="test")
    assert [(m.msg_id, m.attempts) for m in queue.lease(10).messages] == [("b", 3)]


def test_part_of_a_lease_dead_lettered_leaves_the_rest_leased(tmp_path: Path) -> None:
    spent: list[str] = []
    spec = QueueSpec(
        name="q",
        max_attempts=1,
        dead_letter=lambda messages, reason: spent.extend(m.msg_id for m in messages),
    )
    queue = open_queue("sqlite", {}, tmp_path, spec)
    assert isinstance(queue, SqliteQueue)
    put(queue, ["a", "b", "c"])
    lease = queue.lease(10)
    assert ids_of(queue.nack(lease, ["b"], reason="broken")) == ["b"]
    assert spent == ["b"]
    assert queue.depth() == 2
    queue.ack(lease)
    assert queue.depth() == 0


def test_acked_ids_are_refused_within_the_dedupe_window_only(tmp_path: Path) -> None:
    queue = open_sqlite(tmp_path, dedupe_window=0.5)
    put(queue, ["a", "b"])
    queue.ack(queue.lease(10))
    put(queue, ["a", "b"])
    assert queue.depth() == 0  # a producer's retry after a crash does not bring them back
    time.sleep(0.8)
    put(queue, ["a"])
    assert ids_of(queue.lease(10).messages) == ["a"]


def test_without_a_dedupe_window_acked_ids_can_come_again(tmp_path: Path) -> None:
    queue = open_sqlite(tmp_path, dedupe_window=0)
    put(queue, ["a"])
    put(queue, ["a"])  # still queued: not added twice
    assert queue.depth() == 1
    queue.ack(queue.lease(10))
    put(queue, ["a"])
    assert queue.depth() == 1


#: Ids the JSON-array statements must keep exact: quotes, backslashes, a JSON escape spelled
#: out, characters outside ASCII, control characters.
ODD_IDS = ['q"uote', "back\\slash", "spelled\\u0000escape", "é中🙂", "tab\tand\nline"]


@pytest.mark.parametrize(
    "ids",
    [ODD_IDS, [*ODD_IDS, "nul\x00id"]],  # a NUL, which SQLite's JSON functions would cut at
    ids=["json-array", "nul-row-by-row"],
)
def test_ids_of_any_text_are_deduplicated_and_forgotten_exactly(
    tmp_path: Path, ids: list[str]
) -> None:
    queue = open_sqlite(tmp_path, dedupe_window=0.5)
    put(queue, ids)
    put(queue, [*ids, "new"])  # only the new one is added
    lease = queue.lease(100)
    assert ids_of(lease.messages) == [*ids, "new"]
    queue.ack(lease)
    put(queue, ids)
    assert queue.depth() == 0  # remembered exactly
    time.sleep(0.8)
    put(queue, ["x"])  # this put forgets the acked ids (their window is over)
    with sqlite3.connect(queue.path) as db:
        assert [row[0] for row in db.execute("SELECT msg_id FROM ids")] == ["x"]
    put(queue, ids)
    assert queue.depth() == 1 + len(ids)


def test_acks_do_not_zero_the_pages_they_free(tmp_path: Path) -> None:
    queue = open_sqlite(tmp_path)
    # 2 = FAST; Debian's SQLite defaults to 1, a second write of every acked body.
    assert queue._conn.execute("PRAGMA secure_delete").fetchone() == (2,)


OLD_LAYOUT = """
CREATE TABLE messages (
    seq INTEGER PRIMARY KEY, msg_id TEXT NOT NULL UNIQUE, body BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, visible_at REAL NOT NULL DEFAULT 0, lease_token TEXT
);
CREATE INDEX messages_visible_at ON messages (visible_at);
CREATE TABLE removed (msg_id TEXT PRIMARY KEY, removed_at REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX removed_removed_at ON removed (removed_at);
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
"""


def test_a_file_of_the_row_per_message_layout_is_converted_on_open(tmp_path: Path) -> None:
    path = tmp_path / "queues" / "q.db"
    path.parent.mkdir()
    with sqlite3.connect(path) as db:
        db.executescript(OLD_LAYOUT)
        db.executemany(
            "INSERT INTO messages (msg_id, body, attempts, visible_at, lease_token)"
            " VALUES (?, ?, ?, ?, ?)",
            [
                ("a", b"body-a", 0, 0, None),
                ("b", b"body-b", 2, time.time() + 60, "old-lease"),  # leased when it stopped
                ("c", b"body-c", 0, 0, None),
            ],
        )
        db.execute("INSERT INTO removed VALUES ('gone', ?)", (time.time(),))
        db.execute("INSERT INTO meta VALUES ('depth', 3)")
    queue = open_sqlite(tmp_path)
    assert queue.depth() == 3
    lease = queue.lease(10)
    assert [(m.msg_id, m.body, m.attempts) for m in lease.messages] == [
        ("a", b"body-a", 1),
        ("b", b"body-b", 3),  # its old lease is dropped: delivered again, attempts kept
        ("c", b"body-c", 1),
    ]
    put(queue, ["gone", "a"])  # acked before the upgrade, and still queued: neither added
    assert queue.depth() == 3
    with sqlite3.connect(path) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert "messages" not in tables and "removed" not in tables
