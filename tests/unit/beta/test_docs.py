"""The Beta reference pages: every YAML example loads, every type and operator is documented.

A YAML block whose first line is a comment naming its place in a CONFIG_DIR
(``# beta/enrichment/customer_db.yaml``) is written there and loaded through the real loader.
A block placed as ``beta/transforms/rules/<name>_test.yaml`` holds test cases in the ``dps test``
format: they run against the other examples of the same page, as ``dps test`` runs them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dps.beta.testing import run_test_file
from dps.config import load_config, load_file
from dps.config.loader import is_rule_test
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


def _placed(page: Path) -> list[tuple[int, str, str]]:
    """``(index, place, text)`` of each block of ``page`` that names its place."""
    found = []
    for n, block in enumerate(_BLOCK.findall(page.read_text())):
        place = _PLACE.match(block)
        if place:
            found.append((n, place.group(1), block))
    return found


def _examples() -> list[object]:
    return [
        pytest.param(place, block, id=f"{page.name}#{n}")
        for page in PAGES
        for n, place, block in _placed(page)
        if not is_rule_test(Path(place))
    ]


def _pages_with_cases() -> list[Path]:
    return [
        page for page in PAGES if any(is_rule_test(Path(place)) for _, place, _ in _placed(page))
    ]


def test_the_pages_have_examples() -> None:
    assert len(_examples()) >= 6


@pytest.mark.parametrize(("place", "text"), _examples())
def test_every_example_loads(place: str, text: str, tmp_path: Path) -> None:
    kind, model = next(v for k, v in KIND.items() if place.startswith(k))
    path = tmp_path / place
    path.parent.mkdir(parents=True)
    path.write_text(text)
    assert isinstance(load_file(path, kind), model)


def test_the_pages_with_cases_include_conditions_and_scoring() -> None:
    assert {"conditions.md", "scoring.md"} <= {page.name for page in _pages_with_cases()}


@pytest.mark.parametrize("page", _pages_with_cases(), ids=lambda page: page.name)
def test_the_test_cases_of_a_page_pass_on_its_examples(page: Path, tmp_path: Path) -> None:
    placed = _placed(page)
    for _, place, text in placed:
        path = tmp_path / place
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    config = load_config(tmp_path, environ={})
    for _, place, _ in placed:
        if is_rule_test(tmp_path / place):
            count, failures = run_test_file(tmp_path / place, config)
            assert failures == [], "\n".join(failures)
            assert count > 0


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
