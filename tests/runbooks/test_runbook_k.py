"""Runbook K (K.1 emergency shutdown, K.2 restart) with ``dps emergency-stop`` and ``dps restart``,
against a running ``dps run`` with 20 000 records in flight: the CLI performs G.1/G.2's sequence,
reports what was in flight, and after the restart every record is delivered once.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration.pipeline_harness import copy_quickstart, dps, start_pipeline, wait_until
from tests.integration.test_pipeline_faults import add_bulk_orders
from tests.runbooks.test_runbook_g import BULK, delivered_once, settled


def test_k1_k2_with_the_cli(tmp_path: Path) -> None:
    config_dir = copy_quickstart(tmp_path / "config")
    add_bulk_orders(config_dir, BULK)
    pipeline = start_pipeline(config_dir, tmp_path / "data")
    try:
        pipeline.wait_ready()
        wait_until(
            lambda: pipeline.get("control", "/api/accounting").json()["ingested"] > 0,
            60,
            "nothing ingested",
        )
        base = str(pipeline.port_base)
        done = dps("emergency-stop", str(config_dir), "--admin-port-base", base, timeout=400)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["stopped"] is True and report["drained"] is True
        assert report["status"] == {"alpha": "stopped", "beta": "stopped", "gamma": "stopped"}
        assert [s["step"] for s in report["steps"]] == [
            "Stopped alpha (ingestion).",
            "Transform queue drained.",
            "Stopped beta (transformation).",
            "Stopped gamma (delivery).",
        ]
        assert set(report["in_flight_at_stop"]) == {"beta", "gamma"}
        # Nothing moves while stopped.
        before = pipeline.get("control", "/api/accounting").json()
        wait_until(lambda: True, 1, "")
        assert pipeline.get("control", "/api/accounting").json()["ingested"] == before["ingested"]
        done = dps(
            "restart",
            str(config_dir),
            "--admin-port-base",
            base,
            "--health-timeout",
            "15",
            timeout=400,
        )
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["ok"] is True
        assert list(report["health"]) == ["gamma", "beta", "alpha"]
        assert all(s["step"].startswith("Started") for s in report["steps"])
        settled(pipeline)
        delivered_once(pipeline.data_dir)
        # Both sequences are in the audit log, with the actions in runbook order.
        entries = pipeline.get("control", "/api/export?since=1h&format=json").json()
        actions = [(e["target"], e["action"]) for e in entries if e["action"].startswith("admin/")]
        assert [a for a in actions if a[1] in ("admin/emergency-stop", "admin/start")] == [
            ("alpha", "admin/emergency-stop"),
            ("beta", "admin/emergency-stop"),
            ("gamma", "admin/emergency-stop"),
            ("gamma", "admin/start"),
            ("beta", "admin/start"),
            ("alpha", "admin/start"),
        ]
    finally:
        pipeline.stop()
