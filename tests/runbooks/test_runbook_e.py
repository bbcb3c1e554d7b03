"""Runbook E.1 (end-to-end latency investigation) as written against a running ``dps run``: each
module's ``curl .../metrics | grep ...`` finds its latency histograms with observations, and the
per-module latency that step 1's PromQL breaks down (``module_latency_seconds`` by ``module``)
is recorded by all three modules.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.integration.pipeline_harness import copy_quickstart, start_pipeline

#: Step 2's greps, module by module, as the runbook writes them.
E1_GREPS = {
    "alpha": ["parse_duration", "validation_duration", "source_fetch_duration"],
    "beta": ["transform_duration", "enrichment_duration", "queue_wait_duration"],
    "gamma": ["render_duration", "delivery_duration", "ack_wait_duration"],
}

#: What the quickstart exercises, so these must have observations (it has no enrichment rule).
OBSERVED = {
    "alpha_parse_duration_seconds",
    "alpha_validation_duration_seconds",
    "alpha_source_fetch_duration_seconds",
    "beta_transform_duration_seconds",
    "beta_queue_wait_duration_seconds",
    "gamma_render_duration_seconds",
    "gamma_delivery_duration_seconds",
    "gamma_ack_wait_duration_seconds",
}


def counts(text: str) -> dict[str, float]:
    """``<histogram>{labels}`` -> its ``_count`` summed over label sets."""
    totals: dict[str, float] = {}
    for name, value in re.findall(r"^(\w+)_count(?:\{[^}]*\})? (\S+)$", text, re.M):
        totals[name] = totals.get(name, 0.0) + float(value)
    return totals


def test_e1_latency_breakdown_by_module(tmp_path: Path) -> None:
    config_dir = copy_quickstart(tmp_path / "config")
    pipeline = start_pipeline(config_dir, tmp_path / "data")
    try:
        pipeline.wait_ready()

        pipeline.wait_settled()
        for module, patterns in E1_GREPS.items():
            url = pipeline.url(module)
            for pattern in patterns:
                done = subprocess.run(
                    ["bash", "-c", f"curl -s {url}/metrics | grep {pattern}"],
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                assert done.returncode == 0, f"{module}: nothing matches {pattern}"
                found = counts(done.stdout)
                assert found, f"{module}: {pattern} has no histogram"
                for name, count in found.items():
                    if name in OBSERVED:
                        assert count > 0, f"{module}: {name} has no observation"
            # Step 1's breakdown: this module's own latency, one series per module.
            text = pipeline.get(module, "/metrics").text
            own = re.search(
                rf'^module_latency_seconds_count\{{module="{module}"\}} (\S+)$', text, re.M
            )
            assert own is not None and float(own.group(1)) > 0, f"{module}: no module latency"
    finally:
        pipeline.stop()
