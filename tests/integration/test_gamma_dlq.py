"""DLQ operations on the CLI (``dps dlq --module alpha|beta|gamma ...``), for all three DLQs.

The CLI works on a configuration directory's state store and queues with no module running, so
each test writes DLQ entries the way the modules do (real SQLite state store), runs the commands
an operator types, and looks at what landed in the real queues: replay puts the record back into
the flow where the module docstring of :mod:`dps.gamma.dlq` says, with the record id unchanged;
purge and replay act only on open entries; cleanup archives by ``DLQ_RETENTION_DAYS``; every
change is audited as ``cli:<user>``. The HTTP side of the same operations is in
``tests/runbooks/test_runbook_c.py``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.integration.pipeline_harness import dps
from typer.testing import CliRunner

from dps.cli.main import app
from dps.core.record import Record, decode, encode
from dps.gamma.delivery import spool_name
from dps.queues import QueueSpec, open_queue
from dps.state import DlqEntry, open_state
from dps.state.sql import SqlStateStore


def _record(record_id: str, source: str = "orders_file") -> Record:
    return Record(
        record_id=record_id,
        source_id=source,
        correlation_id=f"c-{record_id}",
        ingested_at=time.time(),
        payload={"order_id": record_id, "amount": 1.5},
    )


def _entry(module: str, record: Record, reason: str, **kw: Any) -> DlqEntry:
    return DlqEntry(
        module,
        record.record_id,
        record.source_id,
        f"file:{record.record_id}",
        reason,
        f"{reason} happened",
        encode(record),
        correlation_id=record.correlation_id,
        **kw,
    )


@pytest.fixture
def pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A config dir whose state store holds entries of every module's DLQ."""
    # What `--data-dir` would say; a module host started in this process sets it too.
    monkeypatch.setenv("DPS_DATA_DIR", str(tmp_path / "data"))
    config = tmp_path / "config"
    (config / "gamma").mkdir(parents=True)
    (config / "gamma" / "gamma.yaml").write_text("DLQ_RETENTION_DAYS: 7\n")
    (config / "pipeline.yaml").write_text(f"name: dlq-cli\ndata_dir: {tmp_path / 'data'}\n")
    state = open_state("sqlite", {}, tmp_path / "data")
    raw = DlqEntry("alpha", "orders_file:#9", "orders_file", "file:9", "parse_error", "bad", b"{")
    state.add_dlq_entries(
        [
            raw,
            _entry("alpha", _record("orders_file:A1"), "missing_field"),
            _entry("beta", _record("orders_file:B1"), "rule_failed", stage="rule:TRX_1"),
            _entry(
                "gamma",
                _record("orders_file:G1"),
                "destination_rejected",
                error_class="permanent",
                destination_id="warehouse",
                stage="deliver",
            ),
            _entry(
                "gamma",
                _record("orders_file:G2"),
                "destination_rejected",
                error_class="permanent",
                destination_id="warehouse",
                stage="deliver",
            ),
            _entry("gamma", _record("crm_export:G3", "crm_export"), "no_route", stage="route"),
            _entry(
                "gamma",
                _record("orders_file:OLD"),
                "destination_rejected",
                error_class="permanent",
                destination_id="warehouse",
                stage="deliver",
            ),
        ]
    )
    state.close()
    # The last entry is older than DLQ_RETENTION_DAYS (stored as naive UTC text on SQLite).
    with sqlite3.connect(tmp_path / "data" / "state.db") as db:
        db.execute(
            "UPDATE dlq_entries SET created_at = datetime('now', '-30 days') "
            "WHERE record_id = 'orders_file:OLD'"
        )
    yield config


