"""``dps bench``: generate the standard workload, run the pipeline on it, report.

Two phases per backend on one running pipeline: the throughput phase drains the whole workload
from files as fast as the pipeline goes; the latency phase then pushes records over HTTP at a
fixed offered rate (open loop) and measures each one from its send to its destination
acknowledgement (the delivery log's timestamp).

Two other measurements replace that run when asked for:

- ``--scale 100000,1000000``: one throughput run per size (no latency phase), reporting the
  cost per record (CPU seconds per 1,000 records per module) and each module's peak RSS, to show
  that the cost stays flat and the memory is bounded by the configuration, not the input size;
- ``--beta-scaling``: the pipeline with Beta made the bottleneck (``--beta-load-rules`` extra
  regex rules), run with one Beta instance and then with ``--beta-instances`` (at least 2), and
  the ratio of Beta's throughput between the two runs.
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
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from dps.bench import dlt_peer, floors
from dps.bench.runner import BACKENDS, RunResult, run_pipeline
from dps.bench.workload import WorkloadStats, generate, write_customers

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
#: Extra Beta rules of the Beta-bound variant: enough that Beta costs several times what Alpha
#: and Gamma cost per record, so that Beta alone sets the pipeline's pace.
BETA_LOAD_RULES = 40


def bench(
    records: Annotated[int, typer.Option(help="Records in the workload.", min=1000)] = 1_000_000,
    seed: Annotated[int, typer.Option(help="Seed of the workload generator.")] = 42,
    backend: Annotated[
        str,
        typer.Option(help="embedded (SQLite queues and state), nats (NATS + PostgreSQL), both."),
    ] = "embedded",
    compare: Annotated[
        bool,
        typer.Option("--compare", help="Also measure the floors, the naive peer and the dlt peer."),
    ] = False,
    no_dlt: Annotated[
        bool,
        typer.Option(
            "--no-dlt",
            help="With --compare, leave out the dlt peer (and its virtualenv install).",
        ),
    ] = False,
    scale: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated workload sizes (e.g. 100000,1000000): one throughput run per "
            "size, reporting cost per record and peak RSS per module. Replaces --records.",
        ),
    ] = None,
    beta_instances: Annotated[
        int,
        typer.Option(
            help="Beta processes in the pipeline (the extra ones consume the same transform "
            "queue); with --beta-scaling, the count compared with one.",
            min=1,
            max=16,
        ),
    ] = 1,
    beta_scaling: Annotated[
        bool,
        typer.Option(
            "--beta-scaling",
            help="Make Beta the bottleneck and measure Beta's throughput with one instance, "
            "then with --beta-instances (at least 2); report the ratio.",
        ),
    ] = False,
    beta_load_rules: Annotated[
        int,
        typer.Option(
            help="Extra regex rules that make Beta the bottleneck in --beta-scaling.", min=0
        ),
    ] = BETA_LOAD_RULES,
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
    sizes = _sizes(scale) if scale is not None else None
    if sizes is not None and (compare or beta_scaling):
        raise typer.BadParameter(
            "--scale runs its own series; run --compare or --beta-scaling separately.",
            param_hint="--scale",
        )
    if beta_scaling and compare:
        raise typer.BadParameter(
            "--beta-scaling runs its own pair of runs; run --compare separately.",
            param_hint="--beta-scaling",
        )
    console = Console(stderr=True)
    work = Path(work_dir or tempfile.mkdtemp(prefix="dps-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    names = ["embedded", "nats"] if backend == "both" else [backend]
    try:
        if sizes is not None:
            summary = _run_scale(sizes, seed, names, work, pg_dsn, console, beta_instances)
        elif beta_scaling:
            summary = _run_beta_scaling(
                records, seed, names, work, pg_dsn, console, max(2, beta_instances),
                beta_load_rules,
            )  # fmt: skip
        else:
            summary = _run(
                records, seed, names, compare, not no_dlt, work, pg_dsn, console,
                latency_rate, latency_seconds, beta_instances,
            )  # fmt: skip
    finally:
        if not keep and work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    if "scale" in summary:
        _print_scale(summary, Console())
    elif "beta_scaling" in summary:
        _print_beta_scaling(summary, Console())
    else:
        _print_table(summary, Console())
    if json_out:
        print(json.dumps(summary, sort_keys=True), flush=True)
    raise typer.Exit(0 if summary["correct"] else 1)


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(size < 1000 for size in sizes):
        raise typer.BadParameter(
            f"{text!r} is not a list of sizes; expected comma-separated integers of at least "
            "1000, e.g. 100000,300000,1000000.",
            param_hint="--scale",
        )
    return sizes


def _workload(work: Path, records: int, seed: int, console: Console) -> tuple[Path, WorkloadStats]:
    input_dir = work / "input"
    with console.status(f"Generating {records:,} records (seed {seed})..."):
        if input_dir.exists():
            shutil.rmtree(input_dir)
        stats = generate(input_dir, records, seed=seed)
        write_customers(work / "customers.csv")
    console.print(f"Workload: {stats.as_dict()}")
    return input_dir, stats


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=False,
    )  # fmt: skip


def _advance(progress: Progress, task: TaskID, done: int, total: int) -> None:
    """Move a bar that was added with ``start=False``, starting its clock on the first call."""
    if progress.tasks[task].start_time is None:
        progress.start_task(task)
    progress.update(task, completed=min(done, total))


def _header() -> dict[str, Any]:
    return {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "commit": _commit(),
        "machine": _machine(),
    }


def _run(
    records: int,
    seed: int,
    names: list[str],
    compare: bool,
    with_dlt: bool,
    work: Path,
    pg_dsn: str,
    console: Console,
    latency_rate: int,
    latency_seconds: float,
    beta_instances: int,
) -> dict[str, Any]:
    input_dir, stats = _workload(work, records, seed, console)
    results: list[RunResult] = []
    with _progress(console) as progress:
        tasks = {n: progress.add_task(f"pipeline ({n})", total=records, start=False) for n in names}

        def update(name: str, done: int, total: int) -> None:
            _advance(progress, tasks[name], done, total)

        for name in names:
            results.append(
                run_pipeline(
                    backend=BACKENDS[name], work=work, input_dir=input_dir, records=records,
                    pg_dsn=pg_dsn, progress=update, latency_rate=latency_rate,
                    latency_seconds=latency_seconds, beta_instances=beta_instances,
                )
            )  # fmt: skip
    main = results[0]
    summary: dict[str, Any] = {
        **_header(),
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
            "parse": round(parse, 1), "copy": round(copy, 1), "naive": round(naive, 1),
            "dlt": None,
        }  # fmt: skip
        summary["ratios"] = {
            "vs_parse_floor": round(main.throughput_rps / parse, 4),
            "vs_copy_floor": round(main.throughput_rps / copy, 4),
            "vs_naive": round(main.throughput_rps / naive, 4),
            "vs_dlt": None,
        }
        if not with_dlt:
            summary["notes"].append("vs_dlt: the dlt peer was left out (--no-dlt).")
        else:
            dlt = _dlt(input_dir, pg_dsn, work, console, summary["notes"])
            if dlt is not None:
                summary["peers"] = {"dlt": dlt}
                summary["floors_rps"]["dlt"] = round(dlt["records_per_second"], 1)
                summary["ratios"]["vs_dlt"] = round(
                    main.throughput_rps / dlt["records_per_second"], 4
                )
    return summary


def _dlt(
    input_dir: Path, pg_dsn: str, work: Path, console: Console, notes: list[str]
) -> dict[str, Any] | None:
    """The dlt peer's result, or None with a note saying why there is none."""
    try:
        with console.status("Checking the dlt peer's virtualenv...") as status:

            def say(line: str) -> None:
                if line.startswith(("Creating", "Installing dlt", "The dlt")):
                    console.print(line, highlight=False, markup=False)  # the messages worth keeping
                status.update(f"dlt peer: {line}")

            python = dlt_peer.ensure_venv(progress=say)
        with console.status("Measuring the dlt peer..."):
            result = dlt_peer.run_peer(python, input_dir, pg_dsn, work)
    except dlt_peer.PeerUnavailable as exc:
        notes.append(f"vs_dlt: no measurement, {exc}")
        return None
    return {
        "records": int(result["records"]),
        "rows": int(result["rows"]),
        "review": int(result["review"]),
        "seconds": round(float(result["seconds"]), 3),
        "records_per_second": round(float(result["records_per_second"]), 1),
        "dlt_version": result.get("dlt_version"),
    }


