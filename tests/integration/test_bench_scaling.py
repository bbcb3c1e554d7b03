"""``dps bench --scale`` and the Beta instances: the shape of the reports, and the accounting.

No timing is asserted (numbers go to BENCHMARKS.md): these check that one run is made per size,
that every Beta instance consumes from the shared transform queue, and that records are neither
lost nor doubled when two Beta processes share it.
"""

from __future__ import annotations

from typing import Any

import pytest
from tests.integration.pipeline_harness import dps, last_json_line

MODULES = ("alpha", "beta", "gamma", "control")


def _unboxed(text: str) -> str:
    """An error message without the box and the line breaks rich draws around it."""
    return " ".join(text.replace("│", " ").split())


def _balanced(run: dict[str, Any], records: int) -> bool:
    acc = run["accounting"]
    return (
        run["rows_in_postgresql"] + run["review_lines"] + acc["dlq_total"] + acc["duplicates"]
        == records
    )


@pytest.mark.slow
@pytest.mark.postgres
def test_bench_scale_reports_one_point_per_size() -> None:
    done = dps("bench", "--scale", "2000,4000", "--json", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = last_json_line(done.stdout)
    assert report["correct"] is True
    assert report["sizes"] == [2000, 4000]
    assert [p["records"] for p in report["scale"]] == [2000, 4000]
    for point in report["scale"]:
        assert point["backend"] == "embedded"
        assert point["throughput_rps"] > 0
        assert set(point["cpu_seconds_per_1k"]) == set(MODULES)
        assert set(point["peak_rss_mb"]) == set(MODULES)
        assert all(v > 0 for v in point["peak_rss_mb"].values())
        assert point["cpu_seconds_per_1k_total"] == pytest.approx(
            sum(point["cpu_seconds_per_1k"].values()), abs=0.001
        )
    assert report["cost_ratio_largest_to_smallest"]["embedded"] > 0
    assert "dps bench --scale" in done.stdout  # the table


def test_bench_scale_rejects_a_bad_list() -> None:
    done = dps("bench", "--scale", "2000,lots")
    assert done.returncode == 2
    assert "is not a list of sizes" in _unboxed(done.stderr)


@pytest.mark.slow
@pytest.mark.postgres
def test_two_beta_instances_share_the_embedded_transform_queue() -> None:
    done = dps(
        "bench", "--records", "8000", "--latency-rate", "0", "--beta-instances", "2", "--json",
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = last_json_line(done.stdout)
    run, workload = report["runs"][0], report["workload"]
    betas = run["beta_instances"]
    assert len(betas) == 2 and len({b["pid"] for b in betas}) == 2
    assert all(b["records_transformed"] > 0 for b in betas), betas
    # Every valid record was transformed by exactly one of them.
    assert sum(b["records_transformed"] for b in betas) == workload["valid_unique"]
    assert run["accounting"]["transformed"] == workload["valid_unique"]
    assert _balanced(run, 8000) and run["correct"] is True


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.nats
def test_beta_scaling_on_nats_reports_both_runs_and_the_ratio() -> None:
    done = dps(
        "bench", "--backend", "nats", "--records", "8000", "--beta-scaling",
        "--beta-load-rules", "4", "--json", timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = last_json_line(done.stdout)
    assert report["correct"] is True
    assert report["heavy_beta_rules"] == 4
    (entry,) = report["beta_scaling"]
    assert entry["backend"] == "nats" and entry["instances"] == [1, 2]
    assert entry["ratio"] > 0 and all(r > 0 for r in entry["beta_rps"])
    assert len(entry["records_per_instance"]) == 2
    assert all(n > 0 for n in entry["records_per_instance"]), entry
    assert sum(entry["records_per_instance"]) == report["workload"]["valid_unique"]
    one, two = report["runs"]
    assert [len(one["beta_instances"]), len(two["beta_instances"])] == [1, 2]
    assert one["heavy_beta_rules"] == two["heavy_beta_rules"] == 4
    assert _balanced(one, 8000) and _balanced(two, 8000)


def test_beta_scaling_cannot_be_combined_with_compare() -> None:
    done = dps("bench", "--beta-scaling", "--compare")
    assert done.returncode == 2
    assert "--beta-scaling runs its own pair of runs" in _unboxed(done.stderr)
