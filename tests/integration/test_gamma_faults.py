"""Destination faults in a whole running pipeline (``dps run``), checked record by record.

Each test feeds its own orders (``F-00000`` ...) through alpha and beta to destinations the test
controls: HTTP receivers on free local ports that the test stops, starts or makes hang, and
PostgreSQL tables with constraints. Every test ends with, for every destination, each routed
record either delivered exactly once (the destination holds it, the delivery log says
``delivered``) or in the gamma DLQ with its error class — never both, never neither — the
breakers CLOSED and the gamma module still running.

The outage test runs on the embedded backends and on the scale-out ones (NATS JetStream queues,
so the per-destination spools are JetStream streams, and PostgreSQL state).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from tests.integration.pipeline_harness import (
    NATS_URL,
    PG_DSN,
    RunningPipeline,
    copy_quickstart,
    delete_streams,
    dps,
    start_pipeline,
    wait_until,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Receiver:
    """An idempotent HTTP destination on a fixed local port (it keeps one copy per record id).

    ``start()``/``stop()`` bring it up and down; ``hang`` makes the next N requests sleep
    ``hang_seconds`` before they are read and answered.
    """

    def __init__(self) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/in"
        self.records: dict[str, dict[str, Any]] = {}
        self.copies: dict[str, int] = {}
        self.posts = 0
        self.hang = 0
        self.hang_seconds = 0.0
        self.hung = 0
        self._lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                self.send_response(200)
                self.end_headers()

            def do_POST(self) -> None:
                with receiver._lock:
                    receiver.posts += 1
                    hang = receiver.hang > 0
                    if hang:
                        receiver.hang -= 1
                        receiver.hung += 1
                if hang:
                    time.sleep(receiver.hang_seconds)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._lock:
                    for item in json.loads(body):
                        rid = item["record_id"]
                        receiver.records[rid] = item
                        receiver.copies[rid] = receiver.copies.get(rid, 0) + 1
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def ids(self) -> set[str]:
        with self._lock:
            return set(self.records)


class TcpProxy:
    """A TCP proxy on a fixed local port to a real server; ``stop()`` cuts every connection.

    Stopping it is, for the pipeline, the server going away (connections reset, new ones
    refused); starting it again is the server coming back.
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = _free_port()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        if self._listener is not None:
            # close() alone does not wake a thread blocked in accept(): it would go on accepting.
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()


def order(n: int, **extra: Any) -> dict[str, Any]:
    return {
        "order_id": f"F-{n:05d}",
        "customer_id": f"C{n % 97:05d}",
        "amount": n % 500 + 0.5,
        "country": "DE" if n % 2 else "US",
        "phone_number": f"(555) 010-{n % 10000:04d}",
        "email": f"f{n}@example.com",
        "created_at": "2026-11-27T10:00:00Z",
        **extra,
    }


def rid(n: int) -> str:
    return f"orders_file:F-{n:05d}"


def write_orders(config: Path, name: str, orders: list[dict[str, Any]]) -> None:
    folder = config / "input" / "orders"
    tmp = folder / f".{name}.tmp"
    tmp.write_text("".join(json.dumps(o) + "\n" for o in orders))
    tmp.rename(folder / f"{name}.ndjson")  # the source sees the file whole


def fault_config(tmp_path: Path) -> Path:
    """The quickstart's alpha and beta with no input, no destinations and no routes yet."""
    config = copy_quickstart(tmp_path / "config")
    for folder in (
        config / "input" / "orders",
        config / "gamma" / "destinations",
        config / "gamma" / "routing" / "rules",
    ):
        shutil.rmtree(folder)
        folder.mkdir(parents=True)
    (config / "input" / "crm" / "crm-export.json").write_text('{"data": {"records": []}}')
    return config


def add_destination(config: Path, name: str, text: str) -> None:
    (config / "gamma" / "destinations" / f"{name}.yaml").write_text(
        f"destination_id: {name}\n{text}"
    )
    (config / "gamma" / "routing" / "rules" / f"to_{name}.yaml").write_text(
        f"rule_id: ROUTE_ALL_TO_{name.upper()}\nenabled: true\npriority: 10\ndestination: {name}\n"
    )


