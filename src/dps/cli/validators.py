"""The manual's validator commands: ``alpha-config-validator``, ``beta-rule-validator``,
``beta-config-validator`` and ``gamma-config-validator``.

Each takes files or directories. A file is checked on its own (its kind comes from its place in
the layout, else from its keys); a directory means every YAML file under it, or — when it holds
``pipeline.yaml`` or module folders — the whole CONFIG_DIR with its cross-file checks. Output is
one ``OK <file>`` line per good file and one ``file:line: key: message`` line per issue, on
stdout, so it reads the same in a terminal, a pipe and a CI log. Exit status: 0 all good,
1 an issue, 2 a usage error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from dps.config.loader import (
    KINDS,
    MODULES,
    FileResult,
    check_directory,
    check_file,
    detect_kind,
    is_rule_test,
    iter_config_files,
)
from dps.config.models import DestinationConfig, RoutingRule, RuleConfig, SourceConfig
from dps.core.errors import ConfigIssue


@dataclass(frozen=True)
class Validator:
    """One validator command: the module it belongs to and the kinds of file it checks."""

    name: str
    module: str
    kinds: frozenset[str]
    summary: str


VALIDATORS: dict[str, Validator] = {
    v.name: v
    for v in (
        Validator(
            "alpha-config-validator",
            "alpha",
            frozenset({"pipeline", "alpha", "source", "validation", "schema"}),
            "Check Alpha configuration: alpha.yaml, sources/*.yaml, validation/*.yaml, "
            "schemas/*.json.",
        ),
        Validator(
            "beta-rule-validator",
            "beta",
            frozenset({"rule"}),
            "Check Beta transformation rules (transforms/rules/*.yaml).",
        ),
        Validator(
            "beta-config-validator",
            "beta",
            frozenset({"pipeline", "beta", "rule", "scoring", "enrichment", "schema"}),
            "Check Beta configuration: beta.yaml, quality/scoring.yaml, enrichment/*.yaml and "
            "rules.",
        ),
        Validator(
            "gamma-config-validator",
            "gamma",
            frozenset({"pipeline", "gamma", "destination", "route", "format", "dlq"}),
            "Check Gamma configuration: gamma.yaml, destinations/*.yaml, routing/rules/*.yaml, "
            "formats/*.yaml, dlq.yaml.",
        ),
    )
}

#: The id key of the kinds whose ids must be unique across files.
_ID_KEYS: Mapping[type[Any], tuple[str, str]] = {
    SourceConfig: ("source", "source_id"),
    RuleConfig: ("rule", "rule_id"),
    DestinationConfig: ("destination", "destination_id"),
    RoutingRule: ("route", "rule_id"),
}


def is_config_dir(path: Path) -> bool:
    """A whole CONFIG_DIR: it holds pipeline.yaml or a module folder."""
    if any((path / f"pipeline{s}").is_file() for s in (".yaml", ".yml")):
        return True
    return any((path / module).is_dir() for module in MODULES)


def _article(noun: str) -> str:
    return "an" if noun[:1].lower() in "aeiou" else "a"


def _command_for(kind: str) -> str:
    specific = [v.name for v in VALIDATORS.values() if kind in v.kinds]
    return min(specific, key=lambda name: len(VALIDATORS[name].kinds)) if specific else "dps"


class _Report:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.files = 0
        self.bad_files = 0
        self.issues = 0

    def ok(self, file: str) -> None:
        self.files += 1
        self.console.print(Text.assemble(("OK", "bold green"), f" {file}"))

    def bad(self, issues: Sequence[ConfigIssue]) -> None:
        self.files += 1
        self.bad_files += 1
        for issue in issues:
            self.issue(issue)

    def issue(self, issue: ConfigIssue) -> None:
        self.issues += 1
        where = issue.file if issue.line is None else f"{issue.file}:{issue.line}"
        key = f" {issue.key}:" if issue.key else ""
        self.console.print(
            Text.assemble((f"{where}:", "bold red"), (key, "bold"), f" {issue.message}")
        )


def validate_paths(validator: Validator, paths: Sequence[Path], console: Console) -> int:
    """Check ``paths`` as ``validator`` does and print the result; return the exit status."""
    paths = list(dict.fromkeys(paths))
    missing = [p for p in paths if not p.exists()]
    if missing:
        for path in missing:
            console.print(f"error: {path} does not exist.", style="red", markup=False)
        return 2
    report = _Report(console)
    singles: list[tuple[FileResult, Path]] = []
    for path in paths:
        if path.is_dir() and is_config_dir(path):
            _whole_directory(path, report)
        elif path.is_dir():
            found = _directory_files(validator, path)
            if not found:
                report.issue(
                    ConfigIssue(
                        str(path),
                        "",
                        f"holds no file {validator.name} checks "
                        f"({', '.join(sorted(validator.kinds))}).",
                    )
                )
            singles.extend((check_file(f, module=validator.module), f) for f in found)
        elif is_rule_test(path):
            console.print(f"SKIP {path} (a rule test file: use beta-rule-tester)", markup=False)
        else:
            singles.append((_check_one(validator, path), path))
    _duplicates([result for result, _ in singles])
    for result, _ in singles:
        if result.issues:
            report.bad(result.issues)
        else:
            report.ok(result.file)
    if report.issues:
        noun = "issue" if report.issues == 1 else "issues"
        report.console.print(
            f"{report.issues} {noun} in {report.bad_files} of {report.files} files.",
            style="red",
            highlight=False,
        )
        return 1
    return 0


def _whole_directory(path: Path, report: _Report) -> None:
    result = check_directory(path)
    by_file: dict[str, list[ConfigIssue]] = {}
    for issue in result.issues:
        shown = issue.file if Path(issue.file).is_absolute() else str(path / issue.file)
        by_file.setdefault(issue.file, []).append(
            ConfigIssue(shown, issue.key, issue.message, issue.line)
        )
    for name in result.files:
        if name in by_file:
            report.bad(by_file.pop(name))
        else:
            report.ok(str(path / name))
    for issues in by_file.values():
        report.bad(issues)


def _directory_files(validator: Validator, folder: Path) -> list[Path]:
    chosen = []
    for path in iter_config_files([folder]):
        kind = detect_kind(path, None, validator.module)
        if kind is None or kind in validator.kinds:
            chosen.append(path)
    return chosen


def _check_one(validator: Validator, path: Path) -> FileResult:
    result = check_file(path, module=validator.module)
    if result.kind is not None and result.kind not in validator.kinds:
        title = KINDS[result.kind].title
        return FileResult(
            result.file,
            result.kind,
            issues=[
                ConfigIssue(
                    result.file,
                    "",
                    f"is {_article(title)} {title} file, which {validator.name} does not "
                    f"check; use "
                    f"{_command_for(result.kind)}.",
                )
            ],
        )
    return result


def _duplicates(results: Sequence[FileResult]) -> None:
    """Ids that must be unique, across the files checked together."""
    first: dict[tuple[str, str], FileResult] = {}
    for result in results:
        entry = next((v for t, v in _ID_KEYS.items() if isinstance(result.value, t)), None)
        if entry is None:
            continue
        kind, key = entry
        value = getattr(result.value, key)
        seen = first.setdefault((kind, value), result)
        if seen is not result:
            result.issues.append(
                ConfigIssue(
                    result.file,
                    key,
                    f'"{value}" is already the {key} of {seen.file}; expected each {kind} to '
                    "have its own id.",
                    result.doc.line_of((key,)) if result.doc is not None else None,
                )
            )


def _console() -> Console:
    return Console(soft_wrap=True, highlight=False, markup=False)


def app_for(name: str) -> typer.Typer:
    """The typer app of the validator command ``name``."""
    validator = VALIDATORS[name]
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

    @app.command(name=name, help=validator.summary + " A directory means every file under it.")
    def command(
        paths: Annotated[
            list[Path],
            typer.Argument(help="Files or directories to check.", show_default=False),
        ],
    ) -> None:
        raise typer.Exit(validate_paths(validator, paths, _console()))

    return app


def _run(name: str) -> None:
    app_for(name)(prog_name=name)


def alpha_config_validator() -> None:
    """``alpha-config-validator FILE|DIR...``."""
    _run("alpha-config-validator")


def beta_rule_validator() -> None:
    """``beta-rule-validator FILE|DIR...``."""
    _run("beta-rule-validator")


def beta_config_validator() -> None:
    """``beta-config-validator FILE|DIR...``."""
    _run("beta-config-validator")


def gamma_config_validator() -> None:
    """``gamma-config-validator FILE|DIR...``."""
    _run("gamma-config-validator")
