"""A push client flooding Alpha faster than Beta transforms, against a running ``dps run``:
with Beta paused the ingest buffer (BUFFER_CAPACITY) fills, the client gets 429 with Retry-After,
retries, and once Beta resumes every record it pushed is accounted for: delivered, in a DLQ or a
duplicate, none lost, none delivered twice.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.integration.pipeline_harness import copy_quickstart, start_pipeline, wait_until

TOKEN = "flood-token"
BATCHES = 30
PER_BATCH = 50


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def batch_body(b: int) -> bytes:
    lines = [
        json.dumps(
            {
                "order_id": f"PUSH-{b:03d}-{i:03d}",
                "customer_id": f"C{i:05d}",
                "amount": i + 0.5,
                "country": "DE",
                "phone_number": "(555) 010-0000",
                "email": f"push{b}-{i}@example.com",
            }
        )
        for i in range(PER_BATCH)
    ]
    return ("\n".join(lines) + "\n").encode()


@pytest.mark.slow
def test_a_flooding_push_client_gets_429s_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOOD_PUSH_TOKEN", TOKEN)
    config_dir = copy_quickstart(tmp_path / "config")
    for folder in ("orders", "crm"):  # only the pushed records flow
        for path in (config_dir / "input" / folder).iterdir():
            path.unlink()
    alpha_yaml = config_dir / "alpha" / "alpha.yaml"
    alpha_yaml.write_text(
        alpha_yaml.read_text().replace("BUFFER_CAPACITY: 10000", "BUFFER_CAPACITY: 200")
    )
    # Route the pushed orders to the warehouse like the file's.
    route = config_dir / "gamma" / "routing" / "rules" / "to_warehouse.yaml"
    route.write_text(route.read_text().replace("crm_export]", "crm_export, orders_push]"))
    warehouse = config_dir / "gamma" / "destinations" / "warehouse.yaml"
    warehouse.write_text(
        warehouse.read_text().replace("    - crm_export\n", "    - crm_export\n    - orders_push\n")
    )
    port = free_port()
    (config_dir / "alpha" / "sources" / "push.yaml").write_text(
        "source_id: orders_push\nsource_type: http_push\n"
        f"connection:\n  port: {port}\n  auth_token_ref: env:FLOOD_PUSH_TOKEN\n"
        "  ack_timeout_ms: 5000\n"
        "parsing:\n  format: ndjson\n  id_field: order_id\n"
        "validation:\n  required_fields: [order_id, amount]\n"
    )
    data_dir = tmp_path / "data"
    run = start_pipeline(config_dir, data_dir)
    try:
        run.wait_ready()
        wait_until(
            lambda: (
                run.get("alpha", "/admin/sources/orders_push/status").json().get("url") is not None
            ),
            30,
            "push endpoint never listened",
        )
        url = run.get("alpha", "/admin/sources/orders_push/status").json()["url"]
        assert run.post("beta", "/admin/pause").status_code == 200  # Beta takes nothing now

        codes: list[int] = []
        retry_after: list[str] = []
        errors: list[BaseException] = []

        def client() -> None:
            headers = {"Authorization": f"Bearer {TOKEN}"}
            try:
                with httpx.Client(timeout=30) as http:
                    for b in range(BATCHES):
                        body = batch_body(b)
                        key = {"Idempotency-Key": f"flood-{b}"}
                        while True:
                            r = http.post(url, content=body, headers={**headers, **key})
                            codes.append(r.status_code)
                            if r.status_code == 429:
                                retry_after.append(r.headers.get("Retry-After", ""))
                                time.sleep(0.2)  # a fast client: shorter than Retry-After
                                continue
                            assert r.status_code == 200, r.text
                            break
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=client)
        thread.start()
        wait_until(lambda: 429 in codes, 60, "the flood never got a 429")
        assert all(v.isdigit() for v in retry_after)
        depth = run.get("alpha", "/admin/status").json()["queues"]
        assert sum(depth.values()) <= 200  # BUFFER_CAPACITY holds
        time.sleep(1)
        assert run.post("beta", "/admin/resume").status_code == 200
        thread.join(120)
        assert not thread.is_alive() and not errors, errors

        total = BATCHES * PER_BATCH
        acc: dict[str, Any] = {}

        def settled() -> bool:
            acc.clear()
            acc.update(run.get("control", "/api/accounting").json())
            accounted = acc["duplicates"] + acc["dlq_total"] + acc["delivered_records"]
            return (
                acc["ingested_by_source"].get("orders_push") == total
                and accounted == acc["ingested"]
                and not any(acc["in_flight"].values())
            )

        wait_until(settled, 180, "the pushed records were not all accounted for")
    finally:
        run.stop()
    assert codes.count(200) == BATCHES and codes.count(429) >= 1
    assert acc["ingested"] == total and acc["duplicates"] == 0, acc
    with sqlite3.connect(data_dir / "warehouse.db") as db:
        count, distinct = db.execute(
            "SELECT count(*), count(DISTINCT event_id) FROM pipeline_events"
        ).fetchone()
    assert count == distinct == acc["delivered"].get("warehouse", 0) > total // 2
