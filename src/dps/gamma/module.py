"""Module Gamma: route records from the delivery queue and deliver them, with retries and a DLQ.

For one batch: route each record; drop from the plan what the delivery log says is already
delivered (a redelivered batch after a crash); deliver per destination in chunks of
``delivery.batch_size``, retrying transient failures ``delivery.retry_count`` times with
exponential backoff from ``retry_delay_ms``; record outcomes in the delivery log; send refused
records to the Gamma DLQ. The batch is acknowledged on the queue once every record is delivered
everywhere it is routed or is in the DLQ. Records of a destination that still fails after its
retries are handed back to the queue (nack) and come again later; after the transport's
``max_attempts`` they go to the DLQ with reason ``max_attempts_exceeded``.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from dps.config import PipelineConfig
from dps.config.models import DestinationConfig
from dps.core import registry
from dps.core.errors import TransientError
from dps.core.metrics import PIPELINE_END_TO_END_LATENCY_SECONDS
from dps.core.record import Record, decode, encode
from dps.gamma import metrics as m
from dps.gamma.destinations.base import Destination
from dps.gamma.routing import Router
from dps.queues import Message
from dps.runtime.module import DELIVERY_QUEUE, ModuleHost, dlq_from_message
from dps.state import DeliveryOutcome, DlqEntry


class GammaModule(ModuleHost):
    """The delivery stage (see the module docstring)."""

    name = "gamma"
    idle_sleep = 0.05

    def __init__(self, config_dir: Path, *, data_dir: Path | None = None) -> None:
        super().__init__(config_dir, data_dir=data_dir)
        self.inbox = self.open_queue(DELIVERY_QUEUE, dead_letter=self._dead_letter)
        self.destinations: dict[str, Destination] = {}
        self.apply_config(self.config)

    def apply_config(self, new: PipelineConfig) -> None:
        router = Router(
            new.gamma.routes, new.gamma.destinations, new.gamma.settings.default_destination
        )
        fresh: dict[str, Destination] = {}
        try:
            for dest_id, dc in new.gamma.destinations.items():
                if dc.enabled:
                    fresh[dest_id] = self._open_destination(dc)
        except Exception:
            for dest in fresh.values():
                dest.close()
            raise
        old, self.destinations, self.router = self.destinations, fresh, router
        for dest in old.values():
            dest.close()

    @staticmethod
    def _open_destination(dc: DestinationConfig) -> Destination:
        destination: Destination = registry.get("destinations", dc.destination_type)(
            dc.destination_id, dc.spec
        )
        destination.open()
        m.GAMMA_DESTINATION_STATUS.labels(destination=dc.destination_id).set(1)
        return destination

    def _dead_letter(self, messages: Sequence[Message], reason: str) -> None:
        self.state_store.add_dlq_entries(
            [dlq_from_message("gamma", msg, reason) for msg in messages]
        )

    # -- the work -------------------------------------------------------------------------------
    def step(self) -> bool:
        settings = self.config.gamma.settings
        lease = self.inbox.lease(settings.OUTPUT_BATCH_SIZE, wait=0.5)
        if not lease:
            m.GAMMA_PENDING_DELIVERIES.set(0)
            return False
        m.GAMMA_PENDING_DELIVERIES.set(len(lease))
        dlq: list[DlqEntry] = []
        plan: dict[str, list[Record]] = defaultdict(list)
        records: dict[str, Record] = {}
        for msg in lease.messages:
            try:
                record = decode(msg.body)
            except msgspec.DecodeError as exc:
                dlq.append(
                    DlqEntry("gamma", msg.msg_id, "", "", "decode_error", str(exc), msg.body)
                )
                continue
            decision = self.router.route(record)
            if decision.reason is not None:
                dlq.append(
                    DlqEntry(
                        "gamma",
                        record.record_id,
                        record.source_id,
                        record.origin,
                        decision.reason,
                        decision.detail,
                        encode(record),
                    )
                )
                continue
            records[record.record_id] = record
            for dest in decision.destinations:
                record.touched("gamma", f"route:{dest}")
                plan[dest].append(record)
                m.GAMMA_RECORDS_ROUTED_TOTAL.labels(destination=dest).inc()

        retry_later: set[str] = set()
        outcomes: list[DeliveryOutcome] = []
        for dest_id, batch in plan.items():
            done = self.state_store.delivered_records([r.record_id for r in batch], dest_id)
            todo = [r for r in batch if r.record_id not in done]
            failed = self._deliver(dest_id, todo, outcomes, dlq)
            retry_later.update(failed)
        if dlq:
            self.state_store.add_dlq_entries(dlq)
        if outcomes:
            self.state_store.record_deliveries(outcomes)
        now = time.time()
        for outcome in outcomes:
            if outcome.status == "delivered":
                PIPELINE_END_TO_END_LATENCY_SECONDS.observe(
                    max(0.0, now - records[outcome.record_id].ingested_at)
                )
        if retry_later:
            self.inbox.nack(lease, sorted(retry_later), reason="destination_unavailable", delay=1.0)
            self.inbox.ack(
                lease, [msg.msg_id for msg in lease.messages if msg.msg_id not in retry_later]
            )
        else:
            self.inbox.ack(lease)
        m.GAMMA_DLQ_SIZE.set(self.state_store.dlq_counts().get("gamma", 0))
        return True

    def _deliver(
        self, dest_id: str, todo: list[Record], outcomes: list[DeliveryOutcome], dlq: list[DlqEntry]
    ) -> set[str]:
        """Deliver to one destination; returns the ids to retry later."""
        if not todo:
            return set()
        dc = self.config.gamma.destinations[dest_id]
        destination = self.destinations[dest_id]
        size = dc.delivery.batch_size
        failed: set[str] = set()
        for start in range(0, len(todo), size):
            chunk = todo[start : start + size]
            rejected = self._with_retries(dest_id, destination, dc, chunk)
            if rejected is None:
                failed.update(r.record_id for r in chunk)
                continue
            refused = {r.record_id for r, _ in rejected}
            for record, error in rejected:
                dlq.append(
                    DlqEntry(
                        "gamma",
                        record.record_id,
                        record.source_id,
                        record.origin,
                        error.reason,
                        str(error),
                        encode(record),
                        destination_id=dest_id,
                    )
                )
                outcomes.append(
                    DeliveryOutcome(record.record_id, dest_id, "failed", error=str(error))
                )
            delivered = [r for r in chunk if r.record_id not in refused]
            outcomes.extend(DeliveryOutcome(r.record_id, dest_id, "delivered") for r in delivered)
            m.GAMMA_RECORDS_DELIVERED_TOTAL.labels(destination=dest_id).inc(len(delivered))
            if refused:
                m.GAMMA_DELIVERY_FAILURES_TOTAL.labels(destination=dest_id).inc(len(refused))
        return failed

    def _with_retries(
        self, dest_id: str, destination: Destination, dc: DestinationConfig, chunk: list[Record]
    ) -> list[Any] | None:
        """Deliver one chunk with retries; ``None`` when it still fails after them."""
        delay = dc.delivery.retry_delay_ms / 1000.0
        for attempt in range(dc.delivery.retry_count + 1):
            started = time.perf_counter()
            try:
                rejected = destination.deliver(chunk)
            except TransientError as exc:
                m.GAMMA_DELIVERY_FAILURES_TOTAL.labels(destination=dest_id).inc(len(chunk))
                m.GAMMA_DESTINATION_STATUS.labels(destination=dest_id).set(0)
                self.log.warning(
                    "Delivery failed; will retry.",
                    destination=dest_id,
                    attempt=attempt + 1,
                    error=str(exc),
                )
                if attempt < dc.delivery.retry_count:
                    time.sleep(delay * (2**attempt))
                continue
            m.GAMMA_DELIVERY_DURATION_SECONDS.labels(destination=dest_id).observe(
                time.perf_counter() - started
            )
            m.GAMMA_DESTINATION_STATUS.labels(destination=dest_id).set(1)
            return rejected
        return None

    # -- admin ----------------------------------------------------------------------------------
    def queue_depths(self) -> dict[str, int]:
        return {DELIVERY_QUEUE: self.inbox.depth()}

    def status(self) -> dict[str, Any]:
        status = super().status()
        status["destinations"] = sorted(self.destinations)
        return status

    def close(self) -> None:
        for dest in self.destinations.values():
            dest.close()
        super().close()
