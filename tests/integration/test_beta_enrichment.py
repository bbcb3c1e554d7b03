"""Enrichment sources against real servers: PostgreSQL, Redis and a local HTTP server.

The servers must be running (PostgreSQL at ``DPS_TEST_PG_DSN``, Redis at ``DPS_TEST_REDIS_URL``);
a missing server fails these tests, it does not skip them.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest
import redis
from tests.integration.pipeline_harness import PG_DSN

from dps.beta.enrichment.base import SourceUnavailable, Unavailable
from dps.beta.enrichment.cache import Enrichment
from dps.config.models import BetaSettings, EnrichmentConfig
from dps.core.registry import get

REDIS_URL = os.environ.get("DPS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
TOKEN = "s3cret-token"


def _source(name: str, type_: str, connection: dict[str, Any], **cache: Any) -> EnrichmentConfig:
    return EnrichmentConfig.model_validate(
        {"name": name, "type": type_, "connection": connection, "cache": cache}
    )


def _wait(job: Any, timeout: float = 10) -> None:
    deadline = time.time() + timeout
    while job.state == "running" and time.time() < deadline:
        time.sleep(0.01)


# -- PostgreSQL ------------------------------------------------------------------------------


@pytest.fixture
def pg_table() -> Iterator[str]:
    table = f"enrich_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (customer_id int PRIMARY KEY, name text, tier text)")
        with conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO {table} VALUES (%s, %s, %s)",
                [(i, f"name{i}", "gold" if i % 2 else "silver") for i in range(1, 201)],
            )
    yield table
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")


def test_postgresql_batched_lookup_scan_and_outage(pg_table: str) -> None:
    source = _source(
        "customer_db",
        "database",
        {
            "url": PG_DSN,
            # An integer key column is compared as text: the cache's keys are text.
            "query": f"SELECT customer_id, name, tier FROM {pg_table} "
            "WHERE customer_id::text = :key",
            "scan_query": f"SELECT customer_id, name, tier FROM {pg_table}",
            "timeout_seconds": 2,
        },
        warmup=True,
    )
    enrichment = Enrichment({"customer_db": source}, BetaSettings())
    try:
        answers = enrichment.lookup_many("customer_db", ["1", "2", "2", "999"])
        assert answers == {
            "1": {"customer_id": 1, "name": "name1", "tier": "gold"},
            "2": {"customer_id": 2, "name": "name2", "tier": "silver"},
            "999": None,
        }
        assert enrichment.stats()["sources"]["customer_db"]["fetches"] == 1

        (job,) = enrichment.warmup()
        _wait(job)
        assert (job.state, job.loaded, job.total) == ("completed", 200, 200)
        assert enrichment.size("customer_db") == 201  # 200 rows and the cached miss 999
    finally:
        enrichment.close()

    down = get("enrichment", "database")(
        "down",
        source.connection.model_copy(
            update={"url": "postgresql://postgres@127.0.0.1:1/test", "timeout_seconds": 1}
        ),
    )
    with pytest.raises(SourceUnavailable):
        down.fetch(["1"])


# -- Redis -----------------------------------------------------------------------------------


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    prefix = f"dps-test-{uuid.uuid4().hex[:8]}:"
    yield prefix
    for key in client.scan_iter(match=prefix + "*"):
        client.delete(key)
    client.close()


def test_redis_hash_and_json_values(redis_prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    for i in range(30):
        client.hset(f"{redis_prefix}h:P{i}", mapping={"sku": f"P{i}", "price": str(i)})
    client.set(f"{redis_prefix}j:P1", json.dumps({"sku": "P1", "tags": ["a"]}))
    client.close()
    hashes = _source(
        "products",
        "redis",
        {"url": REDIS_URL, "key_prefix": redis_prefix + "h:", "value_type": "hash"},
    )
    documents = _source(
        "docs", "redis", {"url": REDIS_URL, "key_prefix": redis_prefix + "j:", "value_type": "json"}
    )
    enrichment = Enrichment({"products": hashes, "docs": documents}, BetaSettings())
    try:
        assert enrichment.lookup_many("products", ["P3", "P404"]) == {
            "P3": {"sku": "P3", "price": "3"},
            "P404": None,
        }
        assert enrichment.lookup_many("docs", ["P1"]) == {"P1": {"sku": "P1", "tags": ["a"]}}
        job = enrichment.refresh("products")
        _wait(job)
        assert (job.state, job.strategy, job.loaded, job.total) == (
            "completed",
            "full_scan",
            30,
            30,
        )
    finally:
        enrichment.close()

    down = get("enrichment", "redis")(
        "down", hashes.connection.model_copy(update={"url": "redis://127.0.0.1:1/0"})
    )
    with pytest.raises(SourceUnavailable):
        down.fetch(["P1"])


# -- HTTP ------------------------------------------------------------------------------------


class _Customers(BaseHTTPRequestHandler):
    rows = {"C1": {"id": "C1", "name": "Ada"}, "C/2": {"id": "C/2", "name": "Slash"}}
    seen: list[str] = []

    def do_GET(self) -> None:
        type(self).seen.append(self.path)
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self._send(401, {"error": "unauthorized"})
            return
        key = self.path.rsplit("/", 1)[-1]
        if key == "SLOW":
            time.sleep(1.0)
        from urllib.parse import unquote

        row = self.rows.get(unquote(key))
        if row is None:
            self._send(404, {"error": "not found"})
        else:
            self._send(200, {"data": row})

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _serve(port: int = 0) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", port), _Customers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_http_auth_miss_timeout_and_outage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DPS_TEST_CRM_TOKEN", TOKEN)
    server = _serve()
    port = server.server_address[1]
    connection = {
        "url": f"http://127.0.0.1:{port}/customers/{{key}}",
        "auth": {"type": "bearer", "token_ref": "env:DPS_TEST_CRM_TOKEN"},
        "response_path": "data",
        "timeout_seconds": 0.3,
    }
    settings = BetaSettings.model_validate(
        {"enrichment_sources": {"crm": {"on_unavailable": "STALE_CACHE"}}}
    )
    enrichment = Enrichment({"crm": _source("crm", "http", connection)}, settings)
    try:
        assert enrichment.lookup_many("crm", ["C1", "C/2", "C404"]) == {
            "C1": {"id": "C1", "name": "Ada"},
            "C/2": {"id": "C/2", "name": "Slash"},
            "C404": None,
        }
        assert "/customers/C%2F2" in _Customers.seen  # the key is URL-encoded
        slow = enrichment.lookup_many("crm", ["SLOW"])["SLOW"]
        assert isinstance(slow, Unavailable) and "ReadTimeout" in slow.message

        server.shutdown()
        server.server_close()
        down = enrichment.lookup_many("crm", ["C9"])["C9"]
        assert isinstance(down, Unavailable) and "ConnectError" in down.message
        assert enrichment.lookup_many("crm", ["C1"])["C1"] == {"id": "C1", "name": "Ada"}  # fresh

        server = _serve(port)
        assert enrichment.lookup_many("crm", ["C9"])["C9"] is None
        assert enrichment.status()["sources"]["crm"]["available"] is True
    finally:
        server.shutdown()
        server.server_close()
        enrichment.close()

    wrong = _source("crm", "http", {**connection, "auth": {"type": "none"}})
    unauthorized = Enrichment({"crm": wrong}, BetaSettings())
    server = _serve(port)
    try:
        answer = unauthorized.lookup_many("crm", ["C1"])["C1"]
        assert isinstance(answer, Unavailable) and "answered 401" in answer.message
    finally:
        server.shutdown()
        server.server_close()
        unauthorized.close()
