"""Run whole pipelines from the tests: a copy of a config directory, the CLI, the admin APIs.

Everything goes through what an operator uses — the ``dps`` command as a subprocess and HTTP
against the admin ports — so these tests exercise the process model, not just the classes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

# Ports below the kernel's ephemeral range, so that no outgoing connection of another test takes
# one between the pick and the server's bind: the benchmark runner's picker.
from dps.bench.runner import free_port_base

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "examples" / "quickstart"
PG_DSN = os.environ.get("DPS_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
NATS_URL = os.environ.get("DPS_TEST_NATS_URL", "nats://127.0.0.1:4222")


def copy_quickstart(dest: Path) -> Path:
    shutil.copytree(QUICKSTART, dest, ignore=shutil.ignore_patterns("data", "__pycache__"))
    return dest


def make_scale_out(config_dir: Path, schema: str, stream_prefix: str) -> None:
    """Switch a copied quickstart to NATS queues, PostgreSQL state and a PostgreSQL table."""
    (config_dir / "pipeline.yaml").write_text(
        "name: quickstart-scale-out\n"
        "transport:\n"
        "  backend: nats\n"
        f"  url: {NATS_URL}\n"
        f"  stream_prefix: {stream_prefix}\n"
        "state:\n"
        "  backend: postgresql\n"
        f"  dsn: {PG_DSN}\n"
        f"  schema: {schema}\n"
    )
    warehouse = config_dir / "gamma" / "destinations" / "warehouse.yaml"
    text = warehouse.read_text()
    text = text.replace(
        "connection:\n  type: sqlite\n  path: ${DPS_DATA_DIR:-data}/warehouse.db\n",
        "connection:\n  type: postgresql\n  host: 127.0.0.1\n  port: 5432\n  database: test\n"
        "  username: postgres\n  ssl_mode: disable\n  pool_size: 2\n",
    )
    text = text.replace("table: pipeline_events", f"table: {schema}.pipeline_events")
    warehouse.write_text(text)


def delete_streams(prefix: str) -> None:
    """Delete the NATS streams whose names start with ``prefix`` (a test's queues)."""
    import asyncio

    import nats

    async def main() -> None:
        nc = await nats.connect(NATS_URL)
        js = nc.jetstream()
        for info in await js.streams_info():
            if info.config.name.startswith(prefix):
                await js.delete_stream(info.config.name)
        await nc.close()

    asyncio.run(main())


@dataclass
class RunningPipeline:
    """A ``dps run`` subprocess and where to reach its modules."""

    process: subprocess.Popen[str]
    port_base: int
    data_dir: Path
    output: list[str] = field(default_factory=list)

    def url(self, module: str) -> str:
        offset = {"control": 0, "alpha": 1, "beta": 2, "gamma": 3}[module]
        return f"http://127.0.0.1:{self.port_base + offset}"

    def get(self, module: str, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(self.url(module) + path, timeout=10.0, **kw)

    def post(self, module: str, path: str, **kw: Any) -> httpx.Response:
        return httpx.post(self.url(module) + path, timeout=30.0, **kw)

    def wait_ready(self, timeout: float = 60.0) -> None:
        wait_until(lambda: self._healthy("alpha"), timeout, "alpha admin API never answered")

    def wait_settled(self, timeout: float = 120.0) -> None:
        """Until every record ingested so far is delivered, dead-lettered or a duplicate."""

        def settled() -> bool:
            acc = self.get("control", "/api/accounting").json()
            total = acc["duplicates"] + acc["dlq_total"] + acc["delivered_records"]
            return bool(acc["ingested"] > 0 and total == acc["ingested"])

        wait_until(settled, timeout, "the pipeline did not finish its input")

    def _healthy(self, module: str) -> bool:
        if self.process.poll() is not None:
            _, err = self.process.communicate()
            raise AssertionError(
                f"dps run exited early with {self.process.returncode}: {err[-3000:]}"
            )
        try:
            return self.get(module, "/admin/ready").status_code == 200
        except httpx.HTTPError:
            return False

    def finish(self, timeout: float = 180.0) -> tuple[int, str, str]:
        out, err = self.process.communicate(timeout=timeout)
        return self.process.returncode, out, err

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()


def dps(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dps", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def start_module(module: str, config_dir: Path, data_dir: Path, port: int) -> subprocess.Popen[str]:
    """``dps <module> CONFIG_DIR`` alone, its admin API on ``port`` (stdout and stderr piped)."""
    return subprocess.Popen(
        [sys.executable, "-m", "dps", module, str(config_dir), "--port", str(port),
         "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def start_pipeline(config_dir: Path, data_dir: Path, *extra: str) -> RunningPipeline:
    base = free_port_base()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dps",
            "run",
            str(config_dir),
            "--data-dir",
            str(data_dir),
            "--admin-port-base",
            str(base),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return RunningPipeline(process, base, data_dir)


def last_json_line(stdout: str) -> dict[str, Any]:
    lines = [line for line in stdout.strip().splitlines() if line.strip()]
    assert lines, "no output"
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def wait_until(predicate: Callable[[], bool], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(message)