def http_destination(receiver: Receiver, extra_connection: str = "", **delivery: Any) -> str:
    settings = {
        "batch_size": 100,
        "timeout_ms": 5000,
        "retry_count": 1,
        "retry_delay_ms": 50,
        **delivery,
    }
    return (
        "destination_type: http\n"
        f"connection:\n  url: {receiver.url}\n{extra_connection}"
        "delivery:\n" + "".join(f"  {k}: {v}\n" for k, v in settings.items()) + "circuit_breaker:\n"
        "  failure_threshold: 2\n  window_seconds: 60\n  cooldown_seconds: 1\n"
        "  max_cooldown_seconds: 2\n"
    )


def pg_destination(
    table: str, mapping: dict[str, str], extra_format: str = "", port: int = 5432
) -> str:
    return (
        "destination_type: database\n"
        "connection:\n  type: postgresql\n  host: 127.0.0.1\n"
        f"  port: {port}\n  database: test\n"
        "  username: postgres\n  ssl_mode: disable\n  pool_size: 2\n"
        "delivery:\n  batch_size: 100\n  timeout_ms: 10000\n  retry_count: 2\n"
        "  retry_delay_ms: 100\n"
        f"format:\n  type: insert\n  table: {table}\n  create_table: false\n"
        "  column_mapping:\n"
        + "".join(f"    {k}: {v}\n" for k, v in mapping.items())
        + extra_format
    )


@dataclass
class StateView:
    """The delivery log and the gamma DLQ of a run, on SQLite or PostgreSQL state."""

    data_dir: Path
    schema: str | None = None

    def _query(self, sql: str) -> list[tuple[Any, ...]]:
        if self.schema is None:
            with sqlite3.connect(self.data_dir / "state.db") as db:
                return list(db.execute(sql))
        with psycopg.connect(PG_DSN) as conn:
            conn.execute(f"SET search_path TO {self.schema}")
            return list(conn.execute(sql).fetchall())

    def delivered(self, destination: str) -> set[str]:
        rows = self._query(
            "SELECT record_id FROM delivery_log WHERE status = 'delivered' "
            f"AND destination_id = '{destination}'"
        )
        return {r[0] for r in rows}

    def dlq(self, destination: str) -> dict[str, tuple[str, str]]:
        """record id -> (error class, reason) of the open gamma DLQ entries of a destination."""
        rows = self._query(
            "SELECT record_id, error_class, reason FROM dlq_entries WHERE module = 'gamma' "
            f"AND destination_id = '{destination}' AND status = 'open'"
        )
        return {r[0]: (r[1], r[2]) for r in rows}

    def gamma_dlq_total(self) -> int:
        return int(self._query("SELECT count(*) FROM dlq_entries WHERE module = 'gamma'")[0][0])


def check_exactly_once(
    state: StateView, destination: str, expected: set[str], held: set[str]
) -> dict[str, tuple[str, str]]:
    """Every expected record delivered (and held by the destination) xor in the DLQ."""
    delivered = state.delivered(destination)
    dead = state.dlq(destination)
    assert not delivered & set(dead), f"{destination}: delivered and dead-lettered"
    assert delivered | set(dead) == expected, (
        f"{destination}: lost {sorted(expected - delivered - set(dead))[:5]}, "
        f"unexpected {sorted((delivered | set(dead)) - expected)[:5]}"
    )
    assert held == delivered, f"{destination}: the destination holds {len(held)}"
    return dead


def breakers(run: RunningPipeline) -> dict[str, str]:
    body = run.get("gamma", "/admin/circuit-breakers/status").json()
    return {d: b["state"] for d, b in body["circuit_breakers"].items()}


def gamma_idle(run: RunningPipeline) -> bool:
    status = run.get("gamma", "/admin/status").json()
    acc = run.get("control", "/api/accounting").json()
    return bool(status["idle"]) and not any(acc["in_flight"].values())


