"""Run the whole pipeline on the standard workload and measure it from the outside.

The pipeline runs exactly as an operator runs it — ``dps run`` with its four processes, real
queues, a real PostgreSQL destination — and the runner only watches: the control service's
durable accounting (polled), the module processes' CPU time and peak RSS (``/proc``), and, at
the end, the rows in PostgreSQL and the lines in the review file. Nothing inside the pipeline is
instrumented for the benchmark.

Throughput is records over the time from the first ingested record to the last record reaching
its end (a destination acknowledgement, a DLQ, or the duplicate count), as seen by polling every
``POLL`` seconds; per-module rates use the same clock on each module's own counter.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO_BENCHMARKS = Path(__file__).resolve().parents[3] / "benchmarks"
POLL = 0.25
QUIET_POLLS = 8
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MODULES = ("alpha", "beta", "gamma", "control")


@dataclass(slots=True)
class Backend:
    """Which queues and state store a run uses."""

    name: str
    transport: str
    state: str


BACKENDS = {
    "embedded": Backend("embedded", "sqlite", "sqlite"),
    "nats": Backend("nats", "nats", "postgresql"),
}


@dataclass(slots=True)
class ProcessStats:
    pid: int
    cpu_seconds: float = 0.0
    peak_rss_mb: float = 0.0


@dataclass(slots=True)
class RunResult:
    """What one pipeline run measured."""

    backend: str
    records: int
    seconds: float
    throughput_rps: float
    module_rps: dict[str, float]
    cpu_per_1k: dict[str, float]
    peak_rss_mb: dict[str, float]
    accounting: dict[str, Any]
    rows_in_postgresql: int
    review_lines: int
    correct: bool
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "records": self.records,
            "seconds": round(self.seconds, 3),
            "throughput_rps": round(self.throughput_rps, 1),
            "module_rps": {k: round(v, 1) for k, v in self.module_rps.items()},
            "cpu_seconds_per_1k": {k: round(v, 4) for k, v in self.cpu_per_1k.items()},
            "peak_rss_mb": {k: round(v, 1) for k, v in self.peak_rss_mb.items()},
            "accounting": self.accounting,
            "rows_in_postgresql": self.rows_in_postgresql,
            "review_lines": self.review_lines,
            "correct": self.correct,
            "notes": self.notes,
        }


def free_port_base(count: int = 4) -> int:
    import socket

    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        if base + count < 65535 and all(_free(p) for p in range(base, base + count)):
            return base
    raise RuntimeError("No free ports for the benchmark's admin APIs.")


def _free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _proc_stats(pid: int) -> tuple[float, float]:
    """(CPU seconds, peak RSS MB) of a live process, from /proc."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rpartition(")")[2].split()
    cpu = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    peak = 0.0
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    return cpu, peak


def prepare_config(
    work: Path, backend: Backend, pg_dsn: str, schema: str, stream_prefix: str
) -> Path:
    """Copy the benchmark pipeline into ``work`` and write its pipeline.yaml for ``backend``."""
    config = work / f"config-{backend.name}"
    if config.exists():
        shutil.rmtree(config)
    shutil.copytree(REPO_BENCHMARKS / "pipeline", config)
    lines = [f"name: bench-{backend.name}", "transport:", f"  backend: {backend.transport}"]
    if backend.transport == "nats":
        lines += ["  url: nats://127.0.0.1:4222", f"  stream_prefix: {stream_prefix}"]
    lines += ["state:", f"  backend: {backend.state}"]
    if backend.state == "postgresql":
        lines += [f"  dsn: {pg_dsn}", f"  schema: {schema}_state"]
    (config / "pipeline.yaml").write_text("\n".join(lines) + "\n")
    return config


def _pg_connect(dsn: str) -> Any:
    import psycopg

    return psycopg.connect(dsn, autocommit=True)


def run_pipeline(
    *,
    backend: Backend,
    work: Path,
    input_dir: Path,
    records: int,
    pg_dsn: str,
    progress: Callable[[str, int, int], None] | None = None,
    timeout: float = 3600.0,
) -> RunResult:
    """Run ``dps run`` on the workload in ``input_dir`` until drained; measure; clean up."""
    run_id = uuid.uuid4().hex[:8]
    schema = f"bench_{run_id}"
    prefix = f"BENCH{run_id.upper()}"
    config = prepare_config(work, backend, pg_dsn, schema, prefix)
    data = work / f"data-{backend.name}"
    out = work / f"out-{backend.name}"
    for path in (data, out):
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
    with _pg_connect(pg_dsn) as conn:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    base = free_port_base()
    env = {
        **os.environ,
        "BENCH_INPUT_DIR": str(input_dir),
        "BENCH_OUTPUT_DIR": str(out),
        "BENCH_PG_TABLE": f"{schema}.events",
    }
    log = (work / f"pipeline-{backend.name}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "dps", "run", str(config), "--data-dir", str(data),
         "--admin-port-base", str(base)],
        stdout=log, stderr=log, env=env,
    )  # fmt: skip
    urls = {
        m: f"http://127.0.0.1:{base + i}"
        for i, m in enumerate(("control", "alpha", "beta", "gamma"))
    }
    try:
        return _measure(process, urls, backend, records, schema, out, pg_dsn, progress, timeout)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(120)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()
        with _pg_connect(pg_dsn) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            conn.execute(f"DROP SCHEMA IF EXISTS {schema}_state CASCADE")
        if backend.transport == "nats":
            _delete_streams(prefix)


