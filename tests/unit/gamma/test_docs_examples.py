"""The examples in Gamma's reference pages load through the real config loader.

Every page in ``docs/destinations/`` (one per registered destination type) has a YAML example of
its type; the destination, route and format examples of ``docs/destinations/*.md``,
``docs/gamma-routing.md`` and ``docs/gamma-formats.md`` are written into one CONFIG_DIR and loaded
together, so routes name documented destinations and destinations documented formats.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from dps.config import load_config
from dps.core import registry
from dps.core.record import Quality, Record
from dps.gamma.formats import Shaper

DOCS = Path(__file__).resolve().parents[3] / "docs"
PAGES = sorted((DOCS / "destinations").glob("*.md"))
_YAML = re.compile(r"```yaml\n(.*?)```", re.DOTALL)


def _examples(page: Path) -> list[dict[str, Any]]:
    return [yaml.safe_load(block) for block in _YAML.findall(page.read_text())]


def test_every_destination_type_has_a_page_with_an_example() -> None:
    documented = {p.stem for p in PAGES if p.name != "README.md"}
    assert documented == set(registry.names("destinations"))
    for page in PAGES:
        if page.name == "README.md":
            continue
        types = [e.get("destination_type") for e in _examples(page)]
        assert page.stem in types, f"{page.name} has no example of its type"
        assert page.stem in (DOCS / "destinations" / "README.md").read_text()


@pytest.fixture(scope="module")
def documented_config(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("docs") / "config"
    pages = [*PAGES, DOCS / "gamma-routing.md", DOCS / "gamma-formats.md"]
    written = 0
    for page in pages:
        for example in _examples(page):
            if not isinstance(example, dict):
                continue
            if "destination_type" in example:
                folder, name = "destinations", example["destination_id"]
            elif "rule_id" in example:
                folder, name = "routing/rules", example["rule_id"].lower()
            elif "format_id" in example:
                folder, name = "formats", example["format_id"]
            else:
                continue
            target = root / "gamma" / folder / f"{name}.yaml"
            target.parent.mkdir(parents=True, exist_ok=True)
            assert not target.exists(), f"two documented examples named {name}"
            target.write_text(yaml.safe_dump(example, sort_keys=False))
            written += 1
    assert written >= 8
    return load_config(root, environ={})


def test_the_documented_examples_load_together(documented_config: Any) -> None:
    gamma = documented_config.gamma
    assert set(gamma.destinations) >= {
        "analytics_warehouse",
        "events_api",
        "orders_export",
        "events_stream",
        "debug_console",
    }
    assert {r.rule_id for r in gamma.routes} >= {"ROUTE_TO_ANALYTICS", "ROUTE_EU_TO_API"}
    assert gamma.destinations["events_api"].output_format == "public_order"
    assert gamma.destinations["analytics_warehouse"].spec.format.on_missing_field == "dlq"
    assert gamma.destinations["orders_export"].spec.connection.rotation.max_bytes == 104857600


def test_the_documented_format_renders_as_the_page_says(documented_config: Any) -> None:
    shape = Shaper(documented_config.gamma.formats["public_order"])
    record = Record(
        record_id="orders_file:7",
        source_id="orders_file",
        correlation_id="c",
        ingested_at=0.0,
        payload={"order_id": 7, "amount": 10.5, "customer": {"id": "C-7", "country": "DE"}},
        quality=Quality(score=0.9),
    )
    page = (DOCS / "gamma-formats.md").read_text()
    shown = re.search(r"```json\n(.*?)```", page, re.DOTALL)
    assert shown is not None
    assert shape(record) == json.loads(shown.group(1))
