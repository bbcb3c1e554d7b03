"""Runbook C (C.1 new destination, C.2 DLQ, C.3 circuit breakers) and D.2's delivery query, as
written, against a running ``dps run`` with a real PostgreSQL destination and a real HTTP
destination that is down at first, then answers 500 to every third request. The state store is
on PostgreSQL too, so D.2's query runs verbatim on the delivery log.

Checks: the HTTP destination being down never stalls the PostgreSQL one (per-destination spools),
its breaker opens and closes, every record ends delivered exactly once or in the DLQ with its
class, and the manual's curl commands work as pasted.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tests.integration.pipeline_harness import PG_DSN, copy_quickstart, start_pipeline, wait_until

#: Runbook D.2's delivery query, verbatim.
D2_DELIVERY_QUERY = """
   SELECT destination_id,
          count(*) FILTER (WHERE status='delivered') as delivered,
          count(*) FILTER (WHERE status='failed') as failed,
          count(*) as total
   FROM delivery_log
   WHERE timestamp > now() - interval '1 hour'
   GROUP BY destination_id;
"""
#: Every gamma metric of the manual's "Metric Types" tables and alert rules, and its labels.
MANUAL_METRICS = (
    'gamma_records_delivered_total{destination="warehouse"}',
    'gamma_delivery_failures_total{destination="warehouse"}',
    "gamma_pending_deliveries ",
    "gamma_dlq_size ",
    *(
        f'gamma_delivery_duration_seconds_bucket{{destination="warehouse",le="{le}"}}'
        for le in ("0.01", "0.05", "0.1", "0.5", "1.0", "5.0", "+Inf")
    ),
    'gamma_destination_status{destination="events_api"}',
    'gamma_circuit_breaker_state{destination="events_api"}',
    "pipeline_end_to_end_latency_seconds_bucket",
)


def curl(*args: str) -> tuple[int, Any]:
    done = subprocess.run(
        ["curl", "-s", "-o", "-", "-w", "\n%{http_code}", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    body, _, code = done.stdout.rpartition("\n")
    try:
        return int(code), json.loads(body)
    except json.JSONDecodeError:
        return int(code), body


class Flaky:
    """An HTTP endpoint on a fixed port: starts and stops on command; 500 on every third POST."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: dict[str, int] = {}
        self.posts = 0
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        flaky = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                self.send_response(200)
                self.end_headers()

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                flaky.posts += 1
                if flaky.posts % 3 == 0:
                    self.send_response(500)
                    self.end_headers()
                    return
                for item in json.loads(body):
                    rid = item["record_id"]
                    flaky.received[rid] = flaky.received.get(rid, 0) + 1
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


