"""What a DLQ entry says about where and under what it failed, as the operator reads it.

Each entry names its ``stage``, the record's ``correlation_id``, the ``config_version`` (the
configuration checksum's first 12 hex digits) and, in Beta and Gamma, the ``rule_versions`` that
saw the record; ``/admin/dlq/analysis`` (and ``dps dlq ... analysis``) groups them ``by_rule``.
The entries here are written by the real modules from bad input (Alpha, Beta in-process on real
SQLite queues and state) or by a running Gamma; they are read back as operators do: with
``dps dlq --module ...`` and over HTTP from Gamma's admin API.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.integration.pipeline_harness import wait_until
from typer.testing import CliRunner

from dps.admin import AdminServer, build_app
from dps.alpha.module import AlphaModule
from dps.beta.module import BetaModule
from dps.cli.main import app
from dps.config import load_config
from dps.core.record import Record, encode
from dps.gamma.module import GammaModule


def cli(config: Path, module: str, *args: str) -> Any:
    result = CliRunner().invoke(app, ["dlq", "--module", module, "--config", str(config), *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def version_of(config: Path) -> str:
    """The configuration version DLQ entries carry: its checksum's first 12 hex digits."""
    return load_config(config).checksum()[:12]


# -- Alpha and Beta ------------------------------------------------------------------------------

ORDERS = (
    b'{"order_id": "1", "amount": "10.5", "cust": "C1"}\n'
    b'{"order_id": "2", "amount": "abc", "cust": "C2"}\n'  # the cast rule fails (on_failure: dlq)
    b'{"order_id": "3", "amount": \n'  # truncated: a parse error
    b'{"order_id": "4"}\n'  # no amount: fails required_fields
    b'{"order_id": "5", "amount": "1", "test": true}\n'  # dropped by a drop_record rule
)


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    data = tmp_path / "data"
    monkeypatch.setenv("DPS_DATA_DIR", str(data))
    root = tmp_path / "config"
    (root / "alpha" / "sources").mkdir(parents=True)
    (root / "beta" / "transforms" / "rules").mkdir(parents=True)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "orders.ndjson").write_bytes(ORDERS)
    # max_attempts 1: a transform-queue message handed back once is dead-lettered at once.
    (root / "pipeline.yaml").write_text(
        f"name: dlq-provenance\ndata_dir: {data}\ntransport:\n  max_attempts: 1\n"
    )
    (root / "alpha" / "sources" / "orders.yaml").write_text(
        "source_id: orders_file\nsource_type: file\n"
        f"connection:\n  path: {tmp_path / 'in'}\n  partial_line_grace_seconds: 0\n"
        "parsing:\n  format: ndjson\n  id_field: order_id\n"
        "validation:\n  required_fields: [order_id, amount]\n"
    )
    rules = root / "beta" / "transforms" / "rules"
    (rules / "rename.yaml").write_text(
        "rule_id: TRX_010_RENAME_CUSTOMER\npriority: 900\n"
        "match: {field: cust, condition: exists}\n"
        "transform: {type: rename, config: {to: customer_id}}\non_failure: skip\n"
    )
    (rules / "cast.yaml").write_text(
        "rule_id: TRX_020_CAST_AMOUNT\npriority: 500\n"
        "match: {field: amount, condition: exists}\n"
        "transform: {type: cast, config: {to: float}}\non_failure: dlq\n"
    )
    (rules / "drop.yaml").write_text(
        "rule_id: TRX_030_DROP_TEST_TRAFFIC\npriority: 100\n"
        "match: {field: test, condition: equals, value: true}\n"
        "transform: {type: drop_record}\n"
    )
    return root


def _ingest(root: Path) -> None:
    alpha = AlphaModule(root)
    try:
        wait_until(
            lambda: alpha.step() is not None and alpha.state_store.dlq_counts().get("alpha") == 2,
            20,
            "Alpha never dead-lettered the parse error and the invalid record",
        )
    finally:
        alpha.close()


