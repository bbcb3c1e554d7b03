"""The plain single-process peer: the benchmark pipeline's steps with no queues, in one loop.

Parse each NDJSON line, check the required fields, drop duplicate ids, apply the five rules
(E.164 phone, lower-case e-mail, upper-case currency, EU tag, lift the channel), enrich the
customer from the reference table (``--customers``), score completeness, route by score, and
write: an upsert into PostgreSQL (COPY into a staging table, merge on the record id, one
transaction per 2,000 records) and JSON lines for the rest. It keeps no state between steps on
disk, so a crash loses the batch in hand: that is what the pipeline's durability is measured
against.

Prints one JSON object: {"records": N, "seconds": S, "records_per_second": R}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import psycopg
from steps import load_customers, transform, valid
from steps import score as steps_score

BATCH = 2000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--input", required=True)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--table", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--customers", help="The customer reference table (CSV).")
    args = parser.parse_args()
    load_customers(args.customers)

    started = time.perf_counter()
    seen: set[str] = set()
    records = 0
    rows: list[tuple] = []
    with psycopg.connect(args.dsn) as conn, open(args.out, "w") as review:
        conn.execute(
            f"CREATE TABLE {args.table} (record_id TEXT PRIMARY KEY, source_id TEXT, "
            "event_timestamp TEXT, quality_score DOUBLE PRECISION, customer_id TEXT, "
            "amount TEXT, event_data JSONB)"
        )
        conn.commit()

        def flush() -> None:
            with conn.transaction():
                conn.execute(
                    f"CREATE TEMP TABLE IF NOT EXISTS stage (LIKE {args.table}) "
                    "ON COMMIT DELETE ROWS"
                )
                with conn.cursor().copy("COPY stage FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                conn.execute(
                    f"INSERT INTO {args.table} SELECT DISTINCT ON (record_id) * FROM stage "
                    "ON CONFLICT (record_id) DO UPDATE SET event_data = excluded.event_data"
                )
            rows.clear()

        for path in sorted(Path(args.input).glob("*.ndjson")):
            with path.open() as fh:
                for line in fh:
                    records += 1
                    try:
                        r = json.loads(line)
                    except ValueError:
                        continue
                    if not valid(r) or r["id"] in seen:
                        continue
                    seen.add(r["id"])
                    r = transform(r)
                    score = steps_score(r)
                    if score >= 0.8:
                        rows.append(
                            (f"bench:{r['id']}", "bench", r["timestamp"], score,
                             r["customer_id"], r["amount"], json.dumps(r))
                        )  # fmt: skip
                        if len(rows) >= BATCH:
                            flush()
                    else:
                        review.write(json.dumps(r) + "\n")
        if rows:
            flush()
        conn.execute(f"DROP TABLE {args.table}")
        conn.commit()
    elapsed = time.perf_counter() - started
    print(
        json.dumps(
            {"records": records, "seconds": elapsed, "records_per_second": records / elapsed}
        )
    )


if __name__ == "__main__":
    main()
