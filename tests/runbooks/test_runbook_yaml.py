"""The manual's runbook YAML, as written: verbatim copies load, broken copies are refused.

``tests/fixtures/runbooks/`` holds every YAML example of runbooks A.1, B.1, B.3, C.1 and H.1-H.3
(both copies of section H) laid out as CONFIG_DIRs:

- ``config/``: A.1's source and schema, B.1's rule, B.3's scoring, C.1's destination and route,
  and the first section H's settings snippets as ``alpha.yaml``, ``beta.yaml``, ``gamma.yaml``;
- ``h2-scoring/``: H.2's ``quality_scoring`` snippet (a second ``scoring.yaml``);
- ``h-second-copy/``: the second section H's snippets.

A settings file made of several snippets is the snippets joined by one blank line. The
"enable" snippets (``enabled: true``) are edits applied to the file they belong to.

1. Each fixture is byte-identical to the manual's blocks.
2. Each loads unchanged, with the manual's validator command (a subprocess, exit 0) and with
   ``load_config``.
3. A broken copy of each (a wrong type, an unknown key, a missing required key where the format
   has required keys) is refused with exit 1 and a line naming the file, the line and the key.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from dps.config import load_config

MANUAL = Path(__file__).resolve().parents[2].parent / "shared/spec/operations-manual.md"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "runbooks"
CONFIG_DIRS = ("config", "h2-scoring", "h-second-copy")
RUNBOOK_SECTIONS = ("A.1", "B.1", "B.3", "C.1", "H.1", "H.2", "H.3")

# (section, occurrence of that heading, fence language, block indexes in that language)
Blocks = tuple[str, int, str, tuple[int, ...]]

#: fixture -> the manual blocks it is made of.
FROM_MANUAL: dict[str, Blocks] = {
    "config/alpha/sources/new_source.yaml": ("A.1", 0, "yaml", (0,)),
    "config/alpha/schemas/new_source_schema.json": ("A.1", 0, "json", (0,)),
    "config/beta/transforms/rules/new_rule.yaml": ("B.1", 0, "yaml", (0,)),
    "config/beta/quality/scoring.yaml": ("B.3", 0, "yaml", (0,)),
    "config/gamma/destinations/new_destination.yaml": ("C.1", 0, "yaml", (0,)),
    "config/gamma/routing/rules/to_analytics.yaml": ("C.1", 0, "yaml", (2,)),
    "config/alpha/alpha.yaml": ("H.1", 0, "yaml", (0, 1, 2, 3)),
    "config/beta/beta.yaml": ("H.2", 0, "yaml", (0, 1, 2)),
    "h2-scoring/beta/quality/scoring.yaml": ("H.2", 0, "yaml", (3,)),
    "config/gamma/gamma.yaml": ("H.3", 0, "yaml", (0, 1, 2)),
    "h-second-copy/alpha/alpha.yaml": ("H.1", 1, "yaml", (0, 1, 2, 3)),
    "h-second-copy/beta/beta.yaml": ("H.2", 1, "yaml", (0, 1)),
    "h-second-copy/gamma/gamma.yaml": ("H.3", 1, "yaml", (0, 1)),
}

#: "Enable ..." steps: a snippet that replaces the ``enabled:`` line of a fixture.
EDITS: dict[str, Blocks] = {
    "config/alpha/sources/new_source.yaml": ("A.1", 0, "yaml", (1,)),
    "config/beta/transforms/rules/new_rule.yaml": ("B.1", 0, "yaml", (1,)),
    "config/gamma/destinations/new_destination.yaml": ("C.1", 0, "yaml", (1,)),
}


def validator_for(fixture: str) -> str:
    path = Path(fixture)
    if "rules" in path.parts and "transforms" in path.parts:
        return "beta-rule-validator"
    module = path.parts[1]
    return {
        "alpha": "alpha-config-validator",
        "beta": "beta-config-validator",
        "gamma": "gamma-config-validator",
    }[module]


# -- the manual -------------------------------------------------------------------------------

_HEADING = re.compile(r"^####\s+([A-Z]\.\d+)\s")
_FENCE = re.compile(r"^(\s*)```(\w*)\s*$")


def read_manual_blocks() -> dict[tuple[str, int], list[tuple[str, str]]]:
    """Fenced blocks per ``#### X.n`` heading occurrence, dedented by their fence's indent."""
    if not MANUAL.is_file():
        pytest.fail(
            f"The operations manual is missing: expected it at {MANUAL} "
            "(../shared/spec/operations-manual.md beside the repository)."
        )
    lines = MANUAL.read_text(encoding="utf-8").split("\n")
    blocks: dict[tuple[str, int], list[tuple[str, str]]] = {}
    seen: dict[str, int] = {}
    heading: tuple[str, int] | None = None
    i = 0
    while i < len(lines):
        if match := _HEADING.match(lines[i]):
            code = match.group(1)
            heading = (code, seen.get(code, 0))
            seen[code] = heading[1] + 1
        elif (fence := _FENCE.match(lines[i])) and heading is not None:
            indent, lang = fence.group(1), fence.group(2)
            body = []
            i += 1
            while not re.match(rf"^{indent}```\s*$", lines[i]):
                body.append(lines[i][len(indent) :] if lines[i].strip() else "")
                i += 1
            blocks.setdefault(heading, []).append((lang, "\n".join(body) + "\n"))
        i += 1
    return blocks


