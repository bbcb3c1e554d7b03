"""Module Beta: take a batch from the transform queue, apply rules, score, pass it on.

A batch is acknowledged on the transform queue only after its records are durable in the
delivery queue and its failures are in the Beta DLQ; a crash before that redelivers the batch,
and the delivery queue's idempotent put (record id as message id) keeps the copies out.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from dps.beta import metrics as m
from dps.beta.quality import QualityScorer
from dps.beta.rules import RuleSet
from dps.config import PipelineConfig
from dps.core.record import Record, decode, encode, encode_many
from dps.queues import Message
from dps.runtime.module import DELIVERY_QUEUE, TRANSFORM_QUEUE, ModuleHost, dlq_from_message
from dps.state import DlqEntry


class BetaModule(ModuleHost):
    """The transform stage (see the module docstring)."""

    name = "beta"
    idle_sleep = 0.05

    def __init__(self, config_dir: Path, *, data_dir: Path | None = None) -> None:
        super().__init__(config_dir, data_dir=data_dir)
        self.inbox = self.open_queue(TRANSFORM_QUEUE, dead_letter=self._dead_letter)
        self.outbox = self.open_queue(DELIVERY_QUEUE)
        self.apply_config(self.config)

    def apply_config(self, new: PipelineConfig) -> None:
        # Build both before swapping, so a failure leaves the running ones in place.
        rules = RuleSet(new.beta.rules)
        scorer = QualityScorer(new.beta.scoring)
        self.rules, self.scorer = rules, scorer

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
        rules, scorer = self.rules, self.scorer
        out: list[Record] = []
        dlq: list[DlqEntry] = []
        for msg in lease.messages:
            try:
                record = decode(msg.body)
            except msgspec.DecodeError as exc:
                dlq.append(DlqEntry("beta", msg.msg_id, "", "", "decode_error", str(exc), msg.body))
                continue
            record.attempts = msg.attempts
            outcome = rules.apply(record)
            if outcome.failure is not None:
                m.BETA_TRANSFORM_FAILURES_TOTAL.inc()
                dlq.append(
                    DlqEntry(
                        "beta",
                        record.record_id,
                        record.source_id,
                        record.origin,
                        f"rule_failed:{outcome.failed_rule}",
                        str(outcome.failure),
                        encode(record),
                    )
                )
                continue
            if outcome.dropped:
                dlq.append(
                    DlqEntry(
                        "beta",
                        record.record_id,
                        record.source_id,
                        record.origin,
                        "dropped_by_rule",
                        f"Dropped by rule {outcome.applied[-1]}.",
                        encode(record),
                    )
                )
                continue
            record.quality = scorer.score(record)
            m.BETA_QUALITY_SCORE_DISTRIBUTION.observe(record.quality.score)
            out.append(record)
        if out:
            self.outbox.put(encode_many(out))
        if dlq:
            self.state_store.add_dlq_entries(dlq)
        self.inbox.ack(lease)
        rules.flush_metrics()
        elapsed = time.perf_counter() - started
        m.BETA_RECORDS_TRANSFORMED_TOTAL.inc(len(out))
        m.BETA_TRANSFORM_DURATION_SECONDS.observe(elapsed / max(1, len(lease)))
        if out:
            m.BETA_QUALITY_SCORE.set(sum(r.quality.score for r in out if r.quality) / len(out))
        m.BETA_QUEUE_DEPTH.set(self.inbox.depth())
        return True

    def queue_depths(self) -> dict[str, int]:
        return {TRANSFORM_QUEUE: self.inbox.depth(), DELIVERY_QUEUE: self.outbox.depth()}

    def status(self) -> dict[str, Any]:
        status = super().status()
        status["rules"] = [r.rule_id for r in self.rules.rules]
        return status
