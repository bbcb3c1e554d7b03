"""``data_classification``: public < internal < confidential < restricted.

A source's level is the ``data_classification`` key of its ``alpha/sources`` file (default
``internal``); a destination's is ``authorization.data_classification`` (default ``internal``):
the most sensitive data it may receive. A route that would send a source's data to a less
classified destination is refused at load; at run time such a record goes to the DLQ as
``unauthorized``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from dps.config import load_config
from dps.config.models import DATA_CLASSIFICATIONS, PipelineConfig, classification_allows
from dps.core.errors import ConfigError
from dps.core.record import Quality, Record
from dps.gamma.routing import Router


def _write(folder: Path, name: str, doc: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(doc))


def _config(
    tmp_path: Path,
    sources: dict[str, str | None],
    destinations: dict[str, str | None],
    routes: list[dict[str, Any]],
) -> Path:
    root = tmp_path / "config"
    for source_id, level in sources.items():
        doc: dict[str, Any] = {
            "source_id": source_id,
            "source_type": "file",
            "connection": {"path": str(tmp_path / "in"), "pattern": "*.ndjson"},
            "parsing": {"format": "ndjson"},
        }
        if level is not None:
            doc["data_classification"] = level
        _write(root / "alpha" / "sources", source_id, doc)
    for dest_id, level in destinations.items():
        dest: dict[str, Any] = {
            "destination_id": dest_id,
            "destination_type": "file",
            "connection": {"path": str(tmp_path / "out" / f"{dest_id}.jsonl")},
        }
        if level is not None:
            dest["authorization"] = {"data_classification": level}
        _write(root / "gamma" / "destinations", dest_id, dest)
    for route in routes:
        _write(root / "gamma" / "routing" / "rules", route["rule_id"].lower(), route)
    return root


def _router(config: PipelineConfig) -> Router:
    return Router(
        config.gamma.routes,
        config.gamma.destinations,
        config.gamma.settings.default_destination,
        {s: src.data_classification for s, src in config.alpha.sources.items()},
    )


def _record(source_id: str) -> Record:
    return Record(
        record_id=f"{source_id}:1",
        source_id=source_id,
        correlation_id="c",
        ingested_at=0.0,
        payload={"a": 1},
        quality=Quality(score=0.9),
    )


def test_the_order_is_public_internal_confidential_restricted() -> None:
    assert DATA_CLASSIFICATIONS == ("public", "internal", "confidential", "restricted")
    assert classification_allows("confidential", "internal")
    assert classification_allows("internal", "internal")
    assert not classification_allows("internal", "confidential")
    assert not classification_allows("public", "restricted")


def test_sources_and_destinations_default_to_internal(tmp_path: Path) -> None:
    config = load_config(
        _config(tmp_path, {"orders": None}, {"warehouse": None}, [_route("ALL", "warehouse")])
    )
    assert config.alpha.sources["orders"].data_classification == "internal"
    assert config.gamma.destinations["warehouse"].authorization.data_classification == "internal"
    assert _router(config).route(_record("orders")).destinations == ["warehouse"]


def _route(rule_id: str, destination: str, **settings: Any) -> dict[str, Any]:
    return {"rule_id": rule_id, "destination": destination, **settings}


def test_a_route_by_source_to_a_less_classified_destination_is_refused_at_load(
    tmp_path: Path,
) -> None:
    root = _config(
        tmp_path,
        {"hr_export": "confidential", "orders": "internal"},
        {"public_api": "public", "vault": "restricted"},
        [
            _route("HR_OUT", "public_api", match={"source_id": {"in": ["hr_export", "orders"]}}),
            _route("HR_SAFE", "vault", match={"source_id": {"in": ["hr_export"]}}),
        ],
    )
    with pytest.raises(ConfigError) as caught:
        load_config(root)
    issues = caught.value.issues
    assert len(issues) == 1, issues
    issue = issues[0]
    assert "hr_out.yaml" in issue.file and issue.key == "match.source_id"
    assert "hr_export (confidential)" in issue.message and "orders (internal)" in issue.message
    assert '"public_api"' in issue.message and "is public" in issue.message


def test_an_unrestricted_route_is_checked_against_every_source(tmp_path: Path) -> None:
    root = _config(
        tmp_path,
        {"hr_export": "restricted", "orders": "public"},
        {"public_api": "public"},
        [_route("EVERYTHING", "public_api")],
    )
    with pytest.raises(ConfigError) as caught:
        load_config(root)
    [issue] = caught.value.issues
    assert issue.key == "destination" and "hr_export (restricted)" in issue.message
    assert "orders" not in issue.message and "restrict the match's source_id" in issue.message


def test_at_run_time_a_record_above_the_destination_level_is_unauthorized(
    tmp_path: Path,
) -> None:
    # The loader refuses such a default destination (test below); the router checks anyway,
    # for the records a stale configuration in another module lets through.
    root = _config(
        tmp_path,
        {"hr_export": "confidential", "orders": "public"},
        {"public_api": "public", "vault": "restricted"},
        [],
    )
    config = load_config(root)
    router = Router(
        config.gamma.routes,
        config.gamma.destinations,
        "public_api",
        {s: src.data_classification for s, src in config.alpha.sources.items()},
    )

    assert router.route(_record("orders")).destinations == ["public_api"]
    refused = router.route(_record("hr_export"))
    assert (refused.destinations, refused.reason) == ([], "unauthorized")
    assert "confidential" in refused.detail and "public_api (public)" in refused.detail
    # A source the configuration does not know counts as restricted.
    unknown = router.route(_record("gone_source"))
    assert unknown.reason == "unauthorized" and "restricted" in unknown.detail


def test_a_default_destination_below_a_source_level_is_refused_at_load(tmp_path: Path) -> None:
    root = _config(
        tmp_path, {"hr_export": "confidential", "orders": "public"}, {"public_api": "public"}, []
    )
    (root / "gamma" / "gamma.yaml").write_text("default_destination: public_api\n")
    with pytest.raises(ConfigError) as caught:
        load_config(root)
    [issue] = caught.value.issues
    assert issue.key == "default_destination" and "hr_export" in issue.message
    assert "orders" not in issue.message


def test_without_source_levels_classifications_are_not_checked(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, {}, {"public_api": "public"}, []))
    router = Router([], config.gamma.destinations, "public_api", None)
    assert router.route(_record("anything")).destinations == ["public_api"]
