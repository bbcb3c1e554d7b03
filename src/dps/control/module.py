"""The control service (``dps control``, port 8080 in the all-in-one).

It serves what operators need across modules:

- the durable accounting of the pipeline (``GET /api/accounting``) and both stage queues' depth;
- the scheduler with the manual's job catalog (``/admin/jobs/...``, runbook F; see
  :mod:`dps.control.scheduler` and docs/jobs.md);
- the audit log export (``GET /api/export?since=24h&format=json``, runbook L.1) and its hash
  chain check (``GET /api/audit/verify``);
- the monitoring summaries of runbook J.3 (``/api/health/summary``, ``/api/throughput/summary``,
  ``/api/errors/summary``), the pipeline's status aggregated from the modules' health;
- configuration history and drift (``/api/config/history``, ``/api/config/drift``).

It reaches alpha, beta and gamma only through their admin APIs (:mod:`dps.control.modules`).
"""

from __future__ import annotations

import copy
import threading
import time
from pathlib import Path
from typing import Any

from starlette.routing import BaseRoute

from dps.admin.tls import client_verify
from dps.config import PipelineConfig
from dps.control.jobs import JobContext
from dps.control.modules import ModuleClient, module_urls
from dps.control.monitoring import ThroughputSampler
from dps.control.scheduler import Scheduler
from dps.runtime.module import DELIVERY_QUEUE, TRANSFORM_QUEUE, ModuleHost

#: Seconds between two throughput samples.
SAMPLE_EVERY = 5.0

#: The durable counts are read again only after this many times what the last read cost (and
#: never kept longer than ACCOUNTING_MAX_AGE s): with several destinations the distinct delivered
#: records are still counted by a scan of the delivery log, and every poller of /api/accounting
#: (dps run's progress, dps bench, dashboards) shares a read.
ACCOUNTING_COST_FACTOR = 5.0
ACCOUNTING_MAX_AGE = 5.0


class ControlModule(ModuleHost):
    """Cross-module views, the scheduler and the operations APIs (see the module docstring)."""

    name = "control"

    def __init__(self, config_dir: Path, *, data_dir: Path | None = None) -> None:
        super().__init__(config_dir, data_dir=data_dir)
        self.transform = self.open_queue(TRANSFORM_QUEUE)
        self.delivery = self.open_queue(DELIVERY_QUEUE)
        admin = self.config.pipeline.admin
        token = admin.client_token()
        self.modules = ModuleClient(
            module_urls(self.config), token, verify=client_verify(self.config)
        )
        self._accounting_lock = threading.Lock()
        #: (read at, seconds the read took, counts) of the last durable read.
        self._accounting: tuple[float, float, dict[str, Any]] | None = None
        self.sampler = ThroughputSampler(self.durable_counts)
        self._last_sample = 0.0
        self.scheduler = Scheduler(
            self.config,
            self.state_store,
            self._job_context,
            self.data_dir / "scheduler.json",
            audit=self.state_store.append_audit,
        )

    def _job_context(self, job_name: str, run_id: str) -> JobContext:
        return JobContext(
            job_name=job_name,
            run_id=run_id,
            store=self.state_store,
            modules=self.modules,
            config=self.config,
            config_dir=self.config_dir,
            data_dir=self.data_dir,
        )

    # -- the worker: throughput samples ------------------------------------------------------
    def step(self) -> bool:
        now = time.time()
        if now - self._last_sample >= SAMPLE_EVERY:
            self._last_sample = now
            self.sampler.sample(now)
        return False

    def start_worker(self) -> None:
        super().start_worker()
        self.scheduler.start()

    def stop_worker(self, timeout: float = 30.0) -> None:
        self.scheduler.stop()
        super().stop_worker(timeout)

    def close(self) -> None:
        self.modules.close()
        super().close()

    def apply_config(self, new: PipelineConfig) -> None:
        self.scheduler.apply_config(new)

    # -- views ------------------------------------------------------------------------------------
    def queue_depths(self) -> dict[str, int]:
        return {TRANSFORM_QUEUE: self.transform.depth(), DELIVERY_QUEUE: self.delivery.depth()}

    def durable_counts(self) -> dict[str, Any]:
        """The state store's accounting, shared by concurrent callers (see ACCOUNTING_*)."""
        with self._accounting_lock:
            now = time.monotonic()
            if self._accounting is not None:
                read_at, cost, counts = self._accounting
                if now - read_at < min(ACCOUNTING_MAX_AGE, ACCOUNTING_COST_FACTOR * cost):
                    return copy.deepcopy(counts)
            counts = self.state_store.accounting()
            self._accounting = (now, time.monotonic() - now, counts)
            return copy.deepcopy(counts)

    def accounting(self) -> dict[str, Any]:
        """The durable counts, plus what they imply (validated, transformed, in flight)."""
        acc = self.durable_counts()
        dlq = acc.get("dlq", {})
        depths = self.queue_depths()
        validated = acc["ingested"] - acc["duplicates"] - dlq.get("alpha", 0)
        acc["validated"] = validated
        acc["transformed"] = validated - dlq.get("beta", 0) - depths[TRANSFORM_QUEUE]
        acc["in_flight"] = depths
        acc["dlq_total"] = sum(dlq.values())
        return acc

    def status(self) -> dict[str, Any]:
        status = super().status()
        status["accounting"] = self.accounting()
        status["jobs"] = {
            "schedule_enabled": self.scheduler.schedule_enabled,
            "running": [n for n, j in self.scheduler.jobs.items() if j.running_run_id],
            "suspended": [n for n, j in self.scheduler.jobs.items() if j.suspended],
        }
        return status

    def routes(self) -> list[BaseRoute]:
        from dps.control.admin import control_routes

        return control_routes(self)
