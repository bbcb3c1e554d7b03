"""Routing: which destinations a record goes to.

Every enabled rule whose ``match`` holds sends the record to its destination(s) (fan-out);
rules are evaluated in priority order and the destinations keep that order. A record that no
rule matches goes to ``default_destination`` when one is set, else to the DLQ as ``no_route``.
Authorization is checked per record too, whatever the rules say: a destination whose
``allowed_sources`` does not list the record's source, or whose ``data_classification`` is below
the source's (``public < internal < confidential < restricted``; the source's level is the
``data_classification`` key of its ``alpha/sources`` file), never receives it — the record goes
to the DLQ as ``unauthorized``. A record of a source the configuration does not know (removed
since it was ingested) counts as ``restricted``: unknown data goes nowhere it might not belong.
(A configuration without any ``alpha/sources`` file, a Gamma-only host, has no levels to compare
and does not check classifications.)
The loader refuses routes that would break either rule; this check catches what a route's
conditions could not show at load (an unrestricted route, the default destination, a reload).

Gamma routes a whole leased batch at once (:meth:`Router.route_batch`): each route's ``match``
runs over the batch, and the decision — destinations or DLQ reason — is made once per
combination of matched routes and source, which a batch has only a few of, instead of once per
record. :meth:`Router.route` is the same decision for one record.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

from dps.config.models import DestinationConfig, RoutingRule, classification_allows
from dps.core.conditions import (
    BatchPredicate,
    Predicate,
    compile_batch_condition,
    compile_condition,
)
from dps.core.record import Record


@dataclass(frozen=True, slots=True)
class Route:
    rule_id: str
    matches: Predicate
    destinations: tuple[str, ...]
    #: ``matches`` over a batch, column-wise where the condition allows (:meth:`route_batch`).
    select: BatchPredicate


@dataclass(slots=True)
class Decision:
    """Where one record goes: destinations, or a DLQ reason."""

    destinations: list[str]
    reason: str | None = None
    detail: str = ""


@dataclass(slots=True)
class RoutedBatch:
    """Where the records of one batch go (:meth:`Router.route_batch`)."""

    #: Destination -> its records in batch order; destinations in the order of their first record
    #: (what routing the records one by one and appending each to its destinations gives).
    plan: dict[str, list[Record]] = field(default_factory=dict)
    #: ``(position in the batch, decision)`` of each record that goes to the DLQ, in batch order.
    refused: list[tuple[int, Decision]] = field(default_factory=list)
    #: The routed records grouped by their destinations (in :attr:`Decision.destinations`
    #: order), each record in one group: for stamping the route steps of their lineage.
    fanout: list[tuple[list[str], list[Record]]] = field(default_factory=list)


#: A record's routing key: the bit mask of the routes that matched it, and its source.
_Key = tuple[int, str]
_source_id = attrgetter("source_id")


class Router:
    """Compiled routing rules for one configuration."""

    def __init__(
        self,
        rules: Sequence[RoutingRule],
        destinations: dict[str, DestinationConfig],
        default_destination: str | None,
        source_classifications: Mapping[str, str] | None = None,
    ) -> None:
        self.routes = [
            Route(
                rule.rule_id,
                compile_condition(rule.match),
                tuple(rule.destinations),
                compile_batch_condition(rule.match),
            )
            for rule in rules
            if rule.enabled
        ]
        self.allowed = {
            dest_id: frozenset(d.authorization.allowed_sources)
            for dest_id, d in destinations.items()
            if d.authorization.allowed_sources is not None
        }
        self.enabled = {dest_id for dest_id, d in destinations.items() if d.enabled}
        self.levels = {
            dest_id: d.authorization.data_classification for dest_id, d in destinations.items()
        }
        #: source id -> its data classification; None: classifications are not checked.
        self.source_levels = (
            dict(source_classifications) if source_classifications is not None else None
        )
        self.default = default_destination

    def route_ids(self) -> list[str]:
        """The enabled routes, in the order they are evaluated."""
        return [route.rule_id for route in self.routes]

    def matching(self, record: Record, destination: str | None = None) -> list[str]:
        """The routes whose ``match`` holds for ``record`` (those sending it to ``destination``).

        For DLQ entries only (their ``rule_versions``): :meth:`route` does not keep them, so
        that routing a record that is delivered costs nothing more.
        """
        return [
            route.rule_id
            for route in self.routes
            if (destination is None or destination in route.destinations) and route.matches(record)
        ]

    def rule_versions(self, record: Record, destination: str | None = None) -> dict[str, Any]:
        """A DLQ entry's ``rule_versions``: ``routes`` (the enabled routes that saw the record)
        and ``matched`` (those whose match held; with ``destination``, those that sent it
        there). ``default_destination`` is set when the record reached ``destination`` only as
        the default destination."""
        matched = self.matching(record, destination)
        versions: dict[str, Any] = {"routes": self.route_ids(), "matched": matched}
        if destination is not None and not matched and destination == self.default:
            versions["default_destination"] = destination
        return versions

    def route(self, record: Record) -> Decision:
        """Where one record goes (see the module docstring)."""
        mask = 0
        for bit, route in enumerate(self.routes):
            if route.matches(record):
                mask |= 1 << bit
        return self._decide(mask, record.source_id)

    def route_batch(self, records: Sequence[Record]) -> RoutedBatch:
        """Route a batch: the same decision as :meth:`route` for every record, made once per
        distinct (matched routes, source) pair of the batch.

        Each route's ``match`` is evaluated once per record, as :meth:`route` does (column-wise
        for a single test, see :func:`compile_batch_condition`); records are not changed. A
        ``match`` that raises fails the whole batch, as it fails :meth:`route`.
        """
        masks = [0] * len(records)
        for bit, route in enumerate(self.routes):
            flag = 1 << bit
            selected = route.select(records)
            masks = [m | flag if hit else m for m, hit in zip(masks, selected, strict=True)]
        keys: list[_Key] = list(zip(masks, map(_source_id, records), strict=True))
        # Distinct keys in the order of their first record, so that the plan's destinations
        # come in the order routing record by record gives them.
        decisions = {key: self._decide(*key) for key in dict.fromkeys(keys)}
        batch = RoutedBatch()
        if len(decisions) == 1:  # the common case: every record goes the same way
            decision = next(iter(decisions.values()))
            if decision.reason is not None:
                batch.refused = [(i, decision) for i in range(len(records))]
                return batch
            batch.plan = {dest: list(records) for dest in decision.destinations}
            batch.fanout = [(decision.destinations, list(records))]
            return batch
        groups: dict[_Key, list[Record]] = {key: [] for key in decisions}
        for key, record in zip(keys, records, strict=True):
            groups[key].append(record)
        feeding: dict[str, list[_Key]] = {}
        for key, decision in decisions.items():
            if decision.reason is None:
                batch.fanout.append((decision.destinations, groups[key]))
                for dest in decision.destinations:
                    feeding.setdefault(dest, []).append(key)
        for dest, dest_keys in feeding.items():
            if len(dest_keys) == 1:
                batch.plan[dest] = list(groups[dest_keys[0]])
            else:
                wanted = set(dest_keys)
                batch.plan[dest] = [
                    r for key, r in zip(keys, records, strict=True) if key in wanted
                ]
        refused = {key for key, decision in decisions.items() if decision.reason is not None}
        if refused:
            batch.refused = [(i, decisions[key]) for i, key in enumerate(keys) if key in refused]
        return batch

    def _decide(self, mask: int, source_id: str) -> Decision:
        """The decision for a record of ``source_id`` that the routes in ``mask`` matched."""
        chosen: list[str] = []
        for bit, route in enumerate(self.routes):
            if mask >> bit & 1:
                for dest in route.destinations:
                    if dest not in chosen:
                        chosen.append(dest)
        if not chosen:
            if self.default is None:
                return Decision([], "no_route", "No routing rule matched the record.")
            chosen = [self.default]
        refused = [d for d in chosen if d in self.allowed and source_id not in self.allowed[d]]
        if refused:
            return Decision(
                [],
                "unauthorized",
                f"Source {source_id} is not allowed to deliver to {', '.join(refused)}.",
            )
        if self.source_levels is not None:
            level = self.source_levels.get(source_id, "restricted")
            below = [
                d
                for d in chosen
                if d in self.levels and not classification_allows(self.levels[d], level)
            ]
            if below:
                return Decision(
                    [],
                    "unauthorized",
                    f"Source {source_id} holds {level} data; "
                    f"{', '.join(f'{d} ({self.levels[d]})' for d in below)} may not receive it.",
                )
        disabled = [d for d in chosen if d not in self.enabled]
        if disabled:
            return Decision(
                [], "destination_disabled", f"Destination {', '.join(disabled)} is disabled."
            )
        return Decision(chosen)