def test_alpha_and_beta_entries_name_stage_correlation_configuration_and_rules(
    config: Path,
) -> None:
    _ingest(config)
    version = version_of(config)

    alpha = {e["reason"]: e for e in cli(config, "alpha", "list")["entries"]}
    assert set(alpha) == {"parse_error", "missing_field"}
    parsed = alpha["parse_error"]
    # Raw input that never became a record: no correlation id to give.
    assert parsed["stage"] == "parse" and parsed["correlation_id"] is None
    assert parsed["config_version"] == version and parsed["raw"].startswith('{"order_id": "3"')
    invalid = alpha["missing_field"]
    assert invalid["stage"] == "validate" and invalid["config_version"] == version
    assert invalid["correlation_id"] == invalid["record"]["correlation_id"]
    assert isinstance(invalid["correlation_id"], str) and invalid["correlation_id"]

    beta = BetaModule(config)
    try:
        assert beta.step()
        # A message Beta never got through (its attempts spent): the queue dead-letters it.
        stuck = Record(
            record_id="orders_file:9",
            source_id="orders_file",
            correlation_id="corr-stuck",
            ingested_at=time.time(),
            payload={"order_id": "9"},
        )
        beta.inbox.put([(stuck.record_id, encode(stuck))])
        lease = beta.inbox.lease(10)
        assert [m.msg_id for m in beta.inbox.nack(lease, reason="max_attempts")] == [
            stuck.record_id
        ]
        # An undecodable message.
        beta.inbox.put([("garbage-1", b"\xff\x00 not a record")])
        assert beta.step()
    finally:
        beta.close()

    entries = {e["record_id"]: e for e in cli(config, "beta", "list")["entries"]}
    assert set(entries) == {"orders_file:2", "orders_file:5", "orders_file:9", "garbage-1"}
    assert all(e["config_version"] == version for e in entries.values())

    failed = entries["orders_file:2"]
    assert failed["reason"] == "rule_failed:TRX_020_CAST_AMOUNT"
    assert failed["stage"] == "transform"
    assert failed["correlation_id"] == failed["record"]["correlation_id"]
    assert isinstance(failed["correlation_id"], str) and failed["correlation_id"]
    assert failed["rule_versions"] == {
        "applied": ["TRX_010_RENAME_CUSTOMER"],
        "skipped": [],
        "failed_rule": "TRX_020_CAST_AMOUNT",
        "dropped_by": None,
    }
    dropped = entries["orders_file:5"]
    assert dropped["reason"] == "dropped_by_rule" and dropped["stage"] == "transform"
    assert dropped["rule_versions"]["dropped_by"] == "TRX_030_DROP_TEST_TRAFFIC"
    assert dropped["rule_versions"]["applied"] == [
        "TRX_020_CAST_AMOUNT",
        "TRX_030_DROP_TEST_TRAFFIC",
    ]
    spent = entries["orders_file:9"]
    assert (spent["reason"], spent["stage"], spent["error_class"]) == (
        "max_attempts",
        "transform",
        "transient",
    )
    assert spent["correlation_id"] == "corr-stuck" and spent["attempts"] == 1
    garbage = entries["garbage-1"]
    assert garbage["reason"] == "decode_error" and garbage["stage"] == "decode"
    assert garbage["correlation_id"] is None and garbage["rule_versions"] is None

    analysis = cli(config, "beta", "analysis")
    by_rule = analysis["by_rule"]
    assert {rule: g["count"] for rule, g in by_rule.items()} == {
        "TRX_020_CAST_AMOUNT": 1,
        "TRX_030_DROP_TEST_TRAFFIC": 1,
        "-": 2,
    }
    cast = by_rule["TRX_020_CAST_AMOUNT"]
    assert cast["first_seen"] and cast["last_seen"] and cast["stages"] == {"transform": 1}
    assert cast["example_entry_id"] == failed["entry_id"]
    # The manual's C.2 step 3 reads failure_reasons; it keeps its shape, with the rules added.
    reasons = analysis["failure_reasons"]
    assert reasons["rule_failed:TRX_020_CAST_AMOUNT"]["rules"] == {"TRX_020_CAST_AMOUNT": 1}
    assert {"count", "first_seen", "last_seen", "example_error"} <= set(reasons["decode_error"])
    assert set(analysis) >= {"by_error_class", "by_destination", "by_stage", "by_source"}
    assert cli(config, "alpha", "analysis")["by_rule"]["-"]["count"] == 2

    # A reload is a new configuration version: entries written afterwards carry it.
    (config / "beta" / "transforms" / "rules" / "drop.yaml").unlink()
    beta = BetaModule(config)
    try:
        beta.inbox.put([("garbage-2", b"\xfe still not a record")])
        (config / "beta" / "beta.yaml").write_text("TRANSFORM_BATCH_SIZE: 100\n")
        beta.reload_config()
        assert beta.step()
    finally:
        beta.close()
    reloaded = {e["record_id"]: e for e in cli(config, "beta", "list")["entries"]}
    assert reloaded["garbage-2"]["config_version"] == version_of(config) != version


# -- Gamma ---------------------------------------------------------------------------------------