@pytest.fixture(scope="module")
def manual() -> dict[tuple[str, int], list[tuple[str, str]]]:
    return read_manual_blocks()


def expected_text(manual: dict[tuple[str, int], list[tuple[str, str]]], spec: Blocks) -> str:
    section, occurrence, lang, indexes = spec
    assert (section, occurrence) in manual, f"the manual has no section {section} #{occurrence}"
    of_lang = [text for fence_lang, text in manual[(section, occurrence)] if fence_lang == lang]
    return "\n".join(of_lang[i] for i in indexes)


def run_validator(command: str, *paths: Path) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / command
    if not script.exists():
        pytest.fail(f"{script} is missing: install the package (pip install -e .) first.")
    return subprocess.run(
        [str(script), *map(str, paths)], capture_output=True, text=True, timeout=60, check=False
    )


# -- 1. verbatim ------------------------------------------------------------------------------


def test_every_runbook_yaml_block_has_a_fixture(
    manual: dict[tuple[str, int], list[tuple[str, str]]],
) -> None:
    used = {
        (section, occ, lang, i)
        for section, occ, lang, idx in [*FROM_MANUAL.values(), *EDITS.values()]
        for i in idx
    }
    for (section, occurrence), blocks in manual.items():
        if section not in RUNBOOK_SECTIONS:
            continue
        yaml_blocks = [text for lang, text in blocks if lang == "yaml"]
        for i in range(len(yaml_blocks)):
            assert (section, occurrence, "yaml", i) in used, (
                f"YAML block {i} of {section} (copy {occurrence + 1}) has no fixture"
            )


@pytest.mark.parametrize("fixture", sorted(FROM_MANUAL))
def test_fixture_is_verbatim(
    fixture: str, manual: dict[tuple[str, int], list[tuple[str, str]]]
) -> None:
    path = FIXTURES / fixture
    assert path.is_file(), f"{path} is missing"
    assert path.read_bytes() == expected_text(manual, FROM_MANUAL[fixture]).encode(), (
        f"{fixture} differs from the manual's {FROM_MANUAL[fixture][0]} block"
    )


