"""Run the whole pipeline on the standard workload and measure it from the outside.

The pipeline runs exactly as an operator runs it — ``dps run`` with its four processes, real
queues, a real PostgreSQL destination — and the runner only watches: the control service's
durable accounting (polled), the module processes' CPU time and peak RSS (``/proc``), and, at
the end, the rows in PostgreSQL and the lines in the review file. Nothing inside the pipeline is
instrumented for the benchmark.

Throughput is records over the time from the moment the input files appear (see below) to the
last record reaching its end (a destination acknowledgement, a DLQ, or the duplicate count), as
seen by polling every ``POLL`` seconds; per-module rates use the same clock on each module's own
counter. The poll makes the end up to ``POLL`` seconds late, which matters only for small runs.

The input reaches the pipeline only once every process is ready: ``dps run`` starts on an empty
input directory and the workload's files are linked into it afterwards. This keeps start-up out
of the measurement and lets extra Beta instances (``beta_instances``, started by the runner
next to the supervisor's one, on their own admin ports) be consuming from the first record.
Every Beta instance is a plain ``dps beta`` on the same configuration and data directory: the
transform queue hands each leased batch to one consumer (per-row leases in SQLite, one durable
pull consumer in JetStream), so instances share the work without any coordination.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec

REPO_BENCHMARKS = Path(__file__).resolve().parents[3] / "benchmarks"
POLL = 1.0
QUIET_POLLS = 3
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_encode_json = msgspec.json.Encoder().encode
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
class BetaInstance:
    """One Beta process of a run: where it served, what it used, how much it transformed."""

    url: str
    stats: ProcessStats
    transformed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "pid": self.stats.pid,
            "cpu_seconds": round(self.stats.cpu_seconds, 3),
            "peak_rss_mb": round(self.stats.peak_rss_mb, 1),
            "records_transformed": self.transformed,
        }


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
    latency_ms: dict[str, float | None] = field(
        default_factory=lambda: {"p50": None, "p95": None, "p99": None}
    )
    latency_offered_rps: int = 0
    beta_instances: list[BetaInstance] = field(default_factory=list)
    heavy_beta_rules: int = 0
    #: CPU cores the whole host kept busy during the throughput phase (every process: the
    #: pipeline's, NATS's, PostgreSQL's, and whatever else runs there).
    host_cpu_cores_busy: float = 0.0
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
            "latency_ms": self.latency_ms,
            "latency_offered_rps": self.latency_offered_rps,
            "beta_instances": [b.as_dict() for b in self.beta_instances],
            "heavy_beta_rules": self.heavy_beta_rules,
            "host_cpu_cores_busy": round(self.host_cpu_cores_busy, 2),
            "notes": self.notes,
        }


#: How often the pipeline is started again when one of its ports was taken before it bound it.
START_ATTEMPTS = 3
#: What the admin server (or an HTTP source) logs when its port is taken.
PORT_TAKEN = "Address already in use"


def _ephemeral_floor() -> int:
    """The lowest port the kernel hands to outgoing connections (32768 unless tuned)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port_base(count: int = 4, *, avoid: Sequence[int] = ()) -> int:
    """A port N such that N..N+count-1 are free on 127.0.0.1 now and none is in ``avoid``.

    Ports are picked below the kernel's ephemeral range: a port taken from that range can be
    handed to an outgoing connection (a module's PostgreSQL or NATS client) between the pick
    and the module's bind, and the module then fails to start.
    """
    import random

    high = max(_ephemeral_floor() - count, 10001)
    for _ in range(200):
        base = random.randrange(10000, high)
        ports = range(base, base + count)
        if not set(ports) & set(avoid) and all(_free(p) for p in ports):
            return base
    raise RuntimeError(f"No {count} consecutive free ports on 127.0.0.1 below {high + count}.")


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


#: The extra rule of the Beta-bound variant (``heavy_beta_rules``): a full-match regular
#: expression over the (already lower-cased) e-mail address that rebuilds it unchanged. It costs
#: Beta what a real validation rule costs and changes no output, so the correctness line holds.
HEAVY_RULE = """rule_id: TRX_9{n:02d}_BENCH_LOAD
name: "Benchmark load {n}: re-derive the e-mail address (no change)"
enabled: true
priority: 10

match:
  field: email
  condition: exists

transform:
  type: regex_replace
  config:
    pattern: "^([a-z0-9._%+-]+)@([a-z0-9-]+(?:\\\\.[a-z0-9-]+)*)\\\\.([a-z]{{2,}})$"
    replacement: "$1@$2.$3"

on_failure: skip
"""


