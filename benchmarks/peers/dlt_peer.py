"""The dlt peer: the benchmark's NDJSON loaded into PostgreSQL by dlt, merged on the record id.

Runs in its own virtualenv (``requirements-dlt.txt``; ``dps bench --compare`` creates it), never
in the pipeline's, so dlt's dependencies cannot change what the pipeline is measured with.

The steps are the naive peer's (``naive.py``), written as a dlt resource: parse each line, drop
lines that are not JSON or miss a required field, drop ids already seen, apply the five rules,
score completeness and route by score (records under 0.8 go to a JSON lines file, as the
pipeline's review destination). dlt does the rest as a user would let it: it infers the schema,
normalises the rows into load files (its default ``insert_values`` format for PostgreSQL) and
loads them with ``write_disposition="merge"`` on the primary key ``id`` (a staging table, then
delete-insert in one transaction). The rows carry the same columns as the naive peer's table,
with the record kept whole in a ``json`` column.

Everything lands in the dataset (PostgreSQL schema) named by ``--schema`` and its staging
schema; both are dropped at the end, as is dlt's working directory.

Prints one JSON object: {"records": N, "rows": R, "review": V, "seconds": S,
"records_per_second": N/S, "dlt_version": "..."}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from steps import load_customers, transform, valid
from steps import score as steps_score


class Counts:
    records = 0
    review = 0


def rows(input_dir: Path, review_path: Path, counts: Counts) -> Iterator[dict[str, Any]]:
    seen: set[str] = set()
    with review_path.open("w") as review:
        for path in sorted(input_dir.glob("*.ndjson")):
            with path.open() as fh:
                for line in fh:
                    counts.records += 1
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
                        yield {
                            "id": r["id"],
                            "source_id": "bench",
                            "event_timestamp": r["timestamp"],
                            "quality_score": score,
                            "customer_id": r["customer_id"],
                            "amount": r["amount"],
                            "event_data": r,
                        }
                    else:
                        review.write(json.dumps(r) + "\n")
                        counts.review += 1


def with_password(dsn: str) -> str:
    """dlt insists on a password; a server that trusts the client ignores the one we give."""
    parts = urlsplit(dsn)
    if parts.password is not None or "@" not in parts.netloc:
        return dsn
    user, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{user}:unused@{host}"))


def drop_schemas(dsn: str, schemas: tuple[str, ...]) -> None:
    import psycopg2  # installed with dlt[postgres]

    conn = psycopg2.connect(dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            for schema in schemas:
                cur.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="Directory of *.ndjson files.")
    parser.add_argument("--dsn", required=True, help="PostgreSQL DSN (postgresql://...).")
    parser.add_argument("--schema", required=True, help="Dataset (schema) to load into.")
    parser.add_argument("--table", default="events", help="Table in the dataset.")
    parser.add_argument("--out", required=True, help="JSON lines file for the review records.")
    parser.add_argument("--keep", action="store_true", help="Keep the schemas (debugging).")
    parser.add_argument("--customers", help="The customer reference table (CSV).")
    args = parser.parse_args()
    load_customers(args.customers)

    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    import dlt

    workdir = Path(tempfile.mkdtemp(prefix="dps-bench-dlt-"))
    counts = Counts()
    resource = dlt.resource(
        rows(Path(args.input), Path(args.out), counts),
        name=args.table,
        write_disposition="merge",
        primary_key="id",
        columns={
            "event_timestamp": {"data_type": "text"},
            "amount": {"data_type": "text"},
            "event_data": {"data_type": "json"},
        },
    )
    pipeline = dlt.pipeline(
        pipeline_name=f"dps_bench_{args.schema}",
        pipelines_dir=str(workdir),
        destination=dlt.destinations.postgres(credentials=with_password(args.dsn)),
        dataset_name=args.schema,
    )
    try:
        started = time.perf_counter()
        pipeline.run(resource)
        elapsed = time.perf_counter() - started
        with pipeline.sql_client() as client:
            table = client.make_qualified_table_name(args.table)
            loaded = int(client.execute_sql(f"SELECT count(*) FROM {table}")[0][0])
    finally:
        if not args.keep:
            drop_schemas(args.dsn, (args.schema, f"{args.schema}_staging"))
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        json.dumps(
            {
                "records": counts.records,
                "rows": loaded,
                "review": counts.review,
                "seconds": elapsed,
                "records_per_second": counts.records / elapsed,
                "dlt_version": dlt.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
