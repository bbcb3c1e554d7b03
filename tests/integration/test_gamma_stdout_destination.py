"""The ``stdout`` destination, as an operator debugging a pipeline sees it: ``dps gamma CONFIG_DIR``
running with two stdout destinations, one printing envelopes on standard output, one printing
payloads on standard error (where the module's JSON logs also go). What the process printed is
read back line by line once every record is delivered.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import httpx
from tests.integration.pipeline_harness import free_port_base, start_module, wait_until

from dps.core.record import Quality, Record, encode
from dps.queues import QueueSpec, open_queue


def _records() -> list[Record]:
    return [
        Record(
            record_id=f"orders_file:{n}",
            source_id="orders_file",
            correlation_id=f"corr-{n}",
            ingested_at=time.time(),
            event_time=f"2026-11-27T10:00:0{n}Z",
            payload={"order_id": n, "amount": n * 1.5, "note": "naïve ☃"},
            quality=Quality(score=0.9),
        )
        for n in range(1, 4)
    ]


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_stdout_prints_one_json_line_per_record(tmp_path: Path) -> None:
    root = tmp_path / "config"
    data = tmp_path / "data"
    (root / "gamma" / "destinations").mkdir(parents=True)
    (root / "gamma" / "routing" / "rules").mkdir(parents=True)
    (root / "pipeline.yaml").write_text(f"name: stdout-destination\ndata_dir: {data}\n")
    (root / "gamma" / "destinations" / "console.yaml").write_text(
        "destination_id: console\ndestination_type: stdout\n"
    )
    (root / "gamma" / "destinations" / "bare.yaml").write_text(
        "destination_id: bare\ndestination_type: stdout\n"
        "format:\n  type: jsonl\n  envelope: false\n  stream: stderr\n"
    )
    (root / "gamma" / "routing" / "rules" / "all.yaml").write_text(
        "rule_id: ROUTE_ALL\ndestination: [console, bare]\n"
    )
    records = _records()
    delivery = open_queue("sqlite", {}, data, QueueSpec(name="delivery"))
    try:
        delivery.put([(r.record_id, encode(r)) for r in records])
    finally:
        delivery.close()

    port = free_port_base(1)
    process = start_module("gamma", root, data, port)
    try:

        def delivered() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"dps gamma exited: {process.communicate()[1][-3000:]}")
            try:
                listing = httpx.get(f"http://127.0.0.1:{port}/admin/destinations", timeout=5)
            except httpx.HTTPError:
                return False
            counts = [d["delivery_log"].get("delivered") for d in listing.json()["destinations"]]
            return counts == [3, 3]

        wait_until(delivered, 60, "dps gamma never delivered the records to both destinations")
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err[-3000:]

    # Standard output holds the printed records and nothing else: one envelope per line.
    assert _json_lines(out) == [
        {
            "record_id": r.record_id,
            "source_id": "orders_file",
            "correlation_id": r.correlation_id,
            "event_time": r.event_time,
            "quality_score": 0.9,
            "payload": r.payload,
        }
        for r in records
    ]
    assert "naïve ☃" in out  # UTF-8, not escaped
    # Standard error: the payloads with their record id, among the module's log lines.
    printed = [line for line in _json_lines(err) if "message" not in line]
    assert printed == [{**r.payload, "record_id": r.record_id} for r in records]
