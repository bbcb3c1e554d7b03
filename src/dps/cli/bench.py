"""``dps bench``: generate the standard workload, run the pipeline on it, report.

Two phases per backend on one running pipeline: the throughput phase drains the whole workload
from files as fast as the pipeline goes; the latency phase then pushes records over HTTP at a
fixed offered rate (open loop) and measures each one from its send to its destination
acknowledgement (the delivery log's timestamp).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dps.bench import floors
from dps.bench.runner import BACKENDS, RunResult, run_pipeline
from dps.bench.workload import generate, write_customers

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"


def bench(
    records: Annotated[int, typer.Option(help="Records in the workload.", min=1000)] = 1_000_000,
    seed: Annotated[int, typer.Option(help="Seed of the workload generator.")] = 42,
    backend: Annotated[
        str,
        typer.Option(help="embedded (SQLite queues and state), nats (NATS + PostgreSQL), both."),
    ] = "embedded",
    compare: Annotated[
        bool, typer.Option("--compare", help="Also measure the floors and the naive peer.")
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="One JSON object on the last line.")
    ] = False,
    work_dir: Annotated[
        Path | None, typer.Option(help="Where the workload and data go (default: a temp dir).")
    ] = None,
    keep: Annotated[bool, typer.Option(help="Keep the work directory.")] = False,
    pg_dsn: Annotated[
        str, typer.Option(envvar="DPS_BENCH_PG_DSN", help="PostgreSQL for the destination.")
    ] = DEFAULT_DSN,
    latency_rate: Annotated[
        int, typer.Option(help="Records/s offered in the latency phase (0: skip it).", min=0)
    ] = 5000,
    latency_seconds: Annotated[
        float, typer.Option(help="Length of the latency phase in seconds.", min=1)
    ] = 10.0,
) -> None:
    """Benchmark the whole pipeline on the standard workload (see benchmarks/README.md)."""
    if backend not in ("embedded", "nats", "both"):
        raise typer.BadParameter("expected embedded, nats or both", param_hint="--backend")
    console = Console(stderr=True)
    work = Path(work_dir or tempfile.mkdtemp(prefix="dps-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        summary = _run(
            records, seed, backend, compare, work, pg_dsn, console, latency_rate, latency_seconds
        )
    finally:
        if not keep and work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    _print_table(summary, Console())
    if json_out:
        print(json.dumps(summary, sort_keys=True), flush=True)
    raise typer.Exit(0 if summary["correct"] else 1)


def _run(
    records: int,
    seed: int,
    backend: str,
    compare: bool,
    work: Path,
    pg_dsn: str,
    console: Console,
    latency_rate: int,
    latency_seconds: float,
) -> dict[str, Any]:
    input_dir = work / "input"
    with console.status(f"Generating {records:,} records (seed {seed})..."):
        if input_dir.exists():
            shutil.rmtree(input_dir)
        stats = generate(input_dir, records, seed=seed)
        write_customers(work / "customers.csv")
    console.print(f"Workload: {stats.as_dict()}")
    results: list[RunResult] = []
    names = ["embedded", "nats"] if backend == "both" else [backend]
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=False,
    ) as progress:  # fmt: skip
        tasks = {n: progress.add_task(f"pipeline ({n})", total=records) for n in names}

        def update(name: str, done: int, total: int) -> None:
            progress.update(tasks[name], completed=min(done, total))

        for name in names:
            results.append(
                run_pipeline(
                    backend=BACKENDS[name], work=work, input_dir=input_dir, records=records,
                    pg_dsn=pg_dsn, progress=update, latency_rate=latency_rate,
                    latency_seconds=latency_seconds,
                )
            )  # fmt: skip
    main = results[0]
    summary: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "commit": _commit(),
        "machine": _machine(),
        "records": records,
        "workload": stats.as_dict(),
        "throughput_rps": round(main.throughput_rps, 1),
        "latency_ms": main.latency_ms,
        "latency_offered_rps": main.latency_offered_rps,
        "runs": [r.as_dict() for r in results],
        "correct": all(r.correct for r in results),
        "notes": [note for r in results for note in r.notes],
    }
    if compare:
        with console.status("Measuring the floors and the naive peer..."):
            parse = floors.parse_floor(input_dir)
            copy = floors.copy_floor(input_dir, pg_dsn)
            naive = floors.naive_peer(input_dir, pg_dsn, work)
        summary["floors_rps"] = {
            "parse": round(parse, 1), "copy": round(copy, 1), "naive": round(naive, 1)
        }  # fmt: skip
        summary["ratios"] = {
            "vs_parse_floor": round(main.throughput_rps / parse, 4),
            "vs_copy_floor": round(main.throughput_rps / copy, 4),
            "vs_naive": round(main.throughput_rps / naive, 4),
            "vs_dlt": None,
        }
        summary["notes"].append("vs_dlt: the dlt peer is not built yet.")
    return summary


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
            cwd=Path(__file__).resolve().parents[3],
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    python = f"{platform.python_implementation()} {platform.python_version()}"
    return f"{os.cpu_count()} cores, {mem_gib:.0f} GiB, {model}, {python}"


def _latency(values: dict[str, float | None]) -> str:
    if values.get("p50") is None:
        return "-"
    return " / ".join(f"{values[k]:.0f}" for k in ("p50", "p95", "p99"))


def _print_table(summary: dict[str, Any], console: Console) -> None:
    table = Table(title=f"dps bench: {summary['records']:,} records")
    table.add_column("run")
    table.add_column("records/s", justify="right")
    table.add_column("alpha / beta / gamma records/s", justify="right")
    table.add_column("CPU s per 1k (a/b/g)", justify="right")
    table.add_column("peak RSS MB (a/b/g)", justify="right")
    table.add_column("latency ms p50/p95/p99", justify="right")
    table.add_column("correct")
    for run in summary["runs"]:
        m, c, r = run["module_rps"], run["cpu_seconds_per_1k"], run["peak_rss_mb"]
        table.add_row(
            run["backend"],
            f"{run['throughput_rps']:,.0f}",
            " / ".join(f"{m[k]:,.0f}" for k in ("alpha", "beta", "gamma")),
            " / ".join(f"{c[k]:.3f}" for k in ("alpha", "beta", "gamma")),
            " / ".join(f"{r[k]:.0f}" for k in ("alpha", "beta", "gamma")),
            _latency(run["latency_ms"]),
            "yes" if run["correct"] else "NO",
        )
    console.print(table)
    if "floors_rps" in summary:
        f, ratio = summary["floors_rps"], summary["ratios"]
        console.print(
            f"floors: parse {f['parse']:,.0f}/s, COPY {f['copy']:,.0f}/s, naive peer "
            f"{f['naive']:,.0f}/s; ratios: vs COPY {ratio['vs_copy_floor']:.2f}, "
            f"vs naive {ratio['vs_naive']:.2f}"
        )
    for note in summary["notes"]:
        console.print(f"note: {note}")
