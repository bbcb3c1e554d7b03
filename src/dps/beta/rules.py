"""The rule engine: compiled once per configuration, applied to every record in priority order.

A :class:`RuleSet` is immutable once built; a reload builds a new one and swaps the reference, so a
batch in progress finishes on the rules it started with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dps.beta.transforms.base import DROP, Transform
from dps.config.models import RuleConfig
from dps.core import registry
from dps.core.conditions import Predicate, compile_condition
from dps.core.errors import TerminalError
from dps.core.record import Record


@dataclass(frozen=True, slots=True)
class CompiledRule:
    config: RuleConfig
    matches: Predicate
    transform: Transform

    @property
    def rule_id(self) -> str:
        return self.config.rule_id


@dataclass(slots=True)
class Outcome:
    """What the rules did to one record: kept, dropped, or failed (to the DLQ, with why)."""

    applied: list[str]
    skipped: list[str]
    dropped: bool = False
    failure: TerminalError | None = None
    failed_rule: str | None = None


class RuleSet:
    """The enabled rules of a configuration, compiled."""

    def __init__(self, rules: Sequence[RuleConfig]) -> None:
        self.rules = [
            CompiledRule(
                rule,
                compile_condition(rule.match),
                registry.get("transforms", rule.transform.type)(
                    rule.transform.config, rule.match_field
                ),
            )
            for rule in rules
            if rule.enabled
        ]

    def apply(self, record: Record) -> Outcome:
        outcome = Outcome(applied=[], skipped=[])
        for rule in self.rules:
            if not rule.matches(record):
                continue
            try:
                result = rule.transform.apply(record)
            except TerminalError as exc:
                if rule.config.on_failure == "skip":
                    outcome.skipped.append(rule.rule_id)
                    continue
                outcome.failure = exc
                outcome.failed_rule = rule.rule_id
                return outcome
            outcome.applied.append(rule.rule_id)
            record.touched("beta", rule.rule_id)
            if result == DROP:
                outcome.dropped = True
                return outcome
        return outcome