@pytest.fixture
def schema() -> Iterator[str]:
    name = f"rbc_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
        # One row in ten breaks a constraint: those go to the DLQ, the rest of their batch lands.
        conn.execute(
            f"CREATE TABLE {name}.pipeline_events (event_id TEXT PRIMARY KEY, source_id TEXT, "
            "event_timestamp TEXT, quality_score DOUBLE PRECISION, event_data JSONB, "
            "CONSTRAINT no_sevens CHECK (event_id NOT LIKE '%7'))"
        )
    yield name
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {name} CASCADE")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.postgres
@pytest.mark.slow
def test_runbook_c_against_a_running_pipeline(tmp_path: Path, schema: str) -> None:
    config = copy_quickstart(tmp_path / "qs")
    pipeline = config / "pipeline.yaml"
    pipeline.write_text(
        pipeline.read_text().replace(
            "state:\n  backend: sqlite\n",
            f"state:\n  backend: postgresql\n  dsn: {PG_DSN}\n  schema: {schema}\n",
        )
    )
    gamma = config / "gamma"
    wh = gamma / "destinations" / "warehouse.yaml"
    text = wh.read_text().replace(
        "connection:\n  type: sqlite\n  path: ${DPS_DATA_DIR:-data}/warehouse.db\n",
        "connection:\n  type: postgresql\n  host: 127.0.0.1\n  port: 5432\n  database: test\n"
        "  username: postgres\n  ssl_mode: disable\n  pool_size: 2\n",
    )
    wh.write_text(text.replace("table: pipeline_events", f"table: {schema}.pipeline_events"))
    port = _free_port()
    api = Flaky(port)
    (gamma / "destinations" / "events_api.yaml").write_text(
        "destination_id: events_api\ndestination_type: http\nenabled: true\n"
        f"connection:\n  url: http://127.0.0.1:{port}/in\n"
        "delivery:\n  batch_size: 200\n  timeout_ms: 2000\n  retry_count: 1\n"
        "  retry_delay_ms: 50\n"
        "circuit_breaker:\n  failure_threshold: 2\n  window_seconds: 60\n  cooldown_seconds: 2\n"
    )
    (gamma / "routing" / "rules" / "to_api.yaml").write_text(
        "rule_id: ROUTE_ORDERS_TO_API\nenabled: true\npriority: 10\n"
        "match:\n  source_id:\n    in: [orders_file]\ndestination: events_api\n"
    )
    run = start_pipeline(config, tmp_path / "data")
    try:
        run.wait_ready()
        g = run.url("gamma")

        # C.3 while the API is down: its breaker opens, the warehouse keeps flowing.
        def api_open() -> bool:
            code, body = curl(f"{g}/admin/circuit-breakers/status")
            return code == 200 and "events_api" in body["open"]

        wait_until(api_open, 90, "the events_api breaker never opened")

        def warehouse_done() -> bool:
            acc = run.get("control", "/api/accounting").json()
            return (
                acc["ingested"] > 0
                and acc["in_flight"]["delivery"] == 0
                and (
                    run.get("gamma", "/admin/status")
                    .json()["pending_by_destination"]
                    .get("warehouse")
                    is None
                )
            )

        wait_until(warehouse_done, 120, "the warehouse stalled behind the down API")
        code, status = curl(f"{g}/admin/destinations/events_api/status")
        assert (
            code == 200
            and status["pending"] > 0
            and status["circuit_breaker"]
            in (
                "OPEN",
                "HALF_OPEN",
            )
        )
        code, errors = curl(f"{g}/admin/destinations/events_api/errors?since=1h")
        assert code == 200 and errors["count"] > 0
        assert set(errors["by_error_class"]) == {"retryable"}
        code, test = curl(f"{g}/admin/destinations/events_api/test")
        assert code == 503 and test["ok"] is False

        api.start()  # recovered (but 500 on every third request)
        code, test = curl(f"{g}/admin/destinations/events_api/test")
        assert code == 200 and test["ok"] is True, test
        code, reset = curl("-X", "POST", f"{g}/admin/circuit-breakers/events_api/reset")
        assert code == 200 and reset["state"] == "CLOSED"

        def api_done() -> bool:
            return run.get("gamma", "/admin/status").json()["idle"] is True

        wait_until(api_done, 180, "events_api never caught up")
        code, body = curl(f"{g}/admin/circuit-breakers/status")
        assert body["circuit_breakers"]["events_api"]["state"] == "CLOSED"

        acc = run.get("control", "/api/accounting").json()
        # Exactly once at the idempotent PostgreSQL destination; the rest in the DLQ.
        with psycopg.connect(PG_DSN) as conn:
            rows, distinct = conn.execute(
                f"SELECT count(*), count(DISTINCT event_id) FROM {schema}.pipeline_events"
            ).fetchone()  # type: ignore[misc]
        assert rows == distinct == acc["delivered"]["warehouse"] > 0
        assert set(api.received) and len(api.received) == acc["delivered"]["events_api"]

        # C.2 as written.
        code, stats = curl(f"{g}/admin/dlq/stats")
        assert code == 200 and stats["by_destination"].get("warehouse", 0) > 0
        code, entries = curl(f"{g}/admin/dlq/entries?limit=100&offset=0")
        assert code == 200 and entries["entries"]
        bad = [e for e in entries["entries"] if e["destination_id"] == "warehouse"]
        assert all(e["record_id"].endswith("7") for e in bad)
        assert all(e["error_class"] == "permanent" and e["stage"] == "deliver" for e in bad)
        assert all(e["attempt_history"] and e["correlation_id"] for e in bad)
        code, analysis = curl(f"{g}/admin/dlq/analysis")
        assert code == 200 and "destination_rejected" in analysis["failure_reasons"]
        assert analysis["failure_reasons"]["destination_rejected"]["first_seen"]

        # Fix the "data" (drop the constraint), replay two entries as pasted, then the rest.
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f"ALTER TABLE {schema}.pipeline_events DROP CONSTRAINT no_sevens")
        two = [bad[0]["entry_id"], bad[1]["entry_id"]]
        code, replay = curl(
            "-X", "POST", f"{g}/admin/dlq/replay", "-d", json.dumps({"entry_ids": two})
        )
        assert code == 200 and replay["replayed"] == 2, replay
        # Step 4's second form, as pasted: transient failures wait in the spool, never in the
        # gamma DLQ, so nothing here is retry-eligible.
        code, eligible = curl(
            "-X", "POST", f"{g}/admin/dlq/replay", "-d", '{"filter": {"retry_eligible": true}}'
        )
        assert code == 200 and eligible["matched"] == eligible["replayed"] == 0, eligible
        code, again = curl(
            "-X", "POST", f"{g}/admin/dlq/replay", "-d", json.dumps({"entry_ids": two})
        )
        assert again["replayed"] == 0  # only open entries are replayed: idempotent
        code, export = curl(f"{g}/admin/dlq/export?format=json")
        assert code == 200 and isinstance(export, list) and len(export) == stats["size"] - 2
        ndjson = subprocess.run(
            ["curl", "-s", f"{g}/admin/dlq/export?format=ndjson"], capture_output=True, text=True
        ).stdout.splitlines()
        assert len(ndjson) == len(export)
        rest = [e["entry_id"] for e in export if e["destination_id"] == "warehouse"]
        code, purge = curl(
            "-X", "POST", f"{g}/admin/dlq/purge", "-d", json.dumps({"entry_ids": rest[:1]})
        )
        assert code == 200 and purge["purged"] == 1
        # Step 7 as pasted: ids that name no open entry are reported, nothing is purged.
        code, pasted = curl(
            "-X", "POST", f"{g}/admin/dlq/purge", "-d", '{"entry_ids": ["entry_1", "entry_2"]}'
        )
        assert code == 200 and pasted["purged"] == 0
        assert pasted["unmatched_entry_ids"] == ["entry_1", "entry_2"]
        # Retention (the gamma_dlq_cleanup job): nothing here is 14 days old yet.
        code, cleanup = curl("-X", "POST", f"{g}/admin/dlq/cleanup")
        assert code == 200 and cleanup["retention_days"] == 14 and cleanup["archived"] == 0
        code, refused = curl("-X", "POST", f"{g}/admin/dlq/cleanup", "-d", '{"retention_days": -1}')
        assert code == 400 and "expected 0 or more" in refused["error"]
        scheduler = run.url("control")
        code, _ = curl("-X", "POST", f"{scheduler}/admin/jobs/gamma_dlq_cleanup/trigger")
        assert code == 202

        def cleanup_job_done() -> bool:
            last = curl(f"{scheduler}/admin/jobs/gamma_dlq_cleanup/status")[1]["last_run"]
            return bool(last) and last["status"] == "SUCCESS"

        wait_until(cleanup_job_done, 30, "the gamma_dlq_cleanup job never succeeded")
        code, stats = curl(f"{g}/admin/dlq/stats")
        assert f"\ngamma_dlq_size {float(stats['size'])}\n" in run.get("gamma", "/metrics").text

        def replayed_landed() -> bool:
            with psycopg.connect(PG_DSN) as conn:
                n = conn.execute(
                    f"SELECT count(*) FROM {schema}.pipeline_events WHERE event_id = ANY(%s)",
                    ([bad[0]["record_id"], bad[1]["record_id"]],),
                ).fetchone()
            return n is not None and n[0] == 2

        wait_until(replayed_landed, 60, "the replayed records never reached PostgreSQL")
        with psycopg.connect(PG_DSN) as conn:
            audited = {r[0] for r in conn.execute(f"SELECT action FROM {schema}.audit_log")}
        assert {"dlq_replay", "dlq_purge", "dlq_cleanup", "circuit_breaker_reset"} <= audited

        # C.1: a new destination, disabled, tested, test-delivered, enabled, routed.
        (gamma / "destinations" / "new_destination.yaml").write_text(
            "destination_id: analytics_warehouse\ndestination_type: database\nenabled: false\n"
            "connection:\n  type: postgresql\n  host: 127.0.0.1\n  port: 5432\n  database: test\n"
            "  username: postgres\n  ssl_mode: disable\n  pool_size: 2\n"
            "delivery:\n  batch_size: 500\n  timeout_ms: 30000\n  retry_count: 3\n"
            "  retry_delay_ms: 1000\n"
            f"format:\n  type: insert\n  table: {schema}.analytics_events\n  column_mapping:\n"
            "    record_id: event_id\n    timestamp: event_timestamp\n    payload: event_data\n"
            "authorization:\n  data_classification: internal\n  allowed_sources:\n"
            "    - api_source_1\n    - file_source_1\n"
        )
        assert curl("-X", "POST", f"{g}/admin/config/reload")[0] == 200
        code, test = curl(f"{g}/admin/destinations/analytics_warehouse/test")
        assert code == 200 and test["ok"] is True, test
        code, sent = curl(
            "-X",
            "POST",
            f"{g}/admin/destinations/analytics_warehouse/test-delivery",
            "-d",
            '{"test_field": "test_value"}',
        )
        assert code == 200 and sent["ok"] is True, sent
        with psycopg.connect(PG_DSN) as conn:
            row = conn.execute(
                f"SELECT event_data->>'test_field' FROM {schema}.analytics_events"
            ).fetchone()
        assert row == ("test_value",)
        nd = gamma / "destinations" / "new_destination.yaml"
        nd.write_text(nd.read_text().replace("enabled: false", "enabled: true"))
        (gamma / "routing" / "rules" / "to_analytics.yaml").write_text(
            "rule_id: ROUTE_TO_ANALYTICS\nenabled: true\npriority: 100\n"
            "match:\n  source_id:\n    in: [api_source_1, file_source_1]\n"
            "  quality_score:\n    gte: 0.7\n"
            "destination: analytics_warehouse\n"
        )
        assert curl("-X", "POST", f"{g}/admin/config/reload")[0] == 200
        code, status = curl(f"{g}/admin/destinations/analytics_warehouse/status")
        assert code == 200 and status["enabled"] is True and status["status"] == "active"
        assert status["routes"] == ["ROUTE_TO_ANALYTICS"] and status["worker_running"]
        code, listing = curl(f"{g}/admin/destinations")
        assert "analytics_warehouse" in [d["destination_id"] for d in listing["destinations"]]

        # H.3 views answer.
        for path in (
            "/admin/delivery/parallelism",
            "/admin/destinations/latency-breakdown",
            "/admin/ack/wait-stats",
            "/admin/render/stats",
        ):
            code, body = curl(g + path)
            assert code == 200 and body, path
        metrics = run.get("gamma", "/metrics").text
        missing = [name for name in MANUAL_METRICS if name not in metrics]
        assert not missing, missing
        assert 'gamma_circuit_breaker_state{destination="events_api"} 0.0' in metrics
        assert 'gamma_destination_status{destination="events_api"} 1.0' in metrics

        # D.2's delivery query, verbatim, on the delivery log in PostgreSQL: the counts match
        # what the destinations hold and what went to the DLQ.
        with psycopg.connect(PG_DSN, options=f"-c search_path={schema}") as conn:
            d2 = {r[0]: r[1:] for r in conn.execute(D2_DELIVERY_QUERY)}
            in_pg = conn.execute("SELECT count(*) FROM pipeline_events").fetchone()
        assert d2["events_api"] == (len(api.received), 0, len(api.received))
        delivered, failed, total = d2["warehouse"]
        assert in_pg is not None and delivered == in_pg[0] and failed > 0
        assert total == delivered + failed
    finally:
        run.stop()
        api.stop()
