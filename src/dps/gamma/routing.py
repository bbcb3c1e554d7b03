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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dps.config.models import DestinationConfig, RoutingRule, classification_allows
from dps.core.conditions import Predicate, compile_condition
from dps.core.record import Record


@dataclass(frozen=True, slots=True)
class Route:
    rule_id: str
    matches: Predicate
    destinations: tuple[str, ...]


@dataclass(slots=True)
class Decision:
    """Where one record goes: destinations, or a DLQ reason."""

    destinations: list[str]
    reason: str | None = None
    detail: str = ""


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
            Route(rule.rule_id, compile_condition(rule.match), tuple(rule.destinations))
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
        chosen: list[str] = []
        for route in self.routes:
            if route.matches(record):
                for dest in route.destinations:
                    if dest not in chosen:
                        chosen.append(dest)
        if not chosen:
            if self.default is None:
                return Decision([], "no_route", "No routing rule matched the record.")
            chosen = [self.default]
        refused = [
            d for d in chosen if d in self.allowed and record.source_id not in self.allowed[d]
        ]
        if refused:
            return Decision(
                [],
                "unauthorized",
                f"Source {record.source_id} is not allowed to deliver to {', '.join(refused)}.",
            )
        if self.source_levels is not None:
            level = self.source_levels.get(record.source_id, "restricted")
            below = [
                d
                for d in chosen
                if d in self.levels and not classification_allows(self.levels[d], level)
            ]
            if below:
                return Decision(
                    [],
                    "unauthorized",
                    f"Source {record.source_id} holds {level} data; "
                    f"{', '.join(f'{d} ({self.levels[d]})' for d in below)} may not receive it.",
                )
        disabled = [d for d in chosen if d not in self.enabled]
        if disabled:
            return Decision(
                [], "destination_disabled", f"Destination {', '.join(disabled)} is disabled."
            )
        return Decision(chosen)