def _host_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of the whole host so far, from the first line of /proc/stat."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values) - idle, sum(values)


def prepare_config(
    work: Path,
    backend: Backend,
    pg_dsn: str,
    schema: str,
    stream_prefix: str,
    heavy_beta_rules: int = 0,
) -> Path:
    """Copy the benchmark pipeline into ``work`` and write its pipeline.yaml for ``backend``.

    ``heavy_beta_rules`` adds that many :data:`HEAVY_RULE` rules, which makes Beta the
    bottleneck (for the Beta scaling measurement).
    """
    config = work / f"config-{backend.name}"
    if config.exists():
        shutil.rmtree(config)
    shutil.copytree(REPO_BENCHMARKS / "pipeline", config)
    rules = config / "beta" / "transforms" / "rules"
    for n in range(heavy_beta_rules):
        (rules / f"bench_load_{n:02d}.yaml").write_text(HEAVY_RULE.format(n=n))
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
    latency_rate: int = 5000,
    latency_seconds: float = 10.0,
    beta_instances: int = 1,
    heavy_beta_rules: int = 0,
    label: str | None = None,
) -> RunResult:
    """Run ``dps run`` on the workload in ``input_dir`` until drained; measure; clean up.

    ``beta_instances`` > 1 starts that many Beta processes in all; ``heavy_beta_rules`` makes
    Beta the bottleneck (see :func:`prepare_config`); ``label`` names the run in ``progress``.
    """
    run_id = uuid.uuid4().hex[:8]
    schema = f"bench_{run_id}"
    prefix = f"BENCH{run_id.upper()}"
    config = prepare_config(work, backend, pg_dsn, schema, prefix, heavy_beta_rules)
    data = work / f"data-{backend.name}"
    out = work / f"out-{backend.name}"
    feed = work / f"feed-{backend.name}"
    for path in (data, out, feed):
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
    with _pg_connect(pg_dsn) as conn:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    log_path = work / f"pipeline-{backend.name}.log"
    log = log_path.open("wb")
    extra: list[subprocess.Popen[bytes]] = []
    process: subprocess.Popen[bytes] | None = None
    try:
        deadline = time.monotonic() + timeout
        for attempt in range(1, START_ATTEMPTS + 1):
            base = free_port_base()
            push_port = free_port_base(1, avoid=range(base, base + 4))
            env = {
                "BENCH_PUSH_PORT": str(push_port),
                **os.environ,
                "BENCH_INPUT_DIR": str(feed),
                "BENCH_OUTPUT_DIR": str(out),
                "BENCH_PG_TABLE": f"{schema}.events",
            }
            log.flush()
            started_at = log_path.stat().st_size  # this attempt's part of the log starts here
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
                pids = _wait_ready(process, urls, MODULES, deadline, log_path)
                break
            except RuntimeError:
                # Another program took a port between the pick and the bind: pick again.
                with log_path.open("rb") as logged:
                    logged.seek(started_at)
                    lost_a_port = PORT_TAKEN.encode() in logged.read()
                if attempt == START_ATTEMPTS or not lost_a_port:
                    raise
                _stop(process)
                log.write(f"--- start {attempt} lost a port; starting again\n".encode())
                log.flush()
        assert process is not None  # the loop started it at least once, or raised
        beta_urls = [urls["beta"]]
        for n in range(1, beta_instances):
            port = free_port_base(1, avoid=[*range(base, base + 4), push_port])
            extra.append(
                subprocess.Popen(
                    [sys.executable, "-m", "dps", "beta", str(config), "--data-dir", str(data),
                     "--port", str(port), "--host", "127.0.0.1"],
                    stdout=log, stderr=log,
                    env={**env, "DPS_DATA_DIR": str(data), "DPS_ADMIN_URLS": json.dumps(urls)},
                )
            )  # fmt: skip
            beta_urls.append(f"http://127.0.0.1:{port}")
            extra_pids = _wait_ready(
                extra[-1], {f"beta{n}": beta_urls[-1]}, [f"beta{n}"], deadline, log_path
            )
            pids.update(extra_pids)
        fed_at = _feed(input_dir, feed)
        result = _measure(
            process, urls, beta_urls, pids, backend, records, schema, out, pg_dsn,
            progress, label or backend.name, fed_at, deadline, data,
        )  # fmt: skip
        result.heavy_beta_rules = heavy_beta_rules
        if latency_rate > 0:
            push_url = f"http://127.0.0.1:{push_port}/ingest"
            sent = asyncio.run(_push_open_loop(push_url, latency_rate, latency_seconds))
            _wait_drained(urls, records + len(sent), timeout)
            delivered = _delivery_times(backend, data, pg_dsn, schema, [f"push:{i}" for i in sent])
            result.latency_ms = _percentiles(
                [
                    (delivered[f"push:{i}"] - t) * 1000
                    for i, t in sent.items()
                    if f"push:{i}" in delivered
                ]
            )
            result.latency_offered_rps = latency_rate
            missing = len(sent) - sum(1 for i in sent if f"push:{i}" in delivered)
            if missing:
                result.notes.append(f"latency: {missing} pushed records were not delivered.")
                result.correct = False
        return result
    finally:
        for child in [*extra, process]:
            if child is not None:
                _stop(child)
        log.close()
        with _pg_connect(pg_dsn) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            conn.execute(f"DROP SCHEMA IF EXISTS {schema}_state CASCADE")
        if backend.transport == "nats":
            _delete_streams(prefix)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(120)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _feed(input_dir: Path, feed: Path) -> float:
    """Put the workload's files where the running file source looks, each one whole at once;
    return the monotonic time the first one appeared (the start of the throughput clock)."""
    started = time.monotonic()
    for path in sorted(input_dir.glob("*.ndjson")):
        target = feed / path.name
        try:
            os.link(path, target)
        except OSError:  # another file system: copy under a name the source ignores, rename
            partial = feed / f".{path.name}.part"
            shutil.copy2(path, partial)
            partial.rename(target)
    return started


