"""``dps jobs ...``: runbook F against the control service's ``/admin/jobs`` API.

``--url`` (``DPS_CONTROL_URL``) names the control service; without it, ``--config CONFIG_DIR``
gives it from pipeline.yaml (``admin.bind``, ``admin.ports.control``, https with ``admin.tls``),
else ``http://127.0.0.1:8080``. An https URL is verified against ``--ca-file``
(``DPS_ADMIN_CA_FILE``), else the configuration's admin CA, else the system's trust store.
"""

from __future__ import annotations

import json
import os
import ssl
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

app = typer.Typer(help="Scheduled jobs (runbook F).", no_args_is_help=True)

Url = Annotated[
    str | None,
    typer.Option(envvar="DPS_CONTROL_URL", help="The control service's admin API."),
]
CaFile = Annotated[
    Path | None,
    typer.Option(
        envvar="DPS_ADMIN_CA_FILE", help="CA file to verify an https control service against."
    ),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="A CONFIG_DIR to take the URL and TLS settings from."),
]
Job = Annotated[str, typer.Argument(help="A job name (dps jobs list).")]
DEFAULT_URL = "http://127.0.0.1:8080"


def _target(
    url: str | None, ca_file: Path | None, config_dir: Path | None
) -> tuple[str, ssl.SSLContext | bool]:
    """The control service's URL and the certificate check for it (see the module docstring)."""
    from dps.admin.tls import TlsSetupError, base_url, client_verify, verify_context

    verify: ssl.SSLContext | bool = True
    try:
        if config_dir is not None:
            from dps.config import load_config

            config = load_config(config_dir)
            admin = config.pipeline.admin
            url = url or base_url(config, admin.bind, admin.ports.control)
            verify = client_verify(config)
        if ca_file is not None:
            verify = verify_context(ca_file)
    except TlsSetupError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc
    return url or DEFAULT_URL, verify


def _call(
    method: str,
    url: str | None,
    path: str,
    ca_file: Path | None = None,
    config_dir: Path | None = None,
) -> Any:
    url, verify = _target(url, ca_file, config_dir)
    headers = {"X-DPS-Actor": os.environ.get("USER", "cli")}
    token = os.environ.get("DPS_ADMIN_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        response = httpx.request(
            method, url.rstrip("/") + path, headers=headers, timeout=30, verify=verify
        )
    except httpx.HTTPError as exc:
        typer.echo(f"The control service at {url} did not answer: {exc}", err=True)
        raise typer.Exit(2) from exc
    data = response.json()
    if response.status_code >= 400:
        typer.echo(data.get("error", data), err=True)
        raise typer.Exit(1)
    return data


@app.command("list")
def list_(url: Url = None, ca_file: CaFile = None, config: ConfigOpt = None) -> None:
    """Every job: name, status, schedule, next run."""
    for job in _call("GET", url, "/admin/jobs/list", ca_file, config):
        extra = job["next_run"] or job.get("inactive_reason") or ""
        typer.echo(f"{job['name']:<28} {job['status']:<10} {job['schedule']:<12} {extra}")


@app.command()
def status(job: Job, url: Url = None, ca_file: CaFile = None, config: ConfigOpt = None) -> None:
    """One job's status and last run (JSON)."""
    answer = _call("GET", url, f"/admin/jobs/{job}/status", ca_file, config)
    typer.echo(json.dumps(answer, indent=2))


@app.command()
def trigger(job: Job, url: Url = None, ca_file: CaFile = None, config: ConfigOpt = None) -> None:
    """Run a job now."""
    answer = _call("POST", url, f"/admin/jobs/{job}/trigger", ca_file, config)
    typer.echo(json.dumps(answer, indent=2))


@app.command()
def suspend(job: Job, url: Url = None, ca_file: CaFile = None, config: ConfigOpt = None) -> None:
    """Suspend a job's schedule (``all`` for every job)."""
    path = "/admin/jobs/suspend-all" if job == "all" else f"/admin/jobs/{job}/suspend"
    typer.echo(json.dumps(_call("POST", url, path, ca_file, config), indent=2))


@app.command()
def resume(job: Job, url: Url = None, ca_file: CaFile = None, config: ConfigOpt = None) -> None:
    """Resume a suspended job (``all`` for every job)."""
    path = "/admin/jobs/resume-all" if job == "all" else f"/admin/jobs/{job}/resume"
    typer.echo(json.dumps(_call("POST", url, path, ca_file, config), indent=2))


@app.command()
def logs(job: Job, url: Url = None, ca_file: CaFile = None, config: ConfigOpt = None) -> None:
    """A job's recent runs with their logs."""
    for run in _call("GET", url, f"/admin/jobs/{job}/logs", ca_file, config)["runs"]:
        typer.echo(f"== {run['run_id']} {run['status']} {run['started_at']} {run['message']}")
        typer.echo(run.get("log", ""))
