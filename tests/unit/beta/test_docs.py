"""The Beta reference pages: every YAML example loads, every type and operator is documented.

A YAML block whose first line is a comment naming its place in a CONFIG_DIR
(``# beta/enrichment/customer_db.yaml``) is written there and loaded through the real loader.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dps.config import load_file
from dps.config.models import BetaSettings, EnrichmentConfig, QualityScoringConfig, RuleConfig
from dps.core.conditions import OPERATORS
from dps.core.registry import names

DOCS = Path(__file__).resolve().parents[3] / "docs"
PAGES = [DOCS / "beta.md", DOCS / "enrichment.md", *sorted((DOCS / "transforms").glob("*.md"))]
_BLOCK = re.compile(r"```yaml\n(.*?)```", re.S)
_PLACE = re.compile(r"^\s*# (beta/\S+\.yaml)")

KIND = {
    "beta/enrichment/": ("enrichment", EnrichmentConfig),
    "beta/transforms/rules/": ("rule", RuleConfig),
    "beta/quality/scoring.yaml": ("scoring", QualityScoringConfig),
    "beta/beta.yaml": ("beta", BetaSettings),
}


def _examples() -> list[object]:
    found = []
    for page in PAGES:
        for n, block in enumerate(_BLOCK.findall(page.read_text())):
            place = _PLACE.match(block)
            if place:
                found.append(pytest.param(place.group(1), block, id=f"{page.name}#{n}"))
    return found


def test_the_pages_have_examples() -> None:
    assert len(_examples()) >= 6


@pytest.mark.parametrize(("place", "text"), _examples())
def test_every_example_loads(place: str, text: str, tmp_path: Path) -> None:
    kind, model = next(v for k, v in KIND.items() if place.startswith(k))
    path = tmp_path / place
    path.parent.mkdir(parents=True)
    path.write_text(text)
    assert isinstance(load_file(path, kind), model)


def test_every_type_and_operator_is_documented() -> None:
    transforms = (DOCS / "transforms" / "README.md").read_text()
    for name in names("transforms"):
        assert f"`{name}`" in transforms, f"transform type {name} is not in docs/transforms"
        assert f"examples/plugins/transforms/{name}.yaml" in transforms
    enrichment = (DOCS / "enrichment.md").read_text()
    for name in names("enrichment"):
        assert f"| `{name}` |" in enrichment, f"enrichment type {name} is not in enrichment.md"
    conditions = (DOCS / "transforms" / "conditions.md").read_text()
    for operator in OPERATORS:
        assert f"`{operator}`" in conditions, f"operator {operator} is not in conditions.md"
    scoring = (DOCS / "transforms" / "scoring.md").read_text()
    for option in QualityScoringConfig.model_fields:
        assert f"`{option}" in scoring, f"scoring option {option} is not in scoring.md"