def _measure(
    process: subprocess.Popen[bytes],
    urls: dict[str, str],
    backend: Backend,
    records: int,
    schema: str,
    out: Path,
    pg_dsn: str,
    progress: Callable[[str, int, int], None] | None,
    timeout: float,
) -> RunResult:
    client = httpx.Client(timeout=10.0)
    deadline = time.monotonic() + timeout
    pids: dict[str, int] = {}
    while len(pids) < len(MODULES):
        if process.poll() is not None:
            raise RuntimeError(f"dps run exited with {process.returncode} before it was ready.")
        if time.monotonic() > deadline:
            raise TimeoutError("The pipeline did not start.")
        for module in MODULES:
            if module not in pids:
                with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
                    pids[module] = int(client.get(f"{urls[module]}/admin/status").json()["pid"])
        time.sleep(0.1)
    stats = {m: ProcessStats(pid) for m, pid in pids.items()}
    cpu_start = {m: _proc_stats(pid)[0] for m, pid in pids.items()}

    first: float | None = None
    last_change: dict[str, float] = {}
    previous: dict[str, int] = {}
    quiet = 0
    acc: dict[str, Any] = {}
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"dps run exited with {process.returncode} during the benchmark.")
        if time.monotonic() > deadline:
            raise TimeoutError(f"The pipeline did not drain within {timeout:.0f} s.")
        now = time.monotonic()
        try:
            acc = client.get(f"{urls['control']}/api/accounting").json()
        except (httpx.HTTPError, ValueError):
            time.sleep(POLL)
            continue
        counters = {
            "alpha": int(acc["ingested"]),
            "beta": int(acc["transformed"]) + int(acc["dlq"].get("beta", 0)),
            "gamma": int(acc.get("delivered_records", 0)) + int(acc["dlq"].get("gamma", 0)),
        }
        done = (
            int(acc.get("delivered_records", 0))
            + int(acc.get("dlq_total", 0))
            + int(acc["duplicates"])
        )
        if first is None and counters["alpha"] > 0:
            first = now
        for name, value in counters.items():
            if value != previous.get(name):
                last_change[name] = now
                previous[name] = value
        if progress is not None:
            progress(backend.name, done, records)
        idle = counters["alpha"] >= records and not any(acc.get("in_flight", {}).values())
        quiet = quiet + 1 if idle and done >= records else 0
        if quiet >= QUIET_POLLS:
            break
        for st in stats.values():
            _, st.peak_rss_mb = _proc_stats(st.pid)
        time.sleep(POLL)

    for module, st in stats.items():
        cpu, peak = _proc_stats(st.pid)
        st.cpu_seconds = cpu - cpu_start[module]
        st.peak_rss_mb = max(st.peak_rss_mb, peak)
    assert first is not None
    end = max(last_change.values())
    seconds = max(end - first, 1e-6)
    module_rps = {
        name: previous[name] / max(last_change[name] - first, 1e-6)
        for name in ("alpha", "beta", "gamma")
    }
    with _pg_connect(pg_dsn) as conn:
        rows = int(conn.execute(f"SELECT count(*) FROM {schema}.events").fetchone()[0])
    review_path = out / "review.jsonl"
    review = sum(1 for _ in review_path.open()) if review_path.exists() else 0
    dlq_total = int(acc.get("dlq_total", 0))
    correct = rows + review + dlq_total + int(acc["duplicates"]) == records
    return RunResult(
        backend=backend.name,
        records=records,
        seconds=seconds,
        throughput_rps=records / seconds,
        module_rps=module_rps,
        cpu_per_1k={m: st.cpu_seconds * 1000 / records for m, st in stats.items()},
        peak_rss_mb={m: st.peak_rss_mb for m, st in stats.items()},
        accounting={k: v for k, v in acc.items() if not k.startswith("_")},
        rows_in_postgresql=rows,
        review_lines=review,
        correct=correct,
    )


def _delete_streams(prefix: str) -> None:
    import asyncio

    import nats

    async def main() -> None:
        nc = await nats.connect("nats://127.0.0.1:4222")
        js = nc.jetstream()
        for info in await js.streams_info():
            if info.config.name and info.config.name.startswith(prefix):
                await js.delete_stream(info.config.name)
        await nc.close()

    asyncio.run(main())
