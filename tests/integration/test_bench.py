"""``dps bench`` end to end on a small workload: the report is complete and the accounting holds.

Performance is not asserted here (numbers go to BENCHMARKS.md); this checks that the benchmark
measures what it says and that its correctness line is computed from real results.
"""

from __future__ import annotations

import pytest
from tests.integration.pipeline_harness import dps, last_json_line


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
