"""The admin API every module serves: ``build_app(target)``.

The endpoints are the manual's (``/admin/health``, ``/admin/config/reload``, ``/admin/pause``,
``/admin/queue/depth``, ``/metrics``, ...) and are the same on the four modules; a module adds its
own with ``target.routes()`` (``/admin/dlq/...`` on gamma). The app reaches the module only
through the ``ModuleTarget`` protocol, so it never names a module.

Target methods are synchronous and may block briefly (a reload reads files, a drain waits), so
each runs in the thread pool and the event loop keeps answering health probes meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, TypeVar

from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from dps.admin import process
from dps.admin.common import (
    AuditMiddleware,
    AuditSink,
    ErrorMiddleware,
    OpenAPIGenerator,
    RoleAuthMiddleware,
    http_exception_handler,
    json_response,
    required_role,
)
from dps.core.logging import get_logger
from dps.core.metrics import package_version, set_module_info
from dps.runtime.lifecycle import Health, HealthReport, ModuleTarget

__all__ = ["OPEN_PATHS", "build_app"]

#: Paths that need no token even when ``auth_token`` is set: probes and scrapers have none.
OPEN_PATHS: Final = frozenset({"/admin/health", "/admin/ready", "/metrics"})

_log = get_logger("admin_api")
T = TypeVar("T")


def build_app(
    target: ModuleTarget,
    *,
    auth_token: str | None = None,
    audit: AuditSink | None = None,
    tokens: dict[str, tuple[str, str]] | None = None,
) -> Starlette:
    """The admin API of ``target``: the common endpoints, then ``target.routes()``.

    With ``auth_token``, every endpoint but ``OPEN_PATHS`` needs ``Authorization: Bearer <token>``.
    With ``audit`` (the state store's ``append_audit``), every admin action and refused token is
    audited (see :class:`~dps.admin.common.AuditMiddleware`). ``tokens`` (``{token: (name,
    role)}``) adds roles: viewer reads, operator acts, admin stops and purges (see
    :func:`~dps.admin.common.required_role`); ``auth_token`` alone is one token with the admin
    role. With neither, the API is open.
    """
    roles = dict(tokens or {})
    if auth_token:
        roles.setdefault(auth_token, ("admin-token", "admin"))
    set_module_info(target.name)

    async def call(fn: Callable[[], T]) -> T:
        return await run_in_threadpool(fn)

    async def health(request: Request) -> Response:
        """Module health: HEALTHY or DEGRADED answer 200, UNHEALTHY answers 503.

        The body lists the checks that decided the status.
        """
        try:
            report = await call(target.health)
        except Exception as exc:
            # A probe must get an answer it can act on, not a 500 it may read as a network error.
            _log.exception("Health check failed.", error=str(exc))
            report = HealthReport(
                Health.UNHEALTHY,
                {"health_check": {"status": "UNHEALTHY", "message": f"Health check failed: {exc}"}},
            )
        status_code = 503 if report.status is Health.UNHEALTHY else 200
        return json_response(report.as_dict(), status_code)

    async def ready(request: Request) -> Response:
        """Readiness: 200 once the module serves and its worker runs (also when paused), else 503.

        Unlike health it does not grade the work: a module whose queue is full after a restore
        is ready (and UNHEALTHY) so that the modules downstream of it can be started to drain it.
        """
        is_ready = await call(target.ready)
        body = {"ready": is_ready, "state": target.run_state.value}
        return json_response(body, 200 if is_ready else 503)

    async def status(request: Request) -> Response:
        """Module status: run state, counters, sources or destinations."""
        return json_response(await call(target.status))

    async def config_export(request: Request) -> Response:
        """The running configuration, secrets redacted."""
        return json_response(await call(target.export_config))

    async def config_reload(request: Request) -> Response:
        """Validate the configuration directory and apply it.

        A bad configuration answers 400 with ``issues`` (file, key, line, message) and the module
        keeps running on its last good configuration.
        """
        _log.info("Configuration reload requested.")
        return json_response(await call(target.reload_config))

    def action(name: str, fn: Callable[[], None], doc: str) -> Route:
        async def endpoint(request: Request) -> Response:
            _log.info("Admin action requested.", action=name)
            await call(fn)
            return json_response({"action": name, "status": await call(target.status)})

        endpoint.__doc__ = doc
        endpoint.__name__ = name.replace("-", "_")
        return Route(f"/admin/{name}", endpoint, methods=["POST"])

    async def drain(request: Request) -> Response:
        """Stop taking new work and finish what is in flight; answers with what was drained."""
        _log.info("Admin action requested.", action="drain")
        return json_response(await call(target.drain))

    async def queue_depth(request: Request) -> Response:
        """Messages waiting in this module's queues: ``{"total": n, "queues": {name: n}}``."""
        depths = await call(target.queue_depths)
        return json_response({"total": sum(depths.values()), "queues": depths})

    async def metrics(request: Request) -> Response:
        """Prometheus metrics (text exposition, or OpenMetrics when the scraper asks for it)."""
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        body = await run_in_threadpool(encoder, REGISTRY)
        return Response(body, headers={"Content-Type": content_type})

    def investigation(path: str, read: Callable[[], dict[str, Any]], doc: str) -> Route:
        async def endpoint(request: Request) -> Response:
            return json_response(await run_in_threadpool(read))

        endpoint.__doc__ = doc
        return Route(path, endpoint, methods=["GET"])

    generator = OpenAPIGenerator(
        title=f"dps {target.name} admin API",
        version=package_version(),
        description='JSON in and out; errors are {"error": "..."}.',
    )

    async def openapi(request: Request) -> Response:
        """This document: every endpoint of this module's admin API."""
        schema = generator.get_schema(request.app.routes)
        for path, operations in schema.get("paths", {}).items():
            for method, operation in operations.items():
                role = required_role(method.upper(), path)
                operation["x-required-role"] = "none" if path in OPEN_PATHS else role
        return json_response(schema)

    routes: list[BaseRoute] = [
        Route("/admin/health", health, methods=["GET"]),
        Route("/admin/ready", ready, methods=["GET"]),
        Route("/admin/status", status, methods=["GET"]),
        Route("/admin/config/export", config_export, methods=["GET"]),
        Route("/admin/config/reload", config_reload, methods=["POST"]),
        action("pause", target.pause, "Stop taking new work; what is in flight completes."),
        action("resume", target.resume, "Take new work again after a pause."),
        action("start", target.start, "Start processing (after an emergency stop or a pause)."),
        action(
            "emergency-stop",
            target.emergency_stop,
            "Stop processing now; unacknowledged work stays in the queues.",
        ),
        Route("/admin/drain", drain, methods=["GET", "POST"]),
        # The manual spells it both ways (runbooks E.1 and G.1).
        Route("/admin/queues/depth", queue_depth, methods=["GET"]),
        Route("/admin/queue/depth", queue_depth, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"], include_in_schema=True),
        investigation(
            "/admin/resources/status", process.resources_status, "CPU, memory, I/O (E.1)."
        ),
        investigation("/admin/resources/io", process.io_status, "Bytes read and written (H.1)."),
        investigation("/admin/memory/status", process.memory_status, "Memory and GC (E.3)."),
        investigation("/admin/threads/status", process.threads_status, "Threads (H.1)."),
        *target.routes(),
    ]

    middleware = []
    if audit is not None:
        # Outermost, so refused tokens and errors are audited with the status the caller saw.
        middleware.append(Middleware(AuditMiddleware, sink=audit, module=target.name))
    middleware.append(Middleware(ErrorMiddleware))
    if roles:
        middleware.append(Middleware(RoleAuthMiddleware, tokens=roles, open_paths=OPEN_PATHS))
    exception_handlers: dict[Any, Any] = {HTTPException: http_exception_handler}
    return Starlette(routes=routes, middleware=middleware, exception_handlers=exception_handlers)
