"""``dps bench`` end to end on a small workload: the report is complete and the accounting holds.

Performance is not asserted here (numbers go to BENCHMARKS.md); this checks that the benchmark
measures what it says and that its correctness line is computed from real results.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from pathlib import Path

import pytest
from tests.integration.pipeline_harness import PG_DSN, dps, last_json_line


@pytest.mark.slow
@pytest.mark.postgres
def test_bench_reports_throughput_latency_floors_and_a_correct_accounting() -> None:
    done = dps(
        "bench", "--records", "3000", "--latency-rate", "500", "--latency-seconds", "2",
        "--compare", "--no-dlt", "--json", timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = last_json_line(done.stdout)
    assert report["records"] == 3000
    assert report["correct"] is True
    run = report["runs"][0]
    workload = report["workload"]
    # The pipeline's accounting matches what the generator wrote, record for record.
    assert run["accounting"]["duplicates"] == workload["duplicates"]
    assert run["accounting"]["dlq"]["alpha"] == workload["broken_json"] + workload["missing_field"]
    assert run["rows_in_postgresql"] + run["review_lines"] == workload["valid_unique"]
    assert report["throughput_rps"] > 0
    assert all(report["latency_ms"][k] is not None for k in ("p50", "p95", "p99"))
    assert report["latency_ms"]["p50"] <= report["latency_ms"]["p99"]
    assert set(report["ratios"]) >= {"vs_copy_floor", "vs_naive", "vs_dlt"}
    assert report["floors_rps"]["copy"] > 0 and report["floors_rps"]["naive"] > 0
    # --no-dlt leaves the dlt peer out, and says so.
    assert report["ratios"]["vs_dlt"] is None
    assert any("--no-dlt" in note for note in report["notes"])


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(1200)
def test_bench_compare_runs_the_dlt_peer_in_its_own_virtualenv() -> None:
    """The first run installs dlt into the cache (PyPI must be reachable); later ones reuse it."""
    done = dps(
        "bench", "--records", "2000", "--latency-rate", "0", "--compare", "--json",
        timeout=1100,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = last_json_line(done.stdout)
    assert report["correct"] is True
    dlt = report["peers"]["dlt"]
    workload, run = report["workload"], report["runs"][0]
    assert isinstance(report["ratios"]["vs_dlt"], float) and report["ratios"]["vs_dlt"] > 0
    assert report["floors_rps"]["dlt"] == pytest.approx(dlt["records_per_second"])
    # dlt read every line and merged exactly the rows the pipeline wrote.
    assert dlt["records"] == 2000
    assert dlt["rows"] + dlt["review"] == workload["valid_unique"]
    assert dlt["rows"] == run["rows_in_postgresql"]
    assert dlt["dlt_version"]


@pytest.mark.slow
@pytest.mark.postgres
def test_a_port_taken_before_the_pipeline_binds_it_is_picked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first pick of admin ports is one another program holds: the start fails on it, the
    runner picks new ports, and the run completes and is correct."""
    from dps.bench import runner
    from dps.bench.workload import generate, write_customers

    write_customers(tmp_path / "customers.csv")
    stats = generate(tmp_path / "input", 300)
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen(1)
    taken = held.getsockname()[1]
    picks: list[int] = []
    real = runner.free_port_base

    def pick(count: int = 4, *, avoid: Sequence[int] = ()) -> int:
        port = taken - 1 if count == 4 and not picks else real(count, avoid=avoid)  # Alpha's
        picks.append(port)
        return port

    monkeypatch.setattr(runner, "free_port_base", pick)
    try:
        result = runner.run_pipeline(
            backend=runner.BACKENDS["embedded"], work=tmp_path, input_dir=tmp_path / "input",
            records=300, pg_dsn=PG_DSN, latency_rate=0, timeout=300,
        )  # fmt: skip
    finally:
        held.close()
    log = (tmp_path / "pipeline-embedded.log").read_text()
    assert runner.PORT_TAKEN in log and "lost a port; starting again" in log
    assert picks[0] == taken - 1 and len([p for p in picks[1:] if p != taken - 1]) >= 1
    assert result.correct, result.notes
    assert result.rows_in_postgresql + result.review_lines == stats.valid_unique
