"""``admin.tls``: every admin API serves HTTPS only, and everything that calls them (the
supervisor's readiness probe, ``dps run``'s poll, the control service, the CLI) verifies it."""

from __future__ import annotations

import signal
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from tests.integration.pipeline_harness import (
    copy_quickstart,
    dps,
    free_port_base,
    last_json_line,
    start_module,
    start_pipeline,
    wait_until,
)
from tests.integration.tls_certs import make_cert


def enable_tls(config_dir: Path) -> Path:
    """Add ``admin.tls`` with a fresh self-signed certificate (relative paths); the cert."""
    cert, _key = make_cert(config_dir / "tls")
    pipeline = config_dir / "pipeline.yaml"
    pipeline.write_text(
        pipeline.read_text() + "  tls:\n    cert_file: tls/admin.crt\n    key_file: tls/admin.key\n"
    )
    return cert


def test_a_module_serves_https_only(tmp_path: Path) -> None:
    config_dir = copy_quickstart(tmp_path / "config")
    cert = enable_tls(config_dir)
    port = free_port_base(1)
    process = start_module("gamma", config_dir, tmp_path / "data", port)
    trusted = ssl.create_default_context(cafile=str(cert))
    try:

        def answers() -> bool:
            assert process.poll() is None, process.communicate()[1][-2000:]
            try:
                url = f"https://127.0.0.1:{port}/admin/ready"
                return httpx.get(url, verify=trusted, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(answers, 60, "gamma never answered over https")
        status = httpx.get(f"https://127.0.0.1:{port}/admin/status", verify=trusted, timeout=5)
        assert status.json()["module"] == "gamma"
        # Plain HTTP on the same port gets no answer.
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/admin/status", timeout=5)
        # A client that does not trust the certificate refuses the connection.
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"https://127.0.0.1:{port}/admin/status", timeout=5)
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err[-2000:]
    assert f'"url":"https://127.0.0.1:{port}"' in err.replace(" ", "")


def test_a_wrong_key_file_is_a_clear_error(tmp_path: Path) -> None:
    config_dir = copy_quickstart(tmp_path / "config")
    enable_tls(config_dir)
    (config_dir / "tls" / "admin.key").write_text("not a key\n")
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "dps",
            "alpha",
            str(config_dir),
            "--port",
            str(free_port_base(1)),
            "--data-dir",
            str(tmp_path / "data"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert process.returncode != 0
    assert "admin.tls.cert_file and admin.tls.key_file" in process.stderr


def test_the_pipeline_runs_over_https(tmp_path: Path) -> None:
    config_dir = copy_quickstart(tmp_path / "config")
    cert = enable_tls(config_dir)
    trusted = ssl.create_default_context(cafile=str(cert))
    # The supervisor waits for each module's readiness over https, and dps run polls the
    # accounting over https: the run finishes.
    done = dps(
        "run",
        str(config_dir),
        "--data-dir",
        str(tmp_path / "once"),
        "--once",
        "--json",
        "--admin-port-base",
        str(free_port_base(4)),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = last_json_line(done.stdout)
    assert summary["adds_up"] and summary["delivered_records"] > 0
    # A running pipeline: the control service calls the modules over https, and the CLI too.
    pipeline = start_pipeline(config_dir, tmp_path / "data")
    control = f"https://127.0.0.1:{pipeline.port_base}"
    try:

        def ready() -> bool:
            assert pipeline.process.poll() is None, pipeline.process.communicate()[1][-3000:]
            try:
                url = f"{control}/api/health/summary"
                health = httpx.get(url, verify=trusted, timeout=5).json()
            except httpx.HTTPError:
                return False
            # Control reached every module through its https admin API.
            return set(health["modules"]) >= {"alpha", "beta", "gamma"} and not any(
                "error" in m for m in health["modules"].values()
            )

        wait_until(ready, 90, "control never reached the modules over https")
        drift = httpx.get(f"{control}/api/config/drift", verify=trusted, timeout=30)
        assert drift.status_code == 200, drift.text
        # The CLI takes the https URL and the CA from the configuration.
        listed = dps("jobs", "list", "--url", control, "--config", str(config_dir))
        assert listed.returncode == 0, listed.stderr
        assert "weekly_cert_check" in listed.stdout
        # Without the CA, https is not trusted.
        refused = dps("jobs", "list", "--url", control)
        assert refused.returncode == 2
    finally:
        pipeline.stop()
