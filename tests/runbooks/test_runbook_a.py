"""Runbook A (source adapter operations) as written, against a running ``dps run``.

A.1 adds the manual's ``new_api_source`` (an OAuth2 ``rest_api`` source) disabled, checks it
with ``alpha-config-validator``, reloads, tests it, enables it, reloads and greps ``/metrics``;
A.2 rotates its client secret with zero downtime; A.3 disables and drains it. Every step is the
manual's command (``curl``), with the host replaced by Alpha's admin port and ``vault:``
references replaced by ``env:`` and ``file:`` ones (there is no vault here). The OAuth2 API is a
local HTTP server started by the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from tests.integration.pipeline_harness import (
    RunningPipeline,
    copy_quickstart,
    start_pipeline,
    wait_until,
)
from tests.unit.alpha.fake_api import Call, FakeApi, api, ok

__all__ = ["api"]  # the fixture

OLD_SECRET = "old-secret"
NEW_SECRET = "new-secret"
CLIENT_ID = "dps-pipeline"

SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "required": ["id", "timestamp", "payload"],
    "properties": {
        "id": {"type": "string"},
        "timestamp": {"type": "string", "format": "date-time"},
        "payload": {"type": "object"},
    },
}


def source_yaml(api_url: str, *, enabled: bool, secret_ref: str) -> str:
    """The manual's A.1 step 1 file, with the endpoints and secret references adjusted."""
    return f"""\
# CONFIG_DIR/alpha/sources/new_source.yaml
source_id: new_api_source
source_type: rest_api
enabled: {str(enabled).lower()}  # Start disabled for validation

connection:
  endpoint: {api_url}/data
  auth_type: oauth2
  auth_config:
    token_url: {api_url}/oauth/token
    client_id_ref: env:NEW_SOURCE_CLIENT_ID
    client_secret_ref: {secret_ref}
  timeout_ms: 30000
  retry_count: 3

polling:
  interval_seconds: 1
  batch_size: 1000

parsing:
  format: json
  record_path: $.data.records
  timestamp_field: created_at

validation:
  required_fields:
    - id
    - timestamp
    - payload
  schema_ref: schemas/new_source_schema.json
"""


class OAuthApi:
    """The source system: a token endpoint and a data endpoint that wants a valid token."""

    def __init__(self, fake: FakeApi) -> None:
        self.fake = fake
        self.secrets = {OLD_SECRET}
        self.issued: dict[str, str] = {}  # token -> the secret it was issued for
        self.lock = threading.Lock()
        self.page = 0
        fake.on("/oauth/token", self.token)
        fake.on("/data", self.data)

    def token(self, call: Call) -> tuple[int, dict[str, str], bytes]:
        form = parse_qs(call.body)
        secret = (form.get("client_secret") or [""])[0]
        if form.get("client_id") != [CLIENT_ID] or secret not in self.secrets:
            return 401, {}, b'{"error": "invalid_client"}'
        with self.lock:
            token = f"tok-{len(self.issued) + 1}"
            self.issued[token] = secret
        return ok({"access_token": token, "expires_in": 3600, "token_type": "bearer"})

    def data(self, call: Call) -> tuple[int, dict[str, str], bytes]:
        token = call.headers.get("authorization", "").removeprefix("Bearer ")
        with self.lock:
            if self.issued.get(token) not in self.secrets:
                return 401, {}, b'{"error": "invalid_token"}'
            self.page += 1
            page = self.page
        records = [
            {
                "id": f"rec-{page}-{i}",
                "timestamp": "2026-11-27T10:00:00Z",
                "created_at": "2026-11-27T10:00:00Z",
                "payload": {"value": i},
            }
            for i in range(5)
        ]
        return ok({"data": {"records": records}})

    def secrets_used(self) -> set[str]:
        with self.lock:
            return set(self.issued.values())


