"""Runbooks B.1, B.3, E.2 and H.2 (investigation steps) performed as written against ``dps run``.

The manual's hosts (``beta:8080``) become the test pipeline's beta admin port; its paths
(``/opt/pipeline/beta/config/...``) become the copied CONFIG_DIR. Commands are run as the
manual shows them: the validators and ``beta-rule-tester`` as console scripts, ``curl`` for
the admin API, ``jq '.summary'`` on the tester's output.

Runbook B.2 (enrichment cache) is not here: enrichment is not built yet.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
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


def curl(*args: str) -> tuple[int, str]:
    done = subprocess.run(
        ["curl", "-s", "-o", "-", "-w", "\n%{http_code}", *args],
        capture_output=True,
        text=True,
        timeout=30,
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
        assert code == 404  # enrichment is not built yet
        code, body = curl(f"{beta}/admin/transform/rule-complexity")
        assert code == 200
        ids = {r["rule_id"] for r in json.loads(body)["rules"]}
        assert ids == {"TRX_042_NORMALIZE_PHONE", "TRX_050_AMOUNT_DECIMAL"}
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
