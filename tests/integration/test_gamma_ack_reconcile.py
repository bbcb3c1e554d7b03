"""gamma_ack_reconcile after a crash: records delivered (or dead-lettered) and logged, but their
spool acks lost. The job, through gamma's admin API, acks them; what remains is delivered once.

The crash state is built with the real APIs: the destination plugin delivers, the state store
logs the outcomes and the DLQ entries, the spool (the real SQLite queue) still holds every
message. The destination is disabled meanwhile so that only the reconcile touches the spool.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx
import pytest
from tests.integration.pipeline_harness import (
    copy_quickstart,
    free_port_base,
    start_module,
    wait_until,
)

from dps.config import load_config
from dps.control.jobs import JOBS, JobContext
from dps.control.jobs.modules import gamma_ack_reconcile
from dps.control.modules import ModuleClient
from dps.core.record import Record, encode
from dps.gamma.delivery import spool_name
from dps.gamma.dlq import stage_queue_opener
from dps.gamma.module import build_destination
from dps.state import DeliveryOutcome, DlqEntry, open_state

DEST = "review_file"


def record(n: int) -> Record:
    return Record(
        record_id=f"orders_file:REC-{n:04d}",
        source_id="orders_file",
        correlation_id=f"c-{n}",
        ingested_at=time.time(),
        payload={"order_id": f"REC-{n:04d}", "amount": n},
        origin=f"orders.csv:{n}",
    )


def output_ids(data_dir: Path) -> list[str]:
    path = data_dir / "review" / "low_quality.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["record_id"] for line in path.read_text().splitlines() if line]


def set_enabled(config_dir: Path, enabled: bool) -> None:
    path = config_dir / "gamma" / "destinations" / f"{DEST}.yaml"
    text = path.read_text()
    old, new = (
        ("enabled: true", "enabled: false") if not enabled else ("enabled: false", "enabled: true")
    )
    path.write_text(text.replace(old, new))


def test_lost_acks_are_settled_and_nothing_is_delivered_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert JOBS["gamma_ack_reconcile"].active
    config_dir = copy_quickstart(tmp_path / "config")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    monkeypatch.setenv("DPS_DATA_DIR", str(data_dir))
    set_enabled(config_dir, False)
    config = load_config(config_dir)
    records = [record(n) for n in range(50)]
    delivered, dead, pending = records[:30], records[30:35], records[35:]
    # Before the crash: 30 delivered and logged, 5 refused for good and dead-lettered.
    destination = build_destination(config.gamma.destinations[DEST])
    try:
        assert not destination.deliver(delivered)
    finally:
        destination.close()
    state = open_state(
        config.pipeline.state.backend, config.pipeline.state.backend_settings(), data_dir
    )
    try:
        state.record_deliveries(
            [DeliveryOutcome(r.record_id, DEST, "delivered") for r in delivered]
        )
        state.add_dlq_entries(
            [
                DlqEntry(
                    "gamma",
                    r.record_id,
                    r.source_id,
                    r.origin,
                    "permanent_error",
                    "422 from the destination",
                    encode(r),
                    error_class="permanent",
                    destination_id=DEST,
                )
                for r in dead
            ]
        )
        state.record_deliveries([DeliveryOutcome(r.record_id, DEST, "failed") for r in dead])
    finally:
        state.close()
    # ... and the spool acks were lost: every message is still in the spool.
    spool = stage_queue_opener(config, data_dir)(spool_name(DEST))
    try:
        spool.put([(r.record_id, encode(r)) for r in records])
        assert spool.depth() == 50
    finally:
        spool.close()
    assert len(output_ids(data_dir)) == 30

    port = free_port_base(1)
    url = f"http://127.0.0.1:{port}"
    process = start_module("gamma", config_dir, data_dir, port)
    client = ModuleClient({"gamma": url}, timeout=30)
    try:

        def ready() -> bool:
            assert process.poll() is None, process.communicate()[1][-3000:]
            try:
                return httpx.get(f"{url}/admin/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, 60, "gamma never became ready")
        ctx = JobContext(
            "gamma_ack_reconcile",
            "run-1",
            open_state(
                config.pipeline.state.backend, config.pipeline.state.backend_settings(), data_dir
            ),
            client,
            config,
            config_dir,
            data_dir,
        )
        try:
            result = gamma_ack_reconcile(ctx)
            assert result.ok and result.records == 35, result.message
            assert "30 delivered, 5 dead-lettered" in result.message
            assert "15 records still to deliver" in result.message
            report = json.loads(
                next((data_dir / "reports" / "gamma_ack_reconcile").glob("*.json")).read_text()
            )
            counts = report["destinations"][DEST]
            assert (counts["scanned"], counts["pending"], counts["depth_after"]) == (50, 15, 15)
            assert report["destinations"]["warehouse"]["scanned"] == 0
            # Idempotent: a second run finds nothing more to settle and keeps the order.
            again = gamma_ack_reconcile(ctx)
            assert again.records == 0 and "15 records still to deliver" in again.message
        finally:
            ctx.store.close()
        status = client.get_json("gamma", f"/admin/destinations/{DEST}/status")
        assert status["pending"] == 15
        # The destination comes back: only the 15 undelivered records are sent.
        set_enabled(config_dir, True)
        client.post_json("gamma", "/admin/config/reload")
        wait_until(
            lambda: client.get_json("gamma", f"/admin/destinations/{DEST}/status")["pending"] == 0,
            60,
            "the spool never drained",
        )
        status = client.get_json("gamma", f"/admin/destinations/{DEST}/status")
        assert status["delivered"] == 15, status
    finally:
        client.close()
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err[-2000:]
    ids = output_ids(data_dir)
    assert len(ids) == len(set(ids)) == 45
    assert set(ids) == {r.record_id for r in delivered + pending}
    assert not {r.record_id for r in dead} & set(ids)
