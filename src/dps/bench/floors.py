"""The machine's floors on the benchmark's own records, and the single-process peer.

- parse floor: decoding every NDJSON line, nothing else — what no pipeline can beat;
- COPY floor: PostgreSQL ``COPY`` of the already-parsed rows into a logged table with a primary
  key (the same columns the pipeline writes) — the database's own ceiling;
- naive peer: ``benchmarks/peers/naive.py``, the same steps as the pipeline in one process with
  no queues and no durability between steps.

Each is timed in the same run as the pipeline so that the ratios compare like with like.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


def _lines(input_dir: Path) -> list[bytes]:
    out: list[bytes] = []
    for path in sorted(input_dir.glob("*.ndjson")):
        with path.open("rb") as fh:
            out.extend(fh)
    return out


def parse_floor(input_dir: Path) -> float:
    """Records per second for decoding every line (invalid lines counted as handled)."""
    lines = _lines(input_dir)
    started = time.perf_counter()
    for line in lines:
        with contextlib.suppress(msgspec.DecodeError):
            _decode(line)
    return len(lines) / (time.perf_counter() - started)


def copy_floor(input_dir: Path, pg_dsn: str) -> float:
    """Records per second for COPY of the parsed, de-duplicated rows into a keyed table."""
    import psycopg

    rows: dict[str, tuple[Any, ...]] = {}
    for line in _lines(input_dir):
        try:
            r = _decode(line)
        except msgspec.DecodeError:
            continue
        if "customer_id" not in r:
            continue
        rows[r["id"]] = (
            f"bench:{r['id']}",
            r["source_id"],
            r["timestamp"],
            1.0,
            r["customer_id"],
            r["amount"],
            _encode(r).decode(),
        )
    table = f"bench_floor_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE {table} (record_id TEXT PRIMARY KEY, source_id TEXT, "
            "event_timestamp TEXT, quality_score DOUBLE PRECISION, customer_id TEXT, amount TEXT, "
            "event_data JSONB)"
        )
        try:
            started = time.perf_counter()
            with conn.transaction(), conn.cursor().copy(f"COPY {table} FROM STDIN") as copy:
                for row in rows.values():
                    copy.write_row(row)
            elapsed = time.perf_counter() - started
        finally:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
    return len(rows) / elapsed


def naive_peer(input_dir: Path, pg_dsn: str, work: Path) -> float:
    """Records per second of ``benchmarks/peers/naive.py`` on the same input."""
    script = Path(__file__).resolve().parents[3] / "benchmarks" / "peers" / "naive.py"
    table = f"bench_naive_{uuid.uuid4().hex[:8]}"
    done = subprocess.run(
        [sys.executable, str(script), "--input", str(input_dir), "--dsn", pg_dsn,
         "--table", table, "--out", str(work / "naive-review.jsonl"),
         "--customers", str(input_dir.parent / "customers.csv")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"The naive peer failed: {done.stderr.strip()[-500:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return float(result["records_per_second"])
