"""Two ``dps alpha`` processes on one PostgreSQL state store and one NATS transform queue.

The scale-out deployment: both run the same source (``orders``, same source_id) over their own
files, which hold overlapping records. The dedupe keys are claimed in the shared state store, so
each order reaches the transform queue once, whichever instance read it first, and the other
instance records its copy as a duplicate.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from tests.integration.pipeline_harness import (
    NATS_URL,
    PG_DSN,
    delete_streams,
    free_port_base,
    start_module,
    wait_until,
)

from dps.core.record import decode
from dps.queues.nats import unpack

pytestmark = [pytest.mark.postgres, pytest.mark.nats]

A_IDS = range(1, 61)
B_IDS = range(31, 91)


def write_config(root: Path, data: Path, schema: str, prefix: str) -> Path:
    (root / "alpha" / "sources").mkdir(parents=True)
    (root / "pipeline.yaml").write_text(
        "name: alpha-scale-out\n"
        "transport:\n"
        "  backend: nats\n"
        f"  url: {NATS_URL}\n"
        f"  stream_prefix: {prefix}\n"
        "state:\n"
        "  backend: postgresql\n"
        f"  dsn: {PG_DSN}\n"
        f"  schema: {schema}\n"
    )
    (root / "alpha" / "alpha.yaml").write_text("DEFAULT_BATCH_SIZE: 7\n")
    (root / "alpha" / "sources" / "orders.yaml").write_text(
        "source_id: orders\n"
        "source_type: file\n"
        f"connection:\n  path: {data}\n  pattern: '*.ndjson'\n"
        "parsing:\n  format: ndjson\n  id_field: order_id\n"
        "validation:\n  required_fields: [order_id]\n  dedupe:\n    key: [order_id]\n"
    )
    return root


def orders(path: Path, ids: range) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"order_id": i, "amount": i}) + "\n" for i in ids))


@pytest.fixture
def names() -> Iterator[tuple[str, str]]:
    schema = f"dps_alpha_{uuid.uuid4().hex[:10]}"
    prefix = f"ALPHA{uuid.uuid4().hex[:8].upper()}"
    yield schema, prefix
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    delete_streams(prefix)


def transform_stream(prefix: str) -> list[bytes]:
    """Every record in the transform queue's stream, read without consuming them."""

    async def read() -> list[bytes]:
        import nats

        nc = await nats.connect(NATS_URL)
        js = nc.jetstream()
        name = f"{prefix}_TRANSFORM"
        info = await js.stream_info(name)
        bodies = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(name, seq)
            bodies += [body for _, body in unpack(msg.headers, msg.data, f"seq {seq}")]
        await nc.close()
        return bodies

    return asyncio.run(read())


def start_alpha(config_dir: Path, data_dir: Path, port: int) -> subprocess.Popen[str]:
    return start_module("alpha", config_dir, data_dir, port)


def validated(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith('alpha_records_validated_total{source_id="orders"}'):
            return float(line.split()[-1])
    return 0.0


def test_two_alphas_on_one_state_store_deliver_each_record_once(
    tmp_path: Path, names: tuple[str, str]
) -> None:
    schema, prefix = names
    orders(tmp_path / "in-a" / "orders.ndjson", A_IDS)
    orders(tmp_path / "in-b" / "orders.ndjson", B_IDS)
    configs = [
        write_config(tmp_path / f"config-{x}", tmp_path / f"in-{x}", schema, prefix) for x in "ab"
    ]
    base = free_port_base(2)
    ports = [base, base + 1]
    processes = [
        start_alpha(config, tmp_path / f"data-{x}", port)
        for config, x, port in zip(configs, "ab", ports, strict=True)
    ]
    try:

        def both_idle() -> bool:
            for process in processes:
                assert process.poll() is None, process.communicate()[1][-3000:]
            try:
                statuses = [
                    httpx.get(f"http://127.0.0.1:{p}/admin/status", timeout=2).json() for p in ports
                ]
            except httpx.HTTPError:
                return False
            return all(s["idle"] for s in statuses)

        wait_until(both_idle, 90, "the two alphas did not finish their files")
        bodies = transform_stream(prefix)
        records = [decode(b) for b in bodies]
        ids = sorted(r.payload["order_id"] for r in records)
        # Each order once in the transform queue.
        assert ids == list(range(1, 91))
        # The copies were dropped by the shared dedupe claim, before the queue (the queue's own
        # idempotent put never saw them): the two instances passed on 90 records together...
        assert sum(validated(p) for p in ports) == 90
        # ...and recorded the 30 overlapping orders as duplicates, each once, by the instance
        # that lost the claim.
        with psycopg.connect(PG_DSN) as conn:
            rows = conn.execute(
                f'SELECT origin, key FROM "{schema}".duplicates WHERE source_id = %s',
                ("orders",),
            ).fetchall()
        assert len(rows) == 30
        assert sorted(int(key.split(":", 1)[1]) for _, key in rows) == list(range(31, 61))
        kept_origins = {r.origin for r in records if 31 <= r.payload["order_id"] <= 60}
        assert not kept_origins & {origin for origin, _ in rows}
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
    assert [p.returncode for p in processes] == [0, 0]
