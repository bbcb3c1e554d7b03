"""One destination's delivery loop: its spool, batching, retries by error class, breaker, DLQ.

Why a spool per destination: the router (:meth:`GammaModule.step`) puts each routed record into
the durable spool queue of each destination it goes to (``spool_<destination>``, the same
transport as the stage queues) and only then acks the delivery queue. Each destination has its
own :class:`DestinationWorker` thread that leases from its spool. So a destination that is down,
slow or rate-limited only fills its own spool; the others keep flowing. While its breaker is
OPEN the worker leases nothing: the records wait, durable, and nothing is dead-lettered for a
transient reason. When a spool is full the router stops leasing from the delivery queue, so the
backpressure reaches Beta and Alpha instead of records being dropped.

A batch (``delivery.batch_size``, waiting up to ``OUTPUT_LINGER_MS`` for it to fill) goes through
the policy of its error class (see :mod:`dps.gamma.destinations.base`):

- ``retryable``: retried ``min(delivery.retry_count, MAX_DELIVERY_RETRIES)`` times with
  exponential backoff from ``delivery.retry_delay_ms`` (a destination that sets none: gamma.yaml's
  ``RETRY_BACKOFF_MS``) and full jitter; still failing, it is a breaker failure and the batch goes
  back to the spool (nack) until the breaker lets a probe through.
- ``throttle``: wait ``Retry-After`` (or the backoff) and try again; not a breaker failure; after
  the retries the batch goes back to the spool with that delay.
- ``permanent``: the batch is split in halves until the records at fault are alone; those go to
  the DLQ with their class, the rest are delivered.
- ``poison``: the record goes to the DLQ.

Every attempt that fails is written to ``delivery_errors`` (``/admin/destinations/<id>/errors``);
every outcome to ``delivery_log``; a record is acked off the spool only once it is delivered or in
the DLQ. A ``deliver`` call that takes longer than ``ACK_WAIT_TIMEOUT_MS`` is abandoned (the
instance is replaced, since it may still be busy) and counted as an acknowledgement timeout:
``ACK_TIMEOUT_ACTION: RETRY_DELIVERY`` retries it (idempotent destinations make that safe),
``ASSUME_SUCCESS`` counts the batch delivered.

``delivery_mode: async`` keeps up to ``delivery.max_in_flight`` batches in flight at once, each
on its own pool thread with its own destination instance (an instance is never called
concurrently), each settled — outcomes written, spool acked — as soon as it completes; the order
of records across batches is not kept. While the breaker is HALF_OPEN only the probe is in
flight. ``ack_mode: record`` acks each record off the spool as soon as its own outcome is known
(while a batch is being split to isolate a bad record, the records already delivered leave the
spool at once); ``batch`` settles a batch's records together when the batch is done.
"""

from __future__ import annotations

import hashlib
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from dps.config.models import DestinationConfig, GammaSettings
from dps.core.errors import TerminalError, TransientError
from dps.core.logging import get_logger
from dps.core.metrics import PIPELINE_END_TO_END_LATENCY_SECONDS, observe_many
from dps.core.record import LineageSharingDecoder, Record, encode, lineage_summary
from dps.gamma import metrics as m
from dps.gamma.circuit_breaker import CLOSED, STATE_VALUES, BreakerSettings, CircuitBreaker
from dps.gamma.destinations.base import (
    DeliveryError,
    Destination,
    ErrorClass,
    classify_exception,
    record_error_class,
)
from dps.gamma.routing import Router
from dps.queues import Lease, Queue
from dps.runtime.module import undecodable_entry
from dps.state import DeliveryOutcome, DlqEntry, StateStore
from dps.state.base import DeliveryError as DeliveryErrorRow

#: Spool messages are never dead-lettered by the transport: Gamma decides what goes to the DLQ.
SPOOL_MAX_ATTEMPTS: Final = 1_000_000
_SAFE = re.compile(r"[^A-Za-z0-9_-]")


def retry_delay_ms(config: DestinationConfig, settings: GammaSettings) -> int:
    """The first retry delay of a destination: its own ``delivery.retry_delay_ms``, else
    gamma.yaml's ``RETRY_BACKOFF_MS``."""
    own = config.delivery.retry_delay_ms
    return settings.RETRY_BACKOFF_MS if own is None else own


