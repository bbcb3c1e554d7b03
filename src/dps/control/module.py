"""The control service (``dps control``, port 8080 in the all-in-one).

So far it serves what the run summary and operators need across modules: the durable accounting
of the pipeline (``GET /api/accounting``: ingested, duplicates, DLQ per module, delivered per
destination — read from the state store, so it is right after any crash or restart) and the
depth of both stage queues. The scheduler, audit, lineage and backup jobs come with the
operations-plane work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from dps.runtime.module import DELIVERY_QUEUE, TRANSFORM_QUEUE, ModuleHost


class ControlModule(ModuleHost):
    """Cross-module views (see the module docstring)."""

    name = "control"

    def __init__(self, config_dir: Path, *, data_dir: Path | None = None) -> None:
        super().__init__(config_dir, data_dir=data_dir)
        self.transform = self.open_queue(TRANSFORM_QUEUE)
        self.delivery = self.open_queue(DELIVERY_QUEUE)

    def queue_depths(self) -> dict[str, int]:
        return {TRANSFORM_QUEUE: self.transform.depth(), DELIVERY_QUEUE: self.delivery.depth()}

    def accounting(self) -> dict[str, Any]:
        """The durable counts, plus what they imply (validated, transformed, in flight)."""
        acc = self.state_store.accounting()
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
        return status

    def routes(self) -> list[BaseRoute]:
        async def accounting(_: Request) -> JSONResponse:
            from starlette.concurrency import run_in_threadpool

            return JSONResponse(await run_in_threadpool(self.accounting))

        return [Route("/api/accounting", accounting)]
