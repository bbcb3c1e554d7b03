"""Serving the admin API from a background thread of a module's process.

The module's own work runs in the main thread (or its own threads); uvicorn runs its event loop in
a daemon thread. The socket is bound here, in the caller's thread, so that a port already in use
is an immediate, clear error rather than a ``sys.exit`` inside uvicorn's thread.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp

from dps.admin.tls import TlsSetupError, check_server_files
from dps.core.logging import get_logger

__all__ = ["AdminServer", "AdminServerError"]

_log = get_logger("admin_server")


class AdminServerError(RuntimeError):
    """The admin API could not start (port in use, address not available, start-up timeout)."""


class AdminServer:
    """Runs ``app`` with uvicorn on ``host:port`` in a daemon thread.

    ``port=0`` picks a free port; ``port`` holds the real one after ``start()``. uvicorn's own log
    configuration and access log are off, so every line goes through the JSON logging of the
    process. With ``ssl_certfile`` and ``ssl_keyfile`` it serves HTTPS only (``admin.tls``).
    """

    def __init__(
        self,
        app: ASGIApp,
        host: str = "127.0.0.1",
        port: int = 8080,
        *,
        ssl_certfile: str | Path | None = None,
        ssl_keyfile: str | Path | None = None,
    ) -> None:
        if (ssl_certfile is None) != (ssl_keyfile is None):
            raise AdminServerError("TLS needs both a certificate file and a key file.")
        self.app = app
        self.host = host
        self.port = port
        self.ssl_certfile = ssl_certfile
        self.ssl_keyfile = ssl_keyfile
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:8081`` (``https://`` with TLS)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.ssl_certfile else 'http'}://{host}:{self.port}"

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        # SO_REUSEADDR lets a restarted module bind while old connections sit in TIME_WAIT; it
        # does not let two live servers share the port on Linux.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise AdminServerError(
                f"Admin API cannot listen on {self.host}:{self.port}: {exc.strerror or exc}. "
                "Is another module or process using this port? Set another admin port in "
                "pipeline.yaml."
            ) from exc
        sock.listen(128)
        sock.setblocking(False)
        return sock

    def start(self, timeout: float = 10.0) -> None:
        """Listen, start serving, and return once requests are answered.

        Raises ``AdminServerError`` if the address cannot be bound or the server does not start
        within ``timeout`` seconds.
        """
        if self._thread is not None:
            raise AdminServerError("The admin server is already started.")
        if self.ssl_certfile is not None and self.ssl_keyfile is not None:
            # Checked here so that a wrong file is a clear error, not uvicorn's thread dying.
            try:
                check_server_files(self.ssl_certfile, self.ssl_keyfile)
            except TlsSetupError as exc:
                raise AdminServerError(str(exc)) from exc
        sock = self._bind()
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            lifespan="off",
            ssl_certfile=str(self.ssl_certfile) if self.ssl_certfile else None,
            ssl_keyfile=str(self.ssl_keyfile) if self.ssl_keyfile else None,
            # Idle keep-alive connections are closed at once; a request in progress gets this long.
            timeout_graceful_shutdown=5,
        )
        server = uvicorn.Server(config)
        self._server = server

        def serve() -> None:
            try:
                server.run(sockets=[sock])
            except BaseException as exc:  # SystemExit from uvicorn included
                self._error = exc
                _log.error("Admin API server stopped on an error.", error=repr(exc))

        self._thread = threading.Thread(target=serve, name="admin-api", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive():
                raise AdminServerError(
                    f"Admin API on {self.url} failed to start: {self._error!r}."
                ) from self._error
            if time.monotonic() > deadline:
                self.stop()
                raise AdminServerError(f"Admin API on {self.url} did not start in {timeout} s.")
            time.sleep(0.01)
        _log.debug("Admin API listening.", url=self.url)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting requests, let those in progress finish, and wait for the thread."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(timeout)
        if thread.is_alive():
            server.force_exit = True
            thread.join(2.0)
        self._server = None
        self._thread = None
        _log.debug("Admin API stopped.", url=self.url)

    def __enter__(self) -> AdminServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