def check_running(run: RunningPipeline, gamma_pid: int) -> None:
    """The gamma module is the same process as at the start, and answers."""
    assert run.process.poll() is None
    status = run.get("gamma", "/admin/status").json()
    assert status["pid"] == gamma_pid and status["state"] == "running", status
    # Health may still read DEGRADED/UNHEALTHY: the failed attempts of the fault are within its
    # window. What matters here is that the module answers and its worker runs.
    health = run.get("gamma", "/admin/health")
    assert health.status_code in (200, 503)
    assert health.json()["checks"]["worker"]["ok"] is True, health.json()


@pytest.fixture
def pg_schema() -> Iterator[str]:
    name = f"gf_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    yield name
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {name} CASCADE")


def pg_ids(table: str, column: str = "event_id") -> set[str]:
    with psycopg.connect(PG_DSN) as conn:
        # One snapshot for both statements: under READ COMMITTED a batch committed between
        # them would be counted but not listed.
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        rows = conn.execute(f"SELECT {column} FROM {table}").fetchall()
        total = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert total is not None and total[0] == len(rows)
    return {r[0] for r in rows}


# -- a destination down for a while, then back --------------------------------------------------


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.parametrize(
    "backend",
    ["embedded", pytest.param("scale_out", marks=pytest.mark.nats)],
)
def test_a_destination_down_for_a_while_loses_nothing_and_stalls_no_other(
    tmp_path: Path, pg_schema: str, backend: str
) -> None:
    config = fault_config(tmp_path)
    state = StateView(tmp_path / "data")
    prefix = f"GF{uuid.uuid4().hex[:6].upper()}"
    if backend == "scale_out":
        (config / "pipeline.yaml").write_text(
            "name: gamma-faults\n"
            f"transport:\n  backend: nats\n  url: {NATS_URL}\n  stream_prefix: {prefix}\n"
            f"state:\n  backend: postgresql\n  dsn: {PG_DSN}\n  schema: {pg_schema}\n"
            "admin:\n  bind: 127.0.0.1\n"
        )
        state = StateView(tmp_path / "data", pg_schema)
    table = f"{pg_schema}.events"
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (event_id TEXT PRIMARY KEY, event_data JSONB)")
    api = Receiver()
    # Several batches in flight at once (H.3's async mode) through the outage and the recovery.
    add_destination(
        config,
        "api",
        http_destination(api, max_in_flight=3) + "delivery_mode: async\nack_mode: record\n",
    )
    add_destination(
        config,
        "warehouse",
        pg_destination(table, {"record_id": "event_id", "payload": "event_data"}),
    )
    first = [order(n) for n in range(200)]
    second = [order(n) for n in range(200, 500)]
    write_orders(config, "first", first)
    api.start()
    run = start_pipeline(config, tmp_path / "data")
    try:
        run.wait_ready()
        gamma_pid = run.get("gamma", "/admin/status").json()["pid"]
        modes = run.get("gamma", "/admin/delivery/parallelism").json()["destinations"]["api"]
        assert (modes["delivery_mode"], modes["ack_mode"], modes["max_in_flight"]) == (
            "async",
            "record",
            3,
        )
        wait_until(lambda: len(api.ids()) == 200, 120, "the first wave never reached the API")

        api.stop()  # down
        write_orders(config, "second", second)
        wait_until(lambda: breakers(run).get("api") == "OPEN", 90, "the breaker never opened")
        # The warehouse keeps flowing while the API is down: the second wave lands there.
        wait_until(
            lambda: len(pg_ids(table)) == 500, 120, "the warehouse stalled behind the down API"
        )
        status = run.get("gamma", "/admin/destinations/api/status").json()
        assert status["pending"] > 0, status
        errors = run.get("gamma", "/admin/destinations/api/errors?since=1h").json()
        assert set(errors["by_error_class"]) == {"retryable"}, errors
        assert len(api.ids()) == 200
        time.sleep(2.0)  # a while longer down: probes fail, the breaker stays open
        assert breakers(run)["api"] in ("OPEN", "HALF_OPEN")

        api.start()  # back: the next probe succeeds and closes the breaker on its own
        wait_until(lambda: breakers(run).get("api") == "CLOSED", 60, "the breaker never closed")
        wait_until(lambda: gamma_idle(run), 120, "the API never caught up")

        expected = {rid(n) for n in range(500)}
        assert check_exactly_once(state, "api", expected, api.ids()) == {}
        assert check_exactly_once(state, "warehouse", expected, pg_ids(table)) == {}
        assert state.gamma_dlq_total() == 0
        assert breakers(run) == {"api": "CLOSED", "warehouse": "CLOSED"}
        # The healthy warehouse was delivered by the router directly; the async API, which
        # the direct path never takes, got everything through its spool.
        warehouse = run.get("gamma", "/admin/destinations/warehouse/status").json()
        assert warehouse["delivered_direct"] > 0, warehouse
        api_view = run.get("gamma", "/admin/destinations/api/status").json()
        assert api_view["delivered_direct"] == 0 and api_view["spooled"] >= 500, api_view
        check_running(run, gamma_pid)
    finally:
        run.stop()
        api.stop()
        if backend == "scale_out":
            delete_streams(prefix)


