"""Runbook J.2 (configuration export, versions, drift) and J.3 (daily operations report), as
written against a running ``dps run`` (host names and ports adjusted: ``monitoring:8080`` is the
control service, each ``<module>:8080`` is that module's admin port).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.integration.pipeline_harness import (
    RunningPipeline,
    copy_quickstart,
    dps,
    start_pipeline,
    wait_until,
)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPipeline]:
    root = tmp_path_factory.mktemp("runbook_j")
    config_dir = copy_quickstart(root / "config")
    running = start_pipeline(config_dir, root / "data")
    running.config_dir = config_dir  # type: ignore[attr-defined]
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


def bash(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", script], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def job_result(pipeline: RunningPipeline, job: str) -> dict[str, Any]:
    assert pipeline.post("control", f"/admin/jobs/{job}/trigger").status_code == 202
    result: dict[str, Any] = {}

    def done() -> bool:
        body = pipeline.get("control", f"/admin/jobs/{job}/status").json()
        result.update(body.get("last_run") or {})
        return bool(body.get("last_run")) and not body["running"]

    wait_until(done, 60, f"{job} did not finish")
    return result


def test_j2_export_drift_reload_history_diff(pipeline: RunningPipeline, tmp_path: Path) -> None:
    config_dir: Path = pipeline.config_dir  # type: ignore[attr-defined]
    base = str(pipeline.port_base)
    data = ("--data-dir", str(pipeline.data_dir))
    # Configuration export, as written.
    script = "\n".join(
        f"curl {pipeline.url(m)}/admin/config/export > config-{m}-$(date +%Y%m%d).yaml"
        for m in ("alpha", "beta", "gamma")
    )
    assert bash(script, tmp_path).returncode == 0
    exported = sorted(tmp_path.glob("config-*.yaml"))
    assert len(exported) == 3
    alpha = yaml.safe_load(next(p for p in exported if "alpha" in p.name).read_text())
    assert alpha["alpha"]["settings"]["DEFAULT_BATCH_SIZE"] == 500
    # Configuration backup, as written (the upload to S3 left out).
    assert (
        bash("tar -czf config-snapshot-$(date +%Y%m%d).tar.gz config-*.yaml", tmp_path).returncode
        == 0
    )
    # Drift detection: none at first ...
    done = dps("config", "drift", str(config_dir), "--admin-port-base", base, *data)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["drift"] is False
    # ... the file on disk changes, the modules still run the old one ...
    alpha_yaml = config_dir / "alpha" / "alpha.yaml"
    header = (
        "# Example configuration header\n# Module: alpha\n# Version: 2.3.1\n"
        "# Last Modified: 2024-01-15\n# Modified By: ops-team\n"
        "# Change ID: CHG-2024-0115-001\n"
        "# Description: Increased batch size for improved throughput\n"
    )
    changed = alpha_yaml.read_text().replace("DEFAULT_BATCH_SIZE: 500", "DEFAULT_BATCH_SIZE: 250")
    alpha_yaml.write_text(header + changed)
    done = dps("config", "drift", str(config_dir), "--admin-port-base", base, *data)
    assert done.returncode == 1
    report = json.loads(done.stdout)
    differences = report["modules"]["alpha"]["differences"]
    assert any(
        "alpha.settings.DEFAULT_BATCH_SIZE: files on disk 250, running 500" in d
        for d in differences
    )
    audit = job_result(pipeline, "midweek_config_audit")
    assert audit["status"] == "FAILED" and audit["message"] == "Drift in: alpha, beta, gamma."
    # ... a reload of every module brings them in line.
    for module in ("alpha", "beta", "gamma"):
        assert pipeline.post(module, "/admin/config/reload").status_code == 200
    done = dps("config", "drift", str(config_dir), "--admin-port-base", base, *data)
    assert done.returncode == 0, done.stdout
    assert job_result(pipeline, "midweek_config_audit")["status"] == "SUCCESS"
    # Every load and reload is a stored version, and the two can be compared.
    done = dps(
        "config",
        "history",
        str(config_dir),
        "--data-dir",
        str(pipeline.data_dir),
        "--module",
        "alpha",
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["alpha:2", "alpha:1"]
    assert lines[0].split("\t")[3] == "admin-api" and lines[1].split("\t")[3] == "system"
    assert lines[0].split("\t")[4] == "CHG-2024-0115-001"  # the manual's configuration header
    done = dps(
        "config",
        "diff",
        str(config_dir),
        "alpha:1",
        "alpha:2",
        "--data-dir",
        str(pipeline.data_dir),
    )
    assert done.returncode == 0, done.stderr
    assert "-DEFAULT_BATCH_SIZE: 500" in done.stdout and "+DEFAULT_BATCH_SIZE: 250" in done.stdout
    assert "alpha:1/alpha/alpha.yaml" in done.stdout
    done = dps(
        "config",
        "diff",
        str(config_dir),
        "alpha:1",
        "alpha:9",
        "--data-dir",
        str(pipeline.data_dir),
    )
    assert done.returncode == 2 and "No stored configuration version alpha:9" in done.stderr
    # The reloads are in the audit log with the new checksum.
    entries = pipeline.get("control", "/api/export?since=1h&format=json").json()
    reloads = [e for e in entries if e["action"] == "config.reload" and e["target"] == "alpha"]
    assert reloads and reloads[-1]["details"]["version"] == 2


def test_j3_daily_operations_report(pipeline: RunningPipeline, tmp_path: Path) -> None:
    monitoring = pipeline.url("control")
    # The manual's script; the incident tracker and the mail step are outside this system.
    script = f"""
