"""Module Beta: take a batch from the transform queue, apply rules, score, pass it on.

A batch is acknowledged on the transform queue only after its records are durable in the
delivery queue and its failures are in the Beta DLQ; a crash before that redelivers the batch,
and the delivery queue's idempotent put (record id as message id) keeps the copies out.

Each record goes through :class:`~dps.beta.stage.Stage` (rules, then the quality score and its
thresholds); a failed rule, a ``drop_record`` rule and a score below ``reject`` send it to the
Beta DLQ with the rule id or the score breakdown. The admin API adds Runbook E.2's
``/admin/quality/...`` and H.2's ``/admin/transform/...`` endpoints (``dps.beta.admin``).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from starlette.routing import BaseRoute

from dps.beta import metrics as m
from dps.beta.enrichment.cache import Enrichment
from dps.beta.quality import QualityScorer, QualityStats
from dps.beta.rules import RuleSet
from dps.beta.schemas import SchemaRegistry
from dps.beta.stage import Result, Stage
from dps.config import PipelineConfig
from dps.core.health import Check, Health, HealthReport, combine, evaluate, worst
from dps.core.metrics import MODULE_LATENCY_SECONDS, observe_many, observe_n
from dps.core.record import Record, decode, encode, encode_keyed
from dps.queues import Lease, Message
from dps.runtime.module import (
    DELIVERY_QUEUE,
    TRANSFORM_QUEUE,
    ModuleHost,
    dlq_from_message,
    undecodable_entry,
)
from dps.state import DlqEntry

#: Records slower than this (their share of their batch's time: a batch goes through the rules
#: together) are remembered for ``/admin/transform/slow-records``.
SLOW_RECORD_SECONDS = 0.001
#: How many recent batches the health rates and the P99 are computed over.
WINDOW_BATCHES = 200


@dataclass(slots=True)
class Batch:
    """What transforming one leased batch produced, before it is committed."""

    bodies: list[tuple[str, bytes]] = field(default_factory=list)
    delivered: int = 0
    dlq: list[DlqEntry] = field(default_factory=list)
    scored: list[tuple[Record, str]] = field(default_factory=list)
    slow: list[Result] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)
    failed: int = 0
    #: Seconds each record waited before this lease (since its ingestion: the transform
    #: queue's wait plus Alpha's own short time).
    waits: list[float] = field(default_factory=list)


#: Seconds over which the transform rate is a sustained rate (the alert rules' 5m).
RATE_WINDOW_SECONDS = 300.0


class BetaModule(ModuleHost):
    """The transform stage (see the module docstring)."""

    name = "beta"
    idle_sleep = 0.005

    def __init__(self, config_dir: Path, *, data_dir: Path | None = None) -> None:
        super().__init__(config_dir, data_dir=data_dir)
        self.inbox = self.open_queue(TRANSFORM_QUEUE, dead_letter=self._dead_letter)
        self.outbox = self.open_queue(DELIVERY_QUEUE)
        # Read at scrape time: right while Beta is paused or stuck, and no query per batch.
        m.BETA_QUEUE_DEPTH.set_function(self._scraped_depth)
        self.quality_stats = QualityStats()
        self.slow_records: deque[dict[str, Any]] = deque(maxlen=1000)
        self.durations: deque[float] = deque(maxlen=5000)
        # (finished at, records, failed, seconds) per batch, for rates in the health report.
        self.batches: deque[tuple[float, int, int, float]] = deque(maxlen=WINDOW_BATCHES)
        self._stats_lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._executor_size = 0
        #: How many batches the last step transformed at once (``/admin/transform/parallelism``).
        self.last_step_batches = 0
        self.apply_config(self.config)

    def apply_config(self, new: PipelineConfig) -> None:
        # Build everything before swapping, so a failure leaves the running ones in place.
        enrichment = Enrichment(new.beta.enrichment, new.beta.settings)
        try:
            rules = RuleSet(new.beta.rules, enrichment=enrichment)
            scorer = QualityScorer(new.beta.scoring, new.root / "beta" / "schemas")
            schemas = SchemaRegistry(new.root / "beta" / "schemas")
        except BaseException:
            enrichment.close()
            raise
        old = getattr(self, "enrichment", None)
        interrupted = enrichment.adopt(old) if old is not None else []
        self.stage = Stage(rules, scorer, schemas)
        self.enrichment = enrichment
        if old is not None:
            old.close()
            # A warmup or refresh the reload stopped goes on here; a source configured anew
            # (or added) is warmed again; kept ones keep their entries.
            for job in interrupted:
                enrichment.refresh(job.source, job.kind)
            for name, cache in enrichment.sources.items():
                if cache.config.cache.warmup and not enrichment.size(name):
                    enrichment.refresh(name, "warmup")

    def sync_schemas(self) -> dict[str, Any]:
        """Read ``beta/schemas/`` again and swap the registry (``beta_schema_sync``); raises
        ConfigError, keeping the running registry, when a file is wrong."""
        schemas = SchemaRegistry(self.config.root / "beta" / "schemas")
        with self.exclusive():  # not in the middle of a batch or a reload
            old = self.stage
            self.stage = Stage(old.rules, old.scorer, schemas)
        return {"status": "synchronized", **schemas.describe()}

    def start_worker(self) -> None:
        """Start the enrichment warmup (in the background, with progress in
        ``/admin/cache/status``), then the worker."""
        self.enrichment.warmup()
        super().start_worker()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self.enrichment.close()
        super().close()

    @property
    def rules(self) -> RuleSet:
        return self.stage.rules

    @property
    def scorer(self) -> QualityScorer:
        assert self.stage.scorer is not None
        return self.stage.scorer

    def _dead_letter(self, messages: Sequence[Message], reason: str) -> None:
        self.state_store.add_dlq_entries(
            [
                dlq_from_message(
                    "beta", msg, reason, stage="transform", config_version=self.config_version
                )
                for msg in messages
            ]
        )

    def step(self) -> bool:
        """Lease up to ``TRANSFORM_PARALLELISM`` batches, transform them at once, commit each.

        Only the first lease waits; the others take what is already queued, so a quiet queue
        costs no latency. Transforming (decode, enrichment prefetch, rules, score, encode) runs
        on the pool; leasing, the hand-off to the delivery queue, the DLQ and the acks stay on
        this thread, in lease order.
        """
        settings = self.config.beta.settings
        first = self.inbox.lease(settings.TRANSFORM_BATCH_SIZE, wait=0.5)
        if not first:
            return False
        started = time.perf_counter()
        leases = [first]
        while len(leases) < settings.TRANSFORM_PARALLELISM:
            more = self.inbox.lease(settings.TRANSFORM_BATCH_SIZE, wait=0.0)
            if not more:
                break
            leases.append(more)
        stage = self.stage
        if len(leases) == 1:
            batches = [self._transform(stage, first)]
        else:
            pool = self._pool(settings.TRANSFORM_PARALLELISM)
            batches = list(pool.map(lambda lease: self._transform(stage, lease), leases))
        for lease, batch in zip(leases, batches, strict=True):
            if batch.bodies:
                self.outbox.put(batch.bodies)
                # From the lease to the delivery queue, shared by the batch's records.
                in_module = time.perf_counter() - started
                observe_n(MODULE_LATENCY_SECONDS.labels(module="beta"), in_module, batch.delivered)
            if batch.dlq:
                self.state_store.add_dlq_entries(batch.dlq)
            self.inbox.ack(lease)
        stage.rules.flush_metrics()
        share = (time.perf_counter() - started) / len(leases)
        with self._stats_lock:
            self.last_step_batches = len(leases)
        for lease, batch in zip(leases, batches, strict=True):
            self._observe(stage, batch, len(lease), share)
        return True

    def _scraped_depth(self) -> float:
        try:
            return float(self.inbox.depth())
        except Exception:  # closed at shutdown, or the broker is away: no number, not a 500
            return float("nan")

    def _pool(self, workers: int) -> ThreadPoolExecutor:
        if self._executor is None or self._executor_size != workers:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
            self._executor = ThreadPoolExecutor(workers, thread_name_prefix="beta-transform")
            self._executor_size = workers
        return self._executor

    def _transform(self, stage: Stage, lease: Lease) -> Batch:
        """One leased batch through the stage; touches no queue and no store."""
        batch = Batch()
        records: list[tuple[Message, Record]] = []
        for msg in lease.messages:
            try:
                record = decode(msg.body)
            except (msgspec.DecodeError, RecursionError) as exc:
                batch.dlq.append(
                    undecodable_entry(
                        "beta",
                        msg,
                        "decode_error",
                        str(exc),
                        stage="decode",
                        config_version=self.config_version,
                        attempts=msg.attempts,
                    )
                )
                batch.failed += 1
                continue
            record.attempts = msg.attempts
            records.append((msg, record))
        leased_at = time.time()
        batch.waits = [max(0.0, leased_at - record.ingested_at) for _, record in records]
        processed = stage.process_batch([record for _, record in records])
        batch.durations = [result.seconds for result in processed]
        batch.slow = [result for result in processed if result.seconds >= SLOW_RECORD_SECONDS]
        batch.scored = [(r.record, r.level) for r in processed if r.record.quality is not None]
        # Out under the leased message's id: the record id, or a DLQ replay's own id, which the
        # delivery queue must not drop as a re-put of the record it acked a moment ago.
        out: list[tuple[str, Record]] = []
        for (msg, record), result in zip(records, processed, strict=True):
            if result.verdict == "delivered":
                out.append((msg.msg_id, record))
                continue
            if result.verdict == "dlq":
                batch.failed += 1
            try:
                body = encode(record)
            except (RecursionError, msgspec.EncodeError):
                body = msg.body
            batch.dlq.append(
                DlqEntry(
                    "beta",
                    record.record_id,
                    record.source_id,
                    record.origin,
                    result.reason,
                    result.message,
                    body,
                    attempts=msg.attempts,
                    stage=_failed_stage(result),
                    correlation_id=record.correlation_id,
                    config_version=self.config_version,
                    rule_versions=_rules_seen(result),
                )
            )
        batch.delivered = len(out)
        if out:
            batch.bodies = encode_keyed(out)
        return batch

    def _observe(self, stage: Stage, batch: Batch, count: int, elapsed: float) -> None:
        scored, slow, durations, failed = batch.scored, batch.slow, batch.durations, batch.failed
        m.BETA_RECORDS_TRANSFORMED_TOTAL.inc(batch.delivered)
        if failed:
            m.BETA_TRANSFORM_FAILURES_TOTAL.inc(failed)
        observe_many(m.BETA_TRANSFORM_DURATION_SECONDS, durations)
        observe_many(m.BETA_QUEUE_WAIT_DURATION_SECONDS, batch.waits)
        observe_many(
            m.BETA_QUALITY_SCORE_DISTRIBUTION,
            [record.quality.score for record, _ in scored if record.quality is not None],
        )
        scorer = stage.scorer
        if scorer is not None and scored:
            self.quality_stats.add(scored, 1.0)
            average = self.quality_stats.stats(scorer)["average_score"]
            if average is not None:
                m.BETA_QUALITY_SCORE.set(average)
        with self._stats_lock:
            self.durations.extend(durations)
            self.batches.append((time.time(), count, failed, elapsed))
            for result in slow:
                self.slow_records.append(
                    {
                        "record_id": result.record.record_id,
                        "source_id": result.record.source_id,
                        "duration_ms": round(result.seconds * 1000, 3),
                        "rules_applied": result.outcome.applied,
                        "verdict": result.verdict,
                        "at": time.time(),
                    }
                )

    # -- what the admin API shows -------------------------------------------------------------
    def window(self) -> dict[str, float | None]:
        """Rates over the recent batches: error rate, records/s while busy, P99 latency."""
        with self._stats_lock:
            batches = list(self.batches)
            durations = sorted(self.durations)
        records = sum(b[1] for b in batches)
        failed = sum(b[2] for b in batches)
        busy = sum(b[3] for b in batches)
        p99 = durations[min(len(durations) - 1, int(len(durations) * 0.99))] if durations else None
        now = time.time()
        sustained: float | None = None
        if now - self.started_at >= RATE_WINDOW_SECONDS:
            recent = sum(b[1] for b in batches if b[0] >= now - RATE_WINDOW_SECONDS)
            sustained = recent / RATE_WINDOW_SECONDS
        return {
            "records": records,
            "error_rate": failed / records if records else None,
            "records_per_second_busy": records / busy if busy > 0 else None,
            "records_per_second": sustained,
            "latency_p99_seconds": p99,
        }

    def queue_depths(self) -> dict[str, int]:
        return {TRANSFORM_QUEUE: self.inbox.depth(), DELIVERY_QUEUE: self.outbox.depth()}

    def status(self) -> dict[str, Any]:
        status = super().status()
        status["rules"] = [r.rule_id for r in self.rules.rules]
        status["active_rules"] = status["rules"]
        return status

    def health(self) -> HealthReport:
        """The worker's health, then the manual's Beta thresholds.

        The transform rate is the manual's sustained rate — records over the last five minutes,
        once the module has run that long — and needs traffic to mean anything, so it is graded
        only while records wait in the queue: a backlog drained at full speed in a few seconds is
        capacity, not a load of 8,000 records/s. The cache hit rate is graded only once there is
        an enrichment cache.
        """
        base = super().health()
        window = self.window()
        depth = self.inbox.depth()
        average = self.quality_stats.stats(self.scorer)["average_score"]
        checks: dict[str, Check] = {
            "transform_error_rate": evaluate("beta.transform_error_rate", window["error_rate"]),
            "quality_score": evaluate("beta.quality_score", average),
            "queue_depth": evaluate("beta.queue_depth", depth),
            "transform_latency_p99": evaluate(
                "beta.transform_latency_p99", window["latency_p99_seconds"]
            ),
        }
        down = sorted(
            name for name, cache in self.enrichment.sources.items() if cache.available is False
        )
        if down:
            # Records still flow (stale entries, or the DLQ with the reason): degraded, not down.
            checks["enrichment_sources"] = Check(
                Health.DEGRADED, message=f"Unavailable enrichment sources: {', '.join(down)}."
            )
        hit_rate = self.enrichment.hit_rate() if self.enrichment.sources else None
        if hit_rate is not None:
            checks["enrichment_cache_hit_rate"] = evaluate(
                "beta.enrichment_cache_hit_rate", hit_rate
            )
        if depth and window["records_per_second"] is not None:
            checks["transform_rate"] = evaluate("beta.transform_rate", window["records_per_second"])
        report = combine({**checks})
        report.checks.update(base.checks)
        report.status = worst(report.status, base.status)
        return report

    def routes(self) -> list[BaseRoute]:
        from dps.beta.admin import beta_routes

        return beta_routes(self)


def _failed_stage(result: Result) -> str:
    """Where in Beta a record left the flow: ``transform`` (a rule failed or dropped it),
    ``schema`` (the output schema refused it) or ``quality`` (scored below ``reject``)."""
    outcome = result.outcome
    if outcome.failed_rule is not None or outcome.dropped:
        return "transform"
    return "quality" if result.reason == "quality_rejected" else "schema"


def _rules_seen(result: Result) -> dict[str, Any]:
    """The rules that saw a record sent to the DLQ (its entry's ``rule_versions``).

    ``applied`` and ``skipped`` (``on_failure: skip``) in the order they ran, ``failed_rule``
    (the rule whose failure sent it here, else null) and ``dropped_by`` (a ``drop_record``
    rule). Rules carry no version of their own: the entry's ``config_version`` names the
    configuration (stored in ``config_versions``) that held them.
    """
    outcome = result.outcome
    return {
        "applied": list(outcome.applied),
        "skipped": list(outcome.skipped),
        "failed_rule": outcome.failed_rule,
        "dropped_by": outcome.applied[-1] if outcome.dropped and outcome.applied else None,
    }
