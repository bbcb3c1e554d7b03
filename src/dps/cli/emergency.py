"""``dps emergency-stop`` and ``dps restart``: runbooks G.1/K.1 and G.2/K.2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from dps.config import load_config

ConfigDir = Annotated[Path, typer.Argument(help="The configuration directory.", exists=True)]
PortBase = Annotated[
    int | None, typer.Option(help="Admin ports as dps run: control=N, alpha=N+1, ...")
]


def emergency_stop(
    config_dir: ConfigDir,
    admin_port_base: PortBase = None,
    drain_timeout: Annotated[float, typer.Option(help="Seconds to wait for beta's queue.")] = 300,
) -> None:
    """Stop alpha, wait for the queue to drain (5 min max), stop beta, then gamma (G.1)."""
    from dps.control.emergency import emergency_stop as stop
    from dps.control.modules import client_for

    client = client_for(load_config(config_dir), admin_port_base)
    try:
        report = stop(client, drain_timeout=drain_timeout, echo=lambda s: typer.echo(s, err=True))
    finally:
        client.close()
    typer.echo(json.dumps(report, indent=2))
    if not report["stopped"]:
        raise typer.Exit(1)


def restart(
    config_dir: ConfigDir,
    admin_port_base: PortBase = None,
    health_timeout: Annotated[float, typer.Option(help="Seconds to wait for each health.")] = 60,
) -> None:
    """Start gamma, beta, then alpha, each once the previous one is healthy (G.2)."""
    from dps.control.emergency import restart as start
    from dps.control.modules import client_for

    client = client_for(load_config(config_dir), admin_port_base)
    try:
        report = start(
            client, health_timeout=health_timeout, echo=lambda s: typer.echo(s, err=True)
        )
    finally:
        client.close()
    typer.echo(json.dumps(report, indent=2))
    if not report["ok"]:
        raise typer.Exit(1)