def _run_scale(
    sizes: list[int],
    seed: int,
    names: list[str],
    work: Path,
    pg_dsn: str,
    console: Console,
    beta_instances: int,
) -> dict[str, Any]:
    points: list[dict[str, Any]] = []
    for size in sizes:
        input_dir, _ = _workload(work, size, seed, console)
        with _progress(console) as progress:
            tasks = {
                n: progress.add_task(f"{size:,} records ({n})", total=size, start=False)
                for n in names
            }

            def update(name: str, done: int, total: int, tasks: dict[str, Any] = tasks) -> None:
                _advance(progress, tasks[name], done, total)

            for name in names:
                result = run_pipeline(
                    backend=BACKENDS[name], work=work, input_dir=input_dir, records=size,
                    pg_dsn=pg_dsn, progress=update, latency_rate=0,
                    beta_instances=beta_instances,
                )  # fmt: skip
                points.append(_scale_point(result))
        shutil.rmtree(input_dir, ignore_errors=True)
    summary: dict[str, Any] = {
        **_header(),
        "sizes": sizes,
        "scale": points,
        "correct": all(p["correct"] for p in points),
        "notes": [],
    }
    for name in names:
        series = [p for p in points if p["backend"] == name]
        if len(series) > 1:
            first, last = series[0], series[-1]
            summary.setdefault("cost_ratio_largest_to_smallest", {})[name] = round(
                last["cpu_seconds_per_1k_total"] / first["cpu_seconds_per_1k_total"], 3
            )
    return summary


