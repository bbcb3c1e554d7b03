"""Helpers every admin route uses, the modules' own routes included.

- ``read_json``: the request body as a JSON object, whatever its content type. The manual's
  commands are ``curl -X POST ... -d '{"entry_ids": [...]}'``, which sends JSON labelled
  ``application/x-www-form-urlencoded``; a content-type check would refuse what operators paste.
- ``json_response`` / ``error_response``: JSON out, pretty-printed because people read it in a
  terminal, with a final newline so the shell prompt starts on its own line.
- ``ErrorMiddleware`` / ``BearerAuthMiddleware``: every failure becomes a JSON error with the
  status that says what the caller can do about it.
- ``OpenAPIGenerator``: Starlette's generator lists only routes whose docstring is YAML; this one
  lists every route and uses the docstring's first line as the summary.
"""

from __future__ import annotations

import hmac
import inspect
import re
from collections.abc import Callable, Collection
from typing import Any, Final

import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.schemas import BaseSchemaGenerator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dps.core.errors import ConfigError, TerminalError, TransientError
from dps.core.logging import get_logger

__all__ = [
    "AuditMiddleware",
    "BearerAuthMiddleware",
    "ErrorMiddleware",
    "JSONResponse",
    "OpenAPIGenerator",
    "RoleAuthMiddleware",
    "error_response",
    "http_exception_handler",
    "json_response",
    "read_json",
    "required_role",
]

_log = get_logger("admin_api")
# datetimes, enums, Decimals and UUIDs encode natively; anything else as its str().
_encoder = msgspec.json.Encoder(enc_hook=str)


class JSONResponse(Response):
    """A JSON response encoded with msgspec (datetimes and NaN never fail), indented."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return msgspec.json.format(_encoder.encode(content), indent=2) + b"\n"


def json_response(data: Any, status_code: int = 200) -> JSONResponse:
    """``data`` as a JSON response."""
    return JSONResponse(data, status_code=status_code)


def error_response(status_code: int, message: str, **fields: Any) -> JSONResponse:
    """``{"error": message, ...fields}`` with ``status_code``."""
    return JSONResponse({"error": message, **fields}, status_code=status_code)


async def read_json(request: Request) -> dict[str, Any]:
    """The body as a JSON object; ``{}`` when empty. Ignores the content type (see module doc).

    Raises ``HTTPException(400)`` when the body is not JSON or not an object, which the app turns
    into ``{"error": ...}``.
    """
    body = await request.body()
    if not body.strip():
        return {}
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise HTTPException(
            400, f"The request body is not valid JSON ({exc}); expected a JSON object."
        ) from None
    if not isinstance(data, dict):
        raise HTTPException(
            400, f"The request body is a JSON {type(data).__name__}; expected a JSON object."
        )
    return data


async def http_exception_handler(request: Request, exc: Exception) -> Response:
    """404, 405, 400 from ``read_json``... as JSON; ``detail`` becomes ``error``."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404 and exc.detail == "Not Found":
        message = f"No admin endpoint at {request.method} {request.url.path}; see /openapi.json."
    elif exc.status_code == 405 and exc.detail == "Method Not Allowed":
        message = f"{request.method} is not allowed on {request.url.path}; see /openapi.json."
    else:
        message = str(exc.detail)
    return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)


def _error_for(exc: Exception) -> JSONResponse | None:
    """The response for an error a handler may raise on purpose, or ``None`` for a bug."""
    if isinstance(exc, ConfigError):
        count = len(exc.issues)
        return error_response(
            400,
            f"The configuration has {count} problem{'s' if count != 1 else ''}; "
            "the running configuration is kept.",
            issues=[
                {"file": i.file, "key": i.key, "line": i.line, "message": i.message}
                for i in exc.issues
            ],
        )
    if isinstance(exc, TerminalError):
        return error_response(400, str(exc), reason=exc.reason, field=exc.field)
    if isinstance(exc, ValueError):
        return error_response(400, str(exc))
    if isinstance(exc, TransientError):
        # Something the module depends on is unavailable right now: retrying may work.
        return error_response(503, str(exc))
    return None


