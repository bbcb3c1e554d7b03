"""What Beta does to one record, in one place: rules, output schema, quality score, verdict.

The module's worker, ``beta-rule-tester`` and ``dps test`` all go through :class:`Stage`, so a
rule tested before a reload behaves exactly as it will in the running module: the worker puts a
batch through :meth:`Stage.process_batch`, the tools one record at a time, as a batch of one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from dps.beta.quality import QualityScorer
from dps.beta.rules import Outcome, RuleSet
from dps.beta.schemas import SchemaRegistry
from dps.core.record import Quality, Record

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

    def process(self, record: Record, now: float | None = None) -> Result:
        """One record through the stage (a batch of one: the rule tester runs the module's code)."""
        return self.process_batch([record], now)[0]

    def process_batch(self, records: Sequence[Record], now: float | None = None) -> list[Result]:
        """A batch through the stage: the rules over the whole batch, then the verdict of each
        record (the output schema, or the quality score of the batch's kept records).

        A record's ``seconds`` is its share of the batch's time: the batch goes through the rules
        rule by rule, so no record's own time is measured.
        """
        started = time.perf_counter()
        outcomes = self.rules.apply_batch(records)
        results: list[Result] = []
        to_score: list[Result] = []
        schemas, scorer = self.schemas, self.scorer
        if schemas is not None and not schemas.by_type:
            schemas = None  # no schema: every record would pass unchecked
        for record, outcome in zip(records, outcomes, strict=True):
            result = Result(record, outcome, "delivered")
            results.append(result)
            if outcome.failure is not None:
                result.verdict = "dlq"
                result.reason = f"rule_failed:{outcome.failed_rule}"
                result.message = f"Rule {outcome.failed_rule} failed: {outcome.failure}"
            elif outcome.dropped:
                result.verdict = "dropped"
                result.reason = "dropped_by_rule"
                result.message = f"Dropped by rule {outcome.applied[-1]}."
            elif schemas is not None and not (checked := schemas.check(record)).ok:
                result.verdict = "dlq"
                result.reason = checked.reason
                result.message = checked.message
            elif scorer is not None:
                to_score.append(result)
        if scorer is not None and to_score:
            qualities = scorer.score_batch([result.record for result in to_score], now)
            for result, quality in zip(to_score, qualities, strict=True):
                result.record.quality = quality
                result.level = scorer.level(quality.score)
                if result.level == "reject":
                    result.verdict = "dlq"
                    result.reason = "quality_rejected"
                    result.message = _rejected(scorer, quality)
        if results:
            seconds = (time.perf_counter() - started) / len(results)
            for result in results:
                result.seconds = seconds
        return results


def _rejected(scorer: QualityScorer, quality: Quality) -> str:
    dims = ", ".join(f"{k} {v:g}" for k, v in quality.dimensions.items())
    checks = "; ".join(quality.checks) or "none"
    return (
        f"Quality score {quality.score:g} is below the reject threshold "
        f"{scorer.thresholds.reject:g} (dimensions: {dims}; checks: {checks})."
    )
