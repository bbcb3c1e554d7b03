"""Runbooks G.1/K.1 (emergency shutdown) and G.2/K.2 (restart), performed against the admin APIs.

Shutdown: stop alpha (no new intake), wait for beta's queue to drain (at most five minutes, as
the manual's loop), stop beta, stop gamma, then read every module's status; the report says what
was still in flight. Restart: start gamma, wait (up to a timeout) until its health answers
HEALTHY or DEGRADED, the same for beta, then alpha, and report each health. A module that runs
but is still UNHEALTHY (a stage with no input yet can fail its rate thresholds) is a warning; a
module that does not run ends the restart there. Stopping loses nothing: unacknowledged
work stays in the queues and is processed after the restart.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from dps.control.modules import ModuleClient, ModuleUnreachable

Echo = Callable[[str], None]


def _depth(modules: ModuleClient, module: str) -> int | None:
    try:
        return int(modules.get_json(module, "/admin/queue/depth")["total"])
    except (ModuleUnreachable, RuntimeError, KeyError):
        return None


def _now() -> str:
    return datetime.now(UTC).isoformat()


def emergency_stop(
    modules: ModuleClient,
    *,
    drain_timeout: float = 300.0,
    poll: float = 5.0,
    echo: Echo = lambda _: None,
) -> dict[str, Any]:
    """Runbook G.1 (see the module docstring); returns the shutdown report."""
    report: dict[str, Any] = {"started_at": _now(), "steps": []}

    def step(what: str, **data: Any) -> None:
        report["steps"].append({"at": _now(), "step": what, **data})
        echo(what)

    report["in_flight_before"] = {m: _depth(modules, m) for m in ("beta", "gamma")}
    modules.post_json("alpha", "/admin/emergency-stop")
    step("Stopped alpha (ingestion).")
    deadline = time.monotonic() + drain_timeout
    drained = False
    while True:
        depth = _depth(modules, "beta")
        if depth == 0:
            drained = True
            break
        if time.monotonic() >= deadline:
            break
        time.sleep(poll)
    step(
        "Transform queue drained." if drained else "Transform queue not drained in time.",
        beta_queue_depth=depth,
        waited_seconds=round(drain_timeout - max(0.0, deadline - time.monotonic()), 1),
    )
    modules.post_json("beta", "/admin/emergency-stop")
    step("Stopped beta (transformation).")
    modules.post_json("gamma", "/admin/emergency-stop")
    step("Stopped gamma (delivery).")
    report["status"] = {
        m: modules.get_json(m, "/admin/status").get("state") for m in ("alpha", "beta", "gamma")
    }
    report["in_flight_at_stop"] = {m: _depth(modules, m) for m in ("beta", "gamma")}
    report["drained"] = drained
    report["stopped"] = all(s == "stopped" for s in report["status"].values())
    report["finished_at"] = _now()
    return report


def _wait_healthy(modules: ModuleClient, module: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {"status": "UNREACHABLE"}
    while True:
        try:
            response = modules.request(module, "GET", "/admin/health")
            last = response.json()
            if last.get("status") in ("HEALTHY", "DEGRADED"):
                return last
        except (ModuleUnreachable, ValueError) as exc:
            last = {"status": "UNREACHABLE", "error": str(exc)}
        if time.monotonic() >= deadline:
            return last
        time.sleep(1.0)


def restart(
    modules: ModuleClient, *, health_timeout: float = 60.0, echo: Echo = lambda _: None
) -> dict[str, Any]:
    """Runbook G.2 (see the module docstring); returns the restart report."""
    report: dict[str, Any] = {"started_at": _now(), "steps": [], "health": {}, "warnings": []}
    for module in ("gamma", "beta", "alpha"):
        modules.post_json(module, "/admin/start")
        health = _wait_healthy(modules, module, health_timeout)
        status = health.get("status")
        report["health"][module] = status
        report["steps"].append({"at": _now(), "step": f"Started {module}.", "health": health})
        echo(f"Started {module}: {status}.")
        if status in ("HEALTHY", "DEGRADED"):
            continue
        # A stage can report UNHEALTHY while the stages before it are still stopped (no input,
        # so its rate thresholds fail). What must hold is that it runs: an unreachable or
        # stopped module ends the restart there; an unhealthy running one is a warning.
        try:
            state = modules.get_json(module, "/admin/status").get("state")
        except (ModuleUnreachable, RuntimeError) as exc:
            state = f"unreachable: {exc}"
        if state != "running":
            report["ok"] = False
            report["error"] = f"{module} did not start ({state}); stopped the restart there."
            return report
        report["warnings"].append(
            f"{module} runs but its health was still {status} after {health_timeout:g} s."
        )
    report["backlog"] = {m: _depth(modules, m) for m in ("beta", "gamma")}
    report["ok"] = True
    report["finished_at"] = _now()
    return report
