"""A reload rebuilds only the delivery workers whose settings, or output format, changed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dps.config import load_config
from dps.gamma.module import GammaModule


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "config"
    (root / "gamma" / "destinations").mkdir(parents=True)
    (root / "gamma" / "formats").mkdir(parents=True)
    (root / "gamma" / "formats" / "slim.yaml").write_text("format_id: slim\nfields: [a]\n")
    for name, extra in (("shaped", "output_format: slim\n"), ("plain", "")):
        (root / "gamma" / "destinations" / f"{name}.yaml").write_text(
            f"destination_id: {name}\ndestination_type: file\n"
            f"connection:\n  path: {tmp_path}/{name}.jsonl\n{extra}"
        )
    return root


@pytest.fixture
def gamma(root: Path, tmp_path: Path) -> Iterator[GammaModule]:
    module = GammaModule(root, data_dir=tmp_path / "data")
    yield module
    module.close()


def test_a_changed_format_restarts_only_the_workers_using_it(
    gamma: GammaModule, root: Path
) -> None:
    before = dict(gamma.workers)
    (root / "gamma" / "formats" / "slim.yaml").write_text("format_id: slim\nfields: [a, b]\n")
    gamma.apply_config(load_config(root))
    assert gamma.workers["shaped"] is not before["shaped"]
    assert gamma.workers["plain"] is before["plain"]


def test_async_from_a_gamma_yaml_override_takes_effect_on_reload(
    gamma: GammaModule, root: Path
) -> None:
    assert gamma.workers["plain"].window == 1
    (root / "gamma" / "gamma.yaml").write_text(
        "destinations:\n  plain:\n    delivery_mode: async\n    ack_mode: record\n"
    )
    gamma.apply_config(load_config(root))
    worker = gamma.workers["plain"]
    assert worker.window == 4 and worker.config.ack_mode == "record"
