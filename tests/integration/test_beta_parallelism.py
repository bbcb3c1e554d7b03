"""TRANSFORM_PARALLELISM: one step leases that many batches and transforms them at once.

The enrichment source is a local HTTP server answering each GET after 0.4 s; each batch of 10
records has one customer, so one GET. Four batches transformed one after the other would take
1.6 s; on four threads, about 0.4.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.integration.pipeline_harness import copy_quickstart

from dps.beta.module import BetaModule
from dps.core.record import Record, decode, encode_many


class _Slow(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        time.sleep(0.4)
        key = self.path.rsplit("/", 1)[-1]
        data = json.dumps({"name": f"Customer {key}"}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _config(tmp_path: Path, port: int, parallelism: int) -> Path:
    config = copy_quickstart(tmp_path / "config")
    for rule in (config / "beta" / "transforms" / "rules").glob("*.yaml"):
        rule.unlink()
    (config / "beta" / "quality" / "scoring.yaml").unlink()
    (config / "beta" / "beta.yaml").write_text(
        f"TRANSFORM_PARALLELISM: {parallelism}\nTRANSFORM_BATCH_SIZE: 10\n"
    )
    (config / "beta" / "enrichment").mkdir()
    (config / "beta" / "enrichment" / "crm.yaml").write_text(
        "name: crm\ntype: http\nconnection:\n"
        f"  url: http://127.0.0.1:{port}/customers/{{key}}\n  max_concurrency: 4\n"
    )
    (config / "beta" / "transforms" / "rules" / "lookup.yaml").write_text(
        "rule_id: TRX_LOOKUP\nmatch: {field: customer_id, condition: exists}\n"
        "transform: {type: lookup, config: {source: crm, fields: {customer_name: name}}}\n"
        "on_failure: dlq\n"
    )
    return config


def test_four_batches_are_transformed_at_once(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    module = BetaModule(_config(tmp_path, server.server_address[1], 4), data_dir=tmp_path / "d")
    try:
        records = [
            Record(
                record_id=f"r{i}",
                source_id="s",
                correlation_id="c",
                ingested_at=time.time(),
                payload={"customer_id": f"C{i // 10}"},
            )
            for i in range(40)
        ]
        module.inbox.put(encode_many(records))
        started = time.perf_counter()
        assert module.step()
        elapsed = time.perf_counter() - started

        assert module.last_step_batches == 4
        assert module._executor_size == 4
        assert elapsed < 1.0, f"4 batches took {elapsed:.2f}s: not transformed at once"
        assert module.inbox.depth() == 0
        lease = module.outbox.lease(100)
        names = {decode(m.body).payload["customer_name"] for m in lease.messages}
        assert names == {f"Customer C{i}" for i in range(4)}
        assert module.enrichment.stats()["sources"]["crm"]["fetches"] == 4
        # Every rule count made on the four threads reached the totals.
        assert module.rules.totals["TRX_LOOKUP", "applied"] == 40
    finally:
        module.close()
        server.shutdown()
        server.server_close()