def _wait_ready(
    process: subprocess.Popen[bytes],
    urls: dict[str, str],
    names: Sequence[str],
    deadline: float,
    log_path: Path,
) -> dict[str, int]:
    """Each named module's pid, once its admin API reports it ready.

    If the process exits or the deadline passes first, the error carries the tail of its log.
    """
    pids: dict[str, int] = {}
    with httpx.Client(timeout=10.0) as client:
        while len(pids) < len(names):
            if process.poll() is not None:
                raise RuntimeError(
                    f"{' '.join(names)} exited with {process.returncode} before it was ready."
                    f"{_log_tail(log_path)}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"The pipeline did not start ({', '.join(names)}).{_log_tail(log_path)}"
                )
            for module in names:
                if module in pids:
                    continue
                with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
                    if client.get(f"{urls[module]}/admin/ready").status_code == 200:
                        status = client.get(f"{urls[module]}/admin/status").json()
                        pids[module] = int(status["pid"])
            time.sleep(0.1)
    return pids


def _log_tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a process log, indented, after a line naming the file."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    tail = text.splitlines()[-lines:]
    return f"\nLast lines of {path}:\n" + "\n".join(f"  {line}" for line in tail)


def _transformed_by(client: httpx.Client, url: str) -> int:
    """``beta_records_transformed_total`` of one Beta instance (its /metrics)."""
    try:
        text = client.get(f"{url}/metrics").text
    except httpx.HTTPError:
        return -1
    for line in text.splitlines():
        if line.startswith("beta_records_transformed_total"):
            return int(float(line.split()[-1]))
    return 0


