"""Routing a batch at once gives exactly what routing its records one by one gave.

The reference below is the per-record router and the router loop of ``GammaModule.step`` as
they were before batches were routed at once (kept here verbatim as the oracle): destinations in
priority order and each once, the default destination, ``no_route``, ``unauthorized`` (allowed
sources, classifications, unknown sources), ``destination_disabled``; the plan's destinations in
the order of their first record and each destination's records in batch order; the lineage step
of each route taken, in decision order; DLQ entries in message order.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from dps.config import load_config
from dps.config.models import classification_allows
from dps.core.record import LineageStep, Quality, Record, decode, encode
from dps.gamma.module import GammaModule
from dps.gamma.routing import Decision, Router
from dps.state import DlqEntry

SOURCE_LEVELS = {"s1": "public", "s2": "internal", "s3": "confidential"}  # s4: unknown

DESTINATIONS: list[dict[str, Any]] = [
    {"destination_id": "a"},
    {"destination_id": "b"},
    {"destination_id": "c"},
    {
        "destination_id": "d",
        "enabled": False,
        "authorization": {"data_classification": "restricted"},
    },
    {"destination_id": "e", "authorization": {"allowed_sources": ["s1", "s2"]}},
    {"destination_id": "f", "authorization": {"data_classification": "public"}},
    {"destination_id": "g", "authorization": {"data_classification": "restricted"}},
]

ROUTES: list[dict[str, Any]] = [
    {"rule_id": "GOOD", "priority": 100, "match": {"quality_score": {"gte": 0.8}},
     "destination": ["a", "b"]},
    {"rule_id": "POOR", "priority": 90, "match": {"quality_score": {"lt": 0.5}},
     "destination": "c"},
    {"rule_id": "NORTH_AMERICA", "priority": 80,
     "match": {"payload.country": {"in": ["US", "CA"]}}, "destination": ["b", "a"]},
    {"rule_id": "OFF", "priority": 75, "enabled": False, "destination": "a"},
    {"rule_id": "ORDERS", "priority": 70, "match": {"record_type": "order"}, "destination": "e"},
    {"rule_id": "BIG_OR_STATELESS", "priority": 60,
     "match": {"any": [{"amount": {"gt": 100}}, {"not": {"country": {"exists": True}}}]},
     "destination": "f"},
    {"rule_id": "S3", "priority": 50, "match": {"source_id": {"in": ["s3"]}}, "destination": "d"},
    {"rule_id": "MAIL", "priority": 40,
     "match": {"field": "email", "condition": "regex", "value": "@x\\.com$"}, "destination": "g"},
]  # fmt: skip


def _config_root(tmp_path: Path, default: str | None) -> Path:
    root = tmp_path / f"config-{default}"
    dest_dir = root / "gamma" / "destinations"
    route_dir = root / "gamma" / "routing" / "rules"
    dest_dir.mkdir(parents=True)
    route_dir.mkdir(parents=True)
    for dest in DESTINATIONS:
        doc = {
            "destination_type": "file",
            "connection": {"path": str(tmp_path / "out" / f"{dest['destination_id']}.jsonl")},
            **dest,
        }
        (dest_dir / f"{dest['destination_id']}.yaml").write_text(yaml.safe_dump(doc))
    for route in ROUTES:
        (route_dir / f"{route['rule_id'].lower()}.yaml").write_text(yaml.safe_dump(route))
    if default is not None:
        (root / "gamma" / "gamma.yaml").write_text(f"default_destination: {default}\n")
    return root


def _router(tmp_path: Path, default: str | None, levels: dict[str, str] | None) -> Router:
    gamma = load_config(_config_root(tmp_path, default)).gamma
    return Router(gamma.routes, gamma.destinations, gamma.settings.default_destination, levels)


_ABSENT = object()


def _records(seed: int, count: int) -> list[Record]:
    rng = random.Random(seed)
    choice = rng.choice
    records = []
    for n in range(count):
        payload: dict[str, Any] = {}
        for key, values in (
            ("country", ["US", "CA", "DE", None, ["US"], {"c": "US"}, 12, _ABSENT]),
            ("type", ["order", "refund", None, ["order"], _ABSENT]),
            ("amount", [50, 150, "150", True, None, 100.5, float("nan"), _ABSENT]),
            ("email", ["a@x.com", "b@y.org", 5, None, _ABSENT]),
        ):
            value = choice(values)
            if value is not _ABSENT:
                payload[key] = value
        score = choice([None, 0.0, 0.49, 0.5, 0.79, 0.8, 0.95, 1.0, rng.random()])
        records.append(
            Record(
                record_id=f"r{n}",
                source_id=choice(["s1", "s2", "s3", "s4"]),
                correlation_id=f"c{n}",
                ingested_at=1_700_000_000.0 + n,
                payload=payload,
                quality=Quality(score=score) if score is not None else None,
                lineage=[LineageStep("beta", "RULE_1", 1.0)],
            )
        )
    return records


# -- the oracle: the per-record router and step loop as they were --------------------------------


def _reference_route(router: Router, record: Record) -> Decision:
    chosen: list[str] = []
    for route in router.routes:
        if route.matches(record):
            for dest in route.destinations:
                if dest not in chosen:
                    chosen.append(dest)
    if not chosen:
        if router.default is None:
            return Decision([], "no_route", "No routing rule matched the record.")
        chosen = [router.default]
    refused = [
        d for d in chosen if d in router.allowed and record.source_id not in router.allowed[d]
    ]
    if refused:
        return Decision(
            [],
            "unauthorized",
            f"Source {record.source_id} is not allowed to deliver to {', '.join(refused)}.",
        )
    if router.source_levels is not None:
        level = router.source_levels.get(record.source_id, "restricted")
        below = [
            d
            for d in chosen
            if d in router.levels and not classification_allows(router.levels[d], level)
        ]
        if below:
            return Decision(
                [],
                "unauthorized",
                f"Source {record.source_id} holds {level} data; "
                f"{', '.join(f'{d} ({router.levels[d]})' for d in below)} may not receive it.",
            )
    disabled = [d for d in chosen if d not in router.enabled]
    if disabled:
        return Decision(
            [], "destination_disabled", f"Destination {', '.join(disabled)} is disabled."
        )
    return Decision(chosen)


def _reference_plan(
    router: Router, records: Sequence[Record]
) -> tuple[dict[str, list[Record]], list[tuple[int, str, str]], dict[int, list[str]]]:
    plan: dict[str, list[Record]] = defaultdict(list)
    refused: list[tuple[int, str, str]] = []
    taken: dict[int, list[str]] = {}
    for i, record in enumerate(records):
        decision = _reference_route(router, record)
        if decision.reason is not None:
            refused.append((i, decision.reason, decision.detail))
            continue
        taken[id(record)] = list(decision.destinations)
        for dest in decision.destinations:
            plan[dest].append(record)
    return plan, refused, taken


def _assert_same_as_one_by_one(router: Router, records: list[Record]) -> None:
    plan, refused, taken = _reference_plan(router, records)

    batch = router.route_batch(records)

    assert [(d, [id(r) for r in rs]) for d, rs in batch.plan.items()] == [
        (d, [id(r) for r in rs]) for d, rs in plan.items()
    ]
    assert [(i, d.reason, d.detail) for i, d in batch.refused] == refused
    fanned: dict[int, list[str]] = {}
    for dests, group in batch.fanout:
        for record in group:
            assert id(record) not in fanned, "a record is in two fan-out groups"
            fanned[id(record)] = list(dests)
    assert fanned == taken
    for record in records:
        one, reference = router.route(record), _reference_route(router, record)
        assert (one.destinations, one.reason, one.detail) == (
            reference.destinations,
            reference.reason,
            reference.detail,
        )


@pytest.mark.parametrize("default", [None, "a", "f"])
@pytest.mark.parametrize("levels", [SOURCE_LEVELS, None], ids=["levels", "no-levels"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_batch_is_routed_as_its_records_one_by_one(
    tmp_path: Path, default: str | None, levels: dict[str, str] | None, seed: int
) -> None:
    router = _router(tmp_path, default, levels)
    records = _records(seed, 300)
    _, refused, taken = _reference_plan(router, records)
    reasons = {reason for _, reason, _ in refused}
    # The inputs reach every outcome the router has, so the comparison covers them all.
    assert "destination_disabled" in reasons and "unauthorized" in reasons
    assert default is not None or "no_route" in reasons
    assert any(len(dests) > 1 for dests in taken.values())
    _assert_same_as_one_by_one(router, records)


@pytest.mark.parametrize(
    "score, source, routed",
    [(0.9, "s1", True), (0.9, "s4", False), (0.6, "s2", False)],
    ids=["all-routed", "all-unauthorized", "all-unmatched"],
)
def test_a_batch_whose_records_all_go_the_same_way(
    tmp_path: Path, score: float, source: str, routed: bool
) -> None:
    router = _router(tmp_path, None, SOURCE_LEVELS)
    records = [
        Record(
            record_id=f"r{n}",
            source_id=source,
            correlation_id="c",
            ingested_at=0.0,
            payload={"country": "DE", "email": "n@y.org"},
            quality=Quality(score=score),
        )
        for n in range(5)
    ]
    batch = router.route_batch(records)
    assert bool(batch.plan) is routed and bool(batch.refused) is not routed
    if routed:
        assert batch.plan["a"] is not batch.plan["b"]  # each destination its own list
    _assert_same_as_one_by_one(router, records)


def test_an_empty_batch_routes_nothing(tmp_path: Path) -> None:
    batch = _router(tmp_path, "a", SOURCE_LEVELS).route_batch([])
    assert (batch.plan, batch.refused, batch.fanout) == ({}, [], [])


# -- the router loop of GammaModule.step --------------------------------------------------------


@pytest.fixture
def gamma(tmp_path: Path) -> Iterator[GammaModule]:
    root = _config_root(tmp_path, None)
    module = GammaModule(root, data_dir=tmp_path / "data")  # workers not started: all spooled
    yield module
    module.close()


def test_the_step_spools_stamps_lineage_and_dead_letters_as_one_by_one(
    gamma: GammaModule, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Source levels from a test, not from alpha/sources files: the loader would refuse routes.
    gamma.router.source_levels = dict(SOURCE_LEVELS)
    records = _records(7, 120)
    messages = [(r.record_id, encode(r)) for r in records]
    messages.insert(40, ("broken", b"\xc1 not a record"))
    written: list[DlqEntry] = []
    store_add = gamma.state_store.add_dlq_entries

    def add_dlq_entries(entries: Sequence[DlqEntry]) -> None:
        written.extend(entries)
        store_add(entries)

    monkeypatch.setattr(gamma.state_store, "add_dlq_entries", add_dlq_entries)
    gamma.inbox.put(messages)
    plan, refused, taken = _reference_plan(gamma.router, records)
    assert refused and len(plan) > 2

    assert gamma.step()
    gamma._settle_all()

    expected = [(records[i].record_id, reason, detail) for i, reason, detail in refused]
    at_broken = sum(1 for i, _, _ in refused if i < 40)
    expected.insert(at_broken, ("broken", "decode_error", written[at_broken].error))
    assert [(e.record_id, e.reason, e.error) for e in written] == expected
    for entry in written:
        if entry.reason == "decode_error":
            assert (entry.stage, entry.error_class) == ("route", "poison")
            continue
        original = next(r for r in records if r.record_id == entry.record_id)
        assert entry.body == encode(original)  # no gamma step: the record went nowhere
        assert (entry.stage, entry.error_class, entry.origin) == ("route", "permanent", "")
        assert entry.rule_versions == gamma.router.rule_versions(original)
    by_id = {r.record_id: r for r in records}
    for dest, expected_records in plan.items():
        lease = gamma._consumers[dest].lease(1000)
        spooled = [decode(msg.body) for msg in lease.messages]
        assert [r.record_id for r in spooled] == [r.record_id for r in expected_records]
        for record in spooled:
            original = by_id[record.record_id]
            steps = [(s.stage, s.action) for s in record.lineage]
            assert steps == [("beta", "RULE_1")] + [
                ("gamma", f"route:{d}") for d in taken[id(original)]
            ]
    assert set(gamma.spools) >= set(plan)


def test_a_batch_shares_one_lineage_step_per_destination(
    gamma: GammaModule, monkeypatch: pytest.MonkeyPatch
) -> None:
    handed: dict[str, list[Record]] = {}

    def spool_records(dest: str, records: list[Record]) -> None:
        handed[dest] = records

    monkeypatch.setattr(gamma, "_spool_records", spool_records)
    records = [
        Record(
            record_id=f"r{n}",
            source_id="s1",
            correlation_id="c",
            ingested_at=0.0,
            payload={"country": "US", "amount": 150},
            quality=Quality(score=0.9),
        )
        for n in range(3)
    ]
    gamma.inbox.put([(r.record_id, encode(r)) for r in records])
    assert gamma.step()
    gamma._settle_all()

    assert list(handed) == ["a", "b", "f"]
    first, *rest = handed["a"]
    assert [(s.stage, s.action) for s in first.lineage] == [
        ("gamma", "route:a"),
        ("gamma", "route:b"),
        ("gamma", "route:f"),
    ]
    for record in rest:
        assert all(x is y for x, y in zip(record.lineage, first.lineage, strict=True))
