"""``dps jobs ...``: runbook F against the control service's ``/admin/jobs`` API."""

from __future__ import annotations

import json
import os
from typing import Annotated, Any

import httpx
import typer

app = typer.Typer(help="Scheduled jobs (runbook F).", no_args_is_help=True)

Url = Annotated[
    str,
    typer.Option(envvar="DPS_CONTROL_URL", help="The control service's admin API."),
]
Job = Annotated[str, typer.Argument(help="A job name (dps jobs list).")]


def _call(method: str, url: str, path: str) -> Any:
    headers = {"X-DPS-Actor": os.environ.get("USER", "cli")}
    token = os.environ.get("DPS_ADMIN_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        response = httpx.request(method, url.rstrip("/") + path, headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        typer.echo(f"The control service at {url} did not answer: {exc}", err=True)
        raise typer.Exit(2) from exc
    data = response.json()
    if response.status_code >= 400:
        typer.echo(data.get("error", data), err=True)
        raise typer.Exit(1)
    return data


@app.command("list")
def list_(url: Url = "http://127.0.0.1:8080") -> None:
    """Every job: name, status, schedule, next run."""
    for job in _call("GET", url, "/admin/jobs/list"):
        extra = job["next_run"] or job.get("inactive_reason") or ""
        typer.echo(f"{job['name']:<28} {job['status']:<10} {job['schedule']:<12} {extra}")


@app.command()
def status(job: Job, url: Url = "http://127.0.0.1:8080") -> None:
    """One job's status and last run (JSON)."""
    typer.echo(json.dumps(_call("GET", url, f"/admin/jobs/{job}/status"), indent=2))


@app.command()
def trigger(job: Job, url: Url = "http://127.0.0.1:8080") -> None:
    """Run a job now."""
    typer.echo(json.dumps(_call("POST", url, f"/admin/jobs/{job}/trigger"), indent=2))


@app.command()
def suspend(job: Job, url: Url = "http://127.0.0.1:8080") -> None:
    """Suspend a job's schedule (``all`` for every job)."""
    path = "/admin/jobs/suspend-all" if job == "all" else f"/admin/jobs/{job}/suspend"
    typer.echo(json.dumps(_call("POST", url, path), indent=2))


@app.command()
def resume(job: Job, url: Url = "http://127.0.0.1:8080") -> None:
    """Resume a suspended job (``all`` for every job)."""
    path = "/admin/jobs/resume-all" if job == "all" else f"/admin/jobs/{job}/resume"
    typer.echo(json.dumps(_call("POST", url, path), indent=2))


@app.command()
def logs(job: Job, url: Url = "http://127.0.0.1:8080") -> None:
    """A job's recent runs with their logs."""
    for run in _call("GET", url, f"/admin/jobs/{job}/logs")["runs"]:
        typer.echo(f"== {run['run_id']} {run['status']} {run['started_at']} {run['message']}")
        typer.echo(run.get("log", ""))