def _scale_point(result: RunResult) -> dict[str, Any]:
    run = result.as_dict()
    return {
        "backend": run["backend"],
        "records": run["records"],
        "seconds": run["seconds"],
        "throughput_rps": run["throughput_rps"],
        "module_rps": run["module_rps"],
        "cpu_seconds_per_1k": run["cpu_seconds_per_1k"],
        "cpu_seconds_per_1k_total": round(sum(result.cpu_per_1k.values()), 4),
        "host_cpu_cores_busy": run["host_cpu_cores_busy"],
        "peak_rss_mb": run["peak_rss_mb"],
        "correct": run["correct"],
    }


def _run_beta_scaling(
    records: int,
    seed: int,
    names: list[str],
    work: Path,
    pg_dsn: str,
    console: Console,
    instances: int,
    load_rules: int,
) -> dict[str, Any]:
    input_dir, stats = _workload(work, records, seed, console)
    series: list[dict[str, Any]] = []
    runs: list[RunResult] = []
    with _progress(console) as progress:
        tasks = {
            (n, k): progress.add_task(f"{n}, {k} beta", total=records, start=False)
            for n in names
            for k in (1, instances)
        }

        def update(label: str, done: int, total: int) -> None:
            name, _, count = label.partition(":")
            _advance(progress, tasks[name, int(count)], done, total)

        for name in names:
            pair: list[RunResult] = []
            for count in (1, instances):
                pair.append(
                    run_pipeline(
                        backend=BACKENDS[name], work=work, input_dir=input_dir,
                        records=records, pg_dsn=pg_dsn, progress=update, latency_rate=0,
                        beta_instances=count, heavy_beta_rules=load_rules,
                        label=f"{name}:{count}",
                    )
                )  # fmt: skip
            runs += pair
            one, many = pair
            series.append(
                {
                    "backend": name,
                    "instances": [1, instances],
                    "beta_rps": [round(r.module_rps["beta"], 1) for r in pair],
                    "throughput_rps": [round(r.throughput_rps, 1) for r in pair],
                    "beta_cpu_seconds_per_1k": [round(r.cpu_per_1k["beta"], 4) for r in pair],
                    "ratio": round(many.module_rps["beta"] / one.module_rps["beta"], 3),
                    # CPU cores the Beta processes kept busy: near 1.0 per instance means
                    # CPU-bound, well under it means waiting (on the queues, the GIL, the host).
                    "beta_cpu_cores": [
                        round(r.cpu_per_1k["beta"] * r.module_rps["beta"] / 1000, 2) for r in pair
                    ],
                    "records_per_instance": [b.transformed for b in many.beta_instances],
                    "host_cpu_cores_busy": [round(r.host_cpu_cores_busy, 2) for r in pair],
                }
            )
    return {
        **_header(),
        "records": records,
        "workload": stats.as_dict(),
        "heavy_beta_rules": load_rules,
        "beta_scaling": series,
        "runs": [r.as_dict() for r in runs],
        "correct": all(r.correct for r in runs),
        "notes": [note for r in runs for note in r.notes],
    }


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
        betas = len(run["beta_instances"])
        table.add_row(
            run["backend"] + (f" ({betas} beta)" if betas > 1 else ""),
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
        dlt = f"dlt peer {f['dlt']:,.0f}/s" if f.get("dlt") is not None else "dlt peer not measured"
        vs_dlt = f", vs dlt {ratio['vs_dlt']:.2f}" if ratio.get("vs_dlt") is not None else ""
        console.print(
            f"floors: parse {f['parse']:,.0f}/s, COPY {f['copy']:,.0f}/s, naive peer "
            f"{f['naive']:,.0f}/s, {dlt}; ratios: vs COPY {ratio['vs_copy_floor']:.2f}, "
            f"vs naive {ratio['vs_naive']:.2f}{vs_dlt}"
        )
    for note in summary["notes"]:
        console.print(f"note: {note}")


def _print_scale(summary: dict[str, Any], console: Console) -> None:
    table = Table(title="dps bench --scale: cost per record and peak memory by input size")
    table.add_column("run")
    table.add_column("records", justify="right")
    table.add_column("records/s", justify="right")
    table.add_column("CPU s per 1k (a/b/g/c)", justify="right")
    table.add_column("CPU s per 1k, total", justify="right")
    table.add_column("peak RSS MB (a/b/g/c)", justify="right")
    table.add_column("correct")
    for point in summary["scale"]:
        c, r = point["cpu_seconds_per_1k"], point["peak_rss_mb"]
        table.add_row(
            point["backend"],
            f"{point['records']:,}",
            f"{point['throughput_rps']:,.0f}",
            " / ".join(f"{c[k]:.3f}" for k in ("alpha", "beta", "gamma", "control")),
            f"{point['cpu_seconds_per_1k_total']:.3f}",
            " / ".join(f"{r[k]:.0f}" for k in ("alpha", "beta", "gamma", "control")),
            "yes" if point["correct"] else "NO",
        )
    console.print(table)
    for name, ratio in summary.get("cost_ratio_largest_to_smallest", {}).items():
        console.print(f"{name}: CPU per record at the largest size / at the smallest: {ratio:.2f}")


def _print_beta_scaling(summary: dict[str, Any], console: Console) -> None:
    table = Table(
        title=f"dps bench --beta-scaling: {summary['records']:,} records, Beta-bound "
        f"({summary['heavy_beta_rules']} extra rules)"
    )
    table.add_column("run")
    table.add_column("Beta instances", justify="right")
    table.add_column("Beta records/s", justify="right")
    table.add_column("pipeline records/s", justify="right")
    table.add_column("Beta CPU s per 1k", justify="right")
    table.add_column("Beta CPU cores busy", justify="right")
    table.add_column(f"host CPU cores busy (of {os.cpu_count()})", justify="right")
    table.add_column("ratio", justify="right")
    for entry in summary["beta_scaling"]:
        for i, count in enumerate(entry["instances"]):
            table.add_row(
                entry["backend"],
                str(count),
                f"{entry['beta_rps'][i]:,.0f}",
                f"{entry['throughput_rps'][i]:,.0f}",
                f"{entry['beta_cpu_seconds_per_1k'][i]:.3f}",
                f"{entry['beta_cpu_cores'][i]:.2f}",
                f"{entry['host_cpu_cores_busy'][i]:.2f}",
                f"{entry['ratio']:.2f}" if i else "",
            )
    console.print(table)
    for entry in summary["beta_scaling"]:
        split = ", ".join(f"{n:,}" for n in entry["records_per_instance"])
        console.print(f"{entry['backend']}: records transformed per Beta instance: {split}")
    for note in summary["notes"]:
        console.print(f"note: {note}")
