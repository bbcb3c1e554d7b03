"""``PARSER_THREAD_COUNT``: the sources' fetch-and-parse run at once on that many threads.

Two ``rest_api`` sources poll one local HTTP server whose handler holds each request until a
second one is in flight (or a second has passed) and records how many were in flight at most.
No timing is asserted: serial fetching never has two requests in flight, concurrent fetching
always has once both sources poll in the same step.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from tests.integration.pipeline_harness import wait_until
from tests.integration.test_alpha_sources import alpha_factory, env
from tests.unit.alpha.fake_api import Call, FakeApi, api, ok

__all__ = ["alpha_factory", "api", "env"]  # the fixtures


class Overlap:
    """Counts requests in flight; each waits (at most ``hold`` s) for a second one to arrive."""

    def __init__(self, hold: float = 1.0) -> None:
        self.hold = hold
        self.cond = threading.Condition()
        self.in_flight = 0
        self.max_in_flight = 0
        self.calls: dict[str, int] = {}

    def handler(self, name: str) -> Any:
        def handle(_: Call) -> tuple[int, dict[str, str], bytes]:
            with self.cond:
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                self.calls[name] = self.calls.get(name, 0) + 1
                self.cond.notify_all()
                self.cond.wait_for(lambda: self.in_flight >= 2, self.hold)
                self.in_flight -= 1
            n = self.calls[name]
            return ok({"data": [{"id": f"{name}-{n}"}]})

        return handle


def rest_source(source_id: str, url: str, interval: float) -> str:
    return (
        f"source_id: {source_id}\n"
        "source_type: rest_api\n"
        "connection:\n"
        f"  endpoint: {url}/{source_id}\n"
        "  retry_count: 0\n"
        f"polling:\n  interval_seconds: {interval}\n"
        "parsing:\n  format: json\n  record_path: $.data\n"
    )


def alpha_yaml(threads: int) -> str:
    return f"DEFAULT_BATCH_SIZE: 100\nPARSER_THREAD_COUNT: {threads}\n"


@pytest.mark.parametrize("threads", [1, 2])
def test_sources_are_fetched_at_once_on_parser_thread_count_threads(
    alpha_factory: Any, api: FakeApi, threads: int
) -> None:
    overlap = Overlap()
    api.on("/a", overlap.handler("a"))
    api.on("/b", overlap.handler("b"))
    alpha = alpha_factory(
        {"a": rest_source("a", api.url, 0.2), "b": rest_source("b", api.url, 0.2)},
        alpha_yaml(threads),
    )
    wait_until(
        lambda: overlap.calls.get("a", 0) >= 2 and overlap.calls.get("b", 0) >= 2,
        30,
        "both sources were not polled twice",
    )
    assert overlap.max_in_flight == threads
    # Ingest stays serial and loses nothing: every record of every poll reaches the queue.
    wait_until(lambda: alpha.depth() >= 4, 10, "records not ingested")
    stats = alpha.http.get("/admin/parser/stats").json()
    assert stats["parser_thread_count"] == threads
    assert stats["fetch_parse_mode"] == ("concurrent" if threads > 1 else "serial")


def test_a_reload_resizes_the_pool(alpha_factory: Any, api: FakeApi) -> None:
    overlap = Overlap()
    api.on("/a", overlap.handler("a"))
    api.on("/b", overlap.handler("b"))
    alpha = alpha_factory(
        {"a": rest_source("a", api.url, 0.2), "b": rest_source("b", api.url, 0.2)},
        alpha_yaml(1),
    )
    wait_until(lambda: overlap.calls.get("b", 0) >= 2, 30, "b was not polled twice")
    assert overlap.max_in_flight == 1

    (alpha.config_dir / "alpha" / "alpha.yaml").write_text(alpha_yaml(3))
    assert alpha.reload().status_code == 200
    seen = dict(overlap.calls)
    wait_until(
        lambda: overlap.calls["a"] >= seen["a"] + 2 and overlap.calls["b"] >= seen["b"] + 2,
        30,
        "sources not polled after the reload",
    )
    assert overlap.max_in_flight == 2
    stats = alpha.http.get("/admin/parser/stats").json()
    assert stats["parser_thread_count"] == 3 and stats["fetch_parse_threads_started"] == 3

    (alpha.config_dir / "alpha" / "alpha.yaml").write_text(alpha_yaml(1))
    assert alpha.reload().status_code == 200
    assert alpha.http.get("/admin/parser/stats").json()["fetch_parse_mode"] == "serial"
    assert not [t for t in threading.enumerate() if t.name.startswith("alpha-parse")]