# -- 2. they load -----------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", sorted(f for f in FROM_MANUAL if f.endswith(".yaml")))
def test_fixture_passes_its_validator(fixture: str) -> None:
    path = FIXTURES / fixture
    result = run_validator(validator_for(fixture), path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == f"OK {path}\n"


@pytest.mark.parametrize("config_dir", CONFIG_DIRS)
def test_config_dir_loads(config_dir: str) -> None:
    root = FIXTURES / config_dir
    config = load_config(root, environ={})
    if config_dir == "config":
        assert config.alpha.sources["new_api_source"].connection.auth_type == "oauth2"
        assert config.alpha.settings.DEFAULT_BATCH_SIZE == 2000
        assert config.beta.rules[0].rule_id == "TRX_042_NORMALIZE_PHONE"
        assert config.beta.settings.enrichment_sources["customer_db"].on_unavailable == (
            "STALE_CACHE"
        )
        assert config.beta.scoring is not None and config.beta.scoring.weights["timeliness"] == 0.2
        destination = config.gamma.destinations["analytics_warehouse"]
        assert destination.spec.format.column_mapping["record_id"] == "event_id"
        assert destination.delivery_mode == "async"  # H.3's override in gamma.yaml
        assert config.gamma.routes[0].destinations == ["analytics_warehouse"]
        assert config.gamma.settings.ACK_TIMEOUT_ACTION == "ASSUME_SUCCESS"
    for command in ("alpha-config-validator", "gamma-config-validator"):
        result = run_validator(command, root)
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("fixture", sorted(EDITS))
def test_enable_step_loads(
    fixture: str, manual: dict[tuple[str, int], list[tuple[str, str]]], tmp_path: Path
) -> None:
    shutil.copytree(FIXTURES / "config", tmp_path / "config")
    path = tmp_path / fixture
    snippet = expected_text(manual, EDITS[fixture])
    edit = [line for line in snippet.splitlines() if line and not line.startswith("#")]
    assert edit == ["enabled: true"]
    text = path.read_text()
    edited = re.sub(r"^enabled: false.*$", edit[0], text, count=1, flags=re.MULTILINE)
    assert edited != text
    path.write_text(edited)
    result = run_validator(validator_for(fixture), path)
    assert result.returncode == 0, result.stdout + result.stderr
    config = load_config(tmp_path / "config", environ={})
    enabled = {
        "alpha": [s.enabled for s in config.alpha.sources.values()],
        "beta": [r.enabled for r in config.beta.rules],
        "gamma": [d.enabled for d in config.gamma.destinations.values()],
    }[Path(fixture).parts[1]]
    assert enabled == [True]


# -- 3. broken copies are refused ---------------------------------------------------------------


@dataclass(frozen=True)
class Broken:
    """Replace ``old`` by ``new`` in ``fixture``; expect an issue at ``key``.

    The issue's line is the first line of the broken file that starts with ``line_of``.
    """

    fixture: str
    what: str
    old: str
    new: str
    key: str
    line_of: str  # the text of the line the issue must point to (first occurrence)


BROKEN = [
    # A.1 source
    Broken("config/alpha/sources/new_source.yaml", "wrong type",
           "  timeout_ms: 30000", "  timeout_ms: soon", "connection.timeout_ms", "  timeout_ms:"),
    Broken("config/alpha/sources/new_source.yaml", "unknown key",
           "  batch_size: 1000", "  batch_sise: 1000", "polling.batch_sise", "  batch_sise:"),
    Broken("config/alpha/sources/new_source.yaml", "missing key",
           "  endpoint: https://api.example.com/data\n", "", "connection.endpoint", "connection:"),
    # A.1 schema
    Broken("config/alpha/schemas/new_source_schema.json", "syntax",
           '"required": ["id",', '"required": ["id"', "", '  "required":'),
    # B.1 rule
    Broken("config/beta/transforms/rules/new_rule.yaml", "wrong type",
           "priority: 500", "priority: high", "priority", "priority:"),
    Broken("config/beta/transforms/rules/new_rule.yaml", "unknown key",
           "on_failure: skip", "on_failur: skip", "on_failur", "on_failur:"),
    Broken("config/beta/transforms/rules/new_rule.yaml", "missing key",
           "  type: regex_replace\n", "", "transform.type", "transform:"),
    # B.3 scoring (every key has a default: no missing-key case)
    Broken("config/beta/quality/scoring.yaml", "wrong type",
           "penalty_per_missing: 0.2", "penalty_per_missing: lots",
           "quality_scoring.rules.completeness.penalty_per_missing", "      penalty_per_missing:"),
    Broken("config/beta/quality/scoring.yaml", "unknown key",
           "  thresholds:", "  thresholdz:", "quality_scoring.thresholdz", "  thresholdz:"),
    # C.1 destination
    Broken("config/gamma/destinations/new_destination.yaml", "wrong type",
           "  batch_size: 500", "  batch_size: -5", "delivery.batch_size", "  batch_size:"),
    Broken("config/gamma/destinations/new_destination.yaml", "unknown key",
           "  ssl_mode: require", "  ssl_mod: require", "connection.ssl_mod", "  ssl_mod:"),
    Broken("config/gamma/destinations/new_destination.yaml", "missing key",
           "  table: pipeline_events\n", "", "format.table", "format:"),
    # C.1 route
    Broken("config/gamma/routing/rules/to_analytics.yaml", "wrong type",
           "priority: 100", "priority: [100]", "priority", "priority:"),
    Broken("config/gamma/routing/rules/to_analytics.yaml", "unknown key",
           "enabled: true", "enabld: true", "enabld", "enabld:"),
    Broken("config/gamma/routing/rules/to_analytics.yaml", "missing key",
           "destination: analytics_warehouse\n", "", "destination", "rule_id:"),
    # H.1-H.3, first copy (settings files: every key has a default)
    Broken("config/alpha/alpha.yaml", "wrong type",
           "DEFAULT_BATCH_SIZE: 2000", "DEFAULT_BATCH_SIZE: big", "DEFAULT_BATCH_SIZE",
           "DEFAULT_BATCH_SIZE:"),
    Broken("config/alpha/alpha.yaml", "unknown key",
           "PARSER_THREAD_COUNT: 8", "PARSER_THREADS: 8", "PARSER_THREADS", "PARSER_THREADS:"),
    Broken("config/beta/beta.yaml", "wrong type",
           "ENRICHMENT_CACHE_TTL: 7200", "ENRICHMENT_CACHE_TTL: forever", "ENRICHMENT_CACHE_TTL",
           "ENRICHMENT_CACHE_TTL:"),
    Broken("config/beta/beta.yaml", "unknown key",
           "    stale_ttl_seconds: 300", "    stale_ttl: 300",
           "enrichment_sources.customer_db.stale_ttl", "    stale_ttl:"),
    Broken("h2-scoring/beta/quality/scoring.yaml", "wrong type",
           "    - timeliness  # Disabled", "    - 42  # Disabled",
           "quality_scoring.disabled_dimensions[0]", "    - 42"),
    Broken("h2-scoring/beta/quality/scoring.yaml", "unknown key",
           "  enabled_dimensions:", "  enable_dimensions:", "quality_scoring.enable_dimensions",
           "  enable_dimensions:"),
    Broken("config/gamma/gamma.yaml", "wrong type",
           "ACK_WAIT_TIMEOUT_MS: 30000", "ACK_WAIT_TIMEOUT_MS: 30s", "ACK_WAIT_TIMEOUT_MS",
           "ACK_WAIT_TIMEOUT_MS:"),
    Broken("config/gamma/gamma.yaml", "unknown key",
           "    delivery_mode: async", "    delivery_mod: async",
           "destinations.analytics_warehouse.delivery_mod", "    delivery_mod:"),
    # H.1-H.3, second copy
    Broken("h-second-copy/alpha/alpha.yaml", "wrong type",
           "CONNECTION_POOL_SIZE: 20", "CONNECTION_POOL_SIZE: twenty", "CONNECTION_POOL_SIZE",
           "CONNECTION_POOL_SIZE:"),
    Broken("h-second-copy/alpha/alpha.yaml", "unknown key",
           "VALIDATION_PARALLEL_RULES: true", "VALIDATION_PARALLEL_RULE: true",
           "VALIDATION_PARALLEL_RULE", "VALIDATION_PARALLEL_RULE:"),
    Broken("h-second-copy/beta/beta.yaml", "wrong type",
           "TRANSFORM_PARALLELISM: 16", "TRANSFORM_PARALLELISM: 0", "TRANSFORM_PARALLELISM",
           "TRANSFORM_PARALLELISM:"),
    Broken("h-second-copy/beta/beta.yaml", "unknown key",
           "ENRICHMENT_CACHE_MAX_SIZE: 200000", "ENRICHMENT_CACHE_MAXSIZE: 200000",
           "ENRICHMENT_CACHE_MAXSIZE", "ENRICHMENT_CACHE_MAXSIZE:"),
    Broken("h-second-copy/gamma/gamma.yaml", "wrong type",
           "OUTPUT_BATCH_SIZE: 1000", "OUTPUT_BATCH_SIZE: 1e9", "OUTPUT_BATCH_SIZE",
           "OUTPUT_BATCH_SIZE:"),
    Broken("h-second-copy/gamma/gamma.yaml", "unknown key",
           "ACK_WAIT_TIMEOUT_MS: 30000", "ACK_WAIT_TIMEOUT: 30000", "ACK_WAIT_TIMEOUT",
           "ACK_WAIT_TIMEOUT:"),
]  # fmt: skip


def test_every_fixture_has_broken_copies() -> None:
    for fixture in FROM_MANUAL:
        kinds = {b.what for b in BROKEN if b.fixture == fixture}
        assert kinds, f"no broken copy of {fixture}"


@pytest.mark.parametrize("case", BROKEN, ids=lambda c: f"{c.fixture}:{c.what}")
def test_broken_copy_is_refused(case: Broken, tmp_path: Path) -> None:
    top = Path(case.fixture).parts[0]
    shutil.copytree(FIXTURES / top, tmp_path / top)
    path = tmp_path / case.fixture
    text = path.read_text()
    assert text.count(case.old) == 1, f"{case.old!r} is not in {case.fixture} exactly once"
    broken = text.replace(case.old, case.new)
    path.write_text(broken)
    line = next(
        n for n, content in enumerate(broken.splitlines(), 1) if content.startswith(case.line_of)
    )
    result = run_validator(validator_for(case.fixture), path)
    assert result.returncode == 1, result.stdout + result.stderr
    key = f" {case.key}:" if case.key else ""
    expected = f"{path}:{line}:{key} "
    assert any(out.startswith(expected) for out in result.stdout.splitlines()), (
        f"expected a line starting with {expected!r}, got:\n{result.stdout}{result.stderr}"
    )
    if case.fixture.endswith(".yaml"):
        assert load_config_refuses(tmp_path / top, case.key)


def load_config_refuses(root: Path, key: str) -> bool:
    from dps.core.errors import ConfigError

    try:
        load_config(root, environ={})
    except ConfigError as exc:
        return any(issue.key == key for issue in exc.issues)
    return False
