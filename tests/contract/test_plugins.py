"""House rule 9: every registered plugin has an example config that builds it.

For each source, parser, transform, destination and enrichment source in the registry there is
``examples/plugins/<kind>/<name>.yaml``: a whole file in the runbook format (a source file, a
rule file, a destination file, an enrichment file; for a parser, a source file using that
format). It loads through the real config loader and its validators, and the plugin class builds
from what was loaded.
The cases come from the registry, so a new plugin without an example fails here.

A transform's example also has its test cases, ``examples/plugins/transforms/<name>_test.yaml``
(the ``dps test`` format): the examples are run on records, through ``dps test``, as an operator
runs the cases kept beside the rules.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dps.alpha.parsers.base import Parser
from dps.alpha.sources.base import Source
from dps.beta.enrichment.base import EnrichmentSource
from dps.beta.rules import RuleSet
from dps.beta.transforms.base import Transform
from dps.config import load_config, load_file
from dps.config.models import DestinationConfig, EnrichmentConfig, RuleConfig, SourceConfig
from dps.core import registry
from dps.gamma.destinations.base import Destination
from dps.state import open_state

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "plugins"
KINDS = ("sources", "parsers", "transforms", "destinations", "enrichment")

#: The kind of configuration file each plugin kind's example is (see dps.config.loader.KINDS).
FILE_KIND = {
    "sources": "source",
    "parsers": "source",
    "transforms": "rule",
    "destinations": "destination",
    "enrichment": "enrichment",
}
#: Where each kind's example goes in a CONFIG_DIR.
LAYOUT = {
    "sources": "alpha/sources",
    "parsers": "alpha/sources",
    "transforms": "beta/transforms/rules",
    "destinations": "gamma/destinations",
    "enrichment": "beta/enrichment",
}


def _registered() -> list[Any]:
    return [
        pytest.param(kind, name, id=f"{kind}/{name}")
        for kind in KINDS
        for name in registry.names(kind)
    ]


def _example(kind: str, name: str) -> Path:
    return EXAMPLES / kind / f"{name}.yaml"


# -- building each kind from its loaded example ------------------------------------------------


def _build_source(name: str, config: Any, tmp_path: Path) -> object:
    assert isinstance(config, SourceConfig)
    assert config.source_type == name
    cls = registry.get("sources", name)
    assert isinstance(config.connection, cls.Config)  # validated by the plugin's own model
    state = open_state("sqlite", {}, tmp_path)
    try:
        source = cls(config.source_id, config.connection, state)
        assert isinstance(source, Source)
        return source
    finally:
        state.close()


def _build_parser(name: str, config: Any, tmp_path: Path) -> object:
    assert isinstance(config, SourceConfig)
    assert config.parsing.format == name
    parser = registry.get("parsers", name)(config.parsing.record_path)
    assert isinstance(parser, Parser)
    return parser


def _build_transform(name: str, config: Any, tmp_path: Path) -> object:
    assert isinstance(config, RuleConfig)
    assert config.transform.type == name
    cls = registry.get("transforms", name)
    assert isinstance(config.transform.config, cls.Config)
    transform = cls(config.transform.config, config.match_field)
    assert isinstance(transform, Transform)
    if config.enabled:  # and the rule engine compiles the whole rule
        assert [rule.rule_id for rule in RuleSet([config]).rules] == [config.rule_id]
    return transform


def _build_destination(name: str, config: Any, tmp_path: Path) -> object:
    assert isinstance(config, DestinationConfig)
    assert config.destination_type == name
    cls = registry.get("destinations", name)
    assert isinstance(config.spec, cls.Config)
    destination = cls(config.destination_id, config.spec)
    assert isinstance(destination, Destination)
    return destination


def _build_enrichment(name: str, config: Any, tmp_path: Path) -> object:
    assert isinstance(config, EnrichmentConfig)
    assert config.type == name
    cls = registry.get("enrichment", name)
    assert isinstance(config.connection, cls.Config)
    source = cls(config.name, config.connection)
    assert isinstance(source, EnrichmentSource)
    return source


BUILD: dict[str, Callable[[str, Any, Path], object]] = {
    "sources": _build_source,
    "parsers": _build_parser,
    "transforms": _build_transform,
    "destinations": _build_destination,
    "enrichment": _build_enrichment,
}


# -- the contract -----------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "name"), _registered())
def test_every_registered_plugin_has_an_example(kind: str, name: str) -> None:
    path = _example(kind, name)
    shown = path.relative_to(EXAMPLES.parents[1])
    assert path.is_file(), (
        f"The {kind[:-1]} plugin {name!r} has no example config: add {shown} (house rule 9)."
    )


@pytest.mark.parametrize(("kind", "name"), _registered())
def test_every_registered_plugin_builds_from_its_example(
    kind: str, name: str, tmp_path: Path
) -> None:
    path = _example(kind, name)
    if not path.is_file():
        pytest.fail(f"No example config at {path}.")

    config = load_file(path, FILE_KIND[kind])
    plugin = BUILD[kind](name, config, tmp_path)

    assert type(plugin) is registry.get(kind, name)


def test_every_example_is_for_a_registered_plugin() -> None:
    orphans = [
        str(path.relative_to(EXAMPLES))
        for path in sorted(EXAMPLES.rglob("*"))
        if path.is_file()
        and (
            path.parent.parent != EXAMPLES
            or path.parent.name not in KINDS
            or path.suffix != ".yaml"
            or _plugin_of(path) not in registry.names(path.parent.name)
        )
    ]
    assert orphans == []


def _plugin_of(path: Path) -> str:
    """The plugin an example file is for: ``cast.yaml`` and, for a transform, its cases
    ``cast_test.yaml``."""
    if path.parent.name == "transforms" and path.stem.endswith("_test"):
        return path.stem.removesuffix("_test")
    return path.stem


@pytest.mark.parametrize("name", registry.names("transforms"))
def test_every_transform_example_has_test_cases(name: str) -> None:
    path = EXAMPLES / "transforms" / f"{name}_test.yaml"
    shown = path.relative_to(EXAMPLES.parents[1])
    assert path.is_file(), f"The transform {name!r} has no test cases: add {shown}."


def test_the_transform_examples_pass_their_test_cases_with_dps_test(tmp_path: Path) -> None:
    config = tmp_path / "config"
    rules = config / LAYOUT["transforms"]
    rules.mkdir(parents=True)
    for path in sorted((EXAMPLES / "transforms").glob("*.yaml")):
        shutil.copy(path, rules / path.name)
    # lookup.yaml reads customer_db: here a CSV file holding the one customer its cases expect.
    (tmp_path / "customers.csv").write_text("customer_id,name,tier\nC1,Ada Lovelace,gold\n")
    enrichment = config / LAYOUT["enrichment"]
    enrichment.mkdir(parents=True)
    (enrichment / "customer_db.yaml").write_text(
        "name: customer_db\ntype: csv\n"
        f"connection: {{path: {tmp_path / 'customers.csv'}, key_column: customer_id}}\n"
    )

    done = subprocess.run(
        [sys.executable, "-m", "dps", "test", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    count = len(registry.names("transforms"))
    assert f"in {count} files, 0 failures." in done.stdout, done.stdout


def test_the_examples_load_together_as_one_config_dir(tmp_path: Path) -> None:
    root = tmp_path / "config"
    for kind in KINDS:
        target = root / LAYOUT[kind]
        target.mkdir(parents=True, exist_ok=True)
        for path in sorted((EXAMPLES / kind).glob("*.yaml")):
            shutil.copy(path, target / f"{kind}_{path.name}")

    config = load_config(root, environ={})

    assert len(config.alpha.sources) == len(registry.names("sources")) + len(
        registry.names("parsers")
    )
    assert len(config.beta.rules) == len(registry.names("transforms"))
    assert {d.destination_type for d in config.gamma.destinations.values()} == set(
        registry.names("destinations")
    )
    assert {e.type for e in config.beta.enrichment.values()} == set(registry.names("enrichment"))