def spool_name(destination_id: str) -> str:
    """The queue name of a destination's spool (valid for SQLite files and NATS streams)."""
    safe = _SAFE.sub("_", destination_id).lower()
    digest = hashlib.blake2b(destination_id.encode(), digest_size=3).hexdigest()
    return f"spool_{safe[:48]}_{digest}"


def delivered_outcomes(records: Sequence[Record], destination_id: str) -> list[DeliveryOutcome]:
    """``DeliveryOutcome.of(record, destination_id, "delivered")`` for each record, built
    positionally (keyword arguments cost a third of building the outcome)."""
    outcomes: list[DeliveryOutcome] = []
    append = outcomes.append
    for record in records:
        rules, enrichment, score = lineage_summary(record)
        append(
            DeliveryOutcome(
                record.record_id, destination_id, "delivered", 1, None, rules, enrichment, score
            )
        )
    return outcomes


class Percentiles:
    """The last ``size`` observations of a duration, for p50/p95/p99 on the admin API."""

    def __init__(self, size: int = 2048) -> None:
        self.values: deque[float] = deque(maxlen=size)
        self.count = 0
        self.total = 0.0
        self.max = 0.0

    def add(self, value: float) -> None:
        self.values.append(value)
        self.count += 1
        self.total += value
        self.max = max(self.max, value)

    def add_many(self, values: list[float]) -> None:
        """:meth:`add` for each value (a batch's observations at once)."""
        if not values:
            return
        self.values.extend(values)
        self.count += len(values)
        self.total += sum(values)
        self.max = max(self.max, max(values))

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.values)

        def pct(q: float) -> float | None:
            if not ordered:
                return None
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 6)

        return {
            "count": self.count,
            "avg_seconds": round(self.total / self.count, 6) if self.count else None,
            "p50_seconds": pct(0.50),
            "p95_seconds": pct(0.95),
            "p99_seconds": pct(0.99),
            "max_seconds": round(self.max, 6),
        }

    def p99(self) -> float | None:
        value = self.summary()["p99_seconds"]
        return None if value is None else float(value)


@dataclass
class DestinationStats:
    """Counters of one destination for the H.3 endpoints and health."""

    delivered: int = 0
    failed_attempts: int = 0
    dlq: int = 0
    batches: int = 0
    retries: int = 0
    throttled: int = 0
    splits: int = 0
    ack_timeouts: int = 0
    #: Records the router delivered directly (no spool), and records it put into the spool.
    direct: int = 0
    spooled: int = 0
    ack_wait: Percentiles = field(default_factory=Percentiles)
    delivery: Percentiles = field(default_factory=Percentiles)
    render: Percentiles = field(default_factory=Percentiles)
    queue_wait: Percentiles = field(default_factory=Percentiles)
    in_flight: int = 0
    last_success: float | None = None
    last_error: str | None = None
    #: (time, delivered count, failed attempts) samples for rates over a window.
    window: deque[tuple[float, int, int]] = field(default_factory=lambda: deque(maxlen=600))
    #: (time, kind) of recent calls: "ok", "failed", "timeout"; health grades these, so a
    #: destination that recovered reads healthy again once its failures age out.
    calls: deque[tuple[float, str]] = field(default_factory=lambda: deque(maxlen=20000))

    def recent(self, window_s: float, now: float | None = None) -> tuple[int, int, int]:
        """(calls, failed calls, acknowledgement timeouts) in the last ``window_s`` seconds."""
        since = (now if now is not None else time.time()) - window_s
        calls = failed = timeouts = 0
        for at, kind in reversed(self.calls):
            if at < since:
                break
            calls += 1
            failed += kind != "ok"
            timeouts += kind == "timeout"
        return calls, failed, timeouts


@dataclass
class _Result:
    delivered: list[Record] = field(default_factory=list)
    dlq: list[tuple[Record, ErrorClass, str, str]] = field(default_factory=list)
    retry_later: list[Record] = field(default_factory=list)
    retry_delay: float = 1.0
    #: The router's direct path: one attempt, whatever fails goes to the spool (no inline retry).
    direct: bool = False
    #: ``ack_mode: record``: the spool messages of each record, and what is already settled.
    msg_of: dict[str, list[tuple[Lease, str]]] | None = None
    delivered_done: int = 0
    dlq_done: int = 0
    acked: set[str] = field(default_factory=set)


