"""The monitoring assets in deploy/monitoring, checked with the real Prometheus tools.

``promtool`` and ``amtool`` come from the Debian packages ``prometheus`` and
``prometheus-alertmanager`` (.ci/run installs them); a missing tool fails these tests.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed (apt-get install prometheus prometheus-alertmanager)"
    return path


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=MONITORING)


def test_alert_rules_pass_promtool() -> None:
    done = run(tool("promtool"), "check", "rules", "rules/pipeline-alerts.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 18 rules found" in done.stdout


def test_prometheus_config_passes_promtool() -> None:
    done = run(tool("promtool"), "check", "config", "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_alertmanager_config_passes_amtool() -> None:
    done = run(tool("amtool"), "check-config", "alertmanager.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 inhibit rules" in done.stdout and "5 receivers" in done.stdout


def test_rules_are_the_manuals_alert_definitions_verbatim() -> None:
    manual = yaml.safe_load((MONITORING / "manual-alerts.yaml").read_text())
    groups = yaml.safe_load((MONITORING / "rules" / "pipeline-alerts.yml").read_text())["groups"]
    rules = {r["alert"]: r for g in groups for r in g["rules"]}
    assert set(rules) == set(manual)
    for name, definition in manual.items():
        rule = rules[name]
        assert rule["expr"] == definition["condition"], name
        assert rule["for"] == definition["duration"], name
        assert rule["labels"]["severity"] == definition["severity"], name
        assert rule["annotations"]["summary"] == definition["summary"], name
        assert rule["annotations"]["runbook"] == definition["runbook"], name


def test_alertmanager_routes_are_the_manuals() -> None:
    config = yaml.safe_load((MONITORING / "alertmanager.yml").read_text())
    routes = [
        (r["match"]["severity"], r["receiver"], r["repeat_interval"])
        for r in config["route"]["routes"]
    ]
    assert routes == [
        ("critical", "pagerduty-critical", "5m"),
        ("high", "pagerduty-high", "15m"),
        ("medium", "slack-ops", "1h"),
        ("low", "email-ops", "4h"),
        ("info", "slack-info", "24h"),
    ]
    inhibit = [
        (r["source_match"]["alertname"], r["target_match"]["module"])
        for r in config["inhibit_rules"]
    ]
    assert inhibit == [("alpha_ingestion_stopped", "alpha"), ("gamma_delivery_stopped", "gamma")]


def test_routing_sends_each_severity_to_its_receiver() -> None:
    amtool = tool("amtool")
    for labels, receiver in [
        ("severity=critical", "pagerduty-critical"),
        ("severity=high", "pagerduty-high"),
        ("severity=medium", "slack-ops"),
        ("severity=low", "email-ops"),
        ("severity=info", "slack-info"),
    ]:
        done = run(amtool, "config", "routes", "test", "--config.file=alertmanager.yml", labels)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == receiver, (labels, done.stdout)
