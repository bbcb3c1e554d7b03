"""The runner's admin ports and its report when the pipeline fails to start."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from dps.bench.runner import _ephemeral_floor, _wait_ready, free_port_base


def test_ports_are_picked_below_the_ephemeral_range_and_clear_of_avoided_ones() -> None:
    floor = _ephemeral_floor()
    for _ in range(50):
        base = free_port_base()
        assert base >= 10000 and base + 3 < floor
        push = free_port_base(1, avoid=range(base, base + 4))
        assert push not in range(base, base + 4)


def test_a_pipeline_that_exits_before_ready_is_reported_with_its_log(tmp_path: Path) -> None:
    log = tmp_path / "pipeline.log"
    log.write_text("starting\nOSError: [Errno 98] Address already in use\n")
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"])
    process.wait()
    with pytest.raises(RuntimeError) as raised:
        _wait_ready(process, {"alpha": "http://127.0.0.1:9"}, ["alpha"], time.monotonic() + 5, log)
    assert "alpha exited with 1 before it was ready." in str(raised.value)
    assert "Address already in use" in str(raised.value)