class _AckTimeout(Exception):
    pass


class DestinationWorker:
    """Delivers one destination's spool (see the module docstring). Runs in its own thread."""

    def __init__(
        self,
        config: DestinationConfig,
        settings: GammaSettings,
        *,
        factory: Callable[[DestinationConfig], Destination],
        spool: Queue,
        state: StateStore,
        config_version: str,
        paused: Callable[[], bool],
        router: Router | None = None,
        breaker: CircuitBreaker | None = None,
        stats: DestinationStats | None = None,
    ) -> None:
        self.dest_id = config.destination_id
        self.config = config
        self.settings = settings
        self.factory = factory
        self.spool = spool
        self.state = state
        self.config_version = config_version
        #: The routes in force (swapped on reload): a DLQ entry names those that sent its record.
        self.router = router
        #: Backoff base of ``retryable`` retries: ``delivery.retry_delay_ms``, else gamma.yaml's
        #: ``RETRY_BACKOFF_MS`` (a settings change rebuilds the worker).
        self.retry_delay_ms = retry_delay_ms(config, settings)
        self.paused = paused
        self.log = get_logger("delivery")
        self._decoder = LineageSharingDecoder()  # for the spool, read by this worker's thread
        cb = config.circuit_breaker
        self.breaker = breaker or CircuitBreaker(
            self.dest_id,
            BreakerSettings(
                failure_threshold=cb.failure_threshold,
                window_s=cb.window_seconds,
                cooldown_s=cb.cooldown_seconds,
                max_cooldown_s=cb.max_cooldown_seconds,
                success_threshold=cb.success_threshold,
            ),
        )
        self.breaker._on_change = self._breaker_changed
        m.GAMMA_CIRCUIT_BREAKER_STATE.labels(destination=self.dest_id).set(
            STATE_VALUES[self.breaker.state]
        )
        self.stats = stats or DestinationStats()
        self._local = threading.local()
        self._instances: list[Destination] = []
        self._instances_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.busy = False
        #: Set by a direct delivery that left records for the spool; the router clears it once
        #: no direct batch of this destination is in flight (see GammaModule._hand_over).
        self.direct_blocked = False
        self.rng = random.Random()
        #: ``delivery_mode: async``: up to this many batches in flight, each on its own thread
        #: and destination instance (a destination instance is never called concurrently).
        self.window = config.delivery.max_in_flight if config.delivery_mode == "async" else 1
        self._pool: ThreadPoolExecutor | None = None
        self._futures: set[Future[None]] = set()
        self._counter_lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._loop, name=f"gamma-deliver-{self.dest_id}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._pool is not None:
            wait(self._futures, timeout)
            self._pool.shutdown(wait=False)
            self._pool = None
        with self._instances_lock:
            instances, self._instances = self._instances, []
        for instance in instances:
            instance.close()
        self._local = threading.local()

    @property
    def destination(self) -> Destination | None:
        """The destination instance of the calling thread, if it has one."""
        instance: Destination | None = getattr(self._local, "destination", None)
        return instance

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _breaker_changed(self, old: str, new: str) -> None:
        m.GAMMA_CIRCUIT_BREAKER_STATE.labels(destination=self.dest_id).set(STATE_VALUES[new])
        self.log.warning(
            "Circuit breaker changed state.", destination=self.dest_id, old=old, new=new
        )

    def _open(self) -> Destination:
        destination = self.destination
        if destination is None:
            destination = self.factory(self.config)
            self._local.destination = destination
            with self._instances_lock:
                self._instances.append(destination)
        return destination

    def _abandon(self) -> None:
        """Drop an instance whose call hung; a fresh one is built for the next attempt."""
        stuck = self.destination
        self._local.destination = None
        if stuck is not None:
            with self._instances_lock:
                if stuck in self._instances:
                    self._instances.remove(stuck)
            threading.Thread(target=stuck.close, daemon=True).start()

    # -- the loop -------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            if self.paused():
                self._stop.wait(0.2)
                continue
            try:
                worked = self.step()
            except Exception as exc:
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                self.log.error(
                    "Delivery loop failed; retrying after a pause.",
                    destination=self.dest_id,
                    error=self.stats.last_error,
                )
                self._stop.wait(1.0)
                continue
            if not worked:
                self._stop.wait(0.05)

    def step(self) -> bool:
        """Lease one batch from the spool and deliver it; False when there was nothing to do."""
        if self.window > 1:
            return self._step_async()
        if not self.breaker.allow():
            self._stop.wait(min(0.5, max(0.05, self.breaker.retry_in())))
            return True
        leases = self._lease()
        if not leases:
            self.breaker.release_probe()
            return False
        self.busy = True
        try:
            self._handle(leases)
        finally:
            self.busy = False
        return True

    def _step_async(self) -> bool:
        """``delivery_mode: async``: keep up to ``window`` batches in flight.

        Each batch is delivered and settled (outcomes written, spool acked) on a pool thread as
        soon as it completes, independently of the others; order across batches is not kept.
        While the breaker is HALF_OPEN only its one probe batch is in flight.
        """
        self._reap()
        if len(self._futures) >= self.window:
            wait(self._futures, timeout=0.2, return_when=FIRST_COMPLETED)
            self._reap()
            return True
        if not self.breaker.allow():
            self._stop.wait(min(0.5, max(0.05, self.breaker.retry_in())))
            return True
        leases = self._lease()
        if not leases:
            self.breaker.release_probe()
            return bool(self._futures)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                max_workers=self.window, thread_name_prefix=f"gamma-async-{self.dest_id}"
            )
        self._futures.add(self._pool.submit(self._handle, leases))
        self.busy = True
        return True

    def _reap(self) -> None:
        for future in [f for f in self._futures if f.done()]:
            self._futures.discard(future)
            exc = future.exception()
            if exc is not None:
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                self.log.error(
                    "An async delivery batch failed; its records return after the lease expires.",
                    destination=self.dest_id,
                    error=self.stats.last_error,
                )
        self.busy = bool(self._futures)

    def _lease(self) -> list[Lease]:
        """One batch from the spool, waiting ``OUTPUT_LINGER_MS`` for it to fill."""
        size = self.config.delivery.batch_size
        lease = self.spool.lease(size, wait=0.2)
        leases = [lease] if lease else []
        linger = self.settings.OUTPUT_LINGER_MS / 1000.0
        if lease and len(lease) < size and linger > 0:
            self._stop.wait(linger)
            more = self.spool.lease(size - len(lease), wait=0.0)
            if more:
                leases.append(more)
        return leases

    def _handle(self, leases: list[Lease]) -> None:
        started = time.perf_counter()
        records: list[Record] = []
        msg_of: dict[str, list[tuple[Lease, str]]] = {}
        poison: list[DlqEntry] = []
        undecodable: list[tuple[Lease, str]] = []
        for lease in leases:
            for msg in lease.messages:
                try:
                    record = self._decoder.decode(msg.body)
                except msgspec.DecodeError as exc:
                    poison.append(
                        undecodable_entry(
                            "gamma",
                            msg,
                            "decode_error",
                            str(exc),
                            stage="deliver",
                            config_version=self.config_version,
                            error_class="poison",
                            destination_id=self.dest_id,
                        )
                    )
                    undecodable.append((lease, msg.msg_id))
                    continue
                if record.record_id not in msg_of:
                    records.append(record)
                msg_of.setdefault(record.record_id, []).append((lease, msg.msg_id))
        self.stats.render.add(time.perf_counter() - started)
        m.GAMMA_RENDER_DURATION_SECONDS.observe(time.perf_counter() - started)

        done = self.state.delivered_records([r.record_id for r in records], self.dest_id)
        todo = [r for r in records if r.record_id not in done]
        now = time.time()
        for r in todo:
            self.stats.queue_wait.add(max(0.0, now - r.ingested_at))
        result = _Result(msg_of=msg_of if self.config.ack_mode == "record" else None)
        if todo:
            self._deliver(todo, result)
        self._record_outcomes(
            result.delivered[result.delivered_done :], result.dlq[result.dlq_done :], poison
        )

        retry_ids = {r.record_id for r in result.retry_later}
        for lease in leases:
            back = [
                msg_id
                for rid, refs in msg_of.items()
                if rid in retry_ids
                for ls, msg_id in refs
                if ls is lease
            ]
            backs = set(back)
            rest = [
                x.msg_id
                for x in lease.messages
                if x.msg_id not in result.acked and x.msg_id not in backs
            ]
            if back:
                self.spool.nack(
                    lease, back, reason="destination_unavailable", delay=result.retry_delay
                )
                if rest:
                    self.spool.ack(lease, rest)
            elif not result.acked:
                self.spool.ack(lease)
            elif rest:
                self.spool.ack(lease, rest)

    def can_take_direct(self) -> bool:
        """The router may deliver here itself: a synchronous, running destination whose
        breaker is CLOSED and whose spool is empty (so nothing spooled earlier is overtaken)."""
        return (
            self.window == 1
            and not self.direct_blocked
            and self.alive
            and not self.paused()
            and self.breaker.state == CLOSED
            and self.spool.depth() == 0
        )

    def deliver_direct(self, records: list[Record]) -> list[Record]:
        """The router's fast path: deliver ``records`` now in the calling thread, one attempt.

        Delivered and dead-lettered records are settled here (delivery log, DLQ) like a spool
        batch; the records returned could not be delivered right now and must go to the spool.
        Records the delivery log already shows delivered are skipped (a redelivered batch).
        A crash before the caller acks its own queue redelivers the batch; that is safe for
        the same reason.
        """
        if self.direct_blocked:
            return records  # an earlier batch is going to the spool: follow it there, in order
        self.busy = True
        try:
            done = self.state.delivered_records([r.record_id for r in records], self.dest_id)
            todo = [r for r in records if r.record_id not in done] if done else records
            now = time.time()
            self.stats.queue_wait.add_many(
                [waited if (waited := now - r.ingested_at) > 0.0 else 0.0 for r in todo]
            )
            result = _Result(direct=True)
            if todo:
                self._deliver(todo, result)
            self._record_outcomes(result.delivered, result.dlq, [])
            with self._counter_lock:
                self.stats.direct += len(result.delivered)
            if result.retry_later:
                self.direct_blocked = True
            return result.retry_later
        finally:
            self.busy = False

    def _settle_now(self, result: _Result) -> None:
        """``ack_mode: record``: write and ack the records whose outcome just became known."""
        if result.msg_of is None:
            return
        delivered = result.delivered[result.delivered_done :]
        dead = result.dlq[result.dlq_done :]
        if not delivered and not dead:
            return
        result.delivered_done = len(result.delivered)
        result.dlq_done = len(result.dlq)
        self._record_outcomes(delivered, dead, [])
        ids = {r.record_id for r in delivered} | {item[0].record_id for item in dead}
        by_lease: dict[int, tuple[Lease, list[str]]] = {}
        for rid in ids:
            for lease, msg_id in result.msg_of.get(rid, []):
                by_lease.setdefault(id(lease), (lease, []))[1].append(msg_id)
        for lease, msg_ids in by_lease.values():
            self.spool.ack(lease, msg_ids)
            result.acked.update(msg_ids)

    def _record_outcomes(
        self,
        delivered: list[Record],
        dead: list[tuple[Record, ErrorClass, str, str]],
        poison: list[DlqEntry],
    ) -> None:
        """Write DLQ entries and ``delivery_log`` rows, and count them."""
        entries = list(poison)
        outcomes: list[DeliveryOutcome] = []
        for record, klass, reason, error in dead:
            entries.append(
                DlqEntry(
                    "gamma",
                    record.record_id,
                    record.source_id,
                    record.origin,
                    reason,
                    error,
                    encode(record),
                    error_class=klass,
                    destination_id=self.dest_id,
                    attempts=record.attempts + 1,
                    stage="deliver",
                    correlation_id=record.correlation_id,
                    config_version=self.config_version,
                    rule_versions=self._route_versions(record),
                )
            )
            outcomes.append(DeliveryOutcome.of(record, self.dest_id, "failed", error=error))
        # Each row carries the record's lineage summary (rules, enrichment, quality score): the
        # lineage API reads it from here, so Beta writes nothing per record for it.
        outcomes.extend(delivered_outcomes(delivered, self.dest_id))
        if entries:
            self.state.add_dlq_entries(entries)
        if outcomes:
            self.state.record_deliveries(outcomes)
        now = time.time()
        observe_many(
            PIPELINE_END_TO_END_LATENCY_SECONDS,
            [age if (age := now - r.ingested_at) > 0.0 else 0.0 for r in delivered],
        )
        with self._counter_lock:
            if delivered:
                self.stats.delivered += len(delivered)
                self.stats.last_success = now
            if entries:
                self.stats.dlq += len(entries)
            self.stats.window.append((now, self.stats.delivered, self.stats.failed_attempts))
        if delivered:
            m.GAMMA_RECORDS_DELIVERED_TOTAL.labels(destination=self.dest_id).inc(len(delivered))

    def _route_versions(self, record: Record) -> dict[str, Any] | None:
        """A dead record's ``rule_versions``: the routes in force and those that sent it here."""
        router = self.router
        return router.rule_versions(record, self.dest_id) if router is not None else None

    # -- the policy -----------------------------------------------------------------------------
    def _retries(self) -> int:
        return min(self.config.delivery.retry_count, self.settings.MAX_DELIVERY_RETRIES)

    def _backoff(self, attempt: int) -> float:
        base = self.retry_delay_ms / 1000.0
        # Full jitter (AWS architecture blog): spreads retries of many workers apart.
        return float(self.rng.uniform(0, base * (2**attempt))) if base > 0 else 0.0

    def _deliver(self, records: list[Record], result: _Result) -> None:
        size = self.config.delivery.batch_size
        for start in range(0, len(records), size):
            chunk = records[start : start + size]
            if result.retry_later:
                result.retry_later.extend(chunk)  # the destination is failing: do not pile on
                continue
            self._deliver_chunk(chunk, result, top=True)

    def _deliver_chunk(self, chunk: list[Record], result: _Result, *, top: bool) -> None:
        attempt = 0
        throttles = 0
        unknown_seen = False
        while True:
            if self._stop.is_set() and not top:
                result.retry_later.extend(chunk)
                return
            try:
                rejected = self._call(chunk)
            except Exception as exc:
                klass = classify_exception(exc)
                if not isinstance(
                    exc, DeliveryError | TerminalError | TransientError | OSError | TimeoutError
                ):
                    # Not classified by the destination: retry once, then isolate by splitting.
                    klass = "permanent" if unknown_seen else "retryable"
                    unknown_seen = True
                message = f"{type(exc).__name__}: {exc}" if klass == "retryable" else str(exc)
                self._failed_attempt(klass, message, len(chunk))
                if klass in ("throttle", "retryable") and result.direct:
                    # The router does not wait on a failing destination: the spool takes these
                    # and the worker retries them under the full policy.
                    self.stats.retries += 1
                    result.retry_later.extend(chunk)
                    return
                if klass == "throttle":
                    throttles += 1
                    self.stats.throttled += 1
                    wait = getattr(exc, "retry_after", None) or self._backoff(throttles) or 1.0
                    if throttles > self._retries() + 2:
                        result.retry_later.extend(chunk)
                        result.retry_delay = wait
                        return
                    self._stop.wait(wait)
                    continue
                if klass == "retryable":
                    m.GAMMA_DESTINATION_STATUS.labels(destination=self.dest_id).set(0)
                    if attempt < self._retries() and not self._stop.is_set():
                        attempt += 1
                        self.stats.retries += 1
                        self._stop.wait(self._backoff(attempt - 1))
                        continue
                    self.breaker.record_failure(message)
                    result.retry_later.extend(chunk)
                    # The breaker decides when to try again; the nack delay only spaces leases.
                    result.retry_delay = 1.0
                    return
                # permanent or poison for the batch: isolate the records at fault.
                if len(chunk) == 1:
                    reason = getattr(exc, "reason", None) or (
                        "destination_rejected" if klass == "permanent" else "poison_record"
                    )
                    result.dlq.append((chunk[0], klass, reason, message))
                    self._settle_now(result)
                    return
                self.stats.splits += 1
                half = len(chunk) // 2
                self._deliver_chunk(chunk[:half], result, top=False)
                self._deliver_chunk(chunk[half:], result, top=False)
                return
            # acknowledged
            self.breaker.record_success()
            m.GAMMA_DESTINATION_STATUS.labels(destination=self.dest_id).set(1)
            refused = {r.record_id for r, _ in rejected}
            for record, error in rejected:
                result.dlq.append((record, record_error_class(error), error.reason, str(error)))
            if rejected:
                self._failed_attempt("permanent", str(rejected[0][1]), len(rejected))
            result.delivered.extend(r for r in chunk if r.record_id not in refused)
            self._settle_now(result)
            return

    def _call(self, chunk: Sequence[Record]) -> list[tuple[Record, TerminalError]]:
        """One ``deliver`` call, bounded by ``ACK_WAIT_TIMEOUT_MS``."""
        destination = self._open()
        timeout = self.settings.ACK_WAIT_TIMEOUT_MS / 1000.0
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["rejected"] = destination.deliver(chunk)
            except BaseException as exc:
                box["error"] = exc

        started = time.perf_counter()
        with self._counter_lock:
            self.stats.in_flight += 1
            self.stats.batches += 1
        m.GAMMA_PENDING_DELIVERIES.inc(len(chunk))
        try:
            thread = threading.Thread(target=run, name=f"gamma-call-{self.dest_id}", daemon=True)
            thread.start()
            thread.join(timeout)
        finally:
            with self._counter_lock:
                self.stats.in_flight -= 1
            m.GAMMA_PENDING_DELIVERIES.dec(len(chunk))
        elapsed = time.perf_counter() - started
        self.stats.ack_wait.add(elapsed)
        m.GAMMA_ACK_WAIT_DURATION_SECONDS.observe(elapsed)
        if thread.is_alive():
            self.stats.ack_timeouts += 1
            self.stats.calls.append((time.time(), "timeout"))
            self._abandon()
            if self.settings.ACK_TIMEOUT_ACTION == "ASSUME_SUCCESS":
                self.log.warning(
                    "Acknowledgement timed out; counted as delivered (ASSUME_SUCCESS).",
                    destination=self.dest_id,
                    records=len(chunk),
                )
                return []
            raise DeliveryError(
                f"No acknowledgement within {self.settings.ACK_WAIT_TIMEOUT_MS} ms "
                "(ACK_WAIT_TIMEOUT_MS).",
                "retryable",
                reason="ack_timeout",
            )
        if "error" in box:
            self.stats.calls.append((time.time(), "failed"))
            raise box["error"]
        self.stats.calls.append((time.time(), "ok"))
        self.stats.delivery.add(elapsed)
        m.GAMMA_DELIVERY_DURATION_SECONDS.labels(destination=self.dest_id).observe(elapsed)
        rejected: list[tuple[Record, TerminalError]] = box.get("rejected") or []
        return rejected

    def _failed_attempt(self, klass: str, message: str, count: int) -> None:
        self.stats.failed_attempts += 1
        self.stats.last_error = message
        m.GAMMA_DELIVERY_FAILURES_TOTAL.labels(destination=self.dest_id).inc(count)
        self.log.warning(
            "Delivery attempt failed.",
            destination=self.dest_id,
            error_class=klass,
            records=count,
            error=message,
        )
        try:
            self.state.add_delivery_errors([DeliveryErrorRow(self.dest_id, klass, message, count)])
        except Exception as exc:  # the error log is diagnostics: never fail a batch for it
            self.log.warning("Could not record a delivery error.", error=str(exc))

    # -- views ----------------------------------------------------------------------------------
    def rates(self, window_s: float = 300.0) -> tuple[float, float]:
        """(delivered records/s, share of failed attempts) over the last ``window_s`` seconds."""
        now = time.time()
        samples = [s for s in self.stats.window if now - s[0] <= window_s]
        if len(samples) < 2:
            return 0.0, 0.0
        first, last = samples[0], samples[-1]
        span = max(1.0, last[0] - first[0])
        delivered = last[1] - first[1]
        failed = last[2] - first[2]
        batches = max(1, delivered + failed)
        return delivered / span, failed / batches


__all__ = [
    "SPOOL_MAX_ATTEMPTS",
    "DestinationStats",
    "DestinationWorker",
    "retry_delay_ms",
    "spool_name",
]
