"""The beta jobs of the catalog against a running pipeline: ``beta_cache_refresh``,
``beta_enrichment_warmup`` and ``beta_schema_sync`` triggered on control, acting on beta's admin
API (no mocks), with their outcome in the job's status and log. And the enrichment cache in
``dps backup create`` / restore.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests.integration.pipeline_harness import (
    RunningPipeline,
    copy_quickstart,
    dps,
    start_pipeline,
    wait_until,
)

from dps.control.backup import import_enrichment_cache, restore_backup
from dps.control.modules import ModuleClient

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


def cache_entries(pipeline: RunningPipeline) -> int:
    entries: int = pipeline.get("beta", "/admin/cache/stats").json()["entries"]
    return entries


def test_backup_carries_the_enrichment_cache(tmp_path: Path) -> None:
    config_dir = copy_quickstart(tmp_path / "config")
    add_csv_source(config_dir, tmp_path)
    data_dir = tmp_path / "data"
    backups = tmp_path / "backups"
    pipeline = start_pipeline(config_dir, data_dir)
    try:
        pipeline.wait_ready()
        wait_until(lambda: pipeline._healthy("beta"), 60, "beta admin API never answered")
        wait_until(lambda: cache_entries(pipeline) >= ROWS, 30, "warmup never filled the cache")
        args = ["backup", "create", str(config_dir), "--data-dir", str(data_dir)]
        done = dps(*args, "--target", str(backups), "--admin-port-base", str(pipeline.port_base))
        assert done.returncode == 0, done.stderr
        assert f"Exported the enrichment cache ({ROWS} entries)." in done.stderr
        backup = Path(done.stdout.strip())
    finally:
        pipeline.stop()
    manifest = json.loads((backup / "manifest.json").read_text())
    assert manifest["enrichment_cache"] == {
        "included": True,
        "entries": ROWS,
        "path": "cache/enrichment-cache.json",
    }
    assert any(f["kind"] == "enrichment_cache" for f in manifest["files"])
    assert dps("backup", "verify", str(backup)).returncode == 0

    # The pipeline is stopped: the backup is made, noting the cache is not in it.
    done = dps(
        *args, "--target", str(tmp_path / "cold"), "--admin-port-base", str(pipeline.port_base)
    )
    assert done.returncode == 0, done.stderr
    cold = json.loads((Path(done.stdout.strip()) / "manifest.json").read_text())
    assert cold["enrichment_cache"]["included"] is False
    assert "beta did not export its cache" in cold["enrichment_cache"]["reason"]

    # Restore with the pipeline stopped: files back, the cache waits for a running beta.
    restored_dir = tmp_path / "restored"
    result = restore_backup(backup, restored_dir)
    assert result["enrichment_cache"]["imported"] is False
    assert not (restored_dir / "enrichment-cache.json").exists()
    assert not (restored_dir / "cache").exists()

    (config_dir / "beta" / "enrichment" / "countries.yaml").write_text(
        (config_dir / "beta" / "enrichment" / "countries.yaml")
        .read_text()
        .replace("warmup: true", "warmup: false")
    )
    pipeline = start_pipeline(config_dir, restored_dir)
    client: ModuleClient | None = None
    try:
        pipeline.wait_ready()
        wait_until(lambda: pipeline._healthy("beta"), 60, "beta admin API never answered")
        assert cache_entries(pipeline) == 0
        client = ModuleClient({"beta": pipeline.url("beta")})
        imported = import_enrichment_cache(backup, client)
        assert imported["imported"] is True
        assert imported["entries"] == ROWS and imported["per_source"] == {"countries": ROWS}
        assert (
            pipeline.get("beta", "/admin/cache/stats").json()["sources"]["countries"]["entries"]
            == ROWS
        )
        # restore_backup given a running beta imports the cache itself.
        assert pipeline.post("beta", "/admin/cache/clear").status_code == 200
        result = restore_backup(backup, tmp_path / "again", modules=client)
        assert result["enrichment_cache"]["imported"] is True
        assert cache_entries(pipeline) == ROWS
    finally:
        if client is not None:
            client.close()
        pipeline.stop()
