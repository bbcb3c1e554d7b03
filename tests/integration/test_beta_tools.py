"""``beta-rule-tester`` (Runbook B.1 steps 3-4) and ``dps test``, run as operators run them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
B1_RULE = (
    REPO
    / "tests"
    / "fixtures"
    / "runbooks"
    / "config"
    / "beta"
    / "transforms"
    / "rules"
    / "new_rule.yaml"
)
BIN = Path(sys.executable).parent


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=cwd)


def test_b1_rule_tester_writes_results_and_a_summary_jq_reads(tmp_path: Path) -> None:
    (tmp_path / "test_data").mkdir()
    samples = [
        {"phone_number": "(555) 123-4567"},
        {"phone_number": "555.123.4567"},
        {"phone_number": "not a phone"},
        {"name": "no phone"},
        {"phone_number": 5551234567},  # not a string: the rule fails, on_failure: skip
    ]
    (tmp_path / "test_data" / "phone_samples.json").write_text(json.dumps(samples))
    shutil.copy(B1_RULE, tmp_path / "new_rule.yaml")

    done = _run(
        str(BIN / "beta-rule-tester"),
        "--rule",
        "new_rule.yaml",
        "--input",
        "test_data/phone_samples.json",
        "--output",
        "test_results/phone_transform_results.json",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr

    jq = _run("jq", ".summary", "test_results/phone_transform_results.json", cwd=tmp_path)
    assert jq.returncode == 0, jq.stderr
    summary = json.loads(jq.stdout)
    assert summary["total"] == 5
    assert summary["matched"] == 4
    assert summary["transformed"] == 2
    assert summary["skipped"] == 1
    assert summary["failed"] == 0
    assert summary["unchanged"] == 2
    assert summary["rules"] == ["TRX_042_NORMALIZE_PHONE"]
    assert summary["timing"]["total_ms"] >= 0 and "avg_ms" in summary["timing"]
    results = json.loads((tmp_path / "test_results" / "phone_transform_results.json").read_text())
    outputs = [r["output"].get("phone_number") for r in results["results"]]
    assert outputs[:3] == ["+15551234567", "+15551234567", "not a phone"]
    assert results["results"][4]["status"] == "skipped"


def test_rule_tester_refuses_a_rule_whose_regex_does_not_compile(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        "rule_id: BAD\ntransform:\n  type: regex_replace\n  config:\n"
        "    field: x\n    pattern: '([0-9]'\n    replacement: y\n"
    )
    (tmp_path / "in.json").write_text("[{}]")
    done = _run(
        str(BIN / "beta-rule-tester"),
        "--rule",
        "bad.yaml",
        "--input",
        "in.json",
        "--output",
        "out.json",
        cwd=tmp_path,
    )
    assert done.returncode == 1
    assert "bad.yaml" in done.stderr and "not a valid regular expression" in done.stderr
    assert not (tmp_path / "out.json").exists()


def test_rule_tester_reports_a_failed_cast_with_the_rule_id(tmp_path: Path) -> None:
    (tmp_path / "cast.yaml").write_text(
        "rule_id: TRX_AMOUNT\nmatch: {field: amount, condition: exists}\n"
        "transform: {type: cast, config: {to: decimal, scale: 2}}\non_failure: dlq\n"
    )
    (tmp_path / "in.json").write_text('[{"amount": "abc"}, {"amount": "1.5"}]')
    done = _run(
        str(BIN / "beta-rule-tester"),
        "--rule",
        "cast.yaml",
        "--input",
        "in.json",
        "--output",
        "out.json",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "out.json").read_text())
    first = report["results"][0]
    assert first["status"] == "failed" and first["failed_rule"] == "TRX_AMOUNT"
    assert first["dlq_reason"] == "rule_failed:TRX_AMOUNT"
    assert "'abc' in amount cannot be cast to decimal" in first["error"]
    assert report["summary"]["failed"] == 1 and report["summary"]["transformed"] == 1


PASSING_TESTS = """\
tests:
  - name: E.164 from a US number, before the rule is enabled
    rules: [TRX_042_NORMALIZE_PHONE]
    input:
      - {phone_number: "(555) 123-4567"}
    expect:
      - fields: {phone_number: "+15551234567"}
  - name: the whole stage scores and rejects
    input:
      - {customer_id: C1, transaction_date: "2026-01-01", amount: 10}
      - {note: empty}
    expect:
      - outcome: delivered
        dimensions: {completeness: 1.0}
      - outcome: delivered
        dimensions: {completeness: 0.4}
        level: ok
"""

FAILING_TESTS = """\
tests:
  - name: a wrong expectation
    rules: [TRX_042_NORMALIZE_PHONE]
    input:
      - {phone_number: "(555) 123-4567"}
    expect:
      - fields: {phone_number: "+15550000000"}