# -- PostgreSQL going away during a run ----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.postgres
def test_postgresql_gone_during_a_run_then_back_no_row_lost_or_duplicated(
    tmp_path: Path, pg_schema: str
) -> None:
    config = fault_config(tmp_path)
    state = StateView(tmp_path / "data")
    table = f"{pg_schema}.events"
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE {table} (event_id TEXT PRIMARY KEY, event_data JSONB, "
            "CONSTRAINT not_order_7 CHECK (event_id <> 'orders_file:F-00007'))"
        )
    proxy = TcpProxy(("127.0.0.1", 5432))
    text = (
        pg_destination(table, {"record_id": "event_id", "payload": "event_data"}, port=proxy.port)
        .replace("retry_count: 2", "retry_count: 1")
        .replace("timeout_ms: 10000", "timeout_ms: 3000")
    )
    text += (
        "circuit_breaker:\n  failure_threshold: 2\n  window_seconds: 60\n"
        "  cooldown_seconds: 1\n  max_cooldown_seconds: 2\n"
    )
    add_destination(config, "warehouse", text)
    api = Receiver()
    add_destination(config, "api", http_destination(api))
    write_orders(config, "first", [order(n) for n in range(200)])
    proxy.start()
    api.start()
    run = start_pipeline(config, tmp_path / "data")
    try:
        run.wait_ready()
        gamma_pid = run.get("gamma", "/admin/status").json()["pid"]
        wait_until(lambda: len(pg_ids(table)) == 199, 120, "the first wave never landed")

        proxy.stop()  # PostgreSQL is gone
        write_orders(config, "second", [order(n) for n in range(200, 500)])
        wait_until(lambda: breakers(run).get("warehouse") == "OPEN", 90, "the breaker never opened")
        wait_until(lambda: len(api.ids()) == 500, 120, "the API stalled behind PostgreSQL")
        time.sleep(2.0)
        assert breakers(run)["warehouse"] in ("OPEN", "HALF_OPEN")
        assert run.get("gamma", "/admin/destinations/warehouse/test").status_code == 503

        proxy.start()  # back
        wait_until(
            lambda: breakers(run).get("warehouse") == "CLOSED", 60, "the breaker never closed"
        )
        wait_until(lambda: gamma_idle(run), 120, "the warehouse never caught up")

        expected = {rid(n) for n in range(500)}
        dead = check_exactly_once(state, "warehouse", expected, pg_ids(table))
        assert dead == {rid(7): ("permanent", "destination_rejected")}  # only the bad row
        assert check_exactly_once(state, "api", expected, api.ids()) == {}
        assert state.gamma_dlq_total() == 1
        check_running(run, gamma_pid)
    finally:
        run.stop()
        proxy.stop()
        api.stop()


# -- bad records and a hanging destination --------------------------------------------------------


