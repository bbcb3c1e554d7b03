"""Routing: fan-out in priority order, default destination, no_route, unauthorized, disabled.

Destinations, routes and gamma.yaml are written as YAML into a CONFIG_DIR and loaded with
``load_config``, the way Gamma gets them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dps.config import load_config
from dps.core.record import Quality, Record
from dps.gamma.routing import Router


def _destination(dest_id: str, tmp_path: Path, **settings: Any) -> dict[str, Any]:
    return {
        "destination_id": dest_id,
        "destination_type": "file",
        "connection": {"path": str(tmp_path / "out" / f"{dest_id}.jsonl")},
        **settings,
    }


def _route(rule_id: str, destination: str | list[str], **settings: Any) -> dict[str, Any]:
    return {"rule_id": rule_id, "destination": destination, **settings}


def _router(
    tmp_path: Path,
    destinations: list[dict[str, Any]],
    routes: list[dict[str, Any]],
    gamma: dict[str, Any] | None = None,
) -> Router:
    root = tmp_path / "config"
    for folder, docs, key in (
        (root / "gamma" / "destinations", destinations, "destination_id"),
        (root / "gamma" / "routing" / "rules", routes, "rule_id"),
    ):
        folder.mkdir(parents=True)
        for doc in docs:
            (folder / f"{doc[key].lower()}.yaml").write_text(yaml.safe_dump(doc))
    if gamma is not None:
        (root / "gamma" / "gamma.yaml").write_text(yaml.safe_dump(gamma))
    config = load_config(root).gamma
    return Router(config.routes, config.destinations, config.settings.default_destination)


def _record(source_id: str = "orders_file", score: float = 0.9, **payload: Any) -> Record:
    return Record(
        record_id=f"{source_id}:1",
        source_id=source_id,
        correlation_id="c",
        ingested_at=0.0,
        payload=payload,
        quality=Quality(score=score),
    )


def test_a_record_goes_to_every_matching_route_in_priority_order(tmp_path: Path) -> None:
    router = _router(
        tmp_path,
        [_destination(d, tmp_path) for d in ("archive", "warehouse", "review")],
        [
            _route("TO_ARCHIVE", "archive", priority=1),
            _route(
                "TO_WAREHOUSE", "warehouse", priority=100, match={"quality_score": {"gte": 0.7}}
            ),
            _route("TO_REVIEW", "review", priority=50, match={"quality_score": {"lt": 0.7}}),
        ],
    )

    good, poor = router.route(_record(score=0.9)), router.route(_record(score=0.2))

    assert (good.destinations, good.reason) == (["warehouse", "archive"], None)
    assert (poor.destinations, poor.reason) == (["review", "archive"], None)


def test_a_route_may_list_several_destinations_each_taken_once(tmp_path: Path) -> None:
    router = _router(
        tmp_path,
        [_destination(d, tmp_path) for d in ("a", "b", "c")],
        [
            _route("FIRST", ["b", "a"], priority=10),
            _route("SECOND", ["a", "c"], priority=5),
        ],
    )

    assert router.route(_record()).destinations == ["b", "a", "c"]


def test_the_runbook_c1_route_selects_by_source_and_score(tmp_path: Path) -> None:
    router = _router(
        tmp_path,
        [_destination("analytics_warehouse", tmp_path)],
        [
            _route(
                "ROUTE_TO_ANALYTICS",
                "analytics_warehouse",
                priority=100,
                match={
                    "source_id": {"in": ["api_source_1", "file_source_1"]},
                    "quality_score": {"gte": 0.7},
                },
            )
        ],
    )

    assert router.route(_record("file_source_1", 0.7)).destinations == ["analytics_warehouse"]
    assert router.route(_record("file_source_1", 0.5)).reason == "no_route"
    assert router.route(_record("other_source", 0.9)).reason == "no_route"


def test_routes_can_match_payload_fields(tmp_path: Path) -> None:
    router = _router(
        tmp_path,
        [_destination("eu", tmp_path), _destination("rest", tmp_path)],
        [
            _route("EU", "eu", priority=2, match={"customer.region": "EU"}),
            _route("REST", "rest", priority=1, match={"not": {"customer.region": "EU"}}),
        ],
    )

    assert router.route(_record(customer={"region": "EU"})).destinations == ["eu"]
    assert router.route(_record(customer={"region": "US"})).destinations == ["rest"]
    assert router.route(_record()).destinations == ["rest"]


def test_no_matching_route_and_no_default_is_no_route(tmp_path: Path) -> None:
    router = _router(
        tmp_path,
        [_destination("warehouse", tmp_path)],
        [_route("GOOD_ONLY", "warehouse", match={"quality_score": {"gte": 0.7}})],
    )

    decision = router.route(_record(score=0.1))

    assert decision.destinations == []
    assert decision.reason == "no_route"
    assert decision.detail == "No routing rule matched the record."


def test_without_any_route_records_go_to_the_default_destination(tmp_path: Path) -> None:
    router = _router(
        tmp_path, [_destination("catch_all", tmp_path)], [], {"default_destination": "catch_all"}
    )
    assert router.route(_record()).destinations == ["catch_all"]


def test_the_default_destination_takes_only_unmatched_records(tmp_path: Path) -> None:
    router = _router(
        tmp_path,
        [_destination("warehouse", tmp_path), _destination("catch_all", tmp_path)],
        [_route("GOOD_ONLY", "warehouse", match={"quality_score": {"gte": 0.7}})],
        {"default_destination": "catch_all"},
    )

    assert router.route(_record(score=0.9)).destinations == ["warehouse"]
    assert router.route(_record(score=0.1)).destinations == ["catch_all"]


def test_a_disabled_route_is_not_evaluated(tmp_path: Path) -> None:
    router = _router(
        tmp_path,
        [_destination("warehouse", tmp_path)],
        [_route("OFF", "warehouse", enabled=False)],
    )

    assert [route.rule_id for route in router.routes] == []
    assert router.route(_record()).reason == "no_route"


def test_a_source_not_allowed_by_the_destination_is_unauthorized(tmp_path: Path) -> None:
    router = _router(
        tmp_path,
        [
            _destination(
                "restricted",
                tmp_path,
                authorization={"allowed_sources": ["crm_export"]},
            )
        ],
        [_route("EVERYTHING", "restricted")],
    )

    allowed = router.route(_record("crm_export"))
    refused = router.route(_record("orders_file"))

    assert allowed.destinations == ["restricted"]
    assert refused.destinations == []
    assert refused.reason == "unauthorized"
    assert refused.detail == "Source orders_file is not allowed to deliver to restricted."


def test_the_default_destination_is_authorized_too(tmp_path: Path) -> None:
    router = _router(
        tmp_path,
        [_destination("catch_all", tmp_path, authorization={"allowed_sources": []})],
        [],
        {"default_destination": "catch_all"},
    )
    assert router.route(_record()).reason == "unauthorized"


def test_a_disabled_destination_sends_the_record_to_the_dlq(tmp_path: Path) -> None:
    router = _router(
        tmp_path,
        [_destination("paused_sink", tmp_path, enabled=False)],
        [_route("TO_PAUSED", "paused_sink")],
    )

    decision = router.route(_record())

    assert decision.destinations == []
    assert decision.reason == "destination_disabled"
    assert "paused_sink" in decision.detail
