"""Access control on a real ``dps control`` process: named tokens with roles from secret
references, 401 / 403 / 429, constant-time checks, refusals audited, tokens never written.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
from tests.integration.pipeline_harness import wait_until

TOKENS = {"VIEWER_TOKEN": "v-111", "OPERATOR_TOKEN": "o-222", "ADMIN_TOKEN": "a-333"}


def test_roles_on_the_control_service(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.mkdir()
    (config / "pipeline.yaml").write_text(
        "admin:\n  tokens:\n"
        "    - {name: vera, token_ref: 'env:VIEWER_TOKEN', role: viewer}\n"
        "    - {name: otto, token_ref: 'env:OPERATOR_TOKEN', role: operator}\n"
        "    - {name: ada, token_ref: 'file:" + str(tmp_path / "admin.token") + "', role: admin}\n"
    )
    (tmp_path / "admin.token").write_text("a-333\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "VIEWER_TOKEN": "v-111", "OPERATOR_TOKEN": "o-222"}
    log = (tmp_path / "control.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dps",
            "control",
            str(config),
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path / "data"),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def call(method: str, path: str, token: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.request(method, url + path, headers=headers, timeout=10)

    def up() -> bool:
        assert process.poll() is None, (tmp_path / "control.log").read_text()
        try:
            return call("GET", "/admin/health").status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, 60, "control did not start")
        assert call("GET", "/metrics").status_code == 200  # open for scrapers
        assert call("GET", "/admin/jobs/list").status_code == 401
        assert call("GET", "/admin/jobs/list", "v-111").status_code == 200
        refused = call("POST", "/admin/jobs/daily_metrics_rollup/trigger", "v-111")
        assert refused.status_code == 403
        assert "needs the operator role; token 'vera' is viewer" in refused.json()["error"]
        assert call("POST", "/admin/jobs/daily_metrics_rollup/trigger", "o-222").status_code == 202
        assert call("POST", "/admin/config/reload", "o-222").status_code == 200
        assert call("POST", "/admin/emergency-stop", "o-222").status_code == 403
        assert call("POST", "/admin/emergency-stop", "a-333").status_code == 200
        assert call("POST", "/admin/start", "a-333").status_code == 200
        # The OpenAPI document names each endpoint's role.
        spec = call("GET", "/openapi.json", "v-111").json()["paths"]
        assert spec["/admin/emergency-stop"]["post"]["x-required-role"] == "admin"
        assert spec["/admin/jobs/{job}/trigger"]["post"]["x-required-role"] == "operator"
        assert spec["/admin/jobs/list"]["get"]["x-required-role"] == "viewer"
        assert spec["/admin/health"]["get"]["x-required-role"] == "none"
        # Forged tokens: refused, then rate-limited (even a good token, for a minute).
        for _ in range(9):  # the request without a token above was the first refusal
            assert call("GET", "/admin/status", "forged-token").status_code == 401
        assert call("GET", "/admin/status", "a-333").status_code == 429
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    # Who did what is audited, refusals included; no token is ever written.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dps",
            "audit",
            "export",
            str(config),
            "--data-dir",
            str(tmp_path / "data"),
            "--since",
            "1h",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    entries = json.loads(done.stdout)
    actors = {(e["actor"], e["action"]) for e in entries}
    assert ("otto", "admin/jobs/daily_metrics_rollup/trigger") in actors
    assert ("ada", "admin/emergency-stop") in actors
    denied = [e for e in entries if e["action"] == "auth.failed"]
    assert {e["details"]["status"] for e in denied} == {401, 403, 429}
    assert all(e["details"]["outcome"] == "denied" for e in denied)
    text = done.stdout + (tmp_path / "control.log").read_text()
    for secret in ("v-111", "o-222", "a-333", "forged-token"):
        assert secret not in text


def test_dps_run_works_with_tokens(tmp_path: Path) -> None:
    """The supervisor's progress polls and the control service's calls carry the admin token."""
    from tests.integration.pipeline_harness import copy_quickstart, dps, last_json_line

    config_dir = copy_quickstart(tmp_path / "config")
    with (config_dir / "pipeline.yaml").open("a") as f:
        f.write(
            "  tokens:\n"
            "    - {name: ops, token_ref: 'env:OPERATOR_TOKEN', role: operator}\n"
            "    - {name: root, token_ref: 'env:ADMIN_TOKEN', role: admin}\n"
        )
    done = dps(
        "run",
        str(config_dir),
        "--data-dir",
        str(tmp_path / "data"),
        "--once",
        "--json",
        env=TOKENS,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert last_json_line(done.stdout)["ingested"] > 0
