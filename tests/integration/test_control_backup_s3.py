"""Backups to an S3-compatible bucket: a real S3 HTTP server (moto's, on 127.0.0.1 and a free
port) stands in for MinIO or AWS. Create mid-run, verify, wipe, restore from S3, and the
pipeline finishes with every record delivered once; a corrupted object is refused; ``--keep``
deletes older backups from the bucket; the backup jobs work on an ``s3://`` directory.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from tests.integration.pipeline_harness import (
    copy_quickstart,
    dps,
    free_port_base,
    last_json_line,
    start_pipeline,
    wait_until,
)
from tests.integration.test_control_backup import ports, warehouse_ids
from tests.integration.test_pipeline_faults import add_bulk_orders

from dps.config import load_config
from dps.control.jobs import JobContext
from dps.control.jobs.backup import daily_backup_verify, monthly_dr_validation
from dps.control.modules import ModuleClient
from dps.state import open_state

BULK = 10_000
BUCKET = "dps-backups"
KEYS = {"DPS_TEST_S3_KEY": "testing-key", "DPS_TEST_S3_SECRET": "testing-secret"}


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    # The server's request log would drown a failure's report.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = free_port_base(1)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    endpoint = f"http://127.0.0.1:{port}"
    s3_client(endpoint).create_bucket(Bucket=BUCKET)
    try:
        yield endpoint
    finally:
        server.stop()


def s3_client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=KEYS["DPS_TEST_S3_KEY"],
        aws_secret_access_key=KEYS["DPS_TEST_S3_SECRET"],
    )


def keys(endpoint: str, prefix: str = "") -> list[str]:
    listed = s3_client(endpoint).list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for o in listed.get("Contents", [])]


def s3_config(config_dir: Path, endpoint: str) -> None:
    pipeline = config_dir / "pipeline.yaml"
    pipeline.write_text(
        pipeline.read_text() + "backup:\n"
        f"  directory: s3://{BUCKET}/nightly\n"
        "  keep: 4\n"
        "  s3:\n"
        f"    endpoint_url: {endpoint}\n"
        "    region: us-east-1\n"
        "    access_key_id_ref: env:DPS_TEST_S3_KEY\n"
        "    secret_access_key_ref: env:DPS_TEST_S3_SECRET\n"
        "    addressing_style: path\n"
    )


def s3_options(endpoint: str) -> list[str]:
    return [
        "--s3-endpoint-url",
        endpoint,
        "--s3-region",
        "us-east-1",
        "--s3-access-key-ref",
        "env:DPS_TEST_S3_KEY",
        "--s3-secret-key-ref",
        "env:DPS_TEST_S3_SECRET",
    ]


def test_backup_to_s3_restore_finishes_the_run_once(tmp_path: Path, s3_endpoint: str) -> None:
    config_dir = copy_quickstart(tmp_path / "config")
    add_bulk_orders(config_dir, BULK)
    s3_config(config_dir, s3_endpoint)
    data_dir = tmp_path / "data"
    pipeline = start_pipeline(config_dir, data_dir)
    try:
        pipeline.wait_ready()
        wait_until(
            lambda: pipeline.get("control", "/api/accounting").json()["delivered_records"] > 500,
            120,
            "nothing delivered",
        )
        done = dps(
            "backup",
            "create",
            str(config_dir),
            "--data-dir",
            str(data_dir),
            "--admin-port-base",
            str(pipeline.port_base),
        )
        assert done.returncode == 0, done.stderr
        first = done.stdout.strip()
        assert "Paused alpha." in done.stderr and "Resumed alpha." in done.stderr
        assert "Uploaded to s3://" in done.stderr
    finally:
        pipeline.stop()
    assert first.startswith(f"s3://{BUCKET}/nightly/backup-")
    name = first.rsplit("/", 1)[1]
    stored = keys(s3_endpoint, f"nightly/{name}/")
    assert f"nightly/{name}/manifest.json" in stored
    assert f"nightly/{name}/data/state.db" in stored
    assert f"nightly/{name}/config/pipeline.yaml" in stored
    # Nothing is staged in the data directory.
    assert not (data_dir / "backups").exists()
    done = dps("backup", "verify", first, *s3_options(s3_endpoint))
    assert done.returncode == 0, done.stdout + done.stderr
    listed = dps("backup", "list", str(config_dir), "--data-dir", str(data_dir))
    assert listed.returncode == 0 and listed.stdout.split() == [first], listed.stderr
    # The data directory is lost; the backup comes back from S3.
    shutil.rmtree(data_dir)
    done = dps("backup", "restore", first, "--data-dir", str(data_dir), *s3_options(s3_endpoint))
    assert done.returncode == 0, done.stderr
    assert f"from {first} into" in done.stdout
    assert warehouse_ids(data_dir)[0] > 0
    done = dps(
        "run",
        str(config_dir),
        "--data-dir",
        str(data_dir),
        "--once",
        "--json",
        *ports(),
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = last_json_line(done.stdout)
    rows, ids = warehouse_ids(data_dir)
    assert rows == len(ids), "a record was delivered twice"
    bulk = {f"orders_file:BULK-{n:07d}" for n in range(BULK)}
    missing = bulk - ids
    assert not missing, f"{len(missing)} records lost, e.g. {sorted(missing)[:3]}"
    assert summary["adds_up"]


def test_corrupted_s3_object_is_refused_and_keep_prunes_the_bucket(
    tmp_path: Path, s3_endpoint: str
) -> None:
    config_dir = copy_quickstart(tmp_path / "config")
    s3_config(config_dir, s3_endpoint)
    data_dir = tmp_path / "data"
    done = dps("run", str(config_dir), "--data-dir", str(data_dir), "--once", *ports(), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    made = []
    for _ in range(3):
        done = dps("backup", "create", str(config_dir), "--data-dir", str(data_dir))
        assert done.returncode == 0, done.stderr
        made.append(done.stdout.strip())
    # The backup jobs work on the s3:// directory of pipeline.yaml.
    config = load_config(config_dir)
    store = open_state("sqlite", {"path": str(tmp_path / "jobs-state.db")}, tmp_path)
    client = ModuleClient({})
    try:
        for job in (daily_backup_verify, monthly_dr_validation):
            ctx = JobContext(job.__name__, "r", store, client, config, config_dir, data_dir)
            result = job(ctx)
            assert result.ok and made[-1].rsplit("/", 1)[1] in result.message, result.message
    finally:
        store.close()
        client.close()
    # One flipped byte in the state database of the newest backup, in the bucket.
    s3 = s3_client(s3_endpoint)
    key = made[-1].split(f"s3://{BUCKET}/", 1)[1] + "/data/state.db"
    raw = bytearray(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    raw[len(raw) // 2] ^= 0xFF
    s3.put_object(Bucket=BUCKET, Key=key, Body=bytes(raw))
    done = dps("backup", "verify", made[-1], *s3_options(s3_endpoint))
    assert done.returncode == 1
    assert "data/state.db does not match its checksum" in done.stdout
    target = tmp_path / "restored"
    done = dps("backup", "restore", made[-1], "--data-dir", str(target), *s3_options(s3_endpoint))
    assert done.returncode == 1 and "failed verification, nothing was restored" in done.stderr
    assert made[-1] in done.stderr
    assert not target.exists() or not any(target.iterdir())
    # Wrong credentials: a clear error, not a traceback.
    done = dps(
        "backup",
        "verify",
        made[0],
        "--s3-endpoint-url",
        s3_endpoint,
        "--s3-access-key-ref",
        "env:NO_SUCH_VARIABLE",
        "--s3-secret-key-ref",
        "env:NO_SUCH_VARIABLE",
    )
    assert done.returncode == 1 and "NO_SUCH_VARIABLE" in done.stdout, done.stdout + done.stderr
    # --keep 2: the oldest backups are deleted from the bucket, objects and all.
    done = dps("backup", "create", str(config_dir), "--data-dir", str(data_dir), "--keep", "2")
    assert done.returncode == 0, done.stderr
    newest = done.stdout.strip()
    listed = dps("backup", "list", str(config_dir), "--data-dir", str(data_dir))
    assert listed.stdout.split() == [made[-1], newest]
    for gone in made[:2]:
        assert not keys(s3_endpoint, gone.split(f"s3://{BUCKET}/", 1)[1] + "/")
    assert f"Deleted the older backup {made[0]}." in done.stderr