@pytest.fixture
def gamma(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[GammaModule, str]]:
    """A running Gamma with its admin API: a database destination that refuses records without a
    customer id, two routes to it, and nothing routing source ``crm``."""
    data = tmp_path / "data"
    monkeypatch.setenv("DPS_DATA_DIR", str(data))
    root = tmp_path / "config"
    (root / "gamma" / "destinations").mkdir(parents=True)
    (root / "gamma" / "routing" / "rules").mkdir(parents=True)
    (root / "pipeline.yaml").write_text(f"name: dlq-provenance-gamma\ndata_dir: {data}\n")
    (root / "gamma" / "gamma.yaml").write_text("OUTPUT_LINGER_MS: 0\n")
    (root / "gamma" / "destinations" / "warehouse.yaml").write_text(
        "destination_id: warehouse\ndestination_type: database\n"
        f"connection:\n  type: sqlite\n  path: {tmp_path / 'warehouse.db'}\n"
        "format:\n  type: upsert\n  table: events\n  on_missing_field: dlq\n"
        "  column_mapping:\n    record_id: event_id\n    customer.id: customer_id\n"
    )
    routes = root / "gamma" / "routing" / "rules"
    (routes / "orders.yaml").write_text(
        "rule_id: ROUTE_ORDERS\npriority: 100\n"
        "match:\n  source_id:\n    in: [orders_file]\ndestination: warehouse\n"
    )
    (routes / "big.yaml").write_text(
        "rule_id: ROUTE_BIG_ORDERS\npriority: 50\n"
        "match:\n  amount:\n    gte: 100\ndestination: warehouse\n"
    )
    module = GammaModule(root)
    server = AdminServer(build_app(module), "127.0.0.1", 0)
    server.start()
    module.start_worker()
    try:
        yield module, server.url
    finally:
        module.stop_worker()
        server.stop()
        module.close()


def _order(number: int, source: str = "orders_file", **payload: Any) -> Record:
    return Record(
        record_id=f"{source}:{number}",
        source_id=source,
        correlation_id=f"corr-{number}",
        ingested_at=time.time(),
        payload={"order_id": number, **payload},
    )


def test_gamma_entries_name_the_routes_that_sent_the_record_and_analysis_groups_by_rule(
    gamma: tuple[GammaModule, str],
) -> None:
    module, url = gamma
    records = [
        _order(1, amount=5, customer={"id": "C1"}),  # delivered
        _order(2, amount=5),  # no customer id: refused at the warehouse
        _order(3, amount=500),  # refused too, sent there by both routes
        _order(4, "crm", amount=5),  # no route
    ]
    module.inbox.put([(r.record_id, encode(r)) for r in records])
    http = httpx.Client(base_url=url, timeout=30)

    def settled() -> bool:
        stats = http.get("/admin/dlq/stats").json()
        return bool(stats["size"] == 3 and module.stats["warehouse"].delivered == 1)

    wait_until(settled, 30, "Gamma never delivered one record and dead-lettered three")
    version = version_of(module.config_dir)
    entries = http.get("/admin/dlq/entries", params={"limit": 100, "offset": 0}).json()
    by_id = {e["record_id"]: e for e in entries["entries"]}

    refused = by_id["orders_file:3"]
    assert (refused["stage"], refused["reason"], refused["destination_id"]) == (
        "deliver",
        "missing_field",
        "warehouse",
    )
    assert refused["correlation_id"] == "corr-3" and refused["config_version"] == version
    assert refused["rule_versions"] == {
        "routes": ["ROUTE_ORDERS", "ROUTE_BIG_ORDERS"],
        "matched": ["ROUTE_ORDERS", "ROUTE_BIG_ORDERS"],
    }
    assert by_id["orders_file:2"]["rule_versions"]["matched"] == ["ROUTE_ORDERS"]
    unrouted = by_id["crm:4"]
    assert (unrouted["stage"], unrouted["reason"]) == ("route", "no_route")
    assert unrouted["rule_versions"] == {
        "routes": ["ROUTE_ORDERS", "ROUTE_BIG_ORDERS"],
        "matched": [],
    }
    assert unrouted["correlation_id"] == "corr-4" and unrouted["config_version"] == version

    analysis = http.get("/admin/dlq/analysis").json()
    by_rule = analysis["by_rule"]
    assert {rule: g["count"] for rule, g in by_rule.items()} == {
        "ROUTE_ORDERS": 2,
        "ROUTE_BIG_ORDERS": 1,
        "-": 1,
    }
    orders = by_rule["ROUTE_ORDERS"]
    assert orders["destinations"] == {"warehouse": 2} and orders["stages"] == {"deliver": 2}
    assert orders["first_seen"] <= orders["last_seen"]
    assert by_rule["-"]["example_entry_id"] == unrouted["entry_id"]
    assert analysis["failure_reasons"]["missing_field"]["rules"] == {
        "ROUTE_ORDERS": 2,
        "ROUTE_BIG_ORDERS": 1,
    }
    assert analysis["by_destination"]["warehouse"]["count"] == 2
