"""``beta-rule-tester --rule FILE|DIR --input SAMPLES.json --output RESULTS.json`` (Runbook B.1).

Runs a rule file (or every rule of a directory, in priority order) over sample records and
writes per-record results and a ``summary`` (matched, transformed, failed, skipped, timing) that
``jq '.summary'`` reads. Rules are validated first, the way ``beta-rule-validator`` does; a
disabled rule is tested as if enabled (B.1 tests before enabling). Exit status: 0 done (even
when records failed: that is what the results are for), 1 a bad rule or input, 2 usage.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from dps.beta.testing import read_samples, run_samples
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
    try:
        samples = read_samples(input_path)
        report = run_samples(rules, samples)
    except (ValueError, OSError) as exc:
        typer.echo(f"{input_path}: {exc}", err=True)
        raise typer.Exit(1) from None
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, default=str) + "\n")
    s = report["summary"]
    typer.echo(
        f"{s['total']} records: {s['matched']} matched, {s['transformed']} transformed, "
        f"{s['failed']} failed, {s['skipped']} skipped, {s['dropped']} dropped "
        f"in {s['timing']['total_ms']} ms; results in {output}."
    )


def main() -> None:
    """Console-script entry point."""
    app(prog_name="beta-rule-tester", args=sys.argv[1:])
