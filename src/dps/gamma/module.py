"""Module Gamma: route records from the delivery queue into per-destination spools, deliver each.

Two kinds of thread, so that one destination never stalls another:

- the **router** (the host's worker loop, :meth:`GammaModule.step`) leases a batch from the
  delivery queue, routes every record (fan-out; no match: the default destination or the DLQ as
  ``no_route``; an unauthorized source: the DLQ as ``unauthorized``), hands each destination its
  records, writes the DLQ entries and only then acks the batch. A destination that is healthy
  (breaker CLOSED) with an empty spool is delivered directly, one attempt, the destinations of a
  batch concurrently; anything else — and whatever a direct attempt could not deliver — goes
  into the destination's durable spool. A crash in between hands the same records over again:
  spool puts are idempotent on the record id, and the delivery log skips what is already
  delivered.
- one **delivery worker per enabled destination** (:class:`~dps.gamma.delivery.DestinationWorker`)
  leases from that destination's spool, batches, retries by error class, drives the circuit
  breaker and writes outcomes (``delivery_log``) and DLQ entries. A record leaves a spool only once
  it is delivered or in the DLQ, so a record is off Gamma's hands only when every destination it
  is routed to has acknowledged it or dead-lettered it.

Backpressure: the router stops leasing while any enabled destination's spool is within one batch
of the transport ``capacity``; the delivery queue then fills and Beta's puts wait.

Reload (``/admin/config/reload``) rebuilds the router and reconciles the workers: a new or newly
enabled destination gets a worker, a disabled or removed one is stopped (its spool keeps what
was queued for it until it is enabled again), a changed one is restarted with its new settings.
Circuit breakers and statistics survive a reload.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any

import msgspec
from starlette.routing import BaseRoute

from dps.config import PipelineConfig
from dps.config.models import DestinationConfig, OutputFormat
from dps.core import registry
from dps.core.health import Health, HealthReport, combine, evaluate
from dps.core.metrics import MODULE_LATENCY_SECONDS, observe_n
from dps.core.record import LineageSharingDecoder, LineageStep, Record, encode
from dps.gamma import metrics as m
from dps.gamma.circuit_breaker import OPEN, CircuitBreaker
from dps.gamma.delivery import SPOOL_MAX_ATTEMPTS, DestinationStats, DestinationWorker, spool_name
from dps.gamma.destinations.base import Destination
from dps.gamma.formats import Shaper
from dps.gamma.routing import Router
from dps.queues import Lease, Message, Queue, QueueSpec, open_queue
from dps.runtime.module import (
    DELIVERY_QUEUE,
    ModuleHost,
    config_version,
    dlq_from_message,
    undecodable_entry,
)
from dps.state import DlqEntry
from dps.state.base import DlqFilter

#: The window health grades delivery success and acknowledgement timeouts over.
HEALTH_WINDOW_S = 300.0


def build_destination(dc: DestinationConfig, output: OutputFormat | None = None) -> Destination:
    """Build and open the destination plugin of one destination file (and its output format)."""
    destination: Destination = registry.get("destinations", dc.destination_type)(
        dc.destination_id, dc.spec
    )
    destination.timeout_s = dc.delivery.timeout_ms / 1000.0
    if output is not None:
        destination.output = Shaper(output)
    destination.open()
    return destination


def destination_factory(config: PipelineConfig) -> Callable[[DestinationConfig], Destination]:
    """``build_destination`` with the output formats of ``config``."""
    formats = config.gamma.formats

    def build(dc: DestinationConfig) -> Destination:
        fmt = formats.get(dc.output_format) if dc.output_format else None
        return build_destination(dc, fmt)

    return build


class GammaModule(ModuleHost):
    """The delivery stage (see the module docstring)."""

    name = "gamma"
    idle_sleep = 0.005

    def __init__(self, config_dir: Path, *, data_dir: Path | None = None) -> None:
        super().__init__(config_dir, data_dir=data_dir)
        self.inbox = self.open_queue(DELIVERY_QUEUE, dead_letter=self._dead_letter)
        self.spools: dict[str, Queue] = {}  # producer side (router thread), by destination id
        self._consumers: dict[str, Queue] = {}  # consumer side (worker threads)
        self.workers: dict[str, DestinationWorker] = {}
        self.breakers: dict[str, CircuitBreaker] = {}
        self.stats: dict[str, DestinationStats] = {}
        self._spool_lock = threading.Lock()
        self._depth_cache: tuple[float, dict[str, int]] = (0.0, {})
        self.blocked_on: str | None = None
        self.routed = 0
        self._direct_pools: dict[str, ThreadPoolExecutor] = {}
        #: Batches handed over and not yet acked, oldest first; direct batches per destination.
        self._in_flight: deque[_InFlight] = deque()
        self._outstanding: dict[str, int] = {}
        self._decoder = LineageSharingDecoder()  # the router thread's
        # Read when scraped rather than kept up to date: the router, every delivery worker,
        # replays, purges, the cleanup job and the other gamma instances all change the DLQ.
        self._dlq_size = 0
        m.GAMMA_DLQ_SIZE.set_function(self.dlq_size)
        self.apply_config(self.config)

    # -- spools and workers ---------------------------------------------------------------------
    def _open_spool(self, dest_id: str) -> Queue:
        transport = self.config.pipeline.transport
        spec = QueueSpec(
            name=spool_name(dest_id),
            capacity=transport.capacity,
            visibility_timeout=transport.visibility_timeout_seconds,
            max_attempts=SPOOL_MAX_ATTEMPTS,
            consumer=f"{spool_name(dest_id)}-workers",
        )
        return open_queue(transport.backend, transport.backend_settings(), self.data_dir, spec)

    def spool(self, dest_id: str) -> Queue:
        """The producer-side spool of a destination (opened on first use)."""
        with self._spool_lock:
            if dest_id not in self.spools:
                self.spools[dest_id] = self._open_spool(dest_id)
            return self.spools[dest_id]

    def apply_config(self, new: PipelineConfig) -> None:
        router = Router(
            new.gamma.routes,
            new.gamma.destinations,
            new.gamma.settings.default_destination,
            # A Gamma-only configuration (no alpha/sources) cannot tell levels: not checked.
            {sid: src.data_classification for sid, src in new.alpha.sources.items()}
            if new.alpha.sources
            else None,
        )
        for dest_id in new.gamma.destinations:
            self.spool(dest_id)
        wanted = {d: dc for d, dc in new.gamma.destinations.items() if dc.enabled}
        version = config_version(new)
        running = self._worker is not None and self._worker.is_alive()
        for dest_id in list(self.workers):
            worker = self.workers[dest_id]
            dc = wanted.get(dest_id)
            if (
                dc is None
                or _settings(dc) != _settings(worker.config)
                or (new.gamma.settings != worker.settings)
                or _format(new, dc) != _format(self.config, worker.config)
            ):
                worker.stop()
                del self.workers[dest_id]
                if dc is None:
                    m.GAMMA_DESTINATION_STATUS.labels(destination=dest_id).set(0)
        for dest_id, dc in wanted.items():
            if dest_id in self.workers:
                self.workers[dest_id].config_version = version
                self.workers[dest_id].router = router
                continue
            if dest_id not in self._consumers:
                self._consumers[dest_id] = self._open_spool(dest_id)
            worker = DestinationWorker(
                dc,
                new.gamma.settings,
                factory=destination_factory(new),
                spool=self._consumers[dest_id],
                state=self.state_store,
                config_version=version,
                router=router,
                paused=lambda: not self._resume.is_set(),
                breaker=self.breakers.get(dest_id),
                stats=self.stats.get(dest_id),
            )
            self.breakers[dest_id] = worker.breaker
            self.stats[dest_id] = worker.stats
            self.workers[dest_id] = worker
            m.GAMMA_DESTINATION_STATUS.labels(destination=dest_id).set(1)
            if running:
                worker.start()
        self.router = router

    def start_worker(self) -> None:
        super().start_worker()
        for worker in self.workers.values():
            if not worker.alive:
                worker.start()

    def pause(self) -> None:
        super().pause()
        with self.exclusive():
            self._settle_all()  # paused means nothing in flight: a backup may copy the files

    def stop_worker(self, timeout: float = 30.0) -> None:
        super().stop_worker(timeout)
        with self._lock:
            self._settle_all()
        for pool in self._direct_pools.values():
            pool.shutdown(wait=True)
        self._direct_pools.clear()
        for worker in self.workers.values():
            worker.stop(timeout)

    def _dead_letter(self, messages: Sequence[Message], reason: str) -> None:
        self.state_store.add_dlq_entries(
            [
                dlq_from_message(
                    "gamma", msg, reason, stage="route", config_version=self.config_version
                )
                for msg in messages
            ]
        )

    def dlq_size(self) -> int:
        """Open entries of the gamma DLQ (``gamma_dlq_size``); the last count if the store fails."""
        try:
            self._dlq_size = self.state_store.count_dlq(DlqFilter(module="gamma", status="open"))
        except Exception as exc:  # a scrape must not fail because the state store did
            self.log.warning("Could not count the gamma DLQ.", error=f"{type(exc).__name__}: {exc}")
        return self._dlq_size

    def spool_depths(self, *, max_age: float = 0.0) -> dict[str, int]:
        """Records waiting per destination (cached for ``max_age`` seconds)."""
        at, cached = self._depth_cache
        if max_age and time.monotonic() - at < max_age:
            return cached
        depths = {dest_id: self.spool(dest_id).depth() for dest_id in list(self.spools)}
        self._depth_cache = (time.monotonic(), depths)
        return depths

    # -- the router -----------------------------------------------------------------------------
    def step(self) -> bool:
        settings = self.config.gamma.settings
        capacity = self.config.pipeline.transport.capacity
        room = capacity - settings.OUTPUT_BATCH_SIZE
        depths = self.spool_depths(max_age=0.5)
        full = [d for d in self.workers if depths.get(d, 0) >= room]
        if full:
            # Backpressure: leave the records in the delivery queue until the spool drains.
            self.blocked_on = full[0]
            return False
        self.blocked_on = None
        self._settle(block=len(self._in_flight) >= MAX_IN_FLIGHT)
        lease = self.inbox.lease(settings.OUTPUT_BATCH_SIZE, wait=0.005 if self._in_flight else 0.5)
        if not lease:
            self._settle(block=True)
            return bool(self._in_flight)
        leased_at = time.perf_counter()
        records, positions, dlq = self._decode(lease.messages)
        routed = self.router.route_batch(records)
        for at, decision in routed.refused:
            record = records[at]
            dlq.append(
                (
                    positions[at] if positions is not None else at,
                    DlqEntry(
                        "gamma",
                        record.record_id,
                        record.source_id,
                        record.origin,
                        decision.reason or "",
                        decision.detail,
                        encode(record),
                        error_class="permanent",
                        stage="route",
                        correlation_id=record.correlation_id,
                        config_version=self.config_version,
                        rule_versions=self.router.rule_versions(record),
                    ),
                )
            )
        plan = routed.plan
        # One lineage step per destination and batch, shared by its records (steps are never
        # changed once appended): the route taken, at the time the batch was routed.
        now = time.time()
        steps = {dest: LineageStep("gamma", f"route:{dest}", now) for dest in plan}
        for dests, group in routed.fanout:
            if len(dests) == 1:
                step = steps[dests[0]]
                for record in group:
                    record.lineage.append(step)
            else:
                taken = [steps[dest] for dest in dests]
                for record in group:
                    record.lineage.extend(taken)
        for dest, taking in plan.items():
            m.GAMMA_RECORDS_ROUTED_TOTAL.labels(destination=dest).inc(len(taking))
        if dlq:
            dlq.sort(key=itemgetter(0))  # in the order of the messages, as they were leased
            self.state_store.add_dlq_entries([entry for _, entry in dlq])
        # Decoding and routing the batch is its rendering on the direct path (the spool path
        # measures its own decode).
        m.GAMMA_RENDER_DURATION_SECONDS.observe(time.perf_counter() - leased_at)
        self._hand_over(lease, plan, leased_at)
        self._settle(block=False)
        return True

    def _decode(
        self, messages: Sequence[Message]
    ) -> tuple[list[Record], list[int] | None, list[tuple[int, DlqEntry]]]:
        """The records of a leased batch, their positions in it (None: every message is a
        record) and the DLQ entries, with their positions, of the messages that are not."""
        try:
            read = self._decoder.decode
            return [read(msg.body) for msg in messages], None, []
        except msgspec.DecodeError:
            pass  # rare: find the messages at fault one by one
        records: list[Record] = []
        positions: list[int] = []
        dlq: list[tuple[int, DlqEntry]] = []
        for position, msg in enumerate(messages):
            try:
                records.append(self._decoder.decode(msg.body))
                positions.append(position)
            except msgspec.DecodeError as exc:
                dlq.append(
                    (
                        position,
                        undecodable_entry(
                            "gamma",
                            msg,
                            "decode_error",
                            str(exc),
                            stage="route",
                            config_version=self.config_version,
                            error_class="poison",
                        ),
                    )
                )
        return records, positions, dlq

    def _hand_over(self, lease: Lease, plan: dict[str, list[Record]], leased_at: float) -> None:
        """Give each destination its records: delivered directly when it can take them, else
        put into its durable spool. The lease is acked by :meth:`_settle` once every record of
        it is delivered, dead-lettered or spooled.

        The direct path (destination healthy, spool empty) saves the spool's three fsynced
        transactions per batch. Each destination has one direct-delivery thread, so the
        destinations of a batch are delivered concurrently and the batches of a destination in
        order; up to ``MAX_IN_FLIGHT`` batches are in flight, so routing the next batch overlaps
        delivering this one. Whatever a direct delivery could not deliver right now is spooled,
        and the worker retries it under the full policy (retries, breaker); later batches of that
        destination then follow it into the spool, in order. A crash before the ack redelivers
        the batch, and the delivery log skips what was already delivered.
        """
        direct: dict[str, Future[list[Record]]] = {}
        for dest, records in plan.items():
            worker = self.workers.get(dest)
            if worker is not None and (
                self._outstanding.get(dest, 0) > 0 or worker.can_take_direct()
            ):
                worker.stats.render.add(time.perf_counter() - leased_at)  # /admin/render/stats
                direct[dest] = self._direct_pool(dest).submit(worker.deliver_direct, records)
                self._outstanding[dest] = self._outstanding.get(dest, 0) + 1
            else:
                self._spool_records(dest, records)
        self._in_flight.append(_InFlight(lease, plan, direct, leased_at))

    def _settle(self, *, block: bool) -> None:
        """Ack the batches whose direct deliveries are done, oldest first (spooling what they
        left); with ``block``, wait for the oldest one first."""
        while self._in_flight:
            oldest = self._in_flight[0]
            if not block and not all(f.done() for f in oldest.direct.values()):
                return
            block = False
            for dest, future in oldest.direct.items():
                try:
                    left = future.result()
                except Exception as exc:
                    self.log.warning(
                        "Direct delivery failed; the batch goes to the spool.",
                        destination=dest,
                        error=f"{type(exc).__name__}: {exc}",
                    )
                    left = oldest.plan[dest]
                if left:
                    self._spool_records(dest, left)
                self._outstanding[dest] -= 1
                worker = self.workers.get(dest)
                if self._outstanding[dest] == 0 and worker is not None:
                    worker.direct_blocked = False
            self.inbox.ack(oldest.lease)
            self.routed += len(oldest.lease)
            self._in_flight.popleft()
            # From the lease to the destinations' acknowledgement (or the spool's durability).
            in_module = time.perf_counter() - oldest.leased_at
            observe_n(MODULE_LATENCY_SECONDS.labels(module="gamma"), in_module, len(oldest.lease))

    def _settle_all(self) -> None:
        while self._in_flight:
            self._settle(block=True)

    def _spool_records(self, dest: str, records: list[Record]) -> None:
        self.spool(dest).put([(r.record_id, encode(r)) for r in records], timeout=30.0)
        stats = self.stats.get(dest)
        if stats is not None:
            stats.spooled += len(records)

    def _direct_pool(self, dest: str) -> ThreadPoolExecutor:
        """One thread per destination, so each keeps its own destination instance."""
        pool = self._direct_pools.get(dest)
        if pool is None:
            pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"gamma-direct-{dest}")
            self._direct_pools[dest] = pool
        return pool

    # -- admin ----------------------------------------------------------------------------------
    def queue_depths(self) -> dict[str, int]:
        depths = {DELIVERY_QUEUE: self.inbox.depth()}
        for dest_id, depth in self.spool_depths().items():
            depths[spool_name(dest_id)] = depth
        return depths

    def status(self) -> dict[str, Any]:
        status = super().status()
        pending = {d: n for d, n in self.spool_depths().items() if n}
        busy = any(w.busy for w in self.workers.values())
        status["idle"] = bool(status["idle"]) and not pending and not busy and not self._in_flight
        status["destinations"] = sorted(self.workers)
        status["pending_by_destination"] = pending
        status["circuit_breakers"] = {d: b.state for d, b in sorted(self.breakers.items())}
        if self.blocked_on:
            status["backpressure"] = f"spool of {self.blocked_on} is full"
        return status

    def health(self) -> HealthReport:
        base = super().health()
        checks: dict[str, Any] = {}
        delivered = sum(s.delivered for s in self.stats.values())
        enabled = list(self.workers)
        open_breakers = [d for d in enabled if self.breakers[d].state == OPEN]
        # Rates over the last HEALTH_WINDOW_S, not since the start: a destination that was
        # down and came back reads healthy again once its failed calls are older than that.
        now = time.time()
        recent = [s.recent(HEALTH_WINDOW_S, now) for s in self.stats.values()]
        calls = sum(r[0] for r in recent)
        failed_calls = sum(r[1] for r in recent)
        timed_out = sum(r[2] for r in recent)
        checks["delivery_success_rate"] = evaluate(
            "gamma.delivery_success_rate",
            None if not calls else max(0.0, 1.0 - failed_calls / calls),
        )
        try:
            dlq_last_hour: float | None = self.state_store.count_dlq(
                DlqFilter(module="gamma", status="all", since=time.time() - 3600)
            )
        except Exception:
            dlq_last_hour = None
        checks["dlq_entry_rate"] = evaluate("gamma.dlq_entry_rate", dlq_last_hour)
        checks["ack_timeout_rate"] = evaluate(
            "gamma.ack_timeout_rate", None if not calls else timed_out / calls
        )
        checks["destination_availability"] = evaluate(
            "gamma.destination_availability",
            None if not enabled else 1.0 - len(open_breakers) / len(enabled),
        )
        p99s = [p for s in self.stats.values() if (p := s.delivery.p99()) is not None]
        checks["delivery_latency_p99"] = evaluate(
            "gamma.delivery_latency_p99", max(p99s) if p99s else None
        )
        checks["circuit_breakers_open"] = evaluate(
            "pipeline.circuit_breakers_open", float(len(open_breakers))
        )
        report = combine(checks)
        report.checks = {**base.checks, **report.checks}
        worst_status = max(
            (base.status, report.status),
            key=[Health.HEALTHY, Health.DEGRADED, Health.UNHEALTHY].index,
        )
        report.status = worst_status
        report.checks["records"] = {"delivered": delivered, "routed": self.routed}
        return report

    def routes(self) -> list[BaseRoute]:
        from dps.gamma.admin import gamma_routes

        return gamma_routes(self)

    def close(self) -> None:
        for worker in self.workers.values():
            worker.stop()
        for queue in [*self.spools.values(), *self._consumers.values()]:
            queue.close()
        super().close()


#: Routed batches whose direct deliveries may be in flight at once (routing the next batch
#: overlaps delivering the previous one).
MAX_IN_FLIGHT = 2


@dataclass(slots=True)
class _InFlight:
    """A routed batch waiting for its direct deliveries before its lease is acked."""

    lease: Lease
    plan: dict[str, list[Record]]
    direct: dict[str, Future[list[Record]]]
    #: ``time.perf_counter()`` at the lease: its records' time in Gamma ends at the ack.
    leased_at: float = 0.0


def _format(config: PipelineConfig, dc: DestinationConfig) -> Any:
    fmt = config.gamma.formats.get(dc.output_format) if dc.output_format else None
    return fmt.model_dump(mode="json") if fmt is not None else None


def _settings(dc: DestinationConfig) -> Any:
    return dc.model_dump(mode="json", exclude={"file", "enabled"})
