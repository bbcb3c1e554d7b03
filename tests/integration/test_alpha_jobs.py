"""The control jobs that act on alpha: ``alpha_buffer_flush`` and ``alpha_credential_rotate``,
run against an alpha with its worker and admin API (over HTTP, as the control service calls it)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
from tests.integration.pipeline_harness import wait_until
from tests.integration.test_alpha_sources import (
    AUTH,
    Alpha,
    alpha_factory,
    env,
    ndjson,
    push_yaml,
)
from tests.unit.alpha.fake_api import Call, FakeApi, api, ok

from dps.control.jobs import JOBS, JobContext, JobResult
from dps.control.modules import ModuleClient

__all__ = ["alpha_factory", "api", "env"]  # the fixtures


def run_job(alpha: Alpha, name: str, tmp: Path) -> tuple[JobResult, list[str]]:
    """Run a catalog job as the scheduler does, with alpha reached over its admin API."""
    spec = JOBS[name]
    assert spec.active and spec.run is not None
    modules = ModuleClient({"alpha": alpha.server.url})
    ctx = JobContext(
        name,
        "run-1",
        alpha.module.state_store,
        modules,
        alpha.module.config,
        alpha.config_dir,
        tmp / "control",
    )
    try:
        return spec.run(ctx), ctx.lines
    finally:
        modules.close()


# -- alpha_buffer_flush -------------------------------------------------------------------------


def test_buffer_flush_makes_held_push_batches_durable_and_reports_what_stays(
    alpha_factory: Any, tmp_path: Path
) -> None:
    alpha = alpha_factory({"push": push_yaml()})
    url = alpha.push_url()
    # Hold the worker between two steps (as a long step of a slow source would): the pushed
    # batch is accepted and waits, its sender waiting for the answer.
    alpha.module._resume.clear()
    answers: list[httpx.Response] = []

    def push(*ids: int) -> threading.Thread:
        thread = threading.Thread(
            target=lambda: answers.append(httpx.post(url, content=ndjson(*ids), headers=AUTH))
        )
        thread.start()
        return thread

    sender = push(1, 2, 3)
    wait_until(lambda: alpha.source("orders_push").pending() == 3, 10, "batch not held")
    status = alpha.http.get("/admin/buffer").json()
    assert status["held_records"] == 3
    assert status["sources"]["orders_push"]["oldest_age_seconds"] >= 0

    result, log = run_job(alpha, "alpha_buffer_flush", tmp_path)
    assert result.ok and result.records == 3, result
    assert "3 held records made durable; 0 still held" in result.message
    sender.join(10)
    assert answers[0].status_code == 200 and answers[0].json()["accepted"] == 3
    assert alpha.depth() == 3
    assert any("Source flushed." in line and "records_written=3" in line for line in log)

    # A paused source keeps what it holds; the run says so and succeeds.
    sender = push(4)
    wait_until(lambda: alpha.source("orders_push").pending() == 1, 10, "batch not held")
    assert alpha.http.post("/admin/sources/orders_push/pause").status_code == 200
    result, log = run_job(alpha, "alpha_buffer_flush", tmp_path)
    assert result.ok and result.records == 0 and "1 still held" in result.message
    assert any("the source is paused" in line for line in log)
    assert any("Records still held." in line for line in log)
    assert alpha.depth() == 3

    # Nothing held: nothing to do, the queue's fill is reported.
    assert alpha.http.post("/admin/sources/orders_push/resume").status_code == 200
    alpha.module._resume.set()
    sender.join(10)
    assert answers[1].status_code == 200 and alpha.depth() == 4
    result, log = run_job(alpha, "alpha_buffer_flush", tmp_path)
    assert result.ok and result.records == 0 and "0 still held" in result.message
    assert any("Transform queue." in line and "depth=4" in line for line in log)


# -- alpha_credential_rotate --------------------------------------------------------------------


def rest_yaml(source_id: str, url: str, secret_file: Path) -> str:
    return (
        f"source_id: {source_id}\n"
        "source_type: rest_api\n"
        "connection:\n"
        f"  endpoint: {url}/{source_id}\n"
        "  auth_type: bearer\n"
        f"  auth_config: {{token_ref: 'file:{secret_file}'}}\n"
        "  retry_count: 0\n"
        "polling:\n  interval_seconds: 0.1\n"
        "parsing:\n  format: json\n  record_path: $.data\n"
    )


def test_credential_rotate_switches_to_a_rotated_file_secret_before_the_old_is_revoked(
    alpha_factory: Any, api: FakeApi, tmp_path: Path
) -> None:
    secret = tmp_path / "api-token"
    secret.write_text("old\n")
    accepted = {"old"}
    refused: list[str] = []
    polls = [0]

    def data(call: Call) -> tuple[int, dict[str, str], bytes]:
        token = call.headers.get("authorization", "").removeprefix("Bearer ")
        if token not in accepted:
            refused.append(token)
            return 401, {}, b"no"
        polls[0] += 1
        return ok({"data": [{"id": f"r{polls[0]}"}]})

    api.on("/api", data)
    alpha = alpha_factory({"api": rest_yaml("api", api.url, secret)})
    wait_until(lambda: alpha.depth() >= 2, 10, "records not ingested")

    # The API issues a new token (both valid for a while); the secret file is rewritten.
    accepted = {"old", "new"}
    secret.write_text("new\n")
    seen = len(api.calls_to("/api"))
    wait_until(lambda: len(api.calls_to("/api")) >= seen + 2, 10, "source not polling")
    # Nothing reads the file again by itself while the old token works.
    assert api.calls_to("/api")[-1].headers["authorization"] == "Bearer old"

    result, log = run_job(alpha, "alpha_credential_rotate", tmp_path)
    assert result.ok and result.records == 1, result
    assert any("changed=true" in line and "Credentials resolved again." in line for line in log)
    assert any("Source tested." in line and "ok=true" in line for line in log)

    # The old token is revoked: the source goes on with the new one, not one request refused.
    accepted = {"new"}
    depth = alpha.depth()
    wait_until(lambda: alpha.depth() >= depth + 3, 10, "records not ingested after rotation")
    assert refused == []
    assert api.calls_to("/api")[-1].headers["authorization"] == "Bearer new"
    status = alpha.http.get("/admin/sources/api/status").json()
    assert status["status"] == "enabled" and status["error_count"] == 0

    # A secret that cannot be read fails the run, naming the source; the source keeps the
    # credentials it has and goes on.
    secret.unlink()
    result, log = run_job(alpha, "alpha_credential_rotate", tmp_path)
    assert not result.ok and "api (" in result.message and "cannot be read" in result.message
    depth = alpha.depth()
    wait_until(lambda: alpha.depth() >= depth + 2, 10, "source stopped after a failed rotation")
    assert refused == []


def test_credential_rotate_fetches_a_new_oauth2_token_with_the_rotated_client_secret(
    alpha_factory: Any, api: FakeApi, tmp_path: Path
) -> None:
    secret = tmp_path / "client-secret"
    secret.write_text("s1")
    issued: dict[str, str] = {}  # token -> the client secret it was issued for

    def token(call: Call) -> tuple[int, dict[str, str], bytes]:
        form = dict(part.split("=", 1) for part in call.body.split("&"))
        if form.get("client_secret") != secret.read_text():
            return 401, {}, b"bad client"
        value = f"t{len(issued) + 1}"
        issued[value] = form["client_secret"]
        return ok({"access_token": value, "expires_in": 3600})

    def data(call: Call) -> tuple[int, dict[str, str], bytes]:
        value = call.headers.get("authorization", "").removeprefix("Bearer ")
        if value not in issued:
            return 401, {}, b"no"
        return ok({"data": [{"id": "a"}]})

    api.on("/token", token)
    api.on("/api", data)
    source = (
        "source_id: api\nsource_type: rest_api\nconnection:\n"
        f"  endpoint: {api.url}/api\n  auth_type: oauth2\n"
        f"  auth_config: {{token_url: '{api.url}/token', client_id_ref: 'env:DPS_TEST_API_TOKEN',"
        f" client_secret_ref: 'file:{secret}'}}\n"
        "  retry_count: 0\npolling:\n  interval_seconds: 0.1\n"
        "parsing:\n  format: json\n  record_path: $.data\n"
    )
    alpha = alpha_factory({"api": source})
    wait_until(lambda: alpha.depth() == 1, 10, "records not ingested")
    assert list(issued.values()) == ["s1"]

    secret.write_text("s2")
    result, log = run_job(alpha, "alpha_credential_rotate", tmp_path)
    assert result.ok, result
    assert list(issued.values()) == ["s1", "s2"]  # a new token, fetched with the new secret
    assert any('token_expires_at="' in line for line in log)
    assert api.calls_to("/api")[-1].headers["authorization"] == "Bearer t2"
