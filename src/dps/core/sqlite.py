"""What every SQLite file of the system needs when it is opened (queues and the state store)."""

from __future__ import annotations

import sqlite3
import time

#: The page size of a new file. The queues store a batch's bodies as one blob (about 1 MB a
#: segment) and the state store's busiest tables are B-trees that grow by thousands of rows per
#: commit. With 16 KiB pages instead of SQLite's 4 KiB, a delivery-log row costs 4.1 -> 3.6 µs of
#: CPU (8.5 instead of 11 with random ids), and the whole pipeline about 5 % less CPU per record
#: (1,000,000-record benchmarks, alternating). A file keeps the page size it was created with
#: (WAL mode cannot change it), so existing files are unchanged.
PAGE_SIZE = 16384


def enable_wal(conn: sqlite3.Connection | sqlite3.Cursor, timeout: float) -> str:
    """Switch to WAL, retrying while another process holds the lock; returns the mode set.

    A file that does not exist yet is created with :data:`PAGE_SIZE` pages (the pragma must come
    before the first write, which switching to WAL is; on an existing file it changes nothing).

    Changing the journal mode needs an exclusive lock and SQLite does not run the busy handler
    for it, so processes opening a new file at the same moment get "database is locked" at once
    instead of waiting: retry for as long as the busy timeout allows.
    """
    conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
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
