"""``beta-rule-tester --rule FILE|DIR --input SAMPLES.json --output RESULTS.json`` (Runbook B.1).

Runs a rule file (or every rule of a directory, in priority order) over sample records and
writes per-record results and a ``summary`` (matched, transformed, failed, skipped, timing) that
``jq '.summary'`` reads. Rules are validated first, the way ``beta-rule-validator`` does; a
disabled rule is tested as if enabled (B.1 tests before enabling). Exit status: 0 done (even
when records failed: that is what the results are for), 1 a bad rule or input, 2 usage.

``lookup`` rules need the enrichment sources of a configuration: ``--config CONFIG_DIR`` names
it; without it, the configuration directory the rule file sits in (the one holding
``beta/transforms/rules/``) is used when there is one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from dps.beta.enrichment.cache import Enrichment
from dps.beta.testing import read_samples, run_samples
from dps.config import ConfigError, load_config
from dps.config.loader import YAML_SUFFIXES, check_file, is_rule_test
from dps.config.models import RuleConfig

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def rule_tester(
    rule: Annotated[
        Path, typer.Option("--rule", help="A rule file, or a folder of rules.", exists=True)
    ],
    input_path: Annotated[
        Path, typer.Option("--input", help="Sample records: a JSON array or NDJSON.", exists=True)
    ],
    output: Annotated[Path, typer.Option("--output", help="Where to write the results (JSON).")],
    config_dir: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="Configuration directory whose enrichment sources serve lookup rules "
            "(default: the one the rule file is in).",
            exists=True,
            file_okay=False,
        ),
    ] = None,
) -> None:
    """Test transformation rules on sample records."""
    files = (
        sorted(p for p in rule.rglob("*") if p.suffix in YAML_SUFFIXES and not is_rule_test(p))
        if rule.is_dir()
        else [rule]
    )
    rules: list[RuleConfig] = []
    bad = False
    for path in files:
        result = check_file(path, "rule")
        for issue in result.issues:
            typer.echo(str(issue), err=True)
            bad = True
        if isinstance(result.value, RuleConfig):
            rules.append(result.value)
    if bad or not rules:
        if not rules and not bad:
            typer.echo(f"{rule}: no rule files found.", err=True)
        raise typer.Exit(1)
    enrichment = _enrichment_for(rules, config_dir or _enclosing_config_dir(rule))
    try:
        samples = read_samples(input_path)
        report = run_samples(rules, samples, enrichment)
    except (ValueError, OSError) as exc:
        typer.echo(f"{input_path}: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        if enrichment is not None:
            enrichment.close()
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, default=str) + "\n")
    s = report["summary"]
    typer.echo(
        f"{s['total']} records: {s['matched']} matched, {s['transformed']} transformed, "
        f"{s['failed']} failed, {s['skipped']} skipped, {s['dropped']} dropped "
        f"in {s['timing']['total_ms']} ms; results in {output}."
    )


def _enclosing_config_dir(rule: Path) -> Path | None:
    """The configuration directory a rule file sits in (``<dir>/beta/transforms/rules/...``)."""
    for parent in rule.resolve().parents:
        if (parent / "beta" / "transforms" / "rules").is_dir():
            return parent
    return None


def _enrichment_for(rules: list[RuleConfig], config_dir: Path | None) -> Enrichment | None:
    """The enrichment sources for the ``lookup`` rules, or None when no rule looks anything up."""
    if not any(r.transform.type == "lookup" for r in rules) or config_dir is None:
        return None
    try:
        config = load_config(config_dir)
    except ConfigError as exc:
        typer.echo(f"{config_dir}: the configuration for the lookup rules is not valid:", err=True)
        for issue in exc.issues:
            typer.echo(f"  {issue}", err=True)
        raise typer.Exit(1) from None
    return Enrichment(config.beta.enrichment, config.beta.settings)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="beta-rule-tester", args=sys.argv[1:])