def curl(*args: str) -> tuple[int, str]:
    done = subprocess.run(
        ["curl", "-s", "-o", "-", "-w", "\n%{http_code}", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    body, _, code = done.stdout.rpartition("\n")
    return int(code), body


def bash(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)


def metric(text: str, name: str, source_id: str) -> float:
    prefix = f'{name}{{source_id="{source_id}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0


@pytest.fixture
def pipeline(
    tmp_path: Path, api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[RunningPipeline, Path, OAuthApi]]:
    oauth = OAuthApi(api)
    monkeypatch.setenv("NEW_SOURCE_CLIENT_ID", CLIENT_ID)
    config_dir = copy_quickstart(tmp_path / "config")
    run = start_pipeline(config_dir, tmp_path / "data")
    try:
        run.wait_ready()
        yield run, config_dir, oauth
    finally:
        run.stop()


def test_runbook_a1_a2_a3_as_written(
    pipeline: tuple[RunningPipeline, Path, OAuthApi], tmp_path: Path
) -> None:
    run, config_dir, oauth = pipeline
    alpha = run.url("alpha")
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    primary = secrets / "client_secret"
    primary.write_text(OLD_SECRET + "\n")
    source_file = config_dir / "alpha" / "sources" / "new_source.yaml"

    # -- A.1 ------------------------------------------------------------------------------------
    # 1. Create the source configuration file (disabled); 2. the credentials (env: and file:).
    source_file.write_text(source_yaml(oauth.fake.url, enabled=False, secret_ref=f"file:{primary}"))
    # 3. Create the validation schema.
    (config_dir / "alpha" / "schemas").mkdir(exist_ok=True)
    (config_dir / "alpha" / "schemas" / "new_source_schema.json").write_text(
        json.dumps(SCHEMA, indent=2)
    )
    # 4. Validate configuration syntax.
    validator = Path(sys.executable).parent / "alpha-config-validator"
    checked = subprocess.run(
        [str(validator), str(source_file)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "OK" in checked.stdout
    # 5. Reload configuration.
    code, body = curl("-X", "POST", f"{alpha}/admin/config/reload")
    assert code == 200, body
    listed = json.loads(curl(f"{alpha}/admin/sources")[1])
    assert {"source_id": "new_api_source", "status": "disabled"}.items() <= {
        k: v for s in listed if s["source_id"] == "new_api_source" for k, v in s.items()
    }.items()
    # 6. Test source connectivity (works while disabled: connect, authenticate, one sample).
    code, body = curl(f"{alpha}/admin/sources/new_api_source/test")
    assert code == 200, body
    tested = json.loads(body)
    assert tested["ok"] is True and tested["records"] == 5 and "token_expires_at" in tested
    # 7. Enable the source and reload.
    source_file.write_text(source_file.read_text().replace("enabled: false", "enabled: true"))
    code, body = curl("-X", "POST", f"{alpha}/admin/config/reload")
    assert code == 200, body
    # 8. Verify ingestion: the metrics grep shows the new source's traffic.
    grep = f"curl -s {alpha}/metrics | grep new_api_source"
    wait_until(
        lambda: metric(bash(grep).stdout, "alpha_records_validated_total", "new_api_source") >= 10,
        60,
        "new_api_source ingested nothing",
    )
    shown = bash(grep).stdout
    assert 'alpha_source_connection_status{source="new_api_source"} 1.0' in shown
    assert metric(shown, "alpha_parse_errors_total", "new_api_source") == 0  # no parsing errors
    assert metric(shown, "alpha_validation_failures_total", "new_api_source") == 0
    assert oauth.secrets_used() == {OLD_SECRET}

    # -- A.2: rotate the client secret with zero downtime -----------------------------------------
    # 1./2. Stage the new secret (a second file) and check that the source system accepts it.
    oauth.secrets.add(NEW_SECRET)
    staged = secrets / "client_secret.new"
    staged.write_text(NEW_SECRET + "\n")
    token_url = f"{oauth.fake.url}/oauth/token"
    code, body = curl(
        "-X",
        "POST",
        token_url,
        "-d",
        f"client_id={CLIENT_ID}&client_secret={NEW_SECRET}&grant_type=client_credentials",
    )
    assert code == 200 and "access_token" in body
    # 3./4. Point the source at the new credentials and reload.
    source_file.write_text(source_file.read_text().replace(f"file:{primary}", f"file:{staged}"))
    assert curl("-X", "POST", f"{alpha}/admin/config/reload")[0] == 200
    # 5. Verify the source continues operating, now with the new secret.
    before = oauth.page
    wait_until(lambda: NEW_SECRET in oauth.secrets_used(), 30, "the new secret was never used")
    wait_until(lambda: oauth.page > before + 2, 30, "the source stopped polling")
    status = json.loads(curl(f"{alpha}/admin/sources/new_api_source/status")[1])
    assert status["status"] == "enabled" and status["last_error"] is None
    # 6./7./8. Move the new secret to the primary location, point back at it, reload, verify.
    primary.write_text(NEW_SECRET + "\n")
    source_file.write_text(source_file.read_text().replace(f"file:{staged}", f"file:{primary}"))
    assert curl("-X", "POST", f"{alpha}/admin/config/reload")[0] == 200
    # 9./10. Remove the staged secret; revoke the old one at the source system.
    staged.unlink()
    oauth.secrets.discard(OLD_SECRET)
    before = oauth.page
    wait_until(lambda: oauth.page > before + 2, 30, "the source stopped after the revocation")
    code, body = curl(f"{alpha}/admin/sources/new_api_source/status")
    status = json.loads(body)
    assert code == 200 and status["status"] == "enabled" and status["last_error"] is None

    # -- A.3: disable the source ----------------------------------------------------------------
    source_file.write_text(source_file.read_text().replace("enabled: true", "enabled: false"))
    assert curl("-X", "POST", f"{alpha}/admin/config/reload")[0] == 200
    code, body = curl(f"{alpha}/admin/sources/new_api_source/status")
    assert code == 200 and '"status":"disabled"' in body.replace(" ", "")
    stopped_at = oauth.page
    code, body = curl(f"{alpha}/admin/sources/new_api_source/drain")
    assert code == 200, body
    drained: dict[str, Any] = json.loads(body)
    assert drained["drained"] is True and drained["status"] == "disabled"
    # Stopped: no more polls; and nothing was lost on the way (every record accounted for).
    shown = bash(grep).stdout
    validated = metric(shown, "alpha_records_validated_total", "new_api_source")
    duplicates = metric(shown, "alpha_duplicates_total", "new_api_source")
    ingested = metric(shown, "alpha_records_ingested_total", "new_api_source")
    assert ingested == validated + duplicates > 0
    assert oauth.page <= stopped_at + 1
    assert os.environ["NEW_SOURCE_CLIENT_ID"] == CLIENT_ID
