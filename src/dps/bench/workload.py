"""The standard benchmark workload, generated deterministically from a seed.

NDJSON records shaped like the manual's examples — ``id``, ``timestamp`` (within the last 48
hours), ``source_id`` (5 sources), ``customer_id`` (10,000 customers), ``amount`` as a decimal
string, ``currency``, ``phone_number`` in mixed US formats, ``email``, ``country`` and a small
nested ``payload`` — with about 2 % invalid records (broken JSON, a missing required field) and
about 1 % duplicate ids, plus a 10,000-row customer reference table.

The generator knows exactly what it wrote (:class:`WorkloadStats`), which is what the
benchmark's correctness line is checked against.

Timestamps are relative to the moment of generation (``now``, to the second, kept in the stats
as ``generated_at``): the same seed and the same ``now`` write the same bytes. A fixed date
would let the workload age from day to day: more records late for the quality scorer's
timeliness check, and so a different workload, the longer after that date the benchmark runs.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

SOURCES = ("src_1", "src_2", "src_3", "src_4", "src_5")
COUNTRIES = ("US", "CA", "DE", "FR", "GB", "NL", "ES", "IT")
CURRENCIES = ("USD", "EUR", "GBP", "CAD")
PHONE_FORMATS = ("({a}) {b}-{c}", "{a}.{b}.{c}", "+1 {a} {b} {c}", "1-{a}-{b}-{c}", "{a}{b}{c}")
CUSTOMERS = 10_000
INVALID_RATE = 0.02
DUPLICATE_RATE = 0.01


@dataclass(frozen=True, slots=True)
class WorkloadStats:
    """What was written: every line is exactly one of these."""

    records: int
    valid_unique: int
    broken_json: int
    missing_field: int
    duplicates: int
    files: int
    #: The ``now`` the timestamps were drawn back from (ISO 8601, UTC).
    generated_at: str = ""

    def as_dict(self) -> dict[str, int | str]:
        return asdict(self)


def customer_id(n: int) -> str:
    return f"C{n:05d}"


def write_customers(path: Path, seed: int = 7) -> int:
    """The enrichment reference table: customer_id, name, tier, region."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["customer_id", "name", "tier", "region"])
        for n in range(1, CUSTOMERS + 1):
            tier = rng.choice(("bronze", "silver", "gold"))
            writer.writerow([customer_id(n), f"Customer {n}", tier, rng.choice(COUNTRIES)])
    return CUSTOMERS


def generate(
    directory: Path, records: int, *, seed: int = 42, files: int = 5, now: datetime | None = None
) -> WorkloadStats:
    """Write ``records`` NDJSON lines into ``files`` files under ``directory``; timestamps fall
    within the 48 hours before ``now`` (default: the current time, to the second)."""
    rng = random.Random(seed)
    now = now or datetime.now(UTC).replace(microsecond=0)
    directory.mkdir(parents=True, exist_ok=True)
    handles = [(directory / f"part-{i:02d}.ndjson").open("w") for i in range(files)]
    recent: list[str] = []
    broken = missing = dups = 0
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    try:
        for n in range(records):
            roll = rng.random()
            out = handles[n % files]
            if roll < DUPLICATE_RATE and recent:
                out.write(recent[rng.randrange(len(recent))])
                dups += 1
                continue
            a, b, c = rng.randrange(200, 999), rng.randrange(100, 999), rng.randrange(10000)
            record = {
                "id": f"R{n:09d}",
                "timestamp": (now - timedelta(seconds=rng.randrange(48 * 3600))).strftime(
                    "%Y-%m-%dT%H:%M:%SZ"
                ),
                "source_id": SOURCES[n % len(SOURCES)],
                "customer_id": customer_id(rng.randrange(1, CUSTOMERS + 1)),
                "amount": f"{rng.randrange(1, 100000) / 100:.2f}",
                "currency": rng.choice(CURRENCIES),
                "phone_number": rng.choice(PHONE_FORMATS).format(a=a, b=b, c=f"{c:04d}"),
                "email": f"user{n}@example.com",
                "country": rng.choice(COUNTRIES),
                "payload": {"channel": rng.choice(("web", "app", "store")), "items": n % 7 + 1},
            }
            if roll < DUPLICATE_RATE + INVALID_RATE / 2:
                out.write(dumps(record)[: rng.randrange(10, 40)] + "\n")
                broken += 1
                continue
            if roll < DUPLICATE_RATE + INVALID_RATE:
                del record["customer_id"]
                missing += 1
            line = dumps(record) + "\n"
            out.write(line)
            if "customer_id" not in record:
                continue  # duplicates repeat valid records only, so the stats stay exact
            if len(recent) < 1000:
                recent.append(line)
            else:
                recent[rng.randrange(1000)] = line
    finally:
        for handle in handles:
            handle.close()
    return WorkloadStats(
        records=records,
        valid_unique=records - broken - missing - dups,
        broken_json=broken,
        missing_field=missing,
        duplicates=dups,
        files=files,
        generated_at=now.isoformat(),
    )
