"""The beta jobs of the catalog against a running pipeline: ``beta_cache_refresh``,
``beta_enrichment_warmup`` and ``beta_schema_sync`` triggered on control, acting on beta's admin
API (no mocks), with their outcome in the job's status and log.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests.integration.pipeline_harness import (
    RunningPipeline,
    copy_quickstart,
    start_pipeline,
    wait_until,
)

ROWS = 50


def add_csv_source(config_dir: Path, folder: Path) -> Path:
    """A small ``csv`` enrichment source (``countries``, warmed at start)."""
    table = folder / "countries.csv"
    lines = ["iso2,name,region"] + [f"C{i:02d},Country {i},R{i % 3}" for i in range(ROWS)]
    table.write_text("\n".join(lines) + "\n")
    enrichment = config_dir / "beta" / "enrichment"
    enrichment.mkdir(parents=True, exist_ok=True)
    (enrichment / "countries.yaml").write_text(
        "name: countries\n"
        "type: csv\n"
        "connection:\n"
        f"  path: {table}\n"
        "  key_column: iso2\n"
        "cache:\n"
        "  warmup: true\n"
    )
    return table


def run_job(pipeline: RunningPipeline, job: str, timeout: float = 60) -> dict[str, Any]:
    """Trigger ``job`` on control, wait for the run to finish; the run with its log."""
    answer = pipeline.post("control", f"/admin/jobs/{job}/trigger")
    assert answer.status_code == 202, answer.text
    run_id = answer.json()["run_id"]

    def finished() -> bool:
        last = pipeline.get("control", f"/admin/jobs/{job}/status").json()["last_run"]
        return bool(last and last["run_id"] == run_id and last["status"] != "RUNNING")

    wait_until(finished, timeout, f"{job} never finished")
    runs = pipeline.get("control", f"/admin/jobs/{job}/logs?limit=1").json()["runs"]
    assert runs[0]["run_id"] == run_id
    run: dict[str, Any] = runs[0]
    return run


def test_beta_jobs_refresh_warm_and_sync_through_betas_api(tmp_path: Path) -> None:
    config_dir = copy_quickstart(tmp_path / "config")
    table = add_csv_source(config_dir, tmp_path)
    pipeline = start_pipeline(config_dir, tmp_path / "data")
    try:
        pipeline.wait_ready()
        wait_until(lambda: pipeline._healthy("beta"), 60, "beta admin API never answered")
        jobs = {j["name"]: j for j in pipeline.get("control", "/admin/jobs/list").json()}
        for name in ("beta_cache_refresh", "beta_enrichment_warmup", "beta_schema_sync"):
            assert jobs[name]["active"] and jobs[name]["inactive_reason"] is None, jobs[name]

        # Empty the cache, then the refresh job fills it again from the CSV file.
        assert pipeline.post("beta", "/admin/cache/clear").status_code == 200
        assert pipeline.get("beta", "/admin/cache/stats").json()["entries"] == 0
        run = run_job(pipeline, "beta_cache_refresh")
        assert run["status"] == "SUCCESS", run
        assert run["records"] == ROWS
        assert f"{ROWS} entries loaded" in run["message"]
        assert "Refresh started." in run["log"] and '"countries"' in run["log"]
        assert "Refresh finished." in run["log"]
        assert "completion_percent=100.0" in run["log"]
        assert f"entries_loaded={ROWS}" in run["log"]
        stats = pipeline.get("beta", "/admin/cache/stats").json()
        assert stats["sources"]["countries"]["entries"] == ROWS

        # The warmup job reloads the sources marked cache.warmup: true (new rows included).
        more = [f"D{i:02d},Other {i},R9" for i in range(10)]
        table.write_text(table.read_text() + "\n".join(more) + "\n")
        time.sleep(0.05)
        assert pipeline.post("beta", "/admin/cache/clear").status_code == 200
        run = run_job(pipeline, "beta_enrichment_warmup")
        assert run["status"] == "SUCCESS", run
        assert run["records"] == ROWS + 10
        stats = pipeline.get("beta", "/admin/cache/stats").json()
        assert stats["sources"]["countries"]["entries"] == ROWS + 10

        # Schema sync: a schema added on disk is loaded; a broken one fails the run and beta
        # keeps the registry it runs.
        folder = config_dir / "beta" / "schemas" / "widget"
        folder.mkdir(parents=True)
        schema = {"type": "object", "required": ["id"]}
        (folder / "v1.json").write_text(json.dumps(schema))
        run = run_job(pipeline, "beta_schema_sync")
        assert run["status"] == "SUCCESS", run
        assert run["records"] == 1 and "1 schemas" in run["message"]
        assert "widget" in pipeline.get("beta", "/admin/schemas").json()["schemas"]
        (folder / "v2.json").write_text("{not json")
        run = run_job(pipeline, "beta_schema_sync")
        assert run["status"] == "FAILED", run
        assert "400" in run["message"] and "v2.json" in run["message"]
        widget = pipeline.get("beta", "/admin/schemas").json()["schemas"]["widget"]
        assert widget["versions"] == [1]
    finally:
        pipeline.stop()
