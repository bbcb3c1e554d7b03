"""What Beta does to one record, in one place: rules, output schema, quality score, verdict.

The module's worker, ``beta-rule-tester`` and ``dps test`` all go through :class:`Stage`, so a
rule tested before a reload behaves exactly as it will in the running module.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from dps.beta.quality import QualityScorer
from dps.beta.rules import Outcome, RuleSet
from dps.beta.schemas import SchemaRegistry
from dps.core.record import Record

Verdict = Literal["delivered", "dlq", "dropped"]


@dataclass(slots=True)
class Result:
    """One record's way through the stage."""

    record: Record
    outcome: Outcome
    verdict: Verdict
    reason: str = ""
    message: str = ""
    level: str = "ok"
    seconds: float = 0.0


class Stage:
    """Rules then scoring, with one configuration (immutable: a reload builds a new one)."""

    def __init__(
        self,
        rules: RuleSet,
        scorer: QualityScorer | None,
        schemas: SchemaRegistry | None = None,
    ) -> None:
        self.rules = rules
        self.scorer = scorer
        self.schemas = schemas

    def begin_batch(self, records: Sequence[Record]) -> None:
        """Before a batch's records go through :meth:`process`: the enrichment prefetch."""
        self.rules.begin_batch(records)

    def end_batch(self) -> None:
        self.rules.end_batch()

    def process(self, record: Record, now: float | None = None) -> Result:
        started = time.perf_counter()
        outcome = self.rules.apply(record)
        result = Result(record, outcome, "delivered")
        if outcome.failure is not None:
            result.verdict = "dlq"
            result.reason = f"rule_failed:{outcome.failed_rule}"
            result.message = f"Rule {outcome.failed_rule} failed: {outcome.failure}"
        elif outcome.dropped:
            result.verdict = "dropped"
            result.reason = "dropped_by_rule"
            result.message = f"Dropped by rule {outcome.applied[-1]}."
        elif self.schemas is not None and not (checked := self.schemas.check(record)).ok:
            result.verdict = "dlq"
            result.reason = checked.reason
            result.message = checked.message
        elif self.scorer is not None:
            quality = record.quality = self.scorer.score(record, now)
            result.level = self.scorer.level(quality.score)
            if result.level == "reject":
                result.verdict = "dlq"
                result.reason = "quality_rejected"
                dims = ", ".join(f"{k} {v:g}" for k, v in quality.dimensions.items())
                checks = "; ".join(quality.checks) or "none"
                result.message = (
                    f"Quality score {quality.score:g} is below the reject threshold "
                    f"{self.scorer.thresholds.reject:g} (dimensions: {dims}; checks: {checks})."
                )
        result.seconds = time.perf_counter() - started
        return result
