"""What every module exposes to its admin API and to the supervisor.

The admin API (``dps.admin.app``) is the same for the four modules; it talks to a module only
through this protocol, so a module never imports the admin code's internals and the admin code
never names a module.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Protocol

from starlette.routing import BaseRoute

from dps.core.health import Health, HealthReport


class RunState(StrEnum):
    """Where a module is in its lifecycle (``/admin/status``)."""

    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    DRAINING = "draining"
    STOPPED = "stopped"


class ModuleTarget(Protocol):
    """The operations a module offers its admin API.

    ``reload_config`` validates the whole configuration directory first and raises
    ``dps.core.errors.ConfigError`` when it is bad, keeping the running configuration.
    ``routes`` are the module's own extra endpoints (e.g. ``/admin/dlq/...`` on gamma).
    """

    name: str
    run_state: RunState

    def ready(self) -> bool: ...

    def status(self) -> dict[str, Any]: ...

    def health(self) -> HealthReport: ...

    def export_config(self) -> dict[str, Any]: ...

    def reload_config(self) -> dict[str, Any]: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def start(self) -> None: ...

    def emergency_stop(self) -> None: ...

    def drain(self) -> dict[str, Any]: ...

    def queue_depths(self) -> dict[str, int]: ...

    def routes(self) -> list[BaseRoute]: ...


__all__ = ["Health", "HealthReport", "ModuleTarget", "RunState"]
