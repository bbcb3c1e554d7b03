"""The rule engine: compiled once per configuration, applied to every record in priority order.

A :class:`RuleSet` is immutable once built; a reload builds a new one and swaps the reference, so a
batch in progress finishes on the rules it started with.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dps.beta.metrics import BETA_RULE_APPLICATIONS_TOTAL
from dps.beta.transforms.base import DROP, Transform
from dps.beta.transforms.lookup import Lookup
from dps.config.models import RuleConfig
from dps.core import registry
from dps.core.conditions import Predicate, compile_condition
from dps.core.errors import TerminalError
from dps.core.record import LineageStep, Record

if TYPE_CHECKING:
    from dps.beta.enrichment.cache import Enrichment


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
    """The enabled rules of a configuration, compiled (all of them with ``include_disabled``:
    the rule tester tries a rule before it is enabled)."""

    def __init__(
        self,
        rules: Sequence[RuleConfig],
        *,
        include_disabled: bool = False,
        enrichment: Enrichment | None = None,
    ) -> None:
        self.rules = [
            CompiledRule(
                rule,
                compile_condition(rule.match),
                registry.get("transforms", rule.transform.type)(
                    rule.transform.config, rule.match_field
                ),
            )
            for rule in rules
            if rule.enabled or include_disabled
        ]
        #: What :meth:`apply` reads of each rule, unpacked once: the per-record loop then does
        #: no attribute lookups (a third of its time went to them).
        self._plan = self._unpack()
        #: ``lookup`` rules, bound to the enrichment cache; the batch prefetch goes over them.
        self.lookups: list[tuple[CompiledRule, Lookup]] = []
        self.enrichment = enrichment
        for rule in self.rules:
            if isinstance(rule.transform, Lookup):
                if enrichment is not None:
                    rule.transform.bind(enrichment)
                self.lookups.append((rule, rule.transform))

        # Per-rule counts for rules with ``metrics.emit``, added to the counter once per batch
        # (``flush_metrics``) rather than once per record.
        # One counter per transforming thread (TRANSFORM_PARALLELISM), merged by the flush,
        # which runs when no batch is in flight: no lock on the per-record path.
        self._local = threading.local()
        self._all_counts: list[Counter[tuple[int, str]]] = []
        self._all_applied: list[list[int]] = []
        self._counts_lock = threading.Lock()
        #: Every count since the rule set was built: ``(rule_id, result) -> n``.
        self.totals: Counter[tuple[str, str]] = Counter()

    def _unpack(self) -> list[tuple[int, Predicate, Any, str, str]]:
        return [
            (index, rule.matches, rule.transform.apply, rule.rule_id, rule.config.on_failure)
            for index, rule in enumerate(self.rules)
        ]

    def begin_batch(self, records: Sequence[Record]) -> None:
        """Prefetch, per lookup rule, the keys of the records it matches now: one cache
        lookup (and at most one source fetch) per rule and batch."""
        if self.enrichment is None:
            return
        self.enrichment.begin_batch()
        for rule, lookup in self.lookups:
            keys = []
            for record in records:
                try:
                    if rule.matches(record):
                        key = lookup.key(record)
                        if key is not None:
                            keys.append(key)
                except RecursionError:
                    continue
            self.enrichment.prefetch(lookup.config.source, keys)

    def end_batch(self) -> None:
        if self.enrichment is not None:
            self.enrichment.end_batch()

    @property
    def _counts(self) -> Counter[tuple[int, str]]:
        counts: Counter[tuple[int, str]] | None = getattr(self._local, "counts", None)
        if counts is None:
            counts = self._local.counts = Counter()
            with self._counts_lock:
                self._all_counts.append(counts)
        return counts

    @property
    def _applied_counts(self) -> list[int]:
        """This thread's "applied" count per rule index (the common result, kept in a list)."""
        applied: list[int] | None = getattr(self._local, "applied", None)
        if applied is None:
            applied = self._local.applied = [0] * len(self.rules)
            with self._counts_lock:
                self._all_applied.append(applied)
        return applied

    def apply(self, record: Record) -> Outcome:
        applied_ids: list[str] = []
        outcome = Outcome(applied=applied_ids, skipped=[])
        applied = self._applied_counts
        lineage = record.lineage
        now = time.time()  # one lineage time per record: the rules run within microseconds
        for index, matches, transform, rule_id, on_failure in self._plan:
            if not matches(record):
                continue
            try:
                result = transform(record)
            except RecursionError:
                exc = TerminalError("transform_failed", "The record is nested too deeply.")
                outcome.failure, outcome.failed_rule = exc, rule_id
                self._counts[index, "failed"] += 1
                return outcome
            except TerminalError as exc:
                if on_failure == "skip":
                    outcome.skipped.append(rule_id)
                    self._counts[index, "skipped"] += 1
                    continue
                outcome.failure = exc
                outcome.failed_rule = rule_id
                self._counts[index, "failed"] += 1
                return outcome
            applied[index] += 1
            applied_ids.append(rule_id)
            lineage.append(LineageStep("beta", rule_id, now))
            if result == DROP:
                outcome.dropped = True
                return outcome
        return outcome

    def flush_metrics(self) -> None:
        """Add the counts since the last flush to ``beta_rule_applications_total``."""
        merged: Counter[tuple[int, str]] = Counter()
        with self._counts_lock:
            for counts in self._all_counts:
                merged.update(counts)
                counts.clear()
            for applied in self._all_applied:
                for index, count in enumerate(applied):
                    if count:
                        merged[index, "applied"] += count
                        applied[index] = 0
        for (index, result), count in merged.items():
            self.totals[self.rules[index].rule_id, result] += count
            config = self.rules[index].config
            if config.metrics.emit:
                tags = config.metrics.tags
                BETA_RULE_APPLICATIONS_TOTAL.labels(
                    rule_id=config.rule_id,
                    rule_type=tags.get("rule_type", config.transform.type),
                    target_field=tags.get("target_field", config.match_field or ""),
                    result=result,
                ).inc(count)


def rule_complexity(rule: RuleConfig) -> dict[str, Any]:
    """A static measure of what a rule costs per record (``/admin/transform/rule-complexity``).

    ``condition_nodes`` counts the tests in ``match``; ``regexes`` the regular expressions a
    record may go through; ``score`` adds them up with a regex weighing 3 and the transform 1.
    """
    nodes, regexes = _condition_size(rule.match)
    if rule.transform.type == "regex_replace":
        regexes += 1
    return {
        "rule_id": rule.rule_id,
        "priority": rule.priority,
        "enabled": rule.enabled,
        "transform_type": rule.transform.type,
        "condition_nodes": nodes,
        "regexes": regexes,
        "score": nodes + 2 * regexes + 1,
    }


def _condition_size(spec: Any) -> tuple[int, int]:
    if not isinstance(spec, dict) or not spec:
        return 0, 0
    if "field" in spec or "condition" in spec:
        return 1, int(spec.get("condition") == "regex")
    nodes = regexes = 0
    for name, body in spec.items():
        parts = body if name in ("all", "any") and isinstance(body, list) else [body]
        if name in ("all", "any", "not"):
            for part in parts:
                n, r = _condition_size(part)
                nodes, regexes = nodes + n, regexes + r
        elif isinstance(body, dict):
            nodes += len(body)
            regexes += int("regex" in body)
        else:
            nodes += 1
    return nodes, regexes
