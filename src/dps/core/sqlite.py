"""What every SQLite file of the system needs when it is opened (queues and the state store)."""

from __future__ import annotations

import sqlite3
import time


def enable_wal(conn: sqlite3.Connection | sqlite3.Cursor, timeout: float) -> str:
    """Switch to WAL, retrying while another process holds the lock; returns the mode set.

    Changing the journal mode needs an exclusive lock and SQLite does not run the busy handler
    for it, so processes opening a new file at the same moment get "database is locked" at once
    instead of waiting: retry for as long as the busy timeout allows.
    """
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        try:
            row = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            return str(row[0]).lower()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