def _measure(
    process: subprocess.Popen[bytes],
    urls: dict[str, str],
    beta_urls: list[str],
    pids: dict[str, int],
    backend: Backend,
    records: int,
    schema: str,
    out: Path,
    pg_dsn: str,
    progress: Callable[[str, int, int], None] | None,
    label: str,
    first: float,
    deadline: float,
    data: Path,
) -> RunResult:
    client = httpx.Client(timeout=10.0)
    # "beta", "beta1", ... are the Beta instances; their CPU adds up, their peaks are per process.
    stats = {name: ProcessStats(pid) for name, pid in pids.items()}
    cpu_start = {name: _proc_stats(pid)[0] for name, pid in pids.items()}
    host_start = host_end = _host_cpu()

    last_change: dict[str, float] = {}
    previous: dict[str, int] = {}
    quiet = 0
    acc: dict[str, Any] = {}
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"dps run exited with {process.returncode} during the benchmark.")
        if time.monotonic() > deadline:
            raise TimeoutError("The pipeline did not drain in time.")
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
        for name, value in counters.items():
            if value != previous.get(name):
                last_change[name] = now
                previous[name] = value
                host_end = _host_cpu()  # at the last change: the idle tail does not count
        if progress is not None:
            progress(label, done, records)
        idle = counters["alpha"] >= records and not any(acc.get("in_flight", {}).values())
        quiet = quiet + 1 if idle and done >= records else 0
        if quiet >= QUIET_POLLS:
            break
        for st in stats.values():
            _, st.peak_rss_mb = _proc_stats(st.pid)
        time.sleep(POLL)

    host_busy = (host_end[0] - host_start[0]) / max(host_end[1] - host_start[1], 1)
    for name, st in stats.items():
        cpu_now, peak_now = _proc_stats(st.pid)
        st.cpu_seconds = cpu_now - cpu_start[name]
        st.peak_rss_mb = max(st.peak_rss_mb, peak_now)
    betas = [
        BetaInstance(url, stats["beta" if i == 0 else f"beta{i}"], _transformed_by(client, url))
        for i, url in enumerate(beta_urls)
    ]
    client.close()
    # The last acknowledgement as the delivery log has it, rather than the poll that saw it
    # (up to POLL later): a run of 30 s then reads 1-3 % slower than it ran.
    end = max(last_change.values())
    last_ack = _last_delivery(backend, data, pg_dsn, schema)
    if last_ack is not None:
        end = min(end, last_ack - (time.time() - time.monotonic()))
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
    cpu = {m: stats[m].cpu_seconds for m in MODULES}
    cpu["beta"] = sum(b.stats.cpu_seconds for b in betas)
    peak = {m: stats[m].peak_rss_mb for m in MODULES}
    peak["beta"] = max(b.stats.peak_rss_mb for b in betas)
    return RunResult(
        backend=backend.name,
        records=records,
        seconds=seconds,
        throughput_rps=records / seconds,
        module_rps=module_rps,
        cpu_per_1k={m: c * 1000 / records for m, c in cpu.items()},
        peak_rss_mb=peak,
        accounting={k: v for k, v in acc.items() if not k.startswith("_")},
        rows_in_postgresql=rows,
        review_lines=review,
        correct=correct,
        beta_instances=betas,
        host_cpu_cores_busy=host_busy * (os.cpu_count() or 1),
    )


async def _push_open_loop(url: str, rate: int, seconds: float) -> dict[str, float]:
    """POST records at ``rate`` per second for ``seconds``, never waiting for answers.

    Open loop: a batch leaves every 10 ms whatever the previous ones are doing, so a slow
    pipeline shows up as latency rather than as a lower offered rate. Returns id -> send time.

    The load generator shares the machine with the pipeline, so it must cost next to nothing:
    the bodies are built before the clock starts (only their timestamps are filled in per tick)
    and go out over keep-alive connections written by hand. httpx's async client cost about
    4 ms of CPU per request here, half a core at 100 requests/s taken from the pipeline.
    """
    per_tick = max(1, rate // 100)
    ticks = int(seconds * 100)
    bodies = [
        [_latency_record(f"L{tick:06d}{k:04d}") for k in range(per_tick)] for tick in range(ticks)
    ]
    sent: dict[str, float] = {}
    pool = _PushConnections(url)
    tasks = []
    start = time.perf_counter()
    for tick, lines in enumerate(bodies):
        delay = start + tick * 0.01 - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)).encode()
        for k in range(per_tick):
            sent[f"L{tick:06d}{k:04d}"] = now
        body = b"".join(lines).replace(_STAMP, stamp)
        tasks.append(asyncio.create_task(pool.post(body)))
    await asyncio.gather(*tasks)
    pool.close()
    if pool.failures:
        raise RuntimeError(f"{len(pool.failures)} pushes failed, e.g. {pool.failures[0]}")
    return sent


