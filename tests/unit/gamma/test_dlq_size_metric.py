"""``gamma_dlq_size`` is the number of open gamma DLQ entries whenever it is scraped.

The alert ``gamma_dlq_growing`` (``delta(gamma_dlq_size[1h]) > 100``) rests on it, and the DLQ
changes from many places — the router, each delivery worker, replays, purges, the cleanup job,
other gamma instances — so the gauge is read from the state store at scrape time.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from dps.gamma.module import GammaModule
from dps.state import DlqEntry


@pytest.fixture
def gamma(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[GammaModule]:
    monkeypatch.setenv("DPS_DATA_DIR", str(tmp_path / "data"))  # restored: a module host sets it
    root = tmp_path / "config"
    (root / "gamma" / "destinations").mkdir(parents=True)
    (root / "gamma" / "destinations" / "out.yaml").write_text(
        f"destination_id: out\ndestination_type: file\nconnection:\n  path: {tmp_path}/o.jsonl\n"
    )
    module = GammaModule(root, data_dir=tmp_path / "data")
    yield module
    module.close()


def _entry(module: str, n: int) -> DlqEntry:
    return DlqEntry(
        module, f"s:{n}", "s", f"f#{n}", "destination_rejected", "no", b"x", destination_id="out"
    )


def scraped() -> float | None:
    return REGISTRY.get_sample_value("gamma_dlq_size")


def test_the_gauge_follows_every_change_of_the_gamma_dlq(gamma: GammaModule) -> None:
    assert scraped() == 0
    # Written by a delivery worker (not the router) and by other modules: only gamma's count.
    gamma.state_store.add_dlq_entries([_entry("gamma", n) for n in range(3)])
    gamma.state_store.add_dlq_entries([_entry("alpha", 9)])
    assert scraped() == 3
    ids = [e.entry_id for e in gamma.state_store.list_dlq("gamma")]
    gamma.state_store.set_dlq_status(ids[:2], "replayed")
    assert scraped() == 1


def test_a_failing_state_store_keeps_the_last_value(
    gamma: GammaModule, monkeypatch: pytest.MonkeyPatch
) -> None:
    gamma.state_store.add_dlq_entries([_entry("gamma", 1)])
    assert scraped() == 1

    def gone(*_args: object) -> int:
        raise OSError("database is gone")

    monkeypatch.setattr(gamma.state_store, "count_dlq", gone)
    assert scraped() == 1  # and the scrape itself does not fail
