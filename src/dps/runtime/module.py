"""What the four modules share: configuration, state, admin API, a worker loop, and signals.

A module process (``dps alpha CONFIG_DIR`` ...) builds one :class:`ModuleHost` subclass and calls
:meth:`ModuleHost.run`. The worker loop runs :meth:`ModuleHost.step` in its own thread, one batch
per call, while the admin API serves from uvicorn's thread. Pausing makes the loop idle between
batches; SIGTERM finishes the current batch, closes queues and state, and exits 0 — nothing is
acknowledged that is not durable, so stopping at any point loses nothing.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
from starlette.routing import BaseRoute

from dps.config import PipelineConfig, load_config
from dps.core.errors import ConfigError
from dps.core.health import Health, HealthReport, worst
from dps.core.logging import configure_logging, get_logger
from dps.core.record import decode
from dps.queues import Message, Queue, QueueSpec, open_queue
from dps.queues.base import DeadLetterSink
from dps.runtime.lifecycle import RunState
from dps.state import DlqEntry, StateStore, open_state

#: The queues between stages: alpha -> TRANSFORM -> beta -> DELIVERY -> gamma.
TRANSFORM_QUEUE = "transform"
DELIVERY_QUEUE = "delivery"


def resolve_data_dir(config: PipelineConfig, override: str | Path | None = None) -> Path:
    """``--data-dir`` > ``DPS_DATA_DIR`` > ``pipeline.yaml data_dir`` > ``./data``."""
    chosen = (
        override or os.environ.get("DPS_DATA_DIR") or config.pipeline.resolved_data_dir(config.root)
    )
    return Path(chosen or "data").resolve()


#: Allocations between two young-generation collections (CPython's default is 700): a safety net
#: within a step. Most young collections happen between two steps instead (see
#: ``ModuleHost.between_steps``), once ``GC_BETWEEN_STEPS`` objects have outlived their batch.
GC_THRESHOLD = 100_000
GC_BETWEEN_STEPS = 20_000


class ModuleHost:
    """Base of the alpha, beta, gamma and control processes (see the module docstring)."""

    name = "module"
    #: Seconds the loop sleeps after a step that found nothing to do.
    idle_sleep = 0.2
    #: Young-generation threshold of the garbage collector; None keeps the interpreter's.
    gc_threshold: int | None = GC_THRESHOLD

    def __init__(self, config_dir: Path, *, data_dir: Path | None = None) -> None:
        self.config_dir = Path(config_dir)
        if data_dir is not None:
            os.environ["DPS_DATA_DIR"] = str(Path(data_dir).resolve())
        self.config = load_config(self.config_dir)
        #: The running configuration's version (its checksum's first 12 hex digits), written
        #: into DLQ entries; kept here so no batch recomputes it (see ``reload_config``).
        self.config_version = config_version(self.config)
        self.data_dir = resolve_data_dir(self.config, data_dir)
        os.environ.setdefault("DPS_DATA_DIR", str(self.data_dir))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        configure_logging(self.name, self.config.pipeline.logging.level)
        self.log = get_logger("runtime")
        self.state_store: StateStore = open_state(
            self.config.pipeline.state.backend,
            self.config.pipeline.state.backend_settings(),
            self.data_dir,
        )
        self.record_config("config.load", "system")
        self.run_state = RunState.STARTING
        self.started_at = time.time()
        self.last_step_at: float | None = None
        self.last_error: str | None = None
        self.idle = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._resume = threading.Event()
        self._resume.set()
        self._lock = threading.RLock()
        #: Callers waiting for the worker lock from outside the worker (a reload, a pause): a
        #: busy worker lets them in between two steps instead of taking the lock straight back
        #: (a lock is not fair: a worker with a backlog could keep a reload out for good).
        self._outside = 0
        self._outside_count = threading.Lock()
        self._queues: list[Queue] = []
        self._worker: threading.Thread | None = None

    def record_config(self, action: str, actor: str) -> None:
        """Store the loaded configuration as a version and audit it (with its checksum)."""
        from dps.config.models import config_files

        root = self.config.root
        files = {
            p.relative_to(root).as_posix(): p.read_text(errors="replace")
            for p in config_files(root)
        }
        checksum = self.config.checksum()
        content = json.dumps(files, sort_keys=True, indent=1)
        version = self.state_store.save_config_version(self.name, checksum, content, actor)
        self.state_store.append_audit(
            actor, action, self.name, {"checksum": checksum, "version": version}
        )

    # -- queues -------------------------------------------------------------------------------
    def open_queue(self, name: str, *, dead_letter: DeadLetterSink | None = None) -> Queue:
        """Open one of the stage queues with the transport settings of ``pipeline.yaml``."""
        transport = self.config.pipeline.transport
        spec = QueueSpec(
            name=name,
            capacity=transport.capacity,
            visibility_timeout=transport.visibility_timeout_seconds,
            max_attempts=transport.max_attempts,
            dead_letter=dead_letter,
            consumer=f"{name}-workers",
            pack=True,
        )
        queue = open_queue(transport.backend, transport.backend_settings(), self.data_dir, spec)
        self._queues.append(queue)
        return queue

    # -- the work loop --------------------------------------------------------------------------
    def step(self) -> bool:
        """Process one batch; return False when there was nothing to do."""
        return False

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self._resume.is_set():
                self._resume.wait(0.2)
                continue
            try:
                with self._lock:
                    worked = self.step()
                while self._outside and not self._stop.is_set():
                    time.sleep(0.001)  # an outside caller takes the lock now
                self.last_step_at = time.time()
                self.idle = not worked
                if worked:
                    self.between_steps()
                if self.last_error:
                    self.last_error = None
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.log.error("Batch failed; retrying after a pause.", error=self.last_error)
                self._stop.wait(1.0)
                continue
            if not worked:
                self._wake.wait(self.idle_sleep)
                self._wake.clear()

    def between_steps(self) -> None:
        """Collect the young generation now, if enough objects have outlived their step.

        Within a step a batch's records are alive: a collection then walks them all (in
        Beta, a collection every batch or so, about 1.5 µs per record), and they survive into
        the older generations, which later collections walk again. Between two steps the batch
        has been freed by reference counting, so what is left to walk is what outlived it.
        """
        young = gc.get_count()[0]
        if self.gc_threshold is not None and gc.isenabled() and young >= GC_BETWEEN_STEPS:
            gc.collect(0)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """The worker lock, for a caller outside the worker: granted between two steps."""
        with self._outside_count:
            self._outside += 1
        try:
            with self._lock:
                yield
        finally:
            with self._outside_count:
                self._outside -= 1

    def wake(self) -> None:
        """End the worker's idle pause now (new work arrived: a pushed batch, a stop)."""
        self._wake.set()

    def start_worker(self) -> None:
        self.run_state = RunState.RUNNING
        self._worker = threading.Thread(target=self._loop, name=f"{self.name}-worker", daemon=True)
        self._worker.start()

    def stop_worker(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        self._resume.set()
        if self._worker is not None:
            self._worker.join(timeout)
        self.run_state = RunState.STOPPED

    def close(self) -> None:
        for queue in self._queues:
            queue.close()
        self.state_store.close()

    # -- ModuleTarget (the admin API) -----------------------------------------------------------
    def ready(self) -> bool:
        """Serving and working (or paused by an operator): the supervisor may start the next."""
        return self.run_state in (RunState.RUNNING, RunState.PAUSED)

    def status(self) -> dict[str, Any]:
        return {
            "module": self.name,
            "state": self.run_state.value,
            "pid": os.getpid(),
            "uptime_seconds": round(time.time() - self.started_at, 3),
            "idle": self.idle,
            "last_error": self.last_error,
            "queues": self.queue_depths(),
        }

    def health(self) -> HealthReport:
        checks: dict[str, dict[str, Any]] = {}
        status = Health.HEALTHY
        worker_alive = self._worker is None or self._worker.is_alive()
        checks["worker"] = {"ok": worker_alive, "state": self.run_state.value}
        if not worker_alive and self.run_state == RunState.RUNNING:
            status = Health.UNHEALTHY
        if self.last_error:
            checks["last_batch"] = {"ok": False, "error": self.last_error}
            status = worst(status, Health.DEGRADED)
        return HealthReport(status, checks)

    def export_config(self) -> dict[str, Any]:
        return self.config.export()

    def reload_config(self) -> dict[str, Any]:
        new = load_config(self.config_dir)  # raises ConfigError: the running config is kept
        with self.exclusive():
            self.apply_config(new)
            self.config = new
            self.config_version = config_version(new)
        self.record_config("config.reload", "admin-api")
        self.log.info("Configuration reloaded.", checksum=new.checksum())
        return {"status": "reloaded", "checksum": new.checksum()}

    def apply_config(self, new: PipelineConfig) -> None:
        """Swap in a validated configuration (subclasses rebuild what depends on it)."""

    def pause(self) -> None:
        self._resume.clear()
        self.run_state = RunState.PAUSED
        # Return once the batch in flight (if any) is done: whoever asked for the pause may then
        # read a quiescent state (dps backup create copies the files right after).
        with self.exclusive():
            pass
        self.log.info("Processing paused.")

    def resume(self) -> None:
        self._resume.set()
        self.run_state = RunState.RUNNING
        self.log.info("Processing resumed.")

    def start(self) -> None:
        self.resume()

    def emergency_stop(self) -> None:
        self.pause()
        self.run_state = RunState.STOPPED
        self.log.warning("Emergency stop: processing halted; in-flight batches stay queued.")

    def drain(self) -> dict[str, Any]:
        return {"module": self.name, "queues": self.queue_depths()}

    def queue_depths(self) -> dict[str, int]:
        return {}

    def routes(self) -> list[BaseRoute]:
        return []

    # -- process ------------------------------------------------------------------------------
    def run(self, *, host: str | None = None, port: int | None = None, worker: bool = True) -> int:
        """Serve the admin API and run the worker until SIGTERM/SIGINT; returns the exit code."""
        from dps.admin.app import build_app
        from dps.admin.server import AdminServer
        from dps.admin.tls import server_files

        admin = self.config.pipeline.admin
        token = admin.auth_token_ref.resolve() if admin.auth_token_ref else None
        bind_host = host or admin.bind
        bind_port = port if port is not None else 8080
        app = build_app(
            self, auth_token=token, audit=self.state_store.append_audit, tokens=admin.token_roles()
        )
        tls = server_files(self.config)
        server = AdminServer(
            app,
            bind_host,
            bind_port,
            ssl_certfile=tls[0] if tls else None,
            ssl_keyfile=tls[1] if tls else None,
        )
        stop = threading.Event()

        def on_signal(signum: int, _frame: Any) -> None:
            self.log.info("Stopping.", signal=signal.Signals(signum).name)
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        # What start-up built (configuration, compiled rules, caches) lives as long as the
        # process: move it out of the collector's way, and collect the young generation less
        # often, since a batch allocates thousands of short-lived objects (fewer pauses).
        gc.freeze()
        if self.gc_threshold is not None:
            gc.set_threshold(self.gc_threshold, 10, 10)
        server.start()
        self.log.info("Admin API listening.", url=server.url)
        if worker:
            self.start_worker()
        else:
            self.run_state = RunState.RUNNING
        try:
            while not stop.wait(0.5):
                pass
        finally:
            self.run_state = RunState.DRAINING
            self.stop_worker()
            server.stop()
            self.close()
            self.log.info("Stopped.")
        return 0


def config_version(config: PipelineConfig) -> str:
    """The version DLQ entries record of a configuration: its checksum's first 12 hex digits.

    The loader computes the checksum once, from the bytes it read, and the configuration keeps
    it; the full checksum is what ``config_versions`` stores (``dps config history`` shows these
    12 digits)."""
    return config.checksum()[:12]


def dlq_from_message(
    module: str, msg: Message, reason: str, *, stage: str, config_version: str | None = None
) -> DlqEntry:
    """A DLQ entry for a queue message that ran out of attempts (its record, if it decodes).

    ``stage`` is the stage that consumes the queue (``transform`` for Beta's transform queue,
    ``route`` for Gamma's delivery queue): the one that never got the message through.
    """
    try:
        record = decode(msg.body)
        return DlqEntry(
            module,
            record.record_id,
            record.source_id,
            record.origin,
            reason,
            f"Delivered {msg.attempts} times without success.",
            msg.body,
            error_class="transient",
            attempts=msg.attempts,
            stage=stage,
            correlation_id=record.correlation_id,
            config_version=config_version,
        )
    except msgspec.DecodeError:
        return undecodable_entry(
            module,
            msg,
            reason,
            "Undecodable message.",
            stage=stage,
            config_version=config_version,
            attempts=msg.attempts,
        )


def undecodable_entry(
    module: str,
    msg: Message,
    reason: str,
    error: str,
    *,
    stage: str,
    config_version: str | None,
    **fields: Any,
) -> DlqEntry:
    """A DLQ entry for a message whose body is not a record: kept raw, under its message id."""
    return DlqEntry(
        module,
        msg.msg_id,
        "",
        "",
        reason,
        error,
        msg.body,
        stage=stage,
        config_version=config_version,
        **fields,
    )


__all__ = [
    "DELIVERY_QUEUE",
    "TRANSFORM_QUEUE",
    "ConfigError",
    "ModuleHost",
    "config_version",
    "dlq_from_message",
    "resolve_data_dir",
    "undecodable_entry",
]
