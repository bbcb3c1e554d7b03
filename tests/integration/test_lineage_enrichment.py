"""Lineage of enriched records (Runbook L.2 beyond the quickstart, which has no enrichment).

The quickstart with one CSV enrichment source and a ``lookup`` rule: ``/api/forward``,
``/api/backward`` and the lineage export name the enrichment source that filled a record's
fields (``customers``, or ``customers:default`` when the key was missing and ``on_miss: default``
filled them), next to the rules and the quality score.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from tests.integration.pipeline_harness import copy_quickstart, start_pipeline

CUSTOMERS = """\
name: customers
type: csv
connection:
  path: {path}
  key_column: customer_id
"""
LOOKUP = """\
rule_id: TRX_050_CUSTOMER_TIER
priority: 50
match: {field: customer_id, condition: exists}
transform:
  type: lookup
  config:
    source: customers
    fields: {customer_tier: tier}
    on_miss: default
    defaults: {customer_tier: unknown}
on_failure: dlq
"""


def test_forward_backward_and_export_name_the_enrichment(tmp_path: Path) -> None:
    config = copy_quickstart(tmp_path / "config")
    csv = tmp_path / "customers.csv"
    # Half the quickstart's customers are known (C00000..C00199), the others miss.
    csv.write_text(
        "customer_id,tier\n" + "".join(f"C{i:05d},gold\n" for i in range(200)), encoding="utf-8"
    )
    (config / "beta" / "enrichment").mkdir()
    (config / "beta" / "enrichment" / "customers.yaml").write_text(CUSTOMERS.format(path=csv))
    (config / "beta" / "transforms" / "rules" / "lookup_tier.yaml").write_text(LOOKUP)
    data_dir = tmp_path / "data"
    pipeline = start_pipeline(config, data_dir)
    try:
        pipeline.wait_ready()

        pipeline.wait_settled()
        picked = {}
        with sqlite3.connect(data_dir / "warehouse.db") as conn:
            for tier in ("gold", "unknown"):
                picked[tier] = conn.execute(
                    "SELECT event_id, quality_score FROM pipeline_events"
                    " WHERE json_extract(event_data, '$.customer_tier') = ? LIMIT 1",
                    (tier,),
                ).fetchone()
        assert all(picked.values()), picked
        expected = {"gold": ["customers"], "unknown": ["customers:default"]}
        for tier, (record_id, score) in picked.items():
            source, _, raw_id = record_id.partition(":")
            forward = pipeline.get(
                "control", f"/api/forward?source_id={source}&record_id={raw_id}"
            ).json()
            assert forward["outcome"] == "delivered"
            assert forward["enrichment"] == expected[tier]
            assert forward["rules"][-1] == "TRX_050_CUSTOMER_TIER"  # the last to run
            assert forward["quality_score"] == pytest.approx(score, abs=1e-6)
            backward = pipeline.get(
                "control", f"/api/backward?destination_id=warehouse&record_id={record_id}"
            ).json()
            assert backward["enrichment"] == expected[tier]
            assert backward["delivery"]["enrichment"] == expected[tier]
        exported = pipeline.get("control", "/api/export?start=2024-01-01&limit=100000").json()
        by_id = {row["record_id"]: row for row in exported}
        assert by_id[picked["gold"][0]]["enrichment"] == ["customers"]
        assert by_id[picked["unknown"][0]]["enrichment"] == ["customers:default"]
        assert "TRX_050_CUSTOMER_TIER" in by_id[picked["gold"][0]]["rules"]
    finally:
        pipeline.stop()