"""


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "config"
    shutil.copytree(REPO / "tests" / "fixtures" / "runbooks" / "config", config)
    return config


def test_dps_test_runs_the_cases_beside_the_rules(tmp_path: Path) -> None:
    config = _config(tmp_path)
    rules = config / "beta" / "transforms" / "rules"
    (rules / "phone_test.yaml").write_text(PASSING_TESTS)

    done = _run(sys.executable, "-m", "dps", "test", str(config), cwd=tmp_path)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok   beta/transforms/rules/phone_test.yaml (2 cases)" in done.stdout
    assert "2 cases in 1 files, 0 failures." in done.stdout


def test_dps_test_fails_with_a_readable_diff(tmp_path: Path) -> None:
    config = _config(tmp_path)
    (config / "beta" / "transforms" / "rules" / "phone_test.yaml").write_text(FAILING_TESTS)

    done = _run(sys.executable, "-m", "dps", "test", str(config), cwd=tmp_path)

    assert done.returncode == 1
    assert "FAIL beta/transforms/rules/phone_test.yaml" in done.stdout
    assert "- phone_number: '+15550000000'" in done.stdout
    assert "+ phone_number: '+15551234567'" in done.stdout
    assert "1 failures." in done.stdout


@pytest.mark.parametrize("body", ["tests: []\n", "tests:\n  - name: x\n    input: [{}]\n"])
def test_dps_test_reports_a_malformed_test_file(tmp_path: Path, body: str) -> None:
    config = _config(tmp_path)
    (config / "beta" / "transforms" / "rules" / "bad_test.yaml").write_text(body)
    done = _run(sys.executable, "-m", "dps", "test", str(config), cwd=tmp_path)
    assert done.returncode == 1
    assert "bad_test.yaml" in done.stdout


def test_dps_test_names_the_line_and_key_of_a_mistake_in_a_test_file(tmp_path: Path) -> None:
    config = _config(tmp_path)
    (config / "beta" / "transforms" / "rules" / "bad_test.yaml").write_text(
        "tests:\n  - name: typo\n    input: [{a: 1}]\n    expect:\n      - feilds: {a: 1}\n"
    )
    done = _run(sys.executable, "-m", "dps", "test", str(config), cwd=tmp_path)
    assert done.returncode == 1
    assert (
        'bad_test.yaml:5: tests[0].expect[0].feilds: "feilds" is not a known key; '
        'did you mean "fields"?'
    ) in done.stdout


LOOKUP_TESTS = """\
tests:
  - name: the lookup reads the configured enrichment source
    rules: [TRX_LOOKUP_TIER]
    input:
      - {customer_id: C1}
      - {customer_id: C404}
    expect:
      - fields: {customer_tier: gold}
      - outcome: dlq
        reason: "rule_failed:TRX_LOOKUP_TIER"
"""


def test_dps_test_runs_lookups_against_the_configured_sources(tmp_path: Path) -> None:
    config = _config(tmp_path)
    (tmp_path / "customers.csv").write_text("id,tier\nC1,gold\n")
    (config / "beta" / "enrichment").mkdir()
    (config / "beta" / "enrichment" / "customer_db.yaml").write_text(
        "name: customer_db\ntype: csv\n"
        f"connection: {{path: {tmp_path / 'customers.csv'}, key_column: id}}\n"
    )
    rules = config / "beta" / "transforms" / "rules"
    (rules / "lookup.yaml").write_text(
        "rule_id: TRX_LOOKUP_TIER\nmatch: {field: customer_id, condition: exists}\n"
        "transform:\n  type: lookup\n"
        "  config: {source: customer_db, fields: {customer_tier: tier}, on_miss: fail}\n"
        "on_failure: dlq\n"
    )
    (rules / "lookup_test.yaml").write_text(LOOKUP_TESTS)

    done = _run(sys.executable, "-m", "dps", "test", str(config), cwd=tmp_path)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok   beta/transforms/rules/lookup_test.yaml (1 cases)" in done.stdout


def test_rule_tester_serves_lookup_rules_from_the_enclosing_configuration(tmp_path: Path) -> None:
    config = _config(tmp_path)
    (tmp_path / "customers.csv").write_text("id,tier\nC1,gold\n")
    (config / "beta" / "enrichment").mkdir()
    (config / "beta" / "enrichment" / "customer_db.yaml").write_text(
        "name: customer_db\ntype: csv\n"
        f"connection: {{path: {tmp_path / 'customers.csv'}, key_column: id}}\n"
    )
    rule = config / "beta" / "transforms" / "rules" / "lookup.yaml"
    rule.write_text(
        "rule_id: TRX_LOOKUP_TIER\nmatch: {field: customer_id, condition: exists}\n"
        "transform:\n  type: lookup\n"
        "  config: {source: customer_db, fields: {customer_tier: tier}, on_miss: fail}\n"
        "on_failure: dlq\n"
    )
    samples = tmp_path / "samples.json"
    samples.write_text('[{"customer_id": "C1"}, {"customer_id": "C404"}]')
    out = tmp_path / "results.json"

    done = _run(
        str(BIN / "beta-rule-tester"),
        "--rule", str(rule), "--input", str(samples), "--output", str(out), cwd=tmp_path,
    )  # fmt: skip

    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert report["summary"]["transformed"] == 1 and report["summary"]["failed"] == 1
    assert report["results"][0]["output"]["customer_tier"] == "gold"