@pytest.mark.slow
@pytest.mark.postgres
def test_rejected_oversized_unmappable_records_and_a_hanging_destination(
    tmp_path: Path, pg_schema: str
) -> None:
    config = fault_config(tmp_path)
    state = StateView(tmp_path / "data")
    # ACK_WAIT_TIMEOUT_MS bounds a delivery call well below the HTTP timeout of `slow`.
    (config / "gamma" / "gamma.yaml").write_text(
        "OUTPUT_BATCH_SIZE: 100\nMAX_DELIVERY_RETRIES: 5\nACK_WAIT_TIMEOUT_MS: 2500\n"
        "ACK_TIMEOUT_ACTION: RETRY_DELIVERY\n"
    )
    checked = f"{pg_schema}.checked"
    mapped = f"{pg_schema}.mapped"
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        # One row breaks a constraint: only that record goes to the DLQ.
        conn.execute(
            f"CREATE TABLE {checked} (event_id TEXT PRIMARY KEY, amount NUMERIC, "
            "CONSTRAINT not_order_13 CHECK (event_id <> 'orders_file:F-00013'))"
        )
        conn.execute(f"CREATE TABLE {mapped} (event_id TEXT PRIMARY KEY, coupon TEXT)")
    add_destination(
        config, "checked", pg_destination(checked, {"record_id": "event_id", "amount": "amount"})
    )
    # The mapping names a field only some records have.
    add_destination(
        config,
        "mapped",
        pg_destination(
            mapped, {"record_id": "event_id", "coupon_code": "coupon"}, "  on_missing_field: dlq\n"
        ),
    )
    small = Receiver()
    add_destination(config, "small", http_destination(small, "  max_body_bytes: 40000\n"))
    slow = Receiver()
    slow.hang, slow.hang_seconds = 2, 6.0
    add_destination(
        config, "slow", http_destination(slow, timeout_ms=20000, retry_count=3, retry_delay_ms=100)
    )
    big = 42
    orders = [
        order(n, coupon_code=f"SAVE{n}") if n % 10 == 0 else order(n)
        for n in range(300)
        if n != big
    ]
    orders.append(order(big, coupon_code="SAVE42", notes="x" * 60_000))
    write_orders(config, "orders", orders)
    small.start()
    slow.start()
    run = start_pipeline(config, tmp_path / "data")
    try:
        run.wait_ready()
        gamma_pid = run.get("gamma", "/admin/status").json()["pid"]

        def done() -> bool:
            delivered = run.get("control", "/api/accounting").json()["delivered"]
            return delivered.get("slow", 0) == 300 and gamma_idle(run)

        wait_until(done, 180, "the pipeline never finished")
        expected = {rid(n) for n in range(300)}

        dead = check_exactly_once(state, "checked", expected, pg_ids(checked))
        assert dead == {rid(13): ("permanent", "destination_rejected")}

        dead = check_exactly_once(state, "mapped", expected, pg_ids(mapped))
        with_coupon = {rid(n) for n in range(0, 300, 10)} | {rid(big)}
        assert set(dead) == expected - with_coupon
        assert set(dead.values()) == {("poison", "missing_field")}
        with psycopg.connect(PG_DSN) as conn:
            coupons = dict(conn.execute(f"SELECT event_id, coupon FROM {mapped}").fetchall())
        assert coupons[rid(10)] == "SAVE10"

        dead = check_exactly_once(state, "small", expected, small.ids())
        assert dead == {rid(big): ("poison", "record_too_large")}

        # The hanging destination: its first two calls were abandoned after ACK_WAIT_TIMEOUT_MS
        # and retried; nothing is in the DLQ and the receiver holds each record once.
        assert check_exactly_once(state, "slow", expected, slow.ids()) == {}
        assert slow.hung == 2
        waits = run.get("gamma", "/admin/ack/wait-stats").json()
        assert waits["destinations"]["slow"]["timeouts"] >= 2, waits

        entries = run.get("gamma", "/admin/dlq/entries?limit=1000&offset=0").json()["entries"]
        too_large = [e for e in entries if e["reason"] == "record_too_large"]
        assert len(too_large) == 1 and "max_body_bytes" in too_large[0]["error"]
        assert breakers(run) == dict.fromkeys(("checked", "mapped", "slow", "small"), "CLOSED")
        check_running(run, gamma_pid)
    finally:
        run.stop()
        small.stop()
        slow.stop()


