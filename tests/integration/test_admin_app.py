"""The admin API over a real uvicorn server: every endpoint, errors as JSON, auth, /metrics."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from dps.admin import AdminServer, AdminServerError, build_app, json_response, read_json
from dps.alpha.metrics import ALPHA_RECORDS_INGESTED_TOTAL
from dps.core.errors import ConfigError, ConfigIssue, TerminalError, TransientError
from dps.runtime.lifecycle import Health, HealthReport, RunState

FORM = {"Content-Type": "application/x-www-form-urlencoded"}  # what `curl -d` sends


class FakeTarget:
    """A ModuleTarget that records the calls made to it."""

    name = "alpha"

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.health_status = Health.HEALTHY
        self.health_error: Exception | None = None
        self.reload_error: ConfigError | None = None
        self.pause_delay = 0.0
        self.state = "running"

    @property
    def run_state(self) -> RunState:
        return RunState(self.state)

    def ready(self) -> bool:
        return self.state in ("running", "paused")

    def status(self) -> dict[str, Any]:
        return {"module": self.name, "state": self.state}

    def health(self) -> HealthReport:
        if self.health_error is not None:
            raise self.health_error
        return HealthReport(self.health_status, {"buffer": {"status": self.health_status.value}})

    def export_config(self) -> dict[str, Any]:
        return {"sources": {"api": {"auth": {"token_ref": "***"}}}}

    def reload_config(self) -> dict[str, Any]:
        self.calls.append("reload")
        if self.reload_error is not None:
            raise self.reload_error
        return {"reloaded": True, "changed": ["sources/api.yaml"]}

    def pause(self) -> None:
        time.sleep(self.pause_delay)
        self.calls.append("pause")
        self.state = "paused"

    def resume(self) -> None:
        self.calls.append("resume")
        self.state = "running"

    def start(self) -> None:
        self.calls.append("start")
        self.state = "running"

    def emergency_stop(self) -> None:
        self.calls.append("emergency-stop")
        self.state = "stopped"

    def drain(self) -> dict[str, Any]:
        self.calls.append("drain")
        return {"drained": 12}

    def queue_depths(self) -> dict[str, int]:
        return {"transform": 7, "dlq": 3}

    def routes(self) -> list[BaseRoute]:
        async def replay(request: Request) -> Response:
            """Replay DLQ entries given as ``{"entry_ids": [...]}``."""
            body = await read_json(request)
            return json_response({"source_id": request.path_params["source_id"], "body": body})

        async def fail(request: Request) -> Response:
            """Raise the error named in the path."""
            kind = request.path_params["kind"]
            if kind == "terminal":
                raise TerminalError("missing_field", "Field 'id' is missing.", field="id")
            if kind == "value":
                raise ValueError("limit must be positive.")
            if kind == "transient":
                raise TransientError("Destination refused the connection.")
            raise RuntimeError("kaput")

        return [
            Route("/admin/sources/{source_id}/replay", replay, methods=["POST"]),
            Route("/admin/fail/{kind}", fail, methods=["GET"]),
        ]


@pytest.fixture
def target() -> FakeTarget:
    return FakeTarget()


@pytest.fixture
def client(target: FakeTarget) -> Iterator[httpx.Client]:
    with (
        AdminServer(build_app(target), "127.0.0.1", 0) as server,
        httpx.Client(base_url=server.url, timeout=5) as client,
    ):
        yield client


@pytest.mark.parametrize(
    ("status", "code"),
    [(Health.HEALTHY, 200), (Health.DEGRADED, 200), (Health.UNHEALTHY, 503)],
)
def test_health(client: httpx.Client, target: FakeTarget, status: Health, code: int) -> None:
    target.health_status = status
    response = client.get("/admin/health")
    assert response.status_code == code
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"status": status.value, "checks": {"buffer": {"status": status}}}


def test_health_check_that_raises_is_unhealthy(client: httpx.Client, target: FakeTarget) -> None:
    target.health_error = RuntimeError("queue file missing")
    response = client.get("/admin/health")
    assert response.status_code == 503
    assert response.json()["status"] == "UNHEALTHY"
    assert "queue file missing" in response.json()["checks"]["health_check"]["message"]


@pytest.mark.parametrize(
    ("state", "code"), [("starting", 503), ("running", 200), ("paused", 200), ("draining", 503)]
)
def test_ready_follows_the_run_state_not_the_health(
    client: httpx.Client, target: FakeTarget, state: str, code: int
) -> None:
    target.state = state
    target.health_status = Health.UNHEALTHY
    response = client.get("/admin/ready")
    assert response.status_code == code
    assert response.json() == {"ready": code == 200, "state": state}


def test_status_and_config_export(client: httpx.Client) -> None:
    assert client.get("/admin/status").json() == {"module": "alpha", "state": "running"}
    exported = client.get("/admin/config/export").json()
    assert exported["sources"]["api"]["auth"]["token_ref"] == "***"


def test_reload(client: httpx.Client, target: FakeTarget) -> None:
    response = client.post("/admin/config/reload")
    assert response.status_code == 200
    assert response.json() == {"reloaded": True, "changed": ["sources/api.yaml"]}


def test_reload_refused_lists_the_issues(client: httpx.Client, target: FakeTarget) -> None:
    target.reload_error = ConfigError(
        [
            ConfigIssue("alpha/alpha.yaml", "DEFAULT_BATCH_SIZE", "-5 is not allowed.", 4),
            ConfigIssue("alpha/sources/api.yaml", "connection.url", "Field required."),
        ]
    )
    response = client.post("/admin/config/reload")
    assert response.status_code == 400
    body = response.json()
    assert "running configuration is kept" in body["error"]
    assert body["issues"] == [
        {
            "file": "alpha/alpha.yaml",
            "key": "DEFAULT_BATCH_SIZE",
            "line": 4,
            "message": "-5 is not allowed.",
        },
        {
            "file": "alpha/sources/api.yaml",
            "key": "connection.url",
            "line": None,
            "message": "Field required.",
        },
    ]
    assert target.calls == ["reload"]


@pytest.mark.parametrize(
    ("path", "state"),
    [
        ("pause", "paused"),
        ("resume", "running"),
        ("start", "running"),
        ("emergency-stop", "stopped"),
    ],
)
def test_lifecycle_actions(client: httpx.Client, target: FakeTarget, path: str, state: str) -> None:
    response = client.post(f"/admin/{path}")
    assert response.status_code == 200
    assert response.json() == {"action": path, "status": {"module": "alpha", "state": state}}
    assert target.calls == [path]
    assert client.get(f"/admin/{path}").status_code == 405


def test_drain_by_post_and_get(client: httpx.Client, target: FakeTarget) -> None:
    assert client.post("/admin/drain").json() == {"drained": 12}
    assert client.get("/admin/drain").json() == {"drained": 12}
    assert target.calls == ["drain", "drain"]


@pytest.mark.parametrize("path", ["/admin/queues/depth", "/admin/queue/depth"])
def test_queue_depth_both_spellings(client: httpx.Client, path: str) -> None:
    assert client.get(path).json() == {"total": 10, "queues": {"transform": 7, "dlq": 3}}


def test_json_body_sent_as_form_is_read_as_json(client: httpx.Client) -> None:
    response = client.post(
        "/admin/sources/api/replay", content='{"entry_ids": ["a", "b"]}', headers=FORM
    )
    assert response.status_code == 200
    assert response.json() == {"source_id": "api", "body": {"entry_ids": ["a", "b"]}}
    assert client.post("/admin/sources/api/replay").json()["body"] == {}


@pytest.mark.parametrize(
    ("body", "expected"),
    [("{entry_ids: [1]}", "not valid JSON"), ("[1, 2]", "JSON list; expected a JSON object")],
)
def test_bad_json_body_is_400(client: httpx.Client, body: str, expected: str) -> None:
    response = client.post("/admin/sources/api/replay", content=body, headers=FORM)
    assert response.status_code == 400
    assert expected in response.json()["error"]


@pytest.mark.parametrize(
    ("kind", "code", "message"),
    [
        ("terminal", 400, "Field 'id' is missing."),
        ("value", 400, "limit must be positive."),
        ("transient", 503, "Destination refused the connection."),
        ("bug", 500, "RuntimeError: kaput"),
    ],
)
def test_handler_errors_are_json(client: httpx.Client, kind: str, code: int, message: str) -> None:
    response = client.get(f"/admin/fail/{kind}")
    assert response.status_code == code
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"] == message


def test_unknown_path_is_json_404(client: httpx.Client) -> None:
    response = client.get("/admin/nope")
    assert response.status_code == 404
    assert "No admin endpoint at GET /admin/nope" in response.json()["error"]


def test_metrics(client: httpx.Client) -> None:
    ALPHA_RECORDS_INGESTED_TOTAL.labels(source_id="new_api_source").inc(3)
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert 'dps_module_info{module="alpha"' in response.text
    assert 'alpha_records_ingested_total{source_id="new_api_source"}' in response.text
    openmetrics = client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.rstrip().endswith("# EOF")


def test_openapi_lists_every_route(client: httpx.Client) -> None:
    document = client.get("/openapi.json").json()
    assert document["openapi"].startswith("3.")
    assert document["info"]["title"] == "dps alpha admin API"
    paths = document["paths"]
    for path, method in [
        ("/admin/health", "get"),
        ("/admin/ready", "get"),
        ("/admin/status", "get"),
        ("/admin/config/export", "get"),
        ("/admin/config/reload", "post"),
        ("/admin/pause", "post"),
        ("/admin/resume", "post"),
        ("/admin/start", "post"),
        ("/admin/emergency-stop", "post"),
        ("/admin/drain", "get"),
        ("/admin/drain", "post"),
        ("/admin/queues/depth", "get"),
        ("/admin/queue/depth", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
        ("/admin/sources/{source_id}/replay", "post"),
    ]:
        assert method in paths.get(path, {}), f"{method.upper()} {path} missing"
    replay = paths["/admin/sources/{source_id}/replay"]["post"]
    assert replay["summary"] == 'Replay DLQ entries given as ``{"entry_ids": [...]}``.'
    assert replay["parameters"][0]["name"] == "source_id"


def test_slow_target_call_does_not_block_health(client: httpx.Client, target: FakeTarget) -> None:
    target.pause_delay = 1.0
    thread = threading.Thread(target=client.post, args=("/admin/pause",))
    thread.start()
    time.sleep(0.1)
    began = time.monotonic()
    assert client.get("/admin/health").status_code == 200
    assert time.monotonic() - began < 0.5
    thread.join()
    assert target.calls == ["pause"]


def test_bearer_token(target: FakeTarget) -> None:
    with (
        AdminServer(build_app(target, auth_token="s3cret"), "127.0.0.1", 0) as server,
        httpx.Client(base_url=server.url, timeout=5) as client,
    ):
        refused = client.post("/admin/pause")
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == "Bearer"
        assert "Authorization: Bearer" in refused.json()["error"]
        wrong = client.get("/admin/status", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        good = client.get("/admin/status", headers={"Authorization": "Bearer s3cret"})
        assert good.status_code == 200
        assert client.get("/admin/health").status_code == 200
        assert client.get("/admin/ready").status_code == 200
        assert client.get("/metrics").status_code == 200
    assert target.calls == []


def test_port_in_use_is_a_clear_error(target: FakeTarget) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(AdminServerError, match=f"cannot listen on 127.0.0.1:{port}"):
            AdminServer(build_app(target), "127.0.0.1", port).start()


def test_stop_frees_the_port(target: FakeTarget) -> None:
    server = AdminServer(build_app(target), "127.0.0.1", 0)
    server.start()
    port = server.port
    server.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/admin/health", timeout=1)
    again = AdminServer(build_app(target), "127.0.0.1", port)
    again.start()
    again.stop()


def test_the_manuals_investigation_endpoints_report_this_process(client: httpx.Client) -> None:
    """E.1 step 4, E.3 step 1 and H.1 step 1 ask any module what it is using."""
    resources = client.get("/admin/resources/status").json()
    assert resources["pid"] == os.getpid()
    assert resources["memory"]["rss_mb"] > 0 and resources["cpu_seconds"]["user"] > 0
    io = client.get("/admin/resources/io").json()
    assert io["open_file_descriptors"] > 0 and io["read_bytes"] is not None
    memory = client.get("/admin/memory/status").json()
    assert memory["peak_rss_mb"] >= memory["rss_mb"] > 0
    threads = client.get("/admin/threads/status").json()
    names = [t["name"] for t in threads["threads"]]
    assert threads["count"] == len(names) and "MainThread" in names
