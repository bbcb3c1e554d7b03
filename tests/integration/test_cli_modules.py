"""``dps <module> CONFIG_DIR`` runs one module alone; ``dps validate`` judges a directory."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest
from tests.integration.pipeline_harness import (
    copy_quickstart,
    dps,
    free_port_base,
    start_module,
    wait_until,
)
from tests.integration.test_pipeline_faults import add_bulk_orders

#: A disabled source whose header holds a literal secret and whose key is a reference.
SOURCE_WITH_SECRETS = """\
source_id: secret_api
source_type: rest_api
enabled: false
connection:
  endpoint: https://api.example.com/data
  headers:
    Authorization: Bearer s3cr3t
    X-Trace: t-1
  auth_type: api_key
  auth_config:
    api_key_ref: env:SECRET_API_KEY
parsing:
  format: json
"""


@pytest.mark.parametrize("module", ["alpha", "beta", "gamma", "control"])
def test_a_module_runs_alone_serves_its_admin_api_and_stops_on_sigterm(
    module: str, tmp_path: Path
) -> None:
    config_dir = copy_quickstart(tmp_path / "quickstart")
    (config_dir / "alpha" / "sources" / "api.yaml").write_text(SOURCE_WITH_SECRETS)
    port = free_port_base(1)
    process = start_module(module, config_dir, tmp_path / "data", port)
    url = f"http://127.0.0.1:{port}"
    try:

        def answers() -> bool:
            assert process.poll() is None, process.communicate()[1][-2000:]
            try:
                return httpx.get(f"{url}/admin/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(answers, 60, f"dps {module} never answered on {url}")
        status = httpx.get(f"{url}/admin/status", timeout=5).json()
        assert status["module"] == module
        assert status["pid"] == process.pid
        assert "openapi" in httpx.get(f"{url}/openapi.json", timeout=5).json()
        # J.2's export: literal secrets are masked, references are shown as written.
        export = httpx.get(f"{url}/admin/config/export", timeout=5)
        assert export.status_code == 200
        assert "s3cr3t" not in export.text
        connection = export.json()["alpha"]["sources"]["secret_api"]["connection"]
        assert connection["headers"] == {"Authorization": "***", "X-Trace": "t-1"}
        assert connection["auth_config"]["api_key_ref"] == "env:SECRET_API_KEY"
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err[-2000:]
    # Logs are JSON lines with the manual's fields.
    assert f'"module":"{module}"' in err.replace(" ", "")


def test_a_full_buffer_makes_alpha_unhealthy_but_still_ready_so_a_run_can_drain_it(
    tmp_path: Path,
) -> None:
    # After a restore (or a crash) the transform queue may hold more than alpha's buffer: alpha
    # is UNHEALTHY until beta drains it, and `dps run` must still start so that beta can.
    config_dir = copy_quickstart(tmp_path / "quickstart")
    add_bulk_orders(config_dir, 1000)
    settings = config_dir / "alpha" / "alpha.yaml"
    settings.write_text(
        settings.read_text().replace("BUFFER_CAPACITY: 10000", "BUFFER_CAPACITY: 100")
    )
    data_dir = tmp_path / "data"
    port = free_port_base(1)
    process = start_module("alpha", config_dir, data_dir, port)
    url = f"http://127.0.0.1:{port}"
    try:

        def buffer_full() -> bool:
            assert process.poll() is None, process.communicate()[1][-2000:]
            try:
                return httpx.get(f"{url}/admin/health", timeout=2).status_code == 503
            except httpx.HTTPError:
                return False

        wait_until(buffer_full, 60, "alpha never filled its buffer")
        health = httpx.get(f"{url}/admin/health", timeout=5).json()
        assert health["checks"]["buffer_utilization"]["status"] == "UNHEALTHY"
        ready = httpx.get(f"{url}/admin/ready", timeout=5)
        assert ready.status_code == 200 and ready.json() == {"ready": True, "state": "running"}
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err[-2000:]
    done = dps(
        "run",
        str(config_dir),
        "--data-dir",
        str(data_dir),
        "--once",
        "--json",
        "--admin-port-base",
        str(free_port_base(4)),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_validate_accepts_the_quickstart_and_refuses_a_broken_copy(tmp_path: Path) -> None:
    config_dir = copy_quickstart(tmp_path / "quickstart")
    ok = dps("validate", str(config_dir))
    assert ok.returncode == 0, ok.stdout + ok.stderr

    rule = config_dir / "gamma" / "routing" / "rules" / "to_warehouse.yaml"
    rule.write_text(rule.read_text().replace("destination: warehouse", "destination: warehose"))
    bad = dps("validate", str(config_dir))
    assert bad.returncode == 1
    assert "to_warehouse.yaml" in bad.stdout and "destination" in bad.stdout
    assert "warehouse" in bad.stdout  # the did-you-mean


def test_a_bad_configuration_stops_a_module_at_start_with_the_file_named(tmp_path: Path) -> None:
    config_dir = copy_quickstart(tmp_path / "quickstart")
    (config_dir / "alpha" / "alpha.yaml").write_text("DEFAULT_BATCH_SIZ: 10\n")
    done = dps(
        "alpha",
        str(config_dir),
        "--port",
        str(free_port_base(1)),
        env={"DPS_DATA_DIR": str(tmp_path / "data")},
    )
    assert done.returncode == 2
    assert "alpha/alpha.yaml" in done.stderr and "DEFAULT_BATCH_SIZE" in done.stderr
    assert not os.path.exists(tmp_path / "data" / "queues")
