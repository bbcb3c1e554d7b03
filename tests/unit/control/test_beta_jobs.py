"""The beta jobs when beta does not answer: the run is recorded FAILED, saying beta is
unreachable and what to check.

A real client against a port nobody listens on (no mock): the connection is refused.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.unit.control.test_scheduler import wait_finished, write_config

from dps.control.jobs import JobContext
from dps.control.modules import ModuleClient
from dps.control.scheduler import Scheduler
from dps.state import StateStore, open_state


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    opened = open_state("sqlite", {"path": str(tmp_path / "state.db")}, tmp_path)
    yield opened
    opened.close()


@pytest.mark.parametrize(
    "job", ["beta_cache_refresh", "beta_enrichment_warmup", "beta_schema_sync"]
)
def test_unreachable_beta_fails_the_run_clearly(
    tmp_path: Path, store: StateStore, job: str
) -> None:
    config = write_config(tmp_path / "config")
    url = f"http://127.0.0.1:{closed_port()}"
    client = ModuleClient({"alpha": url, "beta": url, "gamma": url}, timeout=2)

    def context(name: str, run_id: str) -> JobContext:
        return JobContext(name, run_id, store, client, config, config.root, tmp_path)

    scheduler = Scheduler(config, store, context, tmp_path / "scheduler.json")
    try:
        scheduler.trigger(job)
        run = wait_finished(store, job)
    finally:
        scheduler.stop()
        client.close()
    assert run["status"] == "FAILED"
    message = str(run["message"])
    assert f"Beta is unreachable, {job} did nothing" in message
    assert url in message and "DPS_ADMIN_URLS" in message