def cli(config: Path, module: str, *args: str) -> Any:
    result = CliRunner().invoke(app, ["dlq", "--module", module, "--config", str(config), *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def entry_id(module: str, record_id: str, origin: str, destination: str | None = None) -> str:
    return SqlStateStore.dlq_entry_id(module, record_id, origin, destination)


def queued(config: Path, name: str) -> list[tuple[str, Record]]:
    """(message id, record) of everything waiting in one of the pipeline's queues."""
    queue = open_queue("sqlite", {}, config.parent / "data", QueueSpec(name=name))
    try:
        lease = queue.lease(100, wait=0.0)
        return [(m.msg_id, decode(m.body)) for m in lease.messages] if lease else []
    finally:
        queue.close()


def test_stats_list_analysis_and_export_per_module(pipeline: Path) -> None:
    assert cli(pipeline, "alpha", "stats")["size"] == 2
    assert cli(pipeline, "beta", "stats")["by_reason"] == {"rule_failed": 1}
    stats = cli(pipeline, "gamma", "stats")
    assert stats["size"] == 4 and stats["by_destination"] == {"warehouse": 3, "-": 1}

    page = cli(pipeline, "gamma", "list", "--limit", "2", "--offset", "1")
    assert page["total"] == 4 and len(page["entries"]) == 2
    first = cli(pipeline, "gamma", "list", "--limit", "1")["entries"][0]
    assert first["record_id"] == "orders_file:OLD"  # oldest first
    assert first["stage"] == "deliver" and first["error_class"] == "permanent"
    assert first["correlation_id"] == "c-orders_file:OLD" and first["attempt_history"]
    assert first["record"]["payload"]["order_id"] == "orders_file:OLD"

    analysis = cli(pipeline, "gamma", "analysis")
    reasons = analysis["failure_reasons"]
    rejected = reasons["destination_rejected"]
    assert rejected["count"] == 3 and rejected["first_seen"] < rejected["last_seen"]
    assert reasons["no_route"]["stages"] == {"route": 1}
    assert cli(pipeline, "beta", "analysis")["by_stage"]["rule:TRX_1"]["count"] == 1

    lines = dps("dlq", "-m", "gamma", "-c", str(pipeline), "export", "--format", "ndjson")
    assert lines.returncode == 0, lines.stderr
    assert sorted(json.loads(line)["record_id"] for line in lines.stdout.splitlines()) == [
        "crm_export:G3",
        "orders_file:G1",
        "orders_file:G2",
        "orders_file:OLD",
    ]


def test_replay_puts_records_back_where_they_belong_once(pipeline: Path) -> None:
    # A delivery failure: back into its destination's spool, chosen by a filter.
    since = cli(
        pipeline,
        "gamma",
        "replay",
        "--filter",
        '{"reason": "destination_rejected", "destination": "warehouse", "since": "1h"}',
    )
    assert since["replayed"] == 2 and since["queues"] == {spool_name("warehouse"): 2}
    spooled = queued(pipeline, spool_name("warehouse"))
    assert sorted(r.record_id for _, r in spooled) == ["orders_file:G1", "orders_file:G2"]
    assert all(mid.startswith(f"{r.record_id}#replay:") for mid, r in spooled)
    assert all(r.attempts == 1 and r.correlation_id == f"c-{r.record_id}" for _, r in spooled)

    # A routing failure: back into the delivery queue; through Beta when asked.
    g3 = entry_id("gamma", "crm_export:G3", "file:crm_export:G3")
    old = entry_id("gamma", "orders_file:OLD", "file:orders_file:OLD", "warehouse")
    assert cli(pipeline, "gamma", "replay", "-e", g3)["queues"] == {"delivery": 1}
    to_beta = cli(pipeline, "gamma", "replay", "-e", old, "--target", "beta")
    assert to_beta["queues"] == {"transform": 1}
    assert [r.record_id for _, r in queued(pipeline, "delivery")] == ["crm_export:G3"]

    # Alpha and Beta entries go to the transform queue; raw input cannot be replayed.
    alpha = cli(pipeline, "alpha", "replay", "--all")
    assert alpha["replayed"] == 1 and len(alpha["skipped"]) == 1
    assert "raw input" in alpha["skipped"][0]["reason"]
    assert cli(pipeline, "beta", "replay", "--all")["replayed"] == 1
    assert sorted(r.record_id for _, r in queued(pipeline, "transform")) == [
        "orders_file:A1",
        "orders_file:B1",
        "orders_file:OLD",
    ]

    # Only open entries are replayed: asking again changes nothing, and says so.
    again = cli(pipeline, "gamma", "replay", "-e", g3, "-e", "entry_1")
    assert again["replayed"] == 0 and again["unmatched_entry_ids"] == [g3, "entry_1"]
    assert cli(pipeline, "gamma", "stats")["by_status"] == {"replayed": 4}

    # The replayed record fails again: its entry reopens with both attempts.
    state = open_state("sqlite", {}, pipeline.parent / "data")
    try:
        state.add_dlq_entries([_entry("gamma", _record("crm_export:G3", "crm_export"), "no_route")])
    finally:
        state.close()
    reopened = cli(pipeline, "gamma", "list")["entries"]
    assert [e["entry_id"] for e in reopened] == [g3]
    assert len(reopened[0]["attempt_history"]) == 2


def test_purge_and_cleanup_by_retention_are_audited(pipeline: Path) -> None:
    g1 = entry_id("gamma", "orders_file:G1", "file:orders_file:G1", "warehouse")
    purged = cli(pipeline, "gamma", "purge", "-e", g1, "-e", "entry_2")
    assert purged["purged"] == 1 and purged["unmatched_entry_ids"] == ["entry_2"]
    assert cli(pipeline, "gamma", "purge", "-e", g1)["purged"] == 0

    # gamma.yaml's DLQ_RETENTION_DAYS (7): only the 30-day-old entry is archived.
    cleaned = cli(pipeline, "gamma", "cleanup")
    assert cleaned["retention_days"] == 7 and cleaned["archived"] == 1
    assert cli(pipeline, "gamma", "stats")["size"] == 2
    with sqlite3.connect(pipeline.parent / "data" / "state.db") as db:
        archived = db.execute("SELECT record_id FROM dlq_entries_archive").fetchall()
        audit = db.execute("SELECT actor, action FROM audit_log").fetchall()
    assert archived == [("orders_file:OLD",)]
    # --retention-days 0 archives everything of that module, no other module's entries.
    assert cli(pipeline, "alpha", "cleanup", "--retention-days", "0")["archived"] == 2
    assert cli(pipeline, "beta", "stats")["size"] == 1

    refused = CliRunner().invoke(
        app, ["dlq", "-m", "gamma", "-c", str(pipeline), "cleanup", "--retention-days", "-1"]
    )
    assert refused.exit_code == 1 and "expected 0 or more" in refused.output
    assert {action for actor, action in audit if actor.startswith("cli:")} == {
        "dlq_purge",
        "dlq_cleanup",
    }


def test_a_gamma_entry_replayed_through_beta_reaches_the_delivery_queue_again(
    pipeline: Path,
) -> None:
    from dps.beta.module import BetaModule

    data = pipeline.parent / "data"
    record = _record("orders_file:OLD")
    # Before it failed at its destination, gamma routed it: the delivery queue acked its id.
    delivery = open_queue("sqlite", {}, data, QueueSpec(name="delivery"))
    try:
        delivery.put([(record.record_id, encode(record))])
        lease = delivery.lease(1, wait=0.0)
        assert lease
        delivery.ack(lease)
    finally:
        delivery.close()
    old = entry_id("gamma", record.record_id, f"file:{record.record_id}", "warehouse")
    assert cli(pipeline, "gamma", "replay", "-e", old, "--target", "beta")["replayed"] == 1

    beta = BetaModule(pipeline, data_dir=data)
    try:
        assert beta.step()
    finally:
        beta.close()
    assert [r.record_id for _, r in queued(pipeline, "delivery")] == [record.record_id]
