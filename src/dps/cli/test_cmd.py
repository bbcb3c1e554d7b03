"""``dps test CONFIG_DIR``: run the ``*_test.yaml`` cases kept beside the rules.

Every ``beta/transforms/rules/**/*_test.yaml`` file is run against the configuration as it is on
disk (so a rule change is tested before the reload). Prints one line per file, the differences of
each failing case, and a total; exits 1 when a case fails or the configuration does not load.
"""

from __future__ import annotations

from pathlib import Path

import typer

from dps.beta.testing import run_test_file
from dps.config import load_config
from dps.config.loader import YAML_SUFFIXES, is_rule_test
from dps.core.errors import ConfigError


def test_command(config_dir: Path) -> int:
    """Run the tests; the exit status (0 all passed, 1 a failure or a bad configuration)."""
    try:
        config = load_config(config_dir)
    except ConfigError as exc:
        typer.echo(f"The configuration does not load:\n{exc}", err=True)
        return 1
    rules_dir = config_dir / "beta" / "transforms" / "rules"
    files = (
        sorted(p for p in rules_dir.rglob("*") if p.suffix in YAML_SUFFIXES and is_rule_test(p))
        if rules_dir.is_dir()
        else []
    )
    if not files:
        typer.echo(f"No *_test.yaml files under {rules_dir}.")
        return 0
    cases = failed = 0
    for path in files:
        count, failures = run_test_file(path, config)
        cases += count
        failed += len(failures)
        shown = path.relative_to(config_dir)
        typer.echo(f"{'FAIL' if failures else 'ok  '} {shown} ({count} cases)")
        for failure in failures:
            typer.echo(f"  {failure}")
    typer.echo(f"{cases} cases in {len(files)} files, {failed} failures.")
    return 1 if failed else 0