class _PushConnections:
    """HTTP/1.1 POSTs to one URL over keep-alive connections: an idle one, else a new one."""

    def __init__(self, url: str) -> None:
        parts = httpx.URL(url)
        self._host, self._port = parts.host, parts.port or 80
        self._head = (
            f"POST {parts.raw_path.decode()} HTTP/1.1\r\nHost: {self._host}:{self._port}\r\n"
            "Content-Type: application/x-ndjson\r\nContent-Length: "
        ).encode()
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._all: list[asyncio.StreamWriter] = []
        self.failures: list[str] = []

    async def post(self, body: bytes) -> None:
        request = b"%s%d\r\n\r\n%s" % (self._head, len(body), body)
        # A kept-alive connection the server has since closed (its idle timeout) fails before
        # any answer: that request goes again on a new connection.
        while self._idle:
            if await self._send(*self._idle.pop(), request, reused=True):
                return
        try:
            reader, writer = await asyncio.open_connection(self._host, self._port)
        except OSError as exc:
            self.failures.append(f"{type(exc).__name__}: {exc}")
            return
        self._all.append(writer)
        await self._send(reader, writer, request, reused=False)

    async def _send(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: bytes,
        *,
        reused: bool,
    ) -> bool:
        """Send ``request``; False when a reused connection turned out closed (send again)."""
        try:
            writer.write(request)
            status = (await reader.readline()).split(b" ", 2)
            if status == [b""]:
                writer.close()
                if not reused:
                    self.failures.append("the server closed the connection without an answer")
                return not reused
            length, keep = 0, True
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    keep = False
            answer = await reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            writer.close()
            if reused and isinstance(exc, ConnectionError):
                return False
            self.failures.append(f"{type(exc).__name__}: {exc}")
            return True
        if len(status) < 2 or status[1] != b"200":
            self.failures.append(f"{b' '.join(status[1:]).decode().strip()} {answer[:200]!r}")
        if keep:
            self._idle.append((reader, writer))
        else:
            writer.close()
        return True

    def close(self) -> None:
        for writer in self._all:
            writer.close()


#: The timestamp in a latency record's body before it is sent (same length as the real one).
_STAMP = b"0000-00-00T00:00:00Z"


def _latency_record(rid: str) -> bytes:
    return (
        _encode_json(
            {
                "id": rid,
                "timestamp": _STAMP.decode(),
                "source_id": "src_1",
                "customer_id": "C00001",
                "amount": "10.00",
                "currency": "usd",
                "phone_number": "(555) 123-4567",
                "email": "Latency@Example.com",
                "country": "DE",
                "payload": {"channel": "web", "items": 1},
            }
        )
        + b"\n"
    )


def _wait_drained(urls: dict[str, str], expected: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=10.0) as client:
        while time.monotonic() < deadline:
            acc = client.get(f"{urls['control']}/api/accounting").json()
            done = (
                int(acc.get("delivered_records", 0))
                + int(acc.get("dlq_total", 0))
                + int(acc["duplicates"])
            )
            if done >= expected and not any(acc.get("in_flight", {}).values()):
                return
            time.sleep(POLL)
    raise TimeoutError("The latency run did not drain.")


def _delivery_log(
    backend: Backend, data: Path, pg_dsn: str, schema: str, query: str
) -> list[tuple[Any, float]]:
    """Run ``query`` on the run's delivery log (``{log}`` in it names the table); the second
    column of each row, a timestamp, as seconds since the epoch."""
    from datetime import UTC, datetime

    if backend.state == "postgresql":
        with _pg_connect(pg_dsn) as conn:
            rows = conn.execute(query.format(log=f"{schema}_state.delivery_log")).fetchall()
        return [(key, ts.timestamp()) for key, ts in rows if ts is not None]
    import sqlite3

    with contextlib.closing(sqlite3.connect(data / "state.db")) as conn:
        rows = conn.execute(query.format(log="delivery_log")).fetchall()
    return [
        (key, datetime.fromisoformat(ts).replace(tzinfo=UTC).timestamp())
        for key, ts in rows
        if ts is not None
    ]


def _delivery_times(
    backend: Backend, data: Path, pg_dsn: str, schema: str, record_ids: list[str]
) -> dict[str, float]:
    """When each record was first acknowledged by a destination (the delivery log)."""
    rows = _delivery_log(
        backend,
        data,
        pg_dsn,
        schema,
        "SELECT record_id, min(timestamp) FROM {log} "
        "WHERE status = 'delivered' AND record_id LIKE 'push:%' GROUP BY record_id",
    )
    wanted = set(record_ids)
    return {rid: t for rid, t in rows if rid in wanted}


def _last_delivery(backend: Backend, data: Path, pg_dsn: str, schema: str) -> float | None:
    """When a destination acknowledged the run's last record (the delivery log's newest row)."""
    newest = "SELECT 1, max(timestamp) FROM {log} WHERE status = 'delivered'"
    rows = _delivery_log(backend, data, pg_dsn, schema, newest)
    return rows[0][1] if rows else None


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {"p50": pick(0.50), "p95": pick(0.95), "p99": pick(0.99)}


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
