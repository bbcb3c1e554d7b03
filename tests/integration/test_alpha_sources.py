"""Alpha with its worker and admin API running (in this process): the http_push endpoint, a
rest_api source against a local HTTP server, source operations over the admin API, reloads,
backpressure and emergency stop.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.integration.pipeline_harness import wait_until
from tests.unit.alpha.fake_api import FakeApi, api, ok

from dps.admin import AdminServer, build_app
from dps.alpha.module import AlphaModule
from dps.alpha.sources.http_push import HttpPushSource

__all__ = ["api"]  # the fixture

TOKEN = "push-secret"


def push_yaml(*, enabled: bool = True, port: int = 0, extra: str = "", parsing: str = "") -> str:
    return (
        "source_id: orders_push\n"
        "source_type: http_push\n"
        f"enabled: {str(enabled).lower()}\n"
        "connection:\n"
        f"  port: {port}\n"
        "  auth_token_ref: env:DPS_TEST_PUSH_TOKEN\n"
        "  ack_timeout_ms: 5000\n"
        f"{extra}"
        "parsing:\n  format: ndjson\n  id_field: order_id\n"
        f"{parsing}"
        "validation:\n  required_fields: [order_id]\n"
    )


def rest_yaml(url: str, *, enabled: bool = True, token_ref: str = "env:DPS_TEST_API_TOKEN") -> str:
    return (
        "source_id: api_source\n"
        "source_type: rest_api\n"
        f"enabled: {str(enabled).lower()}\n"
        "connection:\n"
        f"  endpoint: {url}/data\n"
        "  auth_type: bearer\n"
        f"  auth_config: {{token_ref: '{token_ref}'}}\n"
        "  retry_count: 0\n"
        "polling:\n  interval_seconds: 0.2\n"
        "parsing:\n  format: json\n  record_path: $.data\n"
    )


class Alpha:
    """An AlphaModule with its worker thread and its admin API on a free port."""

    def __init__(self, config_dir: Path, tmp: Path) -> None:
        self.config_dir = config_dir
        self.module = AlphaModule(config_dir, data_dir=tmp / "data")
        self.server = AdminServer(build_app(self.module), "127.0.0.1", 0)
        self.server.start()
        self.module.start_worker()
        self.http = httpx.Client(base_url=self.server.url, timeout=30)

    def push_url(self, source_id: str = "orders_push") -> str:
        wait_until(
            lambda: (
                isinstance(self.module.runners[source_id].source, HttpPushSource)
                and self.source(source_id).url is not None
            ),
            10,
            "push endpoint did not start",
        )
        url = self.source(source_id).url
        assert url is not None
        return url

    def source(self, source_id: str) -> Any:
        return self.module.runners[source_id].source

    def depth(self) -> int:
        return self.module.queue.depth()

    def reload(self) -> httpx.Response:
        return self.http.post("/admin/config/reload")

    def close(self) -> None:
        self.http.close()
        self.module.stop_worker()
        self.server.stop()
        self.module.close()


def make_config(tmp: Path, sources: dict[str, str], alpha_yaml: str = "") -> Path:
    root = tmp / "config"
    (root / "alpha" / "sources").mkdir(parents=True)
    (root / "pipeline.yaml").write_text("name: alpha-test\n")
    (root / "alpha" / "alpha.yaml").write_text(alpha_yaml or "DEFAULT_BATCH_SIZE: 100\n")
    for name, text in sources.items():
        (root / "alpha" / "sources" / f"{name}.yaml").write_text(text)
    return root


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DPS_TEST_PUSH_TOKEN", TOKEN)
    monkeypatch.setenv("DPS_TEST_API_TOKEN", "api-token-1")


@pytest.fixture
def alpha_factory(tmp_path: Path, env: None) -> Iterator[Any]:
    made: list[Alpha] = []

    def make(sources: dict[str, str], alpha_yaml: str = "") -> Alpha:
        alpha = Alpha(make_config(tmp_path, sources, alpha_yaml), tmp_path)
        made.append(alpha)
        return alpha

    yield make
    for alpha in made:
        alpha.close()


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def ndjson(*ids: int) -> bytes:
    return b"".join(json.dumps({"order_id": i, "amount": i}).encode() + b"\n" for i in ids)


# -- http_push ---------------------------------------------------------------------------------


def test_push_answers_200_only_once_the_records_are_durable(alpha_factory: Any) -> None:
    alpha = alpha_factory({"push": push_yaml()})
    url = alpha.push_url()

    response = httpx.post(url, content=ndjson(1, 2, 3), headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 3
    # Durable when answered: in the transform queue and counted in the committed offsets.
    assert alpha.depth() == 3
    assert alpha.module.state_store.accounting()["ingested_by_source"]["orders_push"] == 3

    array = httpx.post(url, json=[{"order_id": 4}, {"order_id": 5}], headers=AUTH)
    single = httpx.post(url, json={"order_id": 6}, headers=AUTH)
    assert (array.status_code, single.status_code) == (200, 200)
    assert alpha.depth() == 6


def test_push_retried_with_the_same_idempotency_key_is_a_replay(alpha_factory: Any) -> None:
    alpha = alpha_factory({"push": push_yaml()})
    url = alpha.push_url()
    headers = AUTH | {"Idempotency-Key": "batch-1"}
    assert httpx.post(url, content=ndjson(1, 2), headers=headers).status_code == 200
    assert httpx.post(url, content=ndjson(1, 2), headers=headers).status_code == 200
    assert alpha.depth() == 2
    accounting = alpha.module.state_store.accounting()
    assert accounting["duplicates"] == 0  # same origins: a replay, not duplicates


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (b'{"order_id": 1}\n{"order_id": 2', {"line": 2}),  # truncated JSON
        (b"\x00\xff\xfe garbage \x81\n", {"line": 1}),  # binary garbage
        ('{"order_id": "caf\xe9"}\n'.encode("latin-1"), {"line": 1}),  # wrong encoding
        (b'{"order_id": 1}\n[1, 2]\n', {"line": 2}),  # not an object
        (b"[1, 2]", {"index": 0}),
    ],
)
def test_push_refuses_malformed_input_with_400_and_reasons(
    alpha_factory: Any, body: bytes, where: dict[str, int]
) -> None:
    alpha = alpha_factory({"push": push_yaml()})
    response = httpx.post(alpha.push_url(), content=body, headers=AUTH)
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert errors and all(errors[0][k] == v for k, v in where.items())
    assert alpha.depth() == 0


def test_push_needs_the_bearer_token_and_limits_the_body(alpha_factory: Any) -> None:
    alpha = alpha_factory({"push": push_yaml(extra="  max_body_bytes: 1000\n")})
    url = alpha.push_url()
    assert httpx.post(url, content=ndjson(1)).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert httpx.post(url, content=ndjson(1), headers=wrong).status_code == 401
    huge = b'{"order_id": 1, "x": "' + b"a" * 5000 + b'"}\n'
    assert httpx.post(url, content=huge, headers=AUTH).status_code == 413
    assert alpha.depth() == 0


def test_push_answers_429_with_retry_after_when_the_buffer_is_full(alpha_factory: Any) -> None:
    alpha = alpha_factory({"push": push_yaml()}, "BUFFER_CAPACITY: 4\nDEFAULT_BATCH_SIZE: 100\n")
    url = alpha.push_url()
    assert httpx.post(url, content=ndjson(1, 2, 3), headers=AUTH).status_code == 200
    wait_until(lambda: alpha.module._room == 1, 5, "buffer room not updated")
    full = httpx.post(url, content=ndjson(4, 5), headers=AUTH)
    assert full.status_code == 429
    assert full.headers["Retry-After"] == "1"
    metrics = alpha.http.get("/metrics").text
    assert "alpha_buffer_utilization 0.75" in metrics
    # Beta takes records out: room again.
    with alpha.module._lock:  # the worker's queue connection is not shared while it works
        alpha.module.queue.ack(alpha.module.queue.lease(10))
    wait_until(lambda: alpha.module._room >= 2, 5, "buffer room not freed")
    assert httpx.post(url, content=ndjson(4, 5), headers=AUTH).status_code == 200


def test_emergency_stop_stops_intake_and_start_resumes_it(alpha_factory: Any) -> None:
    alpha = alpha_factory({"push": push_yaml()})
    url = alpha.push_url()
    assert alpha.http.post("/admin/emergency-stop").status_code == 200
    stopped = httpx.post(url, content=ndjson(1), headers=AUTH)
    assert stopped.status_code == 503 and "Retry-After" in stopped.headers
    assert alpha.http.post("/admin/start").status_code == 200
    assert httpx.post(url, content=ndjson(1), headers=AUTH).status_code == 200


def test_a_push_waiting_during_a_reload_that_disables_the_source_is_not_lost(
    alpha_factory: Any,
) -> None:
    alpha = alpha_factory({"push": push_yaml()})
    url = alpha.push_url()
    # Hold the worker so the batch waits, then disable the source and reload meanwhile.
    results: list[httpx.Response] = []
    with alpha.module._lock:
        sender = threading.Thread(
            target=lambda: results.append(httpx.post(url, content=ndjson(7, 8), headers=AUTH))
        )
        sender.start()
        wait_until(lambda: alpha.source("orders_push").pending() == 2, 5, "batch not waiting")
        (alpha.config_dir / "alpha/sources/push.yaml").write_text(push_yaml(enabled=False))
        reload = threading.Thread(target=alpha.reload)
        reload.start()
    sender.join(10)
    reload.join(10)
    assert results and results[0].status_code == 200  # made durable before the source went
    assert alpha.depth() == 2
    status = alpha.http.get("/admin/sources/orders_push/status").json()
    assert status["status"] == "disabled"
    with pytest.raises(httpx.ConnectError):
        httpx.post(url, content=ndjson(9), headers=AUTH)


# -- rest_api and source operations ------------------------------------------------------------


def test_rest_api_source_runbook_a1_to_a3_over_the_admin_api(
    alpha_factory: Any, api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = {"api-token-1"}
    api.on(
        "/data",
        lambda c: (
            ok({"data": [{"id": "a"}, {"id": "b"}]})
            if c.headers.get("authorization", "").removeprefix("Bearer ") in tokens
            else (401, {}, b"no")
        ),
    )
    alpha = alpha_factory({"api": rest_yaml(api.url, enabled=False)})
    sources = alpha.http.get("/admin/sources").json()
    assert [s["source_id"] for s in sources] == ["api_source"]

    # A.1 step 6: test while disabled; nothing is ingested.
    test = alpha.http.get("/admin/sources/api_source/test").json()
    assert test["ok"] is True and test["records"] == 2
    assert alpha.depth() == 0

    # A.1 step 7: enable and reload.
    (alpha.config_dir / "alpha/sources/api.yaml").write_text(rest_yaml(api.url))
    assert alpha.reload().status_code == 200
    wait_until(lambda: alpha.depth() == 2, 10, "records not ingested")
    assert 'alpha_records_ingested_total{source_id="api_source"}' in alpha.http.get("/metrics").text

    # A.2: rotate the credential (new reference), reload; the source keeps going.
    monkeypatch.setenv("DPS_TEST_API_TOKEN_NEW", "api-token-2")
    tokens = {"api-token-2"}
    (alpha.config_dir / "alpha/sources/api.yaml").write_text(
        rest_yaml(api.url, token_ref="env:DPS_TEST_API_TOKEN_NEW")
    )
    calls = len(api.calls)
    assert alpha.reload().status_code == 200
    wait_until(lambda: len(api.calls) > calls + 1, 10, "source not polling after rotation")
    status = alpha.http.get("/admin/sources/api_source/status").json()
    assert status["status"] == "enabled"
    assert status["last_status_code"] == 200 and status["last_success_at"]
    assert api.calls[-1].headers["authorization"] == "Bearer api-token-2"

    # A.3: disable, reload, status, drain.
    (alpha.config_dir / "alpha/sources/api.yaml").write_text(
        rest_yaml(api.url, enabled=False, token_ref="env:DPS_TEST_API_TOKEN_NEW")
    )
    assert alpha.reload().status_code == 200
    assert alpha.http.get("/admin/sources/api_source/status").json()["status"] == "disabled"
    drained = alpha.http.get("/admin/sources/api_source/drain").json()
    assert drained["drained"] is True and drained["status"] == "disabled"
    calls = len(api.calls)
    time.sleep(0.5)
    assert len(api.calls) == calls  # no more polls
    assert alpha.depth() == 2  # same ids every poll: the duplicates were dropped


def test_a_failing_source_shows_error_counts_and_others_keep_running(
    alpha_factory: Any, api: FakeApi
) -> None:
    api.on("/data", lambda c: (500, {}, b"down"))
    alpha = alpha_factory({"api": rest_yaml(api.url), "push": push_yaml()})
    wait_until(
        lambda: alpha.http.get("/admin/sources/api_source/status").json()["status"] == "error",
        10,
        "source not in error",
    )
    status = alpha.http.get("/admin/sources/api_source/status").json()
    assert status["error_count"] >= 1 and "answered 500" in status["last_error"]
    health = alpha.http.get("/admin/health")
    # The manual's table: a source in error degrades Alpha; a connection success rate below 95%
    # (here every attempt failed) is critical, so /admin/health answers 503 UNHEALTHY.
    assert health.status_code == 503 and health.json()["status"] == "UNHEALTHY"
    assert health.json()["checks"]["sources"]["status"] == "DEGRADED"
    assert health.json()["checks"]["source_connection_success"]["status"] == "UNHEALTHY"
    assert httpx.post(alpha.push_url(), content=ndjson(1), headers=AUTH).status_code == 200
    api.on("/data", lambda c: ok({"data": [{"id": "x"}]}))
    wait_until(
        lambda: alpha.http.get("/admin/sources/api_source/status").json()["status"] == "enabled",
        10,
        "source did not recover",
    )
    assert alpha.http.get("/admin/sources/nope/status").status_code == 404


@pytest.mark.parametrize("strict", [True, False])
def test_event_time_is_normalised_and_a_bad_one_fails_only_in_strict_mode(
    alpha_factory: Any, strict: bool
) -> None:
    from dps.core.record import decode

    parsing = "  timestamp_field: ts\n  timestamp_timezone: Europe/Berlin\n"
    settings = f"VALIDATION_STRICT_MODE: {str(strict).lower()}\n"
    alpha = alpha_factory({"push": push_yaml(parsing=parsing)}, settings)
    body = b'{"order_id": 1, "ts": "2024-01-15T10:30:00"}\n{"order_id": 2, "ts": "soon"}\n'
    assert httpx.post(alpha.push_url(), content=body, headers=AUTH).status_code == 200
    with alpha.module._lock:
        lease = alpha.module.queue.lease(10)
    times = sorted((decode(m.body).event_time or "") for m in lease.messages)
    dlq = alpha.module.state_store.list_dlq("alpha")
    if strict:
        assert times == ["2024-01-15T09:30:00Z"]
        assert [e.reason for e in dlq] == ["invalid_timestamp"]
    else:
        assert times == ["2024-01-15T09:30:00Z", "soon"]
        assert dlq == []
