"""gamma.yaml's ``RETRY_BACKOFF_MS``: the retry backoff of destinations that set none of their own.

A running Gamma (admin API over HTTP) with two HTTP destinations behind real local servers that
answer 500 before they answer 200: ``own`` sets ``delivery.retry_delay_ms: 0``, ``inherits`` sets
none. ``RETRY_BACKOFF_MS`` is an hour, so with full jitter ``inherits`` waits up to an hour
before its first retry (the chance it retries within the second watched is 0.03 %), while
``own`` retries at once. Each destination's status shows the backoff it uses, and a
reload of gamma.yaml changes it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.integration.pipeline_harness import wait_until

from dps.admin import AdminServer, build_app
from dps.core.record import Record, encode
from dps.gamma.module import GammaModule

HOUR_MS = 3_600_000


class Endpoint:
    """A local HTTP endpoint answering 500 to its first ``failures`` POSTs, then 200."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.posts: list[float] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                endpoint.posts.append(time.monotonic())
                self.send_response(500 if len(endpoint.posts) <= endpoint.failures else 200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/in"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def setup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Path, GammaModule, httpx.Client, Endpoint, Endpoint]]:
    data = tmp_path / "data"
    monkeypatch.setenv("DPS_DATA_DIR", str(data))
    root = tmp_path / "config"
    (root / "gamma" / "destinations").mkdir(parents=True)
    (root / "gamma" / "routing" / "rules").mkdir(parents=True)
    (root / "pipeline.yaml").write_text(f"name: retry-backoff\ndata_dir: {data}\n")
    (root / "gamma" / "gamma.yaml").write_text(
        f"OUTPUT_LINGER_MS: 0\nMAX_DELIVERY_RETRIES: 5\nRETRY_BACKOFF_MS: {HOUR_MS}\n"
    )
    # Two failures: the router's direct attempt (when it makes one) and the worker's first.
    own, inherits = Endpoint(failures=2), Endpoint(failures=2)
    destinations = (("own", own, "  retry_delay_ms: 0\n"), ("inherits", inherits, ""))
    for name, endpoint, delay in destinations:
        (root / "gamma" / "destinations" / f"{name}.yaml").write_text(
            f"destination_id: {name}\ndestination_type: http\n"
            f"connection:\n  url: {endpoint.url}\n"
            f"delivery:\n  batch_size: 10\n  retry_count: 3\n{delay}"
            "circuit_breaker:\n  failure_threshold: 100\n"
        )
    (root / "gamma" / "routing" / "rules" / "all.yaml").write_text(
        "rule_id: ROUTE_ALL\ndestination: [own, inherits]\n"
    )
    module = GammaModule(root)
    server = AdminServer(build_app(module), "127.0.0.1", 0)
    server.start()
    module.start_worker()
    http = httpx.Client(base_url=server.url, timeout=30)
    try:
        yield root, module, http, own, inherits
    finally:
        module.stop_worker()
        server.stop()
        module.close()
        own.close()
        inherits.close()


def test_destinations_without_their_own_retry_delay_back_off_by_retry_backoff_ms(
    setup: tuple[Path, GammaModule, httpx.Client, Endpoint, Endpoint],
) -> None:
    root, module, http, own, inherits = setup
    assert http.get("/admin/destinations/own/status").json()["retry_delay_ms"] == 0
    assert http.get("/admin/destinations/inherits/status").json()["retry_delay_ms"] == HOUR_MS

    record = Record(
        record_id="src:1",
        source_id="src",
        correlation_id="c1",
        ingested_at=time.time(),
        payload={"n": 1},
    )
    module.inbox.put([(record.record_id, encode(record))])

    def own_delivered() -> bool:
        return bool(http.get("/admin/destinations/own/status").json().get("delivered") == 1)

    wait_until(own_delivered, 30, "the destination with retry_delay_ms: 0 never retried")
    assert len(own.posts) == 3
    # The same record, the same failures: the other destination is still in its first backoff
    # (with the fixed 1000 ms default it had before, it would have retried within this second).
    time.sleep(1.0)
    status = http.get("/admin/destinations/inherits/status").json()
    assert status.get("delivered", 0) == 0 and status["retries"] >= 1, json.dumps(
        {"status": status, "posts": [p - inherits.posts[0] for p in inherits.posts]}
    )
    assert 1 <= len(inherits.posts) <= 2  # the router's direct attempt (if any), the worker's

    # A reload of gamma.yaml changes the backoff of the destinations that inherit it. (The
    # worker it replaces stops waiting and makes its last attempt, which now succeeds.)
    (root / "gamma" / "gamma.yaml").write_text(
        "OUTPUT_LINGER_MS: 0\nMAX_DELIVERY_RETRIES: 5\nRETRY_BACKOFF_MS: 0\n"
    )
    assert http.post("/admin/config/reload").status_code == 200
    assert http.get("/admin/destinations/inherits/status").json()["retry_delay_ms"] == 0

    def delivered(n: int) -> bool:
        status = http.get("/admin/destinations/inherits/status").json()
        return bool(status["delivery_log"].get("delivered") == n)

    wait_until(lambda: delivered(1), 30, "the first record never reached `inherits`")
    # The next record fails twice too, and is retried at once.
    inherits.failures = len(inherits.posts) + 2
    second = Record(
        record_id="src:2",
        source_id="src",
        correlation_id="c2",
        ingested_at=time.time(),
        payload={"n": 2},
    )
    module.inbox.put([(second.record_id, encode(second))])
    wait_until(lambda: delivered(2), 15, "RETRY_BACKOFF_MS: 0 did not take effect on reload")
