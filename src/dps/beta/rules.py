"""The rule engine: compiled once per configuration, applied to every record in priority order.

A :class:`RuleSet` is immutable once built; a reload builds a new one and swaps the reference, so a
batch in progress finishes on the rules it started with.

A batch goes through the rules rule by rule (:meth:`RuleSet.apply_batch`): each rule selects the
records it matches among those still in the flow (its condition over the batch), then transforms
them in one call (``Transform.apply_batch``), then shares one lineage step among them. Each
record still meets the rules in priority order, and a record that fails (``on_failure`` other than
``skip``) or is dropped meets no later rule, exactly as one record at a time; a single record is a
batch of one (:meth:`RuleSet.apply`), so the rule tester runs the module's code.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import compress
from typing import TYPE_CHECKING, Any

from dps.beta.metrics import BETA_RULE_APPLICATIONS_TOTAL
from dps.beta.transforms.base import DROP, Events, Transform
from dps.beta.transforms.lookup import Lookup
from dps.config.models import RuleConfig
from dps.core import registry
from dps.core.conditions import (
    BatchPredicate,
    Predicate,
    compile_batch_condition,
    compile_condition,
)
from dps.core.errors import TerminalError
from dps.core.record import LineageStep, Record

if TYPE_CHECKING:
    from dps.beta.enrichment.cache import Enrichment


@dataclass(frozen=True, slots=True)
class CompiledRule:
    config: RuleConfig
    matches: Predicate
    transform: Transform
    #: ``matches`` over a batch; None: ``matches`` on each record.
    select: BatchPredicate | None = None

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


#: What :meth:`RuleSet.apply_batch` reads of each rule, unpacked once per rule set:
#: ``(index, select, transform.apply_batch, rule_id, on_failure)``.
_Plan = list[tuple[int, BatchPredicate, Callable[[Sequence[Record]], Events], str, str]]


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
        self.rules: list[CompiledRule] = []
        for config in rules:
            if config.enabled or include_disabled:
                matches = compile_condition(config.match)
                select = compile_batch_condition(config.match)
                transform = registry.get("transforms", config.transform.type)(
                    config.transform.config, config.match_field
                )
                self.rules.append(CompiledRule(config, matches, transform, select))
        self._plan = self._unpack()
        self.enrichment = enrichment
        for rule in self.rules:
            if isinstance(rule.transform, Lookup) and enrichment is not None:
                rule.transform.bind(enrichment)

        # Per-rule counts for rules with ``metrics.emit``, added to the counter once per batch
        # (``flush_metrics``) rather than once per record.
        # One counter per transforming thread (TRANSFORM_PARALLELISM), merged by the flush,
        # which runs when no batch is in flight: no lock on the per-batch path.
        self._local = threading.local()
        self._all_counts: list[Counter[tuple[int, str]]] = []
        self._all_applied: list[list[int]] = []
        self._counts_lock = threading.Lock()
        #: Every count since the rule set was built: ``(rule_id, result) -> n``.
        self.totals: Counter[tuple[str, str]] = Counter()
        #: Measured cost since the rule set was built: ``rule_id -> [seconds, records]``, the
        #: time of the rule's match and transform over the batches, and the records it looked
        #: at (the hotspots of ``/admin/transform/rule-complexity``; records are not timed one
        #: by one, a rule over a batch is).
        self.timings: dict[str, list[float]] = {rule.rule_id: [0.0, 0.0] for rule in self.rules}
        self._all_timings: list[list[float]] = []

    def _unpack(self) -> _Plan:
        plan: _Plan = []
        for index, rule in enumerate(self.rules):
            select = rule.select or _each(rule.matches)
            plan.append(
                (index, select, rule.transform.apply_batch, rule.rule_id, rule.config.on_failure)
            )
        return plan

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

    @property
    def _timing(self) -> list[float]:
        """This thread's ``[seconds, records, seconds, records, ...]`` by rule index."""
        timing: list[float] | None = getattr(self._local, "timing", None)
        if timing is None:
            timing = self._local.timing = [0.0] * (2 * len(self.rules))
            with self._counts_lock:
                self._all_timings.append(timing)
        return timing

    def apply(self, record: Record) -> Outcome:
        """The rules on one record (a batch of one)."""
        return self.apply_batch([record])[0]

    def apply_batch(self, records: Sequence[Record]) -> list[Outcome]:
        """The rules on a batch, rule by rule (see the module docstring); an outcome per record.

        The records of a batch share one lineage step per rule (steps are never changed once
        made), stamped when the batch started.
        """
        outcomes = [Outcome([], []) for _ in records]
        # The records still in the flow, and their outcomes.
        live, live_outcomes = list(records), list(outcomes)
        applied = self._applied_counts
        timing = self._timing
        clock = time.perf_counter
        now = time.time()
        for index, select, transform, rule_id, on_failure in self._plan:
            if not live:
                break
            started = clock()
            timing[2 * index + 1] += len(live)
            mask = select(live)
            if all(mask):
                chosen, chosen_outcomes = live, live_outcomes
            else:
                chosen = list(compress(live, mask))
                if not chosen:
                    timing[2 * index] += clock() - started
                    continue
                chosen_outcomes = list(compress(live_outcomes, mask))
            events = transform(chosen)
            timing[2 * index] += clock() - started
            step = LineageStep("beta", rule_id, now)
            if not events:
                for record in chosen:
                    record.lineage.append(step)
                for outcome in chosen_outcomes:
                    outcome.applied.append(rule_id)
                applied[index] += len(chosen)
                continue
            left = self._settle(index, rule_id, on_failure, step, chosen, chosen_outcomes, events)
            if left:
                kept = [i for i, outcome in enumerate(live_outcomes) if id(outcome) not in left]
                live = [live[i] for i in kept]
                live_outcomes = [live_outcomes[i] for i in kept]
        return outcomes

    def _settle(
        self,
        index: int,
        rule_id: str,
        on_failure: str,
        step: LineageStep,
        chosen: list[Record],
        outcomes: list[Outcome],
        events: Events,
    ) -> set[int]:
        """One rule's results when some of its records were dropped or failed; the ids of the
        outcomes of the records that leave the flow."""
        by_position = dict(events)
        left: set[int] = set()
        done = 0
        counts = self._counts
        for position, (record, outcome) in enumerate(zip(chosen, outcomes, strict=True)):
            event = by_position.get(position)
            if event is None or event == DROP:
                done += 1
                outcome.applied.append(rule_id)
                record.lineage.append(step)
                if event is not None:
                    outcome.dropped = True
                    left.add(id(outcome))
            elif isinstance(event, RecursionError):
                exc = TerminalError("transform_failed", "The record is nested too deeply.")
                outcome.failure, outcome.failed_rule = exc, rule_id
                counts[index, "failed"] += 1
                left.add(id(outcome))
            elif on_failure == "skip":
                outcome.skipped.append(rule_id)
                counts[index, "skipped"] += 1
            else:
                assert isinstance(event, TerminalError)
                outcome.failure, outcome.failed_rule = event, rule_id
                counts[index, "failed"] += 1
                left.add(id(outcome))
        self._applied_counts[index] += done
        return left

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
            for timing in self._all_timings:
                for index, rule in enumerate(self.rules):
                    total = self.timings[rule.rule_id]
                    total[0] += timing[2 * index]
                    total[1] += timing[2 * index + 1]
                timing[:] = [0.0] * len(timing)
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


def _each(matches: Predicate) -> BatchPredicate:
    return lambda records: [matches(record) for record in records]


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
