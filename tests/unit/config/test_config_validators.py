"""The validator commands and ``dps validate``, run in-process."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

from rich.console import Console
from typer.testing import CliRunner

from dps.cli.validate import validate_command
from dps.cli.validators import VALIDATORS, app_for, validate_paths

RULE = """\
rule_id: {id}
match: {{field: phone_number}}
transform:
  type: rename
  config: {{to: phone}}
"""


def run(name: str, *paths: Path) -> tuple[int, str]:
    out = io.StringIO()
    console = Console(file=out, soft_wrap=True, highlight=False, color_system=None)
    code = validate_paths(VALIDATORS[name], list(paths), console)
    return code, out.getvalue()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_good_file_prints_ok_and_exits_0(tmp_path: Path) -> None:
    rule = write(tmp_path / "rules/r.yaml", RULE.format(id="R1"))
    assert run("beta-rule-validator", rule) == (0, f"OK {rule}\n")


def test_bad_file_prints_each_issue_and_exits_1(tmp_path: Path) -> None:
    rule = write(tmp_path / "rules/r.yaml", RULE.format(id="R1") + "on_failure: explode\n")
    code, out = run("beta-rule-validator", rule)
    assert code == 1
    assert (
        f'{rule}:6: on_failure: "explode" is not allowed; expected one of skip, fail, dlq.'
        in out.splitlines()
    )
    assert "1 issue in 1 of 1 files." in out


def test_directory_means_every_file_under_it_and_checks_duplicates(tmp_path: Path) -> None:
    write(tmp_path / "transforms/rules/a.yaml", RULE.format(id="R1"))
    write(tmp_path / "transforms/rules/b.yaml", RULE.format(id="R1"))
    write(tmp_path / "transforms/rules/b_test.yaml", "not: a rule\n")
    write(tmp_path / "beta.yaml", "TRANSFORM_PARALLELISM: 2\n")
    code, out = run("beta-rule-validator", tmp_path)
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == f"OK {tmp_path / 'transforms/rules/a.yaml'}"
    assert lines[1].startswith(f'{tmp_path / "transforms/rules/b.yaml"}:1: rule_id: "R1" is')
    assert not any("beta.yaml" in line or "b_test" in line for line in lines)


def test_wrong_kind_of_file_names_the_right_command(tmp_path: Path) -> None:
    rule = write(tmp_path / "transforms/rules/r.yaml", RULE.format(id="R1"))
    code, out = run("gamma-config-validator", rule)
    assert code == 1
    assert "use beta-rule-validator" in out


def test_a_route_missing_its_destination_is_judged_as_a_route(tmp_path: Path) -> None:
    route = write(tmp_path / "to_analytics.yaml", "rule_id: R\nmatch: {source_id: {in: [a]}}\n")
    code, out = run("gamma-config-validator", route)
    assert code == 1
    assert out.startswith(f"{route}:1: destination: is required.")
    assert run("beta-rule-validator", route)[1].startswith(f"{route}:1: transform: is required.")


def test_settings_file_detected_by_the_asking_command(tmp_path: Path) -> None:
    settings = write(tmp_path / "settings.yaml", "TRANSFORM_PARALLELISM: 16\n")
    assert run("beta-config-validator", settings)[0] == 0
    empty = write(tmp_path / "other.yaml", "")
    assert run("gamma-config-validator", empty) == (0, f"OK {empty}\n")


def test_whole_config_dir_with_cross_file_checks(tmp_path: Path) -> None:
    write(tmp_path / "pipeline.yaml", "name: t\n")
    write(tmp_path / "gamma/routing/rules/r.yaml", "rule_id: r\ndestination: nowhere\n")
    code, out = run("gamma-config-validator", tmp_path)
    assert code == 1
    assert f"OK {tmp_path / 'pipeline.yaml'}" in out
    assert f'{tmp_path / "gamma/routing/rules/r.yaml"}:2: destination: "nowhere"' in out


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(app_for("alpha-config-validator"), []).exit_code == 2
    missing = runner.invoke(app_for("alpha-config-validator"), [str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2
    assert "does not exist" in missing.output


def test_validate_command_summary_and_issues(tmp_path: Path) -> None:
    write(tmp_path / "beta/transforms/rules/r.yaml", RULE.format(id="R1"))
    out = io.StringIO()
    console = Console(file=out, soft_wrap=True, width=120, color_system=None)
    assert validate_command(tmp_path, console) == 0
    text = out.getvalue()
    assert "Rules" in text and "R1" in text and "Configuration is valid" in text
    write(tmp_path / "beta/beta.yaml", "TRANSFORM_PARALLELISM: 0\n")
    out = io.StringIO()
    console = Console(file=out, soft_wrap=True, width=120, color_system=None)
    assert validate_command(tmp_path, console) == 1
    assert f"{tmp_path / 'beta/beta.yaml'}:1: TRANSFORM_PARALLELISM: 0 is not allowed" in (
        out.getvalue()
    )
    assert validate_command(tmp_path / "nope", console) == 2