class ErrorMiddleware:
    """Turns exceptions from handlers into JSON errors.

    ``ConfigError`` -> 400 with ``issues``; ``TerminalError`` / ``ValueError`` -> 400;
    ``TransientError`` -> 503; anything else -> 500 with the message, logged with its traceback.
    Handled here rather than with Starlette's handler for ``Exception``, which re-raises after
    responding and so makes the server log every error a second time, outside our JSON format.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            response = _error_for(exc)
            path = scope.get("path", "")
            if response is None:
                _log.exception(
                    "Admin request failed.", method=scope.get("method"), path=path, error=str(exc)
                )
                response = error_response(500, f"{type(exc).__name__}: {exc}")
            else:
                _log.warning(
                    "Admin request refused.",
                    method=scope.get("method"),
                    path=path,
                    status=response.status_code,
                    error=str(exc),
                )
            if started:  # too late for a response: the client sees a cut connection
                return
            await response(scope, receive, send)


class BearerAuthMiddleware:
    """Requires ``Authorization: Bearer <token>`` except on ``open_paths``.

    Health and metrics stay open: load balancers and Prometheus probe them without secrets.
    """

    def __init__(self, app: ASGIApp, token: str, open_paths: Collection[str]) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.open_paths:
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers", [])).get(b"authorization", b"")
        # compare_digest: no timing hint of how much of the token was right.
        if not hmac.compare_digest(given, self.expected):
            response = JSONResponse(
                {"error": "This endpoint needs the header 'Authorization: Bearer <token>'."},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


#: The roles of the admin APIs, weakest first.
ROLES: Final = ("viewer", "operator", "admin")
#: POST endpoints that need the admin role (the rest need operator); reads need viewer.
_ADMIN_ONLY: Final = re.compile(r"^/admin/(emergency-stop|dlq/purge|backup/restore)$")


def required_role(method: str, path: str) -> str:
    """The role an admin request needs: viewer to read, operator to act, admin for the rest.

    admin: emergency stop, DLQ purge, restore. operator: every other change (pause, resume,
    drain, reload, replay, job triggers). viewer: every GET.
    """
    if method in ("GET", "HEAD", "OPTIONS"):
        return "viewer"
    return "admin" if _ADMIN_ONLY.match(path) else "operator"


class RoleAuthMiddleware:
    """Bearer tokens with roles (``admin.tokens``); see :func:`required_role`.

    A missing or unknown token is 401, a token whose role is too weak 403. Every configured
    token is compared in constant time (``hmac.compare_digest``), so timing tells nothing about
    which one was close. A client with ``max_failures`` refused tokens within ``window`` seconds
    gets 429 until the window passes, whatever it sends. The token's name becomes the request's
    actor for the audit log (``scope["dps_actor"]``); tokens themselves are never logged.
    """

    def __init__(
        self,
        app: ASGIApp,
        tokens: dict[str, tuple[str, str]],
        open_paths: Collection[str],
        max_failures: int = 10,
        window: float = 60.0,
    ) -> None:
        self.app = app
        self.tokens = [(f"Bearer {t}".encode(), name, role) for t, (name, role) in tokens.items()]
        self.open_paths = frozenset(open_paths)
        self.max_failures = max_failures
        self.window = window
        self._failures: dict[str, list[float]] = {}

    def _identify(self, given: bytes) -> tuple[str, str] | None:
        found = None
        for expected, name, role in self.tokens:
            if hmac.compare_digest(given, expected) and found is None:
                found = (name, role)
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.open_paths:
            await self.app(scope, receive, send)
            return
        import time

        client = (scope.get("client") or ("?", 0))[0]
        now = time.monotonic()
        recent = [t for t in self._failures.get(client, []) if now - t < self.window]
        self._failures[client] = recent
        if len(recent) >= self.max_failures:
            response = JSONResponse(
                {"error": "Too many refused tokens from this address; try again in a minute."},
                status_code=429,
            )
            await response(scope, receive, send)
            return
        given = dict(scope.get("headers", [])).get(b"authorization", b"")
        found = self._identify(given)
        if found is None:
            recent.append(now)
            response = JSONResponse(
                {"error": "This endpoint needs the header 'Authorization: Bearer <token>'."},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        name, role = found
        scope["dps_actor"] = name
        needed = required_role(scope.get("method", "GET"), scope.get("path", ""))
        if ROLES.index(role) < ROLES.index(needed):
            response = JSONResponse(
                {"error": f"This endpoint needs the {needed} role; token {name!r} is {role}."},
                status_code=403,
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


#: Methods whose requests change something, so they are audited.
_READ_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
#: Read endpoints whose use is audited all the same (data leaves the system).
AUDITED_READS: Final = frozenset({"/api/export", "/admin/dlq/export", "/admin/config/export"})

AuditSink = Callable[[str, str, str, dict[str, Any]], None]


class AuditMiddleware:
    """Appends an audit entry for every admin action: who, what, when, from where, outcome.

    Every request that changes something (POST, PUT, PATCH, DELETE), every export and every
    refused token is recorded with ``sink(actor, action, target, details)`` (the state store's
    ``append_audit``): the actor is the ``X-DPS-Actor`` header (operators name themselves),
    else ``token`` when a valid bearer token was given, else ``anonymous``; ``details`` holds the
    client address, the method and path, the status and the outcome. Tokens are never written.
    The entry is appended before the response starts, so whatever the caller was told about is
    in the log; an audit failure is logged, not turned into an error for the caller.
    """

    def __init__(self, app: ASGIApp, sink: AuditSink, module: str) -> None:
        self.app = app
        self.sink = sink
        self.module = module

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "")
        path = scope.get("path", "")
        recorded = False

        async def record(status: int) -> None:
            nonlocal recorded
            if recorded:
                return
            recorded = True
            if method not in _READ_METHODS or path in AUDITED_READS or status in (401, 403, 429):
                await self._record(scope, method, path, status)

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                # Written before the caller sees the answer: an action it was told about is
                # always in the audit log.
                await record(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            await record(500)

    async def _record(self, scope: Scope, method: str, path: str, status: int) -> None:
        from starlette.concurrency import run_in_threadpool

        headers = dict(scope.get("headers", []))
        actor = headers.get(b"x-dps-actor", b"").decode(errors="replace")[:100]
        if scope.get("dps_actor"):
            # The token's holder; a name the caller gives is kept beside it.
            actor = f"{scope['dps_actor']} ({actor})" if actor else str(scope["dps_actor"])
        if not actor:
            has_token = headers.get(b"authorization", b"").startswith(b"Bearer ")
            actor = "token" if has_token and status != 401 else "anonymous"
        client = scope.get("client")
        details = {
            "module": self.module,
            "method": method,
            "path": path,
            "query": scope.get("query_string", b"").decode(errors="replace")[:500],
            "client": f"{client[0]}:{client[1]}" if client else None,
            "status": status,
            "outcome": "success" if status < 400 else ("denied" if status == 401 else "failure"),
        }
        denied = status in (401, 403, 429)
        if denied:
            details["outcome"] = "denied"
        action = "auth.failed" if denied else f"admin{path.replace('/admin', '', 1)}"
        try:
            await run_in_threadpool(self.sink, actor, action, self.module, details)
        except Exception as exc:
            _log.error("Audit entry could not be written.", path=path, error=str(exc))


_PATH_PARAM: Final = re.compile(r"{([^}:]+)}")


class OpenAPIGenerator(BaseSchemaGenerator):
    """An OpenAPI 3 document of every route.

    A docstring with a YAML part after ``---`` is used as the operation, as in Starlette;
    otherwise its first line is the summary and the rest the description.
    """

    def __init__(self, title: str, version: str, description: str = "") -> None:
        self.info = {"title": title, "version": version, "description": description}

    def get_schema(self, routes: list[BaseRoute]) -> dict[str, Any]:
        """The document for ``routes`` (mounts included)."""
        paths: dict[str, dict[str, Any]] = {}
        for endpoint in self.get_endpoints(routes):
            operation = self._operation(endpoint.path, endpoint.func)
            paths.setdefault(endpoint.path, {})[endpoint.http_method] = operation
        return {"openapi": "3.0.3", "info": self.info, "paths": dict(sorted(paths.items()))}

    def _operation(self, path: str, func: Any) -> dict[str, Any]:
        doc = inspect.getdoc(func) or ""
        if "---" in doc:
            parsed = self.parse_docstring(func)
            if parsed:
                return parsed
            doc = doc.split("---", 1)[0]
        summary, _, description = doc.strip().partition("\n")
        operation: dict[str, Any] = {
            "summary": summary.strip() or func.__name__.replace("_", " "),
            "responses": {
                "200": {
                    "description": "JSON result.",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "default": {
                    "description": 'JSON error: {"error": "..."}.',
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
            },
        }
        if description.strip():
            operation["description"] = description.strip()
        params = _PATH_PARAM.findall(path)
        if params:
            operation["parameters"] = [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                for name in params
            ]
        return operation
