"""Bytes per record of the delivery log with its lineage summary, measured on PostgreSQL.

Writes ``--rows`` delivery outcomes (one destination per record, batches of 500, through
``SqlStateStore.record_deliveries`` as Gamma does) into a fresh schema per variant, then reads
``pg_relation_size`` (heap), ``pg_indexes_size`` and ``pg_total_relation_size`` and divides by
the rows (heap, each index, total). The variants: no lineage summary (what a schema-4 row holds),
the quickstart's usual summary (two rules and a score), and that plus one enrichment source.
Also sizes a BRIN index on ``timestamp`` (the alternative to the B-tree) and the optional index
on ``validation_cache.record_id`` (forward lookups of sources with dedupe key fields).

    .venv/bin/python benchmarks/lineage_storage.py --dsn postgresql://postgres@127.0.0.1:5432/test

Numbers from this script are in docs/operations.md (Lineage).
"""

from __future__ import annotations

import argparse
import tempfile
import uuid
from pathlib import Path

import sqlalchemy as sa

from dps.state import open_state
from dps.state.base import DedupeCandidate, DeliveryOutcome

VARIANTS: dict[str, dict[str, object]] = {
    "no lineage summary (schema 4 row)": {},
    "2 rules + score": {
        "rules": ("TRX_042_NORMALIZE_PHONE", "TRX_100_TAG_EU"),
        "quality_score": 0.8,
    },
    "2 rules + 1 enrichment + score": {
        "rules": ("TRX_042_NORMALIZE_PHONE", "TRX_100_TAG_EU"),
        "enrichment": ("customers",),
        "quality_score": 0.8,
    },
}


def measure(dsn: str, rows: int, summary: dict[str, object]) -> dict[str, float]:
    schema = f"dps_bytes_{uuid.uuid4().hex[:8]}"
    settings = {"backend": "postgresql", "dsn": dsn, "schema": schema}
    store = open_state("postgresql", settings, Path(tempfile.gettempdir()))
    try:
        for start in range(0, rows, 500):
            ids = [f"orders_file:ORD-{i:09d}" for i in range(start, min(rows, start + 500))]
            store.record_deliveries(
                [
                    DeliveryOutcome(rid, "warehouse", "delivered", **summary)  # type: ignore[arg-type]
                    for rid in ids
                ]
            )
            # Alpha's dedupe claims of the same records (to size an index on record_id).
            store.claim_dedupe_keys(
                [DedupeCandidate(rid, f"file:{rid[-9:]}", rid, "orders_file") for rid in ids],
                86400,
            )
        engine = store.engine.execution_options(isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            for vacuumed in ("delivery_log", "validation_cache"):
                conn.execute(sa.text(f'VACUUM ANALYZE "{schema}".{vacuumed}'))

            def size(relation: str) -> float:
                found = conn.scalar(sa.text("SELECT pg_relation_size(:r)"), {"r": relation})
                return float(found or 0) / rows

            table = f'"{schema}".delivery_log'
            total = conn.scalar(sa.text("SELECT pg_total_relation_size(:t)"), {"t": table})
            result = {
                "heap": size(table),
                "pk": size(f'"{schema}".idx_delivery_record_id'),
                "destination": size(f'"{schema}".idx_delivery_destination'),
                "timestamp": size(f'"{schema}".idx_delivery_timestamp'),
                "total": float(total or 0) / rows,
            }
            vc_total = conn.scalar(
                sa.text("SELECT pg_total_relation_size(:t)"),
                {"t": f'"{schema}".validation_cache'},
            )
            result["validation_cache total"] = float(vc_total or 0) / rows
            conn.execute(sa.text(f'CREATE INDEX ts_brin ON {table} USING brin ("timestamp")'))
            result["timestamp brin"] = size(f'"{schema}".ts_brin')
            conn.execute(
                sa.text(f'CREATE INDEX vc_record_id ON "{schema}".validation_cache (record_id)')
            )
            result["validation_cache record_id"] = size(f'"{schema}".vc_record_id')
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        store.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    print(f"{args.rows} rows, one destination each; bytes per row (PostgreSQL):")
    for name, summary in VARIANTS.items():
        r = measure(args.dsn, args.rows, summary)
        print(f"  {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in r.items()))


if __name__ == "__main__":
    main()
