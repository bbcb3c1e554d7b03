"""Records flow end to end through real processes, real queues and a real database.

The quickstart runs under ``dps run --once --json`` on the embedded backends (SQLite queues and
state, a SQLite table) and on the scale-out backends (NATS JetStream, PostgreSQL state and a
PostgreSQL table); the accounting must add up and match what is in the destinations.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path

import psycopg
import pytest
from tests.integration.pipeline_harness import (
    PG_DSN,
    copy_quickstart,
    delete_streams,
    last_json_line,
    make_scale_out,
    start_pipeline,
)


def input_record_count(config_dir: Path) -> int:
    """What the quickstart's sources hold: one record per non-blank NDJSON line, CRM records."""
    orders = sum(
        1
        for path in (config_dir / "input" / "orders").glob("*.ndjson")
        for line in path.read_text().splitlines()
        if line.strip()
    )
    crm = json.loads((config_dir / "input" / "crm" / "crm-export.json").read_text())
    return orders + len(crm["data"]["records"])


def check_accounting(summary: dict[str, object], config_dir: Path) -> None:
    assert summary["adds_up"] is True, summary
    assert summary["ingested"] == input_record_count(config_dir)
    dlq = summary["dlq"]
    assert isinstance(dlq, dict) and dlq["alpha"] > 0, "the sample has invalid records"
    assert isinstance(summary["duplicates"], int) and summary["duplicates"] >= 12
    delivered = summary["delivered"]
    assert isinstance(delivered, dict)
    assert delivered["warehouse"] > 0 and delivered["review_file"] > 0


def review_lines(data_dir: Path) -> list[dict[str, object]]:
    path = data_dir / "review" / "low_quality.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_quickstart_once_on_the_embedded_backends(tmp_path: Path) -> None:
    config_dir = copy_quickstart(tmp_path / "quickstart")
    data_dir = tmp_path / "data"
    run = start_pipeline(config_dir, data_dir, "--once", "--json")
    code, out, err = run.finish()
    assert code == 0, err[-3000:]
    summary = last_json_line(out)
    check_accounting(summary, config_dir)

    with sqlite3.connect(data_dir / "warehouse.db") as db:
        rows = db.execute(
            "SELECT count(*), count(DISTINCT event_id) FROM pipeline_events"
        ).fetchone()
        phones = [
            json.loads(r[0]).get("phone_number")
            for r in db.execute("SELECT event_data FROM pipeline_events")
        ]
    assert rows[0] == rows[1] == summary["delivered"]["warehouse"]
    # The E.164 rule ran: every phone number that fitted the pattern is normalised.
    assert any(p and p.startswith("+1555") for p in phones)
    lines = review_lines(data_dir)
    assert (
        len(lines)
        == len({line["record_id"] for line in lines})
        == summary["delivered"]["review_file"]
    )
    assert all(float(line["quality_score"]) < 0.7 for line in lines)


@pytest.mark.slow
def test_a_second_run_on_the_same_data_dir_delivers_nothing_twice(tmp_path: Path) -> None:
    config_dir = copy_quickstart(tmp_path / "quickstart")
    data_dir = tmp_path / "data"
    first = last_json_line(start_pipeline(config_dir, data_dir, "--once", "--json").finish()[1])
    code, out, err = start_pipeline(config_dir, data_dir, "--once", "--json").finish()
    assert code == 0, err[-3000:]
    assert last_json_line(out) == first
    with sqlite3.connect(data_dir / "warehouse.db") as db:
        assert (
            db.execute("SELECT count(*) FROM pipeline_events").fetchone()[0]
            == first["delivered"]["warehouse"]
        )


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.nats
def test_quickstart_once_on_nats_and_postgresql(tmp_path: Path) -> None:
    config_dir = copy_quickstart(tmp_path / "quickstart")
    schema = f"dps_e2e_{uuid.uuid4().hex[:8]}"
    prefix = f"E2E{uuid.uuid4().hex[:6].upper()}"
    make_scale_out(config_dir, schema, prefix)
    try:
        run = start_pipeline(config_dir, tmp_path / "data", "--once", "--json")
        code, out, err = run.finish()
        assert code == 0, err[-3000:]
        summary = last_json_line(out)
        check_accounting(summary, config_dir)
        with psycopg.connect(PG_DSN) as conn:
            count, distinct = conn.execute(
                f"SELECT count(*), count(DISTINCT event_id) FROM {schema}.pipeline_events"
            ).fetchone()
            delivered = conn.execute(
                f"SELECT count(*) FROM {schema}.delivery_log WHERE status = 'delivered' "
                "AND destination_id = 'warehouse'"
            ).fetchone()[0]
        assert count == distinct == summary["delivered"]["warehouse"] == delivered
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        delete_streams(prefix)