DATE=$(date +%Y-%m-%d)
{{
  echo "# Daily Operations Report - $DATE"
  echo ""
  echo "## System Health"
  curl -s {monitoring}/api/health/summary
  echo ""
  echo "## Throughput Metrics"
  curl -s {monitoring}/api/throughput/summary
  echo ""
  echo "## Error Summary"
  curl -s {monitoring}/api/errors/summary
  echo ""
  echo "Generated: $(date)"
}} > daily-ops-$DATE.md
"""
    wait_until(
        lambda: pipeline.get("control", "/api/accounting").json()["delivered_records"] > 0,
        60,
        "nothing delivered",
    )
    assert bash(script, tmp_path).returncode == 0
    (report,) = tmp_path.glob("daily-ops-*.md")
    text = report.read_text()
    assert text.startswith("# Daily Operations Report - ")
    sections = text.split("## ")
    health = json.loads(sections[1].split("\n", 1)[1])
    assert set(health["modules"]) == {"control", "alpha", "beta", "gamma"}
    # The pipeline's status is the worst of its modules' (alpha may be DEGRADED or worse on
    # the quickstart's malformed lines and its burst rate: the aggregation is what is checked).
    rank = ["HEALTHY", "DEGRADED", "UNHEALTHY"]
    worst = max((m["status"] for m in health["modules"].values()), key=rank.index)
    assert health["status"] == worst
    throughput = json.loads(sections[2].split("\n", 1)[1])
    assert throughput["totals"]["ingested"] > 0
    errors = json.loads(sections[3].split("\n", 1)[1].split("\nGenerated: ")[0])
    assert errors["dlq_open"]["alpha"] > 0  # the quickstart's malformed input
    assert "delivery_errors" in errors


def test_health_summary_reports_an_unreachable_module(pipeline: RunningPipeline) -> None:
    # Pause leaves the module healthy; an emergency stop too. Point at a dead module instead:
    # the summary of a control whose gamma URL answers nothing is UNHEALTHY.
    from dps.control.modules import ModuleClient
    from dps.control.monitoring import health_summary

    client = ModuleClient(
        {
            "alpha": pipeline.url("alpha"),
            "beta": pipeline.url("beta"),
            "gamma": "http://127.0.0.1:9",
        }
    )
    summary = health_summary(client)
    client.close()
    assert summary["status"] == "UNHEALTHY" and "gamma" in summary["not_healthy"]
    assert summary["modules"]["gamma"]["status"] == "UNHEALTHY"
    assert "did not answer" in summary["modules"]["gamma"]["error"]
