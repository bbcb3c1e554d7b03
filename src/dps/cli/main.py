"""``dps``: run the pipeline or one module, validate configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dps.cli import audit as audit_cmd
from dps.cli import backup as backup_cmd
from dps.cli import config_cmd
from dps.cli import dlq as dlq_cmd
from dps.cli import emergency as emergency_cmd
from dps.cli import jobs as jobs_cmd
from dps.cli import run as run_cmd

app = typer.Typer(
    name="dps",
    help="Data Pipeline System: ingest, transform and deliver records.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigDir = Annotated[
    Path, typer.Argument(help="The configuration directory.", exists=True, file_okay=False)
]
DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", envvar="DPS_DATA_DIR", help="Where queues and state live."),
]


@app.command()
def run(
    config_dir: ConfigDir,
    data_dir: DataDir = None,
    once: Annotated[bool, typer.Option("--once", help="Exit 0 once the input is drained.")] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the accounting as JSON on the last line.")
    ] = False,
    admin_port_base: Annotated[
        int | None,
        typer.Option(help="Admin ports: control=N, alpha=N+1, beta=N+2, gamma=N+3."),
    ] = None,
) -> None:
    """Run control, gamma, beta and alpha as supervised processes (the all-in-one)."""
    raise typer.Exit(run_cmd.run_all(config_dir, data_dir, once, json_out, admin_port_base))


def _module_command(module: str) -> None:
    def command(
        config_dir: ConfigDir,
        data_dir: DataDir = None,
        port: Annotated[int, typer.Option(help="Admin API port.")] = 8080,
        host: Annotated[str | None, typer.Option(help="Admin API bind address.")] = None,
    ) -> None:
        raise typer.Exit(run_cmd.run_module(module, config_dir, data_dir, host, port))

    command.__doc__ = f"Run module {module} alone (its admin API on --port, 8080 by default)."
    app.command(name=module)(command)


for _module in ("alpha", "beta", "gamma", "control"):
    _module_command(_module)

app.add_typer(dlq_cmd.app, name="dlq")
app.add_typer(jobs_cmd.app, name="jobs")
app.add_typer(audit_cmd.app, name="audit")
app.add_typer(config_cmd.app, name="config")
app.add_typer(backup_cmd.app, name="backup")
app.command("emergency-stop")(emergency_cmd.emergency_stop)
app.command("restart")(emergency_cmd.restart)


@app.command()
def validate(config_dir: ConfigDir) -> None:
    """Validate a whole configuration directory; exit 1 with the problems when it is bad."""
    from dps.cli.validate import validate_command

    raise typer.Exit(validate_command(config_dir))


@app.command("test")
def test_(config_dir: ConfigDir) -> None:
    """Run the *_test.yaml cases beside the Beta rules; exit 1 with a diff when one fails."""
    from dps.cli.test_cmd import test_command

    raise typer.Exit(test_command(config_dir))


def _register_bench() -> None:
    from dps.cli.bench import bench

    app.command(name="bench")(bench)


_register_bench()
