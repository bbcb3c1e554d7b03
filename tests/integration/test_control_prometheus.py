"""A real Prometheus scrapes a running ``dps run`` and evaluates alerts.

Prometheus (Debian package ``prometheus``; a missing binary fails the test) loads the shipped
rules file verbatim and one test rule: the manual's ``alpha_ingestion_stopped`` with its windows
shortened from 5 minutes to seconds so the test runs in under a minute. While alpha ingests the
alert is inactive; after alpha is paused (intake stops) it fires. ``promtool test rules`` runs
the verbatim rules on synthetic series at their real durations.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import httpx
import yaml
from tests.integration.pipeline_harness import copy_quickstart, start_pipeline, wait_until
from tests.integration.test_pipeline_faults import add_bulk_orders

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_promtool_unit_tests_of_the_manuals_rules() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed (apt-get install prometheus)"
    done = subprocess.run(
        [promtool, "test", "rules", "tests/pipeline-alerts-test.yml"],
        cwd=MONITORING,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_prometheus_scrapes_the_pipeline_and_fires_ingestion_stopped(tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not installed (apt-get install prometheus)"
    config_dir = copy_quickstart(tmp_path / "config")
    pipeline = start_pipeline(config_dir, tmp_path / "data")
    prom_dir = tmp_path / "prometheus"
    (prom_dir / "rules").mkdir(parents=True)
    shutil.copy(MONITORING / "rules" / "pipeline-alerts.yml", prom_dir / "rules")
    manual = yaml.safe_load((MONITORING / "manual-alerts.yaml").read_text())[
        "alpha_ingestion_stopped"
    ]
    fast = {
        "groups": [
            {
                "name": "test_fast",
                "rules": [
                    {
                        "alert": "alpha_ingestion_stopped_fast",
                        "expr": manual["condition"].replace("[5m]", "[5s]"),
                        "for": "3s",
                        "labels": {"severity": manual["severity"], "module": "alpha"},
                    }
                ],
            }
        ]
    }
    (prom_dir / "rules" / "fast.yml").write_text(yaml.safe_dump(fast))
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = ["rules/*.yml"]
    config.pop("alerting")
    for job in config["scrape_configs"]:
        module = job["static_configs"][0]["labels"]["module"]
        job["static_configs"][0]["targets"] = [pipeline.url(module).removeprefix("http://")]
    (prom_dir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    api = f"http://127.0.0.1:{port}/api/v1"
    prometheus = subprocess.Popen(
        [
            binary,
            "--config.file=prometheus.yml",
            f"--storage.tsdb.path={prom_dir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        cwd=prom_dir,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("w"),
    )

    def get(path: str, **params: str) -> Any:
        return httpx.get(api + path, params=params, timeout=5).json()["data"]

    def ready() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def alert_state() -> str | None:
        for alert in get("/alerts")["alerts"]:
            if alert["labels"]["alertname"] == "alpha_ingestion_stopped_fast":
                return str(alert["state"])
        return None

    try:
        pipeline.wait_ready()
        wait_until(ready, 60, "prometheus did not start")
        # Every module is scraped.
        wait_until(
            lambda: (
                {t["labels"]["module"]: t["health"] for t in get("/targets")["activeTargets"]}
                == {"control": "up", "alpha": "up", "beta": "up", "gamma": "up"}
            ),
            60,
            "not every module is scraped",
        )
        # Intake starts once Prometheus is watching (the pipeline takes a file of this size in
        # a few seconds, which could otherwise be over before the first scrape): the rate is
        # above zero and the alert is not firing.
        add_bulk_orders(config_dir, 120_000)
        wait_until(
            lambda: bool(
                get("/query", query="sum(rate(alpha_records_ingested_total[5s])) > 0")["result"]
            ),
            90,
            "prometheus never saw alpha ingest",
        )
        assert alert_state() != "firing"
        # The shipped rules load and evaluate without errors on the live data.
        groups = get("/rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        assert len(rules) == 19
        # Intake stops.
        assert pipeline.post("alpha", "/admin/pause").status_code == 200
        wait_until(lambda: alert_state() == "firing", 60, "alpha_ingestion_stopped never fired")
        rules = [r for g in get("/rules")["groups"] for r in g["rules"]]
        assert all(r["health"] == "ok" for r in rules), [r for r in rules if r["health"] != "ok"]
    finally:
        prometheus.terminate()
        prometheus.wait(30)
        pipeline.stop()
