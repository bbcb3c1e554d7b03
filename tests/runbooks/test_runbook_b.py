"""Runbooks B.1, B.2, B.3, E.2 and H.2 (investigation steps) performed as written against
``dps run``.

The manual's hosts (``beta:8080``) become the test pipeline's beta admin port; its paths
(``/opt/pipeline/beta/config/...``) become the copied CONFIG_DIR. Commands are run as the
manual shows them: the validators and ``beta-rule-tester`` as console scripts, ``curl`` for
the admin API, ``jq '.summary'`` on the tester's output.

B.2 (enrichment cache) has its own test, with an enrichment database (SQLite) and an HTTP
enrichment source served by the test, which stops and restarts it: with ``STALE_CACHE`` records
keep flowing from the cache, with ``FAIL`` they go to the Beta DLQ with the rule id and why, and
they flow again when the source is back.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.integration.pipeline_harness import copy_quickstart, start_pipeline, wait_until

REPO = Path(__file__).resolve().parents[2]
B1_RULE = REPO / "tests/fixtures/runbooks/config/beta/transforms/rules/new_rule.yaml"
B3_SCORING = REPO / "tests/fixtures/runbooks/config/beta/quality/scoring.yaml"
BIN = Path(sys.executable).parent

CAST_RULE = """\
rule_id: TRX_050_AMOUNT_DECIMAL
enabled: true
priority: 400
match: {field: amount, condition: exists}
transform: {type: cast, config: {to: decimal, scale: 2}}
on_failure: dlq
"""


def curl(*args: str, cwd: Path | None = None) -> tuple[int, str]:
    done = subprocess.run(
        ["curl", "-s", "-o", "-", "-w", "\n%{http_code}", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=cwd,
    )
    body, _, code = done.stdout.rpartition("\n")
    return int(code), body


def sh(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=cwd)


def _orders(path: Path, rows: list[dict[str, object]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_runbooks_b1_b3_e2_h2_against_a_running_pipeline(tmp_path: Path) -> None:
    config = copy_quickstart(tmp_path / "config")
    rules_dir = config / "beta" / "transforms" / "rules"
    for old in rules_dir.glob("*.yaml"):
        old.unlink()  # start from no rules: B.1 adds the phone rule
    (rules_dir / "amount.yaml").write_text(CAST_RULE)
    shutil.rmtree(config / "input" / "orders")
    (config / "input" / "orders").mkdir()
    (config / "input" / "crm").exists() and shutil.rmtree(config / "input" / "crm")
    (config / "input" / "crm").mkdir(exist_ok=True)
    data_dir = tmp_path / "data"
    run = start_pipeline(config, data_dir)
    beta = run.url("beta")
    try:
        run.wait_ready()
        wait_until(lambda: curl(f"{beta}/admin/health")[0] == 200, 60, "beta never healthy")

        # -- B.1 step 1-2: the rule file, validated ----------------------------------------
        shutil.copy(B1_RULE, rules_dir / "new_rule.yaml")
        done = sh(str(BIN / "beta-rule-validator"), str(rules_dir / "new_rule.yaml"), cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        # step 3-4: tested on samples, the summary read with jq
        (tmp_path / "test_data").mkdir()
        (tmp_path / "test_data" / "phone_samples.json").write_text(
            json.dumps([{"phone_number": "(555) 123-4567"}, {"phone_number": "n/a"}, {}])
        )
        done = sh(
            str(BIN / "beta-rule-tester"),
            "--rule",
            str(rules_dir / "new_rule.yaml"),
            "--input",
            "test_data/phone_samples.json",
            "--output",
            "test_results/phone_transform_results.json",
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
        jq = sh("jq", ".summary", "test_results/phone_transform_results.json", cwd=tmp_path)
        summary = json.loads(jq.stdout)
        assert (summary["matched"], summary["transformed"]) == (2, 1)
        # step 6-7: enabled, reloaded
        text = (rules_dir / "new_rule.yaml").read_text()
        (rules_dir / "new_rule.yaml").write_text(text.replace("enabled: false", "enabled: true"))
        code, body = curl("-X", "POST", f"{beta}/admin/config/reload")
        assert code == 200, body
        # validation: the rule appears in the active rules list
        status = json.loads(curl(f"{beta}/admin/status")[1])
        assert "TRX_042_NORMALIZE_PHONE" in status["active_rules"]

        # -- B.3: scoring updated, validated, reloaded ------------------------------------
        shutil.copy(B3_SCORING, config / "beta" / "quality" / "scoring.yaml")
        done = sh(
            str(BIN / "beta-config-validator"),
            str(config / "beta" / "quality" / "scoring.yaml"),
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        code, body = curl("-X", "POST", f"{beta}/admin/config/reload")
        assert code == 200, body

        # Traffic: good orders, one with amount "abc" (cast -> DLQ with the rule id), and one
        # without transaction_date and a week old: 0.3 * 0.8 + 0.25 + 0.25 + 0.2 * 0 = 0.74.
        rows: list[dict[str, object]] = [
            {
                "order_id": f"ORD-{i}",
                "customer_id": f"C{i}",
                "transaction_date": "2026-11-27",
                "amount": "10.5",
                "phone_number": "(555) 123-4567",
                "created_at": "2026-11-27T00:00:00Z",
            }
            for i in range(20)
        ]
        rows.append(
            {"order_id": "ORD-BAD", "customer_id": "C", "transaction_date": "x", "amount": "abc"}
        )
        rows.append(
            {
                "order_id": "ORD-LOW",
                "customer_id": "C-LOW",
                "amount": "1",
                "phone_number": "(555) 123-4567",
                "created_at": "2026-11-20T00:00:00Z",
            }
        )
        _orders(config / "input" / "orders" / "orders-runbook.ndjson", rows)

        def scored() -> bool:
            stats = json.loads(curl(f"{beta}/admin/quality/stats")[1])
            return int(stats["records_scored"]) >= 21

        try:
            wait_until(scored, 60, "beta never scored the orders")
        except AssertionError:
            acc = curl(f"{run.url('control')}/api/accounting")[1]
            raise AssertionError(f"{curl(f'{beta}/admin/quality/stats')[1]} {acc}") from None

        # step 8 of B.1: the rule's metrics
        code, metrics = curl(f"{beta}/metrics")
        lines = [line for line in metrics.splitlines() if "TRX_042" in line]
        assert any('result="applied"' in line and not line.endswith(" 0.0") for line in lines)

        # B.3 step 5: quality stats
        code, body = curl(f"{beta}/admin/quality/stats")
        assert code == 200
        stats = json.loads(body)
        assert stats["levels"] == {"ok": 21, "warn": 0, "error": 0, "reject": 0}
        assert stats["thresholds"] == {"warn": 0.7, "error": 0.5, "reject": 0.3}

        # -- E.2 ----------------------------------------------------------------------------
        code, body = curl(f"{beta}/admin/quality/distribution")
        assert code == 200
        assert sum(b["count"] for b in json.loads(body)["buckets"]) == stats["records_scored"]
        code, body = curl(f"{beta}/admin/quality/low-scores?threshold=0.5&limit=100")
        assert code == 200 and json.loads(body)["records"] == []
        code, body = curl(f"{beta}/admin/quality/low-scores?threshold=0.8&limit=100")
        assert code == 200
        low = json.loads(body)["records"]
        assert low[0]["score"] == 0.74
        assert [r["record_id"] for r in low] == ["orders_file:ORD-LOW"]
        assert any(
            c.startswith("completeness: transaction_date is missing") for c in low[0]["checks"]
        )
        assert low[0]["dimensions"]["timeliness"] == 0.0
        code, body = curl(f"{beta}/admin/quality/dimensions")
        assert code == 200
        dims = json.loads(body)["dimensions"]
        assert set(dims) == {"completeness", "consistency", "conformance", "timeliness"}
        assert dims["completeness"]["weight"] == 0.3

        # -- H.2 investigation --------------------------------------------------------------
        code, body = curl(f"{beta}/admin/transform/parallelism")
        assert code == 200 and json.loads(body)["configured_parallelism"] >= 1
        code, body = curl(f"{beta}/admin/cache/stats")
        assert code == 200  # no enrichment source is configured here: B.2's test has them
        assert json.loads(body)["entries"] == 0 and json.loads(body)["sources"] == {}
        code, body = curl(f"{beta}/admin/transform/rule-complexity")
        assert code == 200
        complexity = {r["rule_id"]: r for r in json.loads(body)["rules"]}
        assert set(complexity) == {"TRX_042_NORMALIZE_PHONE", "TRX_050_AMOUNT_DECIMAL"}
        # The hotspots: each rule's measured time over the records it looked at.
        phone = complexity["TRX_042_NORMALIZE_PHONE"]["measured"]
        assert phone["records_evaluated"] >= 1 and phone["us_per_record"] > 0
        code, body = curl(f"{beta}/admin/transform/slow-records?threshold=100ms&limit=50")
        assert code == 200 and json.loads(body)["threshold_ms"] == 100
        code, body = curl(f"{beta}/admin/transform/slow-records?threshold=fast")
        assert code == 400 and "not a duration" in body

        # health from the Beta thresholds
        health = json.loads(curl(f"{beta}/admin/health")[1])
        assert {"transform_error_rate", "quality_score", "queue_depth"} <= set(health["checks"])
    finally:
        run.stop()

    # The DLQ: the cast failure with its rule id, the rejected record with its breakdown.
    with sqlite3.connect(data_dir / "state.db") as db:
        rows_dlq = db.execute(
            "SELECT record_id, reason, error FROM dlq_entries WHERE module = 'beta'"
        ).fetchall()
    by_id = {r[0]: (r[1], r[2]) for r in rows_dlq}
    assert by_id["orders_file:ORD-BAD"][0] == "rule_failed:TRX_050_AMOUNT_DECIMAL"
    assert "cannot be cast to decimal" in by_id["orders_file:ORD-BAD"][1]
    assert "orders_file:ORD-LOW" not in by_id


# -- B.2 and the enrichment outage --------------------------------------------------------------

CUSTOMER_DB = """\
name: customer_db
type: database
connection:
  url: sqlite:///{db}
  query: SELECT customer_id, tier FROM customers WHERE customer_id = :key
  scan_query: SELECT customer_id, tier FROM customers
