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
from pathlib import Path
from typing import Any

import msgspec
from starlette.routing import BaseRoute

from dps.beta import metrics as m
from dps.beta.quality import QualityScorer, QualityStats
from dps.beta.rules import RuleSet
from dps.beta.stage import Result, Stage
from dps.config import PipelineConfig
from dps.core.health import Check, HealthReport, combine, evaluate, worst
from dps.core.record import Record, decode, encode, encode_many
from dps.queues import Message
from dps.runtime.module import DELIVERY_QUEUE, TRANSFORM_QUEUE, ModuleHost, dlq_from_message
from dps.state import DlqEntry

#: Records slower than this are remembered for ``/admin/transform/slow-records``.
SLOW_RECORD_SECONDS = 0.001
#: How many recent batches the health rates and the P99 are computed over.
WINDOW_BATCHES = 200


class BetaModule(ModuleHost):
    """The transform stage (see the module docstring)."""

    name = "beta"
    idle_sleep = 0.05

    def __init__(self, config_dir: Path, *, data_dir: Path | None = None) -> None:
        super().__init__(config_dir, data_dir=data_dir)
        self.inbox = self.open_queue(TRANSFORM_QUEUE, dead_letter=self._dead_letter)
        self.outbox = self.open_queue(DELIVERY_QUEUE)
        self.quality_stats = QualityStats()
        self.slow_records: deque[dict[str, Any]] = deque(maxlen=1000)
        self.durations: deque[float] = deque(maxlen=5000)
        # (finished at, records, failed, seconds) per batch, for rates in the health report.
        self.batches: deque[tuple[float, int, int, float]] = deque(maxlen=WINDOW_BATCHES)
        self._stats_lock = threading.Lock()
        self.apply_config(self.config)

    def apply_config(self, new: PipelineConfig) -> None:
        # Build everything before swapping, so a failure leaves the running ones in place.
        rules = RuleSet(new.beta.rules)
        scorer = QualityScorer(new.beta.scoring, new.root / "beta" / "schemas")
        self.stage = Stage(rules, scorer)

    @property
    def rules(self) -> RuleSet:
        return self.stage.rules

    @property
    def scorer(self) -> QualityScorer:
        assert self.stage.scorer is not None
        return self.stage.scorer

    def _dead_letter(self, messages: Sequence[Message], reason: str) -> None:
        self.state_store.add_dlq_entries(
            [dlq_from_message("beta", msg, reason) for msg in messages]
        )

    def step(self) -> bool:
        settings = self.config.beta.settings
        lease = self.inbox.lease(settings.TRANSFORM_BATCH_SIZE, wait=0.5)
        if not lease:
            m.BETA_QUEUE_DEPTH.set(self.inbox.depth())
            return False
        started = time.perf_counter()
        stage = self.stage
        out: list[Record] = []
        scored: list[tuple[Record, str]] = []
        dlq: list[DlqEntry] = []
        slow: list[Result] = []
        durations: list[float] = []
        failed = 0
        for msg in lease.messages:
            try:
                record = decode(msg.body)
            except (msgspec.DecodeError, RecursionError) as exc:
                dlq.append(DlqEntry("beta", msg.msg_id, "", "", "decode_error", str(exc), msg.body))
                failed += 1
                continue
            record.attempts = msg.attempts
            result = stage.process(record)
            durations.append(result.seconds)
            if result.seconds >= SLOW_RECORD_SECONDS:
                slow.append(result)
            if record.quality is not None:
                scored.append((record, result.level))
            if result.verdict == "delivered":
                out.append(record)
                continue
            if result.verdict == "dlq":
                failed += 1
            try:
                body = encode(record)
            except (RecursionError, msgspec.EncodeError):
                body = msg.body
            dlq.append(
                DlqEntry(
                    "beta",
                    record.record_id,
                    record.source_id,
                    record.origin,
                    result.reason,
                    result.message,
                    body,
                )
            )
        if out:
            self.outbox.put(encode_many(out))
        if dlq:
            self.state_store.add_dlq_entries(dlq)
        self.inbox.ack(lease)
        stage.rules.flush_metrics()
        elapsed = time.perf_counter() - started
        self._observe(stage, out, scored, slow, durations, len(lease), failed, elapsed)
        return True

    def _observe(
        self,
        stage: Stage,
        out: list[Record],
        scored: list[tuple[Record, str]],
        slow: list[Result],
        durations: list[float],
        count: int,
        failed: int,
        elapsed: float,
    ) -> None:
        m.BETA_RECORDS_TRANSFORMED_TOTAL.inc(len(out))
        if failed:
            m.BETA_TRANSFORM_FAILURES_TOTAL.inc(failed)
        for seconds in durations:
            m.BETA_TRANSFORM_DURATION_SECONDS.observe(seconds)
        for record, _ in scored:
            assert record.quality is not None
            m.BETA_QUALITY_SCORE_DISTRIBUTION.observe(record.quality.score)
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
        m.BETA_QUEUE_DEPTH.set(self.inbox.depth())

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
        return {
            "records": records,
            "error_rate": failed / records if records else None,
            "records_per_second_busy": records / busy if busy > 0 else None,
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

        The transform rate needs traffic to mean anything, so it is graded only while records
        wait in the queue; the cache hit rate only once there is an enrichment cache.
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
        if depth:
            checks["transform_rate"] = evaluate(
                "beta.transform_rate", window["records_per_second_busy"]
            )
        report = combine({**checks})
        report.checks.update(base.checks)
        report.status = worst(report.status, base.status)
        return report

    def routes(self) -> list[BaseRoute]:
        from dps.beta.admin import beta_routes

        return beta_routes(self)