def test_receiver_answers() -> None:
    """The test's own receiver keeps one copy per record id and counts the copies."""
    receiver = Receiver()
    receiver.start()
    try:
        for _ in range(2):
            httpx.post(receiver.url, json=[{"record_id": "a"}, {"record_id": "b"}])
    finally:
        receiver.stop()
    assert receiver.ids() == {"a", "b"} and receiver.copies == {"a": 2, "b": 2}


# -- data classification at run time -------------------------------------------------------------


def test_a_default_destination_that_would_receive_confidential_data_is_refused_at_load(
    tmp_path: Path,
) -> None:
    config = fault_config(tmp_path)
    orders = config / "alpha" / "sources" / "orders.yaml"
    orders.write_text(orders.read_text() + "\ndata_classification: confidential\n")
    (config / "gamma" / "destinations" / "public_feed.yaml").write_text(
        "destination_id: public_feed\ndestination_type: file\n"
        f"connection:\n  path: {tmp_path / 'out.jsonl'}\n"
        "authorization:\n  data_classification: public\n"
    )
    (config / "gamma" / "gamma.yaml").write_text("default_destination: public_feed\n")

    done = dps("validate", str(config))

    assert done.returncode == 1
    assert "gamma/gamma.yaml" in done.stdout and "default_destination" in done.stdout
    assert "orders_file" in done.stdout


@pytest.mark.slow
def test_records_of_a_source_gamma_does_not_know_never_reach_a_public_destination(
    tmp_path: Path,
) -> None:
    """A source added and reloaded in alpha only is unknown to gamma's configuration: gamma
    treats its data as restricted, so each record goes to the DLQ as ``unauthorized``, never to
    the public file."""
    config = fault_config(tmp_path)
    for name in ("orders.yaml", "crm.yaml"):
        source = config / "alpha" / "sources" / name
        source.write_text(source.read_text() + "\ndata_classification: public\n")
    out = tmp_path / "public" / "out.jsonl"
    (config / "gamma" / "destinations" / "public_feed.yaml").write_text(
        "destination_id: public_feed\ndestination_type: file\n"
        f"connection:\n  path: {out}\nauthorization:\n  data_classification: public\n"
    )
    (config / "gamma" / "gamma.yaml").write_text("default_destination: public_feed\n")
    state = StateView(tmp_path / "data")
    run = start_pipeline(config, tmp_path / "data")
    try:
        run.wait_ready()
        gamma_pid = run.get("gamma", "/admin/status").json()["pid"]
        late = config / "input" / "late"
        late.mkdir()
        (config / "alpha" / "sources" / "late.yaml").write_text(
            "source_id: late_src\nsource_type: file\ndata_classification: public\n"
            "connection:\n  path: input/late\n  pattern: '*.ndjson'\n"
            "parsing:\n  format: ndjson\n  id_field: order_id\n"
        )
        assert run.post("alpha", "/admin/config/reload").status_code == 200
        tmp = late / ".late.tmp"
        tmp.write_text("".join(json.dumps(order(n)) + "\n" for n in range(20)))
        tmp.rename(late / "late.ndjson")

        def all_dead() -> bool:
            return int(run.get("gamma", "/admin/dlq/stats").json()["size"]) == 20

        wait_until(all_dead, 120, "the records never reached the DLQ")
        entries = run.get("gamma", "/admin/dlq/entries?limit=100&offset=0").json()["entries"]
        assert {e["record_id"] for e in entries} == {f"late_src:F-{n:05d}" for n in range(20)}
        assert {(e["reason"], e["stage"], e["error_class"]) for e in entries} == {
            ("unauthorized", "route", "permanent")
        }
        assert state.delivered("public_feed") == set()
        assert not out.exists() or out.read_text() == ""
        check_running(run, gamma_pid)
    finally:
        run.stop()