cache:
  warmup: true
"""
CUSTOMER_API = """\
name: customer_api
type: http
connection:
  url: http://127.0.0.1:{port}/customers/{{key}}
  auth: {{type: bearer, token_ref: "file:{token}"}}
  timeout_seconds: 1
  connect_timeout_seconds: 0.5
cache:
  ttl_seconds: 1
"""
LOOKUP_RULES = {
    "lookup_tier.yaml": """\
rule_id: TRX_060_CUSTOMER_TIER
priority: 80
match: {field: customer_id, condition: exists}
transform:
  type: lookup
  config: {source: customer_db, fields: {customer_tier: tier}}
on_failure: dlq
""",
    "lookup_name.yaml": """\
rule_id: TRX_061_CUSTOMER_NAME
priority: 70
match: {field: customer_id, condition: exists}
transform:
  type: lookup
  config: {source: customer_api, fields: {customer_name: name}, on_miss: fail}
on_failure: dlq
""",
}
TOKEN = "b2-token"
ORDER_V1 = {
    "type": "object",
    "required": ["order_id", "amount"],
    "properties": {"amount": {"type": "number"}},
}
ORDER_V2 = {
    "x-dps": {"match": {"field": "amount_cents", "condition": "exists"}},
    "type": "object",
    "required": ["order_id", "amount_cents"],
    "properties": {"amount_cents": {"type": "integer"}},
}


class _Crm(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        key = self.path.rsplit("/", 1)[-1]
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            status, body = 401, {"error": "unauthorized"}
        elif key.startswith("C") and key[1:].isdigit() and int(key[1:]) <= 60:
            status, body = 200, {"id": key, "name": f"Customer {key}"}
        else:
            status, body = 404, {"error": "not found"}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _crm(port: int = 0) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", port), _Crm)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _order(order_id: str, customer: str) -> dict[str, object]:
    return {
        "order_id": order_id,
        "customer_id": customer,
        "amount": "10",
        "country": "GB",
        "email": "x@example.com",
        "phone_number": "+15551234567",
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _outcomes(data_dir: Path, ids: list[str]) -> dict[str, tuple[str, str]]:
    """record id -> ("delivered", payload JSON) or ("dlq", reason + error), for ``ids``."""
    found: dict[str, tuple[str, str]] = {}
    warehouse = data_dir / "warehouse.db"
    if warehouse.exists():
        with sqlite3.connect(warehouse) as db:
            try:
                for rid, data in db.execute("SELECT event_id, event_data FROM pipeline_events"):
                    found[rid] = ("delivered", str(data))
            except sqlite3.OperationalError:
                pass
    with sqlite3.connect(data_dir / "state.db") as db:
        for rid, reason, error in db.execute(
            "SELECT record_id, reason, error FROM dlq_entries WHERE module = 'beta'"
        ):
            found[rid] = ("dlq", f"{reason}: {error}")
    return {
        f"orders_file:{i}": found[f"orders_file:{i}"] for i in ids if f"orders_file:{i}" in found
    }


def test_runbook_b2_and_an_enrichment_outage_against_a_running_pipeline(tmp_path: Path) -> None:
    config = copy_quickstart(tmp_path / "config")
    shutil.rmtree(config / "input" / "orders")
    (config / "input" / "orders").mkdir()
    shutil.rmtree(config / "input" / "crm")
    (config / "input" / "crm").mkdir()
    for name, text in LOOKUP_RULES.items():
        (config / "beta" / "transforms" / "rules" / name).write_text(text)
    db = tmp_path / "customers.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE customers (customer_id TEXT, tier TEXT)")
        conn.executemany(
            "INSERT INTO customers VALUES (?, ?)", [(f"C{i}", "gold") for i in range(1, 61)]
        )
    (tmp_path / "token").write_text(TOKEN)
    server = _crm()
    port = server.server_address[1]
    (config / "beta" / "enrichment").mkdir()
    (config / "beta" / "enrichment" / "customer_db.yaml").write_text(CUSTOMER_DB.format(db=db))
    (config / "beta" / "enrichment" / "customer_api.yaml").write_text(
        CUSTOMER_API.format(port=port, token=tmp_path / "token")
    )
    beta_yaml = config / "beta" / "beta.yaml"
    settings = beta_yaml.read_text()
    beta_yaml.write_text(
        settings
        + "enrichment_sources:\n  customer_api:\n"
        + "    on_unavailable: STALE_CACHE\n    stale_ttl_seconds: 300\n"
    )
    data_dir = tmp_path / "data"
    run = start_pipeline(config, data_dir)
    beta = run.url("beta")
    batches = iter(range(100))

    def send(rows: list[dict[str, object]]) -> list[str]:
        _orders(config / "input" / "orders" / f"batch-{next(batches)}.ndjson", rows)
        return [str(r["order_id"]) for r in rows]

    def settled(ids: list[str]) -> dict[str, tuple[str, str]]:
        wait_until(lambda: len(_outcomes(data_dir, ids)) == len(ids), 60, f"{ids} not settled")
        return _outcomes(data_dir, ids)

    def refreshed() -> bool:
        status = json.loads(curl(f"{beta}/admin/cache/refresh/status")[1])
        return not status["in_progress"] and status["completion_percent"] == 100.0

    try:
        run.wait_ready()
        wait_until(lambda: curl(f"{beta}/admin/health")[0] == 200, 60, "beta never healthy")

        # 1. Check current cache status: the warmup of customer_db loaded all 60 rows.
        wait_until(refreshed, 30, "the warmup never completed")
        code, body = curl(f"{beta}/admin/cache/status")
        assert code == 200
        status = json.loads(body)
        assert set(status["sources"]) == {"customer_db", "customer_api"}
        db_status = status["sources"]["customer_db"]
        assert db_status["entries"] == 60 and db_status["refresh"]["kind"] == "warmup"
        assert db_status["refresh"]["completion_percent"] == 100.0
        assert status["sources"]["customer_api"]["on_unavailable"] == "STALE_CACHE"

        # 2. For a specific enrichment source (its data changed at the source).
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE customers SET tier = 'platinum' WHERE customer_id = 'C1'")
        code, body = curl("-X", "POST", f"{beta}/admin/cache/refresh/customer_db")
        assert code == 202, body
        assert json.loads(body)["refreshes"][0]["source"] == "customer_db"
        # 4. Monitor refresh progress
        wait_until(refreshed, 30, "the refresh of customer_db never completed")
        # 3. For full cache refresh
        code, body = curl("-X", "POST", f"{beta}/admin/cache/refresh/all")
        assert code == 202, body
        assert {r["source"] for r in json.loads(body)["refreshes"]} == {
            "customer_db",
            "customer_api",
        }
        wait_until(refreshed, 30, "the full refresh never completed")
        code, body = curl(f"{beta}/admin/cache/refresh/status")
        jobs = {j["source"]: j for j in json.loads(body)["refreshes"]}
        assert jobs["customer_db"]["strategy"] == "full_scan"
        assert jobs["customer_api"]["strategy"] == "refetch_cached_keys"
        code, body = curl("-X", "POST", f"{beta}/admin/cache/refresh/nope")
        assert code == 404 and "customer_api" in body

        # Traffic with both sources up: enriched from both.
        ids = send([_order(f"UP-{i}", f"C{i}") for i in range(1, 6)])
        first = settled(ids)
        assert {v[0] for v in first.values()} == {"delivered"}, first
        payload = first["orders_file:UP-1"][1]
        assert "platinum" in payload and "Customer C1" in payload

        # 5. Verify cache populated: entry counts and hit rates.
        code, body = curl(f"{beta}/admin/cache/stats")
        assert code == 200
        stats = json.loads(body)
        assert stats["sources"]["customer_db"]["entries"] == 60
        assert stats["sources"]["customer_db"]["hit_rate"] == 1.0  # warmed: every lookup hit
        assert stats["sources"]["customer_api"]["entries"] == 5
        assert stats["sources"]["customer_api"]["misses"] == 5
        assert stats["entries"] == 65 and 0 < stats["hit_rate"] < 1
        code, metrics = curl(f"{beta}/metrics")
        values = {
            line.split(" ")[0]: float(line.split(" ")[1])
            for line in metrics.splitlines()
            if line.startswith("beta_") and " " in line
        }
        assert values["beta_cache_size"] == 65
        assert values["beta_enrichment_lookups_total"] == 10
        assert values["beta_enrichment_cache_hit_rate"] == 0.5
        assert values["beta_enrichment_duration_seconds_count"] >= 1

        # The HTTP source stops. STALE_CACHE: C1-C5 (expired, TTL 1 s) keep flowing from the
        # cache; C40 was never cached, so its record goes to the DLQ with the rule id and why.
        server.shutdown()
        server.server_close()
        time.sleep(1.2)
        ids = send([_order(f"STALE-{i}", f"C{i}") for i in (1, 2, 3, 4, 5, 40)])
        stale = settled(ids)
        for i in range(1, 6):
            assert stale[f"orders_file:STALE-{i}"][0] == "delivered", stale
            assert f"Customer C{i}" in stale[f"orders_file:STALE-{i}"][1]
        kind, why = stale["orders_file:STALE-40"]
        assert kind == "dlq" and why.startswith("rule_failed:TRX_061_CUSTOMER_NAME")
        assert "customer_api is unavailable" in why
        status = json.loads(curl(f"{beta}/admin/cache/status")[1])
        assert status["sources"]["customer_api"]["available"] is False
        code, body = curl(f"{beta}/admin/health")
        health = json.loads(body)
        # (also UNHEALTHY on the error rate: 1 record in 11 went to the DLQ)
        assert health["status"] != "HEALTHY", body
        assert health["checks"]["enrichment_sources"]["status"] == "DEGRADED"
        assert "customer_api" in health["checks"]["enrichment_sources"]["message"]
        assert (
            json.loads(curl(f"{beta}/admin/cache/stats")[1])["sources"]["customer_api"][
                "stale_served"
            ]
            == 5
        )

        # FAIL: the same cached customers now go to the DLQ while the source is down.
        beta_yaml.write_text(beta_yaml.read_text().replace("STALE_CACHE", "FAIL"))
        code, body = curl("-X", "POST", f"{beta}/admin/config/reload")
        assert code == 200, body
        ids = send([_order(f"FAIL-{i}", f"C{i}") for i in (1, 2)])
        failed = settled(ids)
        for value in failed.values():
            assert value[0] == "dlq" and "on_unavailable is FAIL" in value[1], failed

        # The source is back: records flow again.
        server = _crm(port)
        ids = send([_order(f"BACK-{i}", f"C{i}") for i in (1, 2, 40)])
        back = settled(ids)
        assert {v[0] for v in back.values()} == {"delivered"}, back
        assert "Customer C40" in back["orders_file:BACK-40"][1]

        # The schema registry in compatibility mode: v1 and v2 of "order" loaded at once,
        # synchronized (beta_schema_sync), each record checked against the version it negotiates.
        schemas = config / "beta" / "schemas" / "order"
        schemas.mkdir(parents=True)
        (schemas / "v1.json").write_text(json.dumps(ORDER_V1))
        (schemas / "v2.json").write_text(json.dumps(ORDER_V2))
        code, body = curl("-X", "POST", f"{beta}/admin/schemas/sync")
        assert code == 200, body
        assert json.loads(curl(f"{beta}/admin/schemas")[1])["schemas"]["order"] == {
            "record_type": "order",
            "versions": [2, 1],
            "default_version": 1,
            "negotiated_versions": [2],
        }
        v1_ok = {**_order("SCHEMA-1", "C1"), "type": "order", "amount": 10}
        v1_bad = {**_order("SCHEMA-2", "C1"), "type": "order"}  # amount is a string
        v2_ok = {**_order("SCHEMA-3", "C2"), "type": "order", "amount_cents": 1000}
        v2_bad = {**_order("SCHEMA-4", "C2"), "type": "order", "amount_cents": "1000"}
        for row in (v2_ok, v2_bad):
            row["amount"] = 10
        checked = settled(send([v1_ok, v1_bad, v2_ok, v2_bad]))
        assert checked["orders_file:SCHEMA-1"][0] == "delivered"
        assert checked["orders_file:SCHEMA-3"][0] == "delivered"
        kind, why = checked["orders_file:SCHEMA-2"]
        assert kind == "dlq" and why.startswith("schema_violation") and "order/v1" in why
        kind, why = checked["orders_file:SCHEMA-4"]
        assert kind == "dlq" and why.startswith("schema_violation") and "order/v2" in why

        # State Backup: export; E.3: clear; State Recovery: import, as the manual writes them.
        code, body = curl(f"{beta}/admin/cache/export")
        assert code == 200
        (tmp_path / "beta-cache-latest.json").write_text(body)
        exported = json.loads(body)
        assert exported["entries"] == 66
        code, body = curl("-X", "POST", f"{beta}/admin/cache/clear")
        assert code == 200 and json.loads(body)["entries_dropped"] == 66
        assert json.loads(curl(f"{beta}/admin/cache/stats")[1])["entries"] == 0
        code, body = curl(
            "-X",
            "POST",
            f"{beta}/admin/cache/import",
            "-d",
            "@beta-cache-latest.json",
            cwd=tmp_path,
        )
        assert code == 200, body
        assert json.loads(body)["imported"] == {"customer_db": 60, "customer_api": 6}
        assert json.loads(curl(f"{beta}/admin/cache/stats")[1])["entries"] == 66
        code, body = curl("-X", "POST", f"{beta}/admin/cache/import", "-d", '{"x": 1}')
        assert code == 400 and "not a cache export" in body

        health = json.loads(curl(f"{beta}/admin/health")[1])
        assert "enrichment_cache_hit_rate" in health["checks"]
    finally:
        run.stop()
        server.shutdown()
        server.server_close()
