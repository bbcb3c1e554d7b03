"""The process supervisor of the all-in-one deployment (``dps run CONFIG_DIR``).

It starts the modules as child processes in the order given (the caller passes control, gamma,
beta, alpha: runbook G.2 starts the consumers before their producers), waits for each to answer
its readiness URL before starting the next, restarts a child that dies, and stops them in reverse
order (alpha first: runbook G.1 stops ingestion first and lets the rest drain).

Why not systemd, supervisord or circus: the start order with readiness gates, the reverse stop
order with a grace period each and the restart backoff are thirty lines of code here, while any of
those tools would be one more thing to install and configure next to a Python package.

Every start, readiness wait, restart and stop happens in one long-lived thread. That matters on
Linux: a child is started with ``PR_SET_PDEATHSIG``, which fires when the *thread* that forked it
exits, so children forked from a short-lived thread would be killed early. With one thread the
signal means what we want: the supervisor is gone (even by ``kill -9``), so the child gets SIGTERM
and no orphan is left. Each child also gets its own process group, so the terminal's Ctrl-C
reaches the supervisor only and the stop order stays ours, and the stop signal reaches whatever
the child itself started.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Final

import httpx

from dps.core.logging import ComponentLogger, get_logger

__all__ = ["ChildSpec", "Supervisor", "SupervisorError", "describe_exit"]

_PR_SET_PDEATHSIG: Final = 1


class SupervisorError(RuntimeError):
    """A child could not be started or did not become ready; the message names it and why."""


@dataclass(slots=True)
class ChildSpec:
    """One child process.

    ``env`` is added to the supervisor's environment (``None``: inherit it unchanged).
    ``ready_url``, when set, is polled until it answers 200 before the next child starts;
    ``ready_verify`` is httpx's certificate check for it (an ``https`` URL of ``admin.tls``).
    """

    name: str
    argv: list[str]
    env: dict[str, str] | None = None
    ready_url: str | None = None
    ready_timeout: float = 60.0
    ready_verify: ssl.SSLContext | bool = True
    cwd: str | None = None
    #: Where the child's stdout and stderr go (appended); ``None``: inherited.
    log_path: str | None = None


@dataclass(slots=True)
class _Child:
    spec: ChildSpec
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    #: Crashes in a row without 60 s of uptime in between; sets the next backoff.
    failures: int = 0
    restart_at: float | None = None
    last_exit: str | None = None
    ready: bool = False
    start_times: list[float] = field(default_factory=list)


def describe_exit(returncode: int) -> str:
    """``exit code 3`` or ``signal SIGKILL`` (Popen reports a signal as a negative code)."""
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


def _pdeathsig_preexec() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when the supervisor dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    # Resolved here, before any fork: the child between fork and exec must not import or load.
    prctl = ctypes.CDLL(libc_name, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        # The supervisor may have died between fork and prctl: then nobody would signal us.
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


class Supervisor:
    """Starts, watches, restarts and stops the children.

    ``restarts`` counts restarts per child name. Backoff before a restart starts at
    ``backoff_initial`` seconds and doubles up to ``backoff_max``; it starts over once a child has
    run ``stable_after`` seconds. ``grace_period`` is how long a child may take to exit after
    SIGTERM before it gets SIGKILL.
    """

    def __init__(
        self,
        children: Sequence[ChildSpec],
        *,
        log: ComponentLogger | None = None,
        grace_period: float = 30.0,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
        stable_after: float = 60.0,
        poll_interval: float = 0.1,
    ) -> None:
        names = [spec.name for spec in children]
        if len(set(names)) != len(names):
            raise ValueError(f"Child names must be unique; got {names}.")
        self._children = [_Child(spec) for spec in children]
        self.log = log or get_logger("supervisor")
        self.grace_period = grace_period
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.stable_after = stable_after
        self.poll_interval = poll_interval
        self._stop = threading.Event()
        self._started = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._preexec = _pdeathsig_preexec()

    # -- public surface -------------------------------------------------------------------------

    @property
    def restarts(self) -> dict[str, int]:
        """Restarts so far, per child name."""
        return {child.spec.name: child.restarts for child in self._children}

    def pid(self, name: str) -> int | None:
        """The pid of the running child ``name``, or ``None`` while it is down."""
        child = self._child(name)
        process = child.process
        return process.pid if process is not None and process.poll() is None else None

    def start_times(self, name: str) -> list[float]:
        """``time.monotonic()`` of each start of child ``name`` (the first, then each restart)."""
        with self._lock:
            return list(self._child(name).start_times)

    def status(self) -> list[dict[str, Any]]:
        """One entry per child: name, pid, running, ready, uptime, restarts, last exit."""
        now = time.monotonic()
        out = []
        with self._lock:
            for child in self._children:
                process = child.process
                running = process is not None and process.poll() is None
                out.append(
                    {
                        "name": child.spec.name,
                        "pid": process.pid if running and process is not None else None,
                        "running": running,
                        "ready": child.ready and running,
                        "uptime_seconds": round(now - child.started_at, 3) if running else None,
                        "restarts": child.restarts,
                        "last_exit": child.last_exit,
                    }
                )
        return out

    def start(self) -> None:
        """Start the children in order, each ready before the next; return when all are up.

        Raises ``SupervisorError`` naming the child that exited or did not become ready; the
        children already started are then stopped again.
        """
        if self._thread is not None:
            raise SupervisorError("The supervisor is already started.")
        self._thread = threading.Thread(target=self._main, name="supervisor", daemon=True)
        self._thread.start()
        while not self._started.wait(0.1):
            if not self._thread.is_alive():
                break
        if self._error is not None:
            self._thread.join()
            raise SupervisorError(str(self._error)) from self._error

    def stop(self) -> None:
        """Stop the children in reverse order: SIGTERM, ``grace_period``, then SIGKILL."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            # Joined in slices so that signal handlers of the main thread still run.
            while thread.is_alive():
                thread.join(0.2)

    def wait(self) -> None:
        """Block until the supervisor has stopped (after ``stop()`` or a failed start)."""
        thread = self._thread
        while thread is not None and thread.is_alive():
            thread.join(0.2)

    def run_forever(self) -> int:
        """Start, supervise until SIGTERM or SIGINT, then stop; the process's exit code.

        Call it from the main thread (signal handlers can only be installed there). Returns 0
        after a requested stop and 1 when the children could not be started.
        """

        def request_stop(signum: int, frame: FrameType | None) -> None:
            self.log.info("Stop requested.", signal=signal.Signals(signum).name)
            self._stop.set()

        previous = {
            sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            try:
                self.start()
            except SupervisorError as exc:
                self.log.error("Pipeline did not start.", error=str(exc))
                return 1
            self.wait()
            return 0
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    # -- the supervisor thread ------------------------------------------------------------------

    def _child(self, name: str) -> _Child:
        for child in self._children:
            if child.spec.name == name:
                return child
        raise KeyError(f"No child named {name!r}.")

    def _main(self) -> None:
        try:
            try:
                for child in self._children:
                    if self._stop.is_set():
                        break
                    self._spawn(child)
                    self._wait_ready(child)
            except Exception as exc:
                self._error = exc
                return
            finally:
                self._started.set()
            self.log.info("All children started.", children=[c.spec.name for c in self._children])
            while not self._stop.wait(self.poll_interval):
                self._check_children()
        finally:
            self._stop_all()

    def _spawn(self, child: _Child) -> None:
        spec = child.spec
        env = None if spec.env is None else {**os.environ, **spec.env}
        try:
            output = open(spec.log_path, "ab") if spec.log_path else None  # noqa: SIM115
        except OSError as exc:
            raise SupervisorError(f"Child {spec.name!r}: cannot open its log: {exc}.") from exc
        try:
            process = subprocess.Popen(
                spec.argv,
                env=env,
                cwd=spec.cwd,
                process_group=0,
                preexec_fn=self._preexec,
                close_fds=True,
                stdout=output,
                stderr=output,
            )
        except OSError as exc:
            raise SupervisorError(f"Child {spec.name!r} could not be started: {exc}.") from exc
        finally:
            if output is not None:
                output.close()  # the child holds its own copy of the descriptor
        with self._lock:
            child.process = process
            child.started_at = time.monotonic()
            child.ready = spec.ready_url is None
            child.restart_at = None
            child.start_times.append(child.started_at)
        self.log.info("Child started.", child=spec.name, pid=process.pid, argv=spec.argv)

    def _wait_ready(self, child: _Child) -> None:
        spec, process = child.spec, child.process
        assert process is not None
        if spec.ready_url is None:
            return
        deadline = time.monotonic() + spec.ready_timeout
        last_error = "no answer yet"
        with httpx.Client(timeout=2.0, verify=spec.ready_verify) as client:
            while not self._stop.is_set():
                code = process.poll()
                if code is not None:
                    child.last_exit = describe_exit(code)
                    raise SupervisorError(
                        f"Child {spec.name!r} exited with {child.last_exit} before it was ready."
                    )
                try:
                    response = client.get(spec.ready_url)
                    if response.status_code == 200:
                        child.ready = True
                        self.log.info("Child ready.", child=spec.name, url=spec.ready_url)
                        return
                    last_error = f"HTTP {response.status_code}"
                except httpx.HTTPError as exc:
                    last_error = str(exc) or type(exc).__name__
                if time.monotonic() > deadline:
                    raise SupervisorError(
                        f"Child {spec.name!r} was not ready within {spec.ready_timeout} s "
                        f"({spec.ready_url}: {last_error})."
                    )
                self._stop.wait(0.1)

    def _check_children(self) -> None:
        now = time.monotonic()
        for child in self._children:
            process = child.process
            if child.restart_at is not None:
                if now >= child.restart_at:
                    self._restart(child)
                continue
            if process is None:
                continue
            code = process.poll()
            if code is None:
                if not child.ready and child.spec.ready_url is not None:
                    self._probe_ready(child)
                continue
            uptime = now - child.started_at
            if uptime >= self.stable_after:
                child.failures = 0
            delay = min(self.backoff_initial * 2**child.failures, self.backoff_max)
            child.failures += 1
            with self._lock:
                child.last_exit = describe_exit(code)
                child.restart_at = now + delay
                child.ready = False
            self.log.error(
                "Child exited; restarting it.",
                child=child.spec.name,
                reason=child.last_exit,
                uptime_seconds=round(uptime, 3),
                restart_in_seconds=delay,
            )

    def _restart(self, child: _Child) -> None:
        try:
            self._spawn(child)
        except SupervisorError as exc:
            delay = min(self.backoff_initial * 2**child.failures, self.backoff_max)
            child.failures += 1
            child.restart_at = time.monotonic() + delay
            self.log.error("Child restart failed.", child=child.spec.name, error=str(exc))
            return
        with self._lock:
            child.restarts += 1

    def _probe_ready(self, child: _Child) -> None:
        # After a restart readiness is only reported, not waited for: the others keep running.
        assert child.spec.ready_url is not None
        with contextlib.suppress(httpx.HTTPError):
            answer = httpx.get(child.spec.ready_url, timeout=0.5, verify=child.spec.ready_verify)
            if answer.status_code == 200:
                child.ready = True
                self.log.info("Child ready.", child=child.spec.name, url=child.spec.ready_url)

    def _stop_all(self) -> None:
        for child in reversed(self._children):
            child.restart_at = None
            self._stop_child(child)
        self.log.info("All children stopped.")

    def _stop_child(self, child: _Child) -> None:
        process = child.process
        if process is None or process.poll() is not None:
            return
        name = child.spec.name
        self.log.info("Stopping child.", child=name, pid=process.pid)
        self._signal(process, signal.SIGTERM)
        try:
            code = process.wait(self.grace_period)
        except subprocess.TimeoutExpired:
            self.log.warning(
                "Child did not stop in its grace period; killing it.",
                child=name,
                grace_period_seconds=self.grace_period,
            )
            self._signal(process, signal.SIGKILL)
            code = process.wait()
        with self._lock:
            child.last_exit = describe_exit(code)
            child.ready = False
        self.log.info("Child stopped.", child=name, reason=child.last_exit)

    @staticmethod
    def _signal(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        # The whole group: a child's own subprocesses stop with it.
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            process.send_signal(sig)
