"""Runbook L.1 (audit log export) as written against a running ``dps run`` (``audit:8080`` is the
control service), and the audit log's tamper evidence: ``dps audit verify`` after the state
database was edited by hand.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest
from tests.integration.pipeline_harness import copy_quickstart, dps, start_pipeline, wait_until


def test_l1_export_and_tamper_evidence(tmp_path: Path) -> None:
    config_dir = copy_quickstart(tmp_path / "config")
    data_dir = tmp_path / "data"
    pipeline = start_pipeline(config_dir, data_dir)
    try:
        pipeline.wait_ready()
        headers = {"X-DPS-Actor": "alice"}
        assert pipeline.post("alpha", "/admin/pause", headers=headers).status_code == 200
        assert pipeline.post("alpha", "/admin/resume", headers=headers).status_code == 200
        assert pipeline.post("gamma", "/admin/dlq/replay", content=b"[1]").status_code == 400
        # L.1 Daily Export, as written (the upload to S3 left out).
        audit = pipeline.url("control")
        script = f'curl "{audit}/api/export?since=24h&format=json" > audit-$(date +%Y%m%d).json'
        subprocess.run(["bash", "-c", script], cwd=tmp_path, check=True, timeout=60)
        (exported,) = tmp_path.glob("audit-*.json")
        entries = json.loads(exported.read_text())
        loads = {e["target"]: e for e in entries if e["action"] == "config.load"}
        assert set(loads) == {"control", "alpha", "beta", "gamma"}
        assert len(loads["alpha"]["details"]["checksum"]) == 64
        (pause,) = [e for e in entries if e["action"] == "admin/pause"]
        assert pause["actor"] == "alice" and pause["target"] == "alpha"
        assert pause["details"]["client"].startswith("127.0.0.1:")
        assert pause["details"]["outcome"] == "success" and pause["details"]["status"] == 200
        assert pause["timestamp"] > 0
        (refused,) = [e for e in entries if e["action"] == "admin/dlq/replay"]
        assert refused["details"]["outcome"] == "failure" and refused["details"]["status"] == 400
        # The daily job exports the same entries to the data directory.
        assert pipeline.post("control", "/admin/jobs/daily_audit_export/trigger").status_code == 202
        wait_until(
            lambda: list((data_dir / "exports" / "audit").glob("audit-*.json")) != [],
            30,
            "no export written",
        )
        # The chain is intact while nothing was touched.
        assert pipeline.get("control", "/api/audit/verify").json()["ok"] is True
    finally:
        pipeline.stop()
    done = dps("audit", "verify", str(config_dir), "--data-dir", str(data_dir))
    assert done.returncode == 0, done.stderr
    assert "Audit log intact" in done.stdout
    # An intruder edits the record of the pause ...
    state = data_dir / "state.db"
    with sqlite3.connect(state) as conn:
        conn.execute("UPDATE audit_log SET actor = 'mallory' WHERE action = 'admin/pause'")
    done = dps("audit", "verify", str(config_dir), "--data-dir", str(data_dir))
    assert done.returncode == 1
    assert "TAMPERED" in done.stderr and "was modified" in done.stderr
    # ... puts it back, and deletes it instead.
    with sqlite3.connect(state) as conn:
        conn.execute("UPDATE audit_log SET actor = 'alice' WHERE action = 'admin/pause'")
    assert dps("audit", "verify", str(config_dir), "--data-dir", str(data_dir)).returncode == 0
    with sqlite3.connect(state) as conn:
        conn.execute("DELETE FROM audit_log WHERE action = 'admin/pause'")
    done = dps("audit", "verify", str(config_dir), "--data-dir", str(data_dir))
    assert done.returncode == 1 and "The chain is broken before entry" in done.stderr


def test_l2_lineage_queries(tmp_path: Path) -> None:
    config_dir = copy_quickstart(tmp_path / "config")
    data_dir = tmp_path / "data"
    pipeline = start_pipeline(config_dir, data_dir)
    try:
        pipeline.wait_ready()

        pipeline.wait_settled()
        with sqlite3.connect(data_dir / "warehouse.db") as conn:
            # An EU order: the quickstart's TRX_100_TAG_EU rule set its region.
            delivered, delivered_score = conn.execute(
                "SELECT event_id, quality_score FROM pipeline_events"
                " WHERE json_extract(event_data, '$.region') = 'EU' LIMIT 1"
            ).fetchone()
        with sqlite3.connect(data_dir / "state.db") as conn:
            dlq_record, dlq_source = conn.execute(
                "SELECT record_id, source_id FROM dlq_entries WHERE record_id LIKE '%:%' LIMIT 1"
            ).fetchone()
        lineage = pipeline.url("control")
        source, _, raw_id = delivered.partition(":")

        def curl_json(url: str) -> tuple[int, object]:
            done = subprocess.run(
                ["curl", "-s", "-w", "\n%{http_code}", url], capture_output=True, text=True
            )
            body, _, code = done.stdout.rpartition("\n")
            return int(code), json.loads(body)

        # Forward lineage (source to destination), with the source's own id.
        code, forward = curl_json(f"{lineage}/api/forward?source_id={source}&record_id={raw_id}")
        assert code == 200 and isinstance(forward, dict)
        assert forward["outcome"] == "delivered" and forward["record_id"] == delivered
        assert forward["ingested"][0]["origin"]  # the source position it came from
        assert any(d["destination_id"] == "warehouse" for d in forward["deliveries"])
        # Which rules touched it (in the order they ran), enrichment (none in the quickstart)
        # and its quality score: the one the warehouse got.
        assert "TRX_100_TAG_EU" in forward["rules"]
        assert forward["rules"][-1] == "TRX_100_TAG_EU"  # the lowest priority runs last
        assert forward["enrichment"] == []
        assert forward["quality_score"] == pytest.approx(delivered_score, abs=1e-6)
        assert forward["deliveries"][0]["rules"] == forward["rules"]
        # A record that went to a DLQ says so, with the reason.
        code, forward = curl_json(
            f"{lineage}/api/forward?source_id={dlq_source}&record_id={dlq_record}"
        )
        assert code == 200 and isinstance(forward, dict)
        assert forward["outcome"] == "dlq" and forward["dlq"][0]["reason"]
        # Backward lineage (destination to source).
        code, backward = curl_json(
            f"{lineage}/api/backward?destination_id=warehouse&record_id={delivered}"
        )
        assert code == 200 and isinstance(backward, dict)
        assert backward["delivery"]["status"] == "delivered"
        assert backward["delivery"]["timestamp"] > 0  # when it was delivered (and acked)
        assert "TRX_100_TAG_EU" in backward["rules"]
        assert backward["quality_score"] == pytest.approx(delivered_score, abs=1e-6)
        assert backward["sources"][0]["source_id"] == source
        code, _ = curl_json(f"{lineage}/api/backward?destination_id=nowhere&record_id={delivered}")
        assert code == 404
        code, _ = curl_json(f"{lineage}/api/forward?source_id={source}&record_id=NO-SUCH")
        assert code == 404
        # Lineage export, as written (the period ends today).
        script = (
            f'curl "{lineage}/api/export?start=2024-01-01&end=$(date +%Y-%m-%d)" > lineage.json'
        )
        subprocess.run(["bash", "-c", script], cwd=tmp_path, check=True, timeout=60)
        exported = json.loads((tmp_path / "lineage.json").read_text())
        (row,) = [r for r in exported if r["record_id"] == delivered]
        assert row["destination_id"] == "warehouse" and "TRX_100_TAG_EU" in row["rules"]
        assert row["enrichment"] == []
        assert row["quality_score"] == pytest.approx(delivered_score, abs=1e-6)
    finally:
        pipeline.stop()
