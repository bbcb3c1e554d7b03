"""The standard workload: deterministic for a seed and a moment, timestamps in the last 48 h."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from dps.bench.workload import generate


def _lines(directory: Path) -> list[str]:
    return [line for f in sorted(directory.glob("*.ndjson")) for line in f.read_text().splitlines()]


def test_the_same_seed_and_moment_write_the_same_bytes(tmp_path: Path) -> None:
    now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    first = generate(tmp_path / "a", 2000, seed=3, now=now)
    second = generate(tmp_path / "b", 2000, seed=3, now=now)
    assert first == second
    assert _lines(tmp_path / "a") == _lines(tmp_path / "b")
    other = generate(tmp_path / "c", 2000, seed=4, now=now)
    assert _lines(tmp_path / "c") != _lines(tmp_path / "a")
    assert other.generated_at == first.generated_at == "2026-11-29T12:00:00+00:00"


def test_timestamps_fall_within_the_48_hours_before_generation(tmp_path: Path) -> None:
    """By default the workload is drawn back from the current time, so it does not age from one
    day's run to the next (a fixed date made every record late for the timeliness check)."""
    before = datetime.now(UTC).replace(microsecond=0)
    stats = generate(tmp_path / "w", 3000, seed=5)
    after = datetime.now(UTC)
    generated = datetime.fromisoformat(stats.generated_at)
    assert before <= generated <= after
    stamps = []
    for line in _lines(tmp_path / "w"):
        try:
            record = json.loads(line)
        except ValueError:
            continue  # the broken-JSON share of the workload
        stamps.append(datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")))
    assert len(stamps) > 2800
    assert all(generated - timedelta(hours=48) <= s <= generated for s in stamps)
    # Spread over the whole window, not bunched at one end.
    assert min(stamps) < generated - timedelta(hours=40)
    assert max(stamps) > generated - timedelta(hours=8)
