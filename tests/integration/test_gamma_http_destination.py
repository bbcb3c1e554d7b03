"""The ``http`` destination against a real HTTP server: authentication, bodies, idempotency keys,
success codes, and ``Retry-After`` honoured by the delivery worker.

The server (on a free 127.0.0.1 port) records every request and answers from a per-path script;
its ``/token`` endpoint issues OAuth2 client-credentials tokens. Error classification per status
is in ``tests/unit/gamma/test_error_classes.py``; whole-pipeline faults in
``tests/integration/test_gamma_faults.py``.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

from dps.config.models import DestinationConfig, GammaSettings
from dps.core.record import Record, encode
from dps.gamma.delivery import SPOOL_MAX_ATTEMPTS, DestinationWorker, spool_name
from dps.gamma.destinations.base import DeliveryError
from dps.gamma.destinations.http import HttpDestination, HttpDestinationConfig
from dps.queues import QueueSpec, open_queue
from dps.state import open_state


@dataclass
class Endpoint:
    base: str
    #: path -> answers to give in turn: (status, headers); then 200.
    script: dict[str, list[tuple[int, dict[str, str]]]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    tokens_issued: int = 0


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    state = Endpoint(base="")
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock:
                state.requests.append(
                    {
                        "path": self.path,
                        "at": time.monotonic(),
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": body,
                    }
                )
                script = state.script.get(self.path, [])
                status, headers = script.pop(0) if script else (200, {})
                answer: dict[str, Any] = {}
                if self.path == "/token" and status == 200:
                    state.tokens_issued += 1
                    answer = {"access_token": f"tok-{state.tokens_issued}", "expires_in": 3600}
            payload = json.dumps(answer).encode()
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.base = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def records(n: int) -> list[Record]:
    return [
        Record(
            record_id=f"orders_file:O-{i}",
            source_id="orders_file",
            correlation_id=f"c{i}",
            ingested_at=time.time(),
            payload={"order_id": f"O-{i}", "amount": i + 0.5},
        )
        for i in range(n)
    ]


def destination(connection: dict[str, Any], **fmt: Any) -> HttpDestination:
    spec = HttpDestinationConfig.model_validate({"connection": connection, "format": fmt})
    dest = HttpDestination("events_api", spec)
    dest.timeout_s = 5.0
    dest.open()
    return dest


def to_in(endpoint: Endpoint) -> list[dict[str, Any]]:
    return [r for r in endpoint.requests if r["path"] == "/in"]


@pytest.mark.parametrize(
    ("auth", "header", "expected"),
    [
        ({"type": "bearer", "token_ref": "env:DPS_T_TOKEN"}, "authorization", "Bearer s3cret"),
        (
            {"type": "basic", "username": "pipeline", "password_ref": "env:DPS_T_TOKEN"},
            "authorization",
            "Basic " + base64.b64encode(b"pipeline:s3cret").decode(),
        ),
        (
            {"type": "api_key", "header": "X-Api-Token", "api_key_ref": "env:DPS_T_TOKEN"},
            "x-api-token",
            "s3cret",
        ),
    ],
)
def test_static_credentials_are_sent_from_their_secret_reference(
    endpoint: Endpoint,
    monkeypatch: pytest.MonkeyPatch,
    auth: dict[str, str],
    header: str,
    expected: str,
) -> None:
    monkeypatch.setenv("DPS_T_TOKEN", "s3cret")
    dest = destination({"url": f"{endpoint.base}/in", "auth": auth})
    try:
        assert dest.deliver(records(2)) == []
    finally:
        dest.close()
    assert [r["headers"].get(header) for r in to_in(endpoint)] == [expected]


def test_oauth2_client_credentials_token_is_reused_and_renewed_on_a_401(
    endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DPS_T_CLIENT_SECRET", "c-secret")
    auth = {
        "type": "oauth2",
        "token_url": f"{endpoint.base}/token",
        "client_id": "dps",
        "client_secret_ref": "env:DPS_T_CLIENT_SECRET",
        "scope": "events.write",
    }
    dest = destination({"url": f"{endpoint.base}/in", "auth": auth})
    try:
        assert dest.deliver(records(2)) == []
        assert dest.deliver(records(3)) == []  # the cached token
        endpoint.script["/in"] = [(401, {})]  # revoked: fetched again, the request retried once
        assert dest.deliver(records(1)) == []
    finally:
        dest.close()
    tokens = [r for r in endpoint.requests if r["path"] == "/token"]
    assert len(tokens) == 2
    form = parse_qs(tokens[0]["body"].decode())
    assert form == {
        "grant_type": ["client_credentials"],
        "client_id": ["dps"],
        "scope": ["events.write"],
    }
    client = base64.b64encode(b"dps:c-secret").decode()
    assert tokens[0]["headers"]["authorization"] == f"Basic {client}"
    assert [r["headers"]["authorization"] for r in to_in(endpoint)] == [
        "Bearer tok-1",
        "Bearer tok-1",
        "Bearer tok-1",
        "Bearer tok-2",
    ]


def test_an_oauth2_token_endpoint_that_refuses_is_a_retryable_auth_failure(
    endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DPS_T_CLIENT_SECRET", "wrong")
    endpoint.script["/token"] = [(401, {})]
    auth = {
        "type": "oauth2",
        "token_url": f"{endpoint.base}/token",
        "client_id": "dps",
        "client_secret_ref": "env:DPS_T_CLIENT_SECRET",
    }
    dest = destination({"url": f"{endpoint.base}/in", "auth": auth})
    try:
        with pytest.raises(DeliveryError) as info:
            dest.deliver(records(1))
    finally:
        dest.close()
    assert (info.value.error_class, info.value.reason) == ("retryable", "auth_failed")
    assert to_in(endpoint) == []  # nothing sent without a token


def test_batch_bodies_and_idempotency_keys(endpoint: Endpoint) -> None:
    batch = records(3)
    as_json = destination({"url": f"{endpoint.base}/in"})
    as_ndjson = destination({"url": f"{endpoint.base}/in"}, type="ndjson")
    single = destination({"url": f"{endpoint.base}/in"}, mode="single", envelope=False)
    try:
        as_json.deliver(batch)
        as_json.deliver(batch)  # a retry of the same batch
        as_ndjson.deliver(batch)
        single.deliver(batch[:1])
    finally:
        for dest in (as_json, as_ndjson, single):
            dest.close()
    first, retry, ndjson, one = to_in(endpoint)
    assert first["headers"]["content-type"] == "application/json"
    assert [d["record_id"] for d in json.loads(first["body"])] == [r.record_id for r in batch]
    assert first["headers"]["idempotency-key"] == retry["headers"]["idempotency-key"]
    assert ndjson["headers"]["content-type"] == "application/x-ndjson"
    lines = ndjson["body"].decode().splitlines()
    assert [json.loads(line)["payload"]["order_id"] for line in lines] == ["O-0", "O-1", "O-2"]
    assert json.loads(one["body"]) == {
        "order_id": "O-0",
        "amount": 0.5,
        "record_id": batch[0].record_id,
    }
    assert one["headers"]["idempotency-key"] == batch[0].record_id


def test_only_the_configured_success_codes_count_as_delivered(endpoint: Endpoint) -> None:
    dest = destination({"url": f"{endpoint.base}/in", "success_codes": [202]})
    try:
        endpoint.script["/in"] = [(202, {}), (200, {})]
        assert dest.deliver(records(1)) == []
        with pytest.raises(DeliveryError) as info:
            dest.deliver(records(1))
    finally:
        dest.close()
    assert info.value.error_class == "retryable" and info.value.reason == "http_200"


def test_the_worker_waits_out_retry_after_then_delivers_once(
    endpoint: Endpoint, tmp_path: Path
) -> None:
    dc = DestinationConfig.model_validate(
        {
            "destination_id": "events_api",
            "destination_type": "http",
            "connection": {"url": f"{endpoint.base}/in"},
            "delivery": {"batch_size": 10, "retry_count": 2, "retry_delay_ms": 1},
        }
    )
    spool = open_queue(
        "sqlite",
        {},
        tmp_path,
        QueueSpec(name=spool_name("events_api"), max_attempts=SPOOL_MAX_ATTEMPTS),
    )
    state = open_state("sqlite", {}, tmp_path)

    def build(config: DestinationConfig) -> HttpDestination:
        dest = HttpDestination(config.destination_id, config.spec)
        dest.open()
        return dest

    worker = DestinationWorker(
        dc,
        GammaSettings(OUTPUT_LINGER_MS=0),
        factory=build,
        spool=spool,
        state=state,
        config_version="v1",
        paused=lambda: False,
    )
    endpoint.script["/in"] = [(429, {"Retry-After": "1"})]
    batch = records(4)
    spool.put([(r.record_id, encode(r)) for r in batch])
    try:
        assert worker.step()
    finally:
        worker.stop()
        spool.close()
    try:
        throttled, delivered = to_in(endpoint)
        assert delivered["at"] - throttled["at"] >= 1.0  # Retry-After: 1
        assert state.delivered_records([r.record_id for r in batch], "events_api") == {
            r.record_id for r in batch
        }
        assert worker.stats.throttled == 1 and worker.breaker.state == "CLOSED"
        assert worker.breaker.snapshot()["failures_in_window"] == 0
    finally:
        state.close()
