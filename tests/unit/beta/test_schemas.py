"""The schema registry: versions, negotiation by record characteristics, violations, sync."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests.integration.pipeline_harness import copy_quickstart

from dps.beta.module import BetaModule
from dps.beta.rules import RuleSet
from dps.beta.schemas import SchemaRegistry
from dps.beta.stage import Stage
from dps.core.errors import ConfigError
from dps.core.record import Record

V1 = {
    "type": "object",
    "required": ["order_id", "amount"],
    "properties": {"amount": {"type": "number"}},
}
# v2 moved to integer cents; records that carry amount_cents are v2 records.
V2 = {
    "x-dps": {"match": {"field": "amount_cents", "condition": "exists"}},
    "type": "object",
    "required": ["order_id", "amount_cents", "currency"],
    "properties": {"amount_cents": {"type": "integer"}},
}


def _schemas(folder: Path, files: dict[str, dict[str, Any]]) -> Path:
    for name, schema in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(schema))
    return folder


def _record(n: int, **payload: Any) -> Record:
    return Record(
        record_id=f"s:{n}", source_id="s", correlation_id="c", ingested_at=0.0, payload=payload
    )


@pytest.fixture
def registry(tmp_path: Path) -> SchemaRegistry:
    # flat.json is a quality-scoring schema_ref file: not a versioned schema.
    files = {"order/v1.json": V1, "order/v2.json": V2, "flat.json": {"type": "object"}}
    return SchemaRegistry(_schemas(tmp_path / "schemas", files))


def test_two_versions_loaded_and_negotiated(registry: SchemaRegistry) -> None:
    assert registry.describe()["schemas"] == {
        "order": {
            "record_type": "order",
            "versions": [2, 1],
            "default_version": 1,
            "negotiated_versions": [2],
        }
    }
    stage = Stage(RuleSet([]), None, registry)
    old = stage.process(_record(1, type="order", order_id="A", amount=1.5))
    new = stage.process(_record(2, type="order", order_id="B", amount_cents=150, currency="EUR"))
    assert (old.verdict, new.verdict) == ("delivered", "delivered")
    assert old.record.lineage[-1].action == "schema:order/v1"
    assert new.record.lineage[-1].action == "schema:order/v2"
    # Another type is not checked.
    assert stage.process(_record(3, type="refund")).verdict == "delivered"


def test_violations_and_unknown_versions_go_to_the_dlq(registry: SchemaRegistry) -> None:
    stage = Stage(RuleSet([]), None, registry)
    bad = stage.process(_record(1, type="order", order_id="B", amount_cents=1.5, currency="EUR"))
    assert (bad.verdict, bad.reason) == ("dlq", "schema_violation")
    assert "order/v2" in bad.message and "amount_cents" in bad.message
    missing = stage.process(_record(2, type="order", order_id="A"))
    assert (missing.reason, "order/v1" in missing.message) == ("schema_violation", True)
    asked = stage.process(_record(3, type="order", order_id="A", amount=1, schema_version=1))
    assert asked.verdict == "delivered"
    unknown = stage.process(_record(4, type="order", order_id="A", schema_version=3))
    assert (unknown.verdict, unknown.reason) == ("dlq", "schema_version_unknown")
    assert "loaded: 2, 1" in unknown.message


def test_bad_files_are_configuration_errors(tmp_path: Path) -> None:
    folder = tmp_path / "schemas"
    (folder / "order").mkdir(parents=True)
    (folder / "order" / "latest.json").write_text("{}")
    (folder / "order" / "v1.json").write_text('{"type": "nonsense"}')
    (folder / "order" / "v2.json").write_text(
        '{"x-dps": {"match": {"field": "a", "condition": "zz"}}}'
    )
    with pytest.raises(ConfigError) as caught:
        SchemaRegistry(folder)
    text = str(caught.value)
    assert "beta/schemas/order/latest.json" in text and "v<N>.json" in text
    assert "beta/schemas/order/v1.json" in text and "not a valid JSON Schema" in text
    assert "beta/schemas/order/v2.json" in text and "zz" in text


def test_sync_swaps_the_registry_or_keeps_it(tmp_path: Path) -> None:
    config = copy_quickstart(tmp_path / "config")
    module = BetaModule(config, data_dir=tmp_path / "data")
    try:
        assert module.stage.schemas is not None
        assert module.stage.schemas.describe()["schemas"] == {}
        _schemas(config / "beta" / "schemas", {"order/v1.json": V1, "order/v2.json": V2})
        answer = module.sync_schemas()
        assert answer["schemas"]["order"]["versions"] == [2, 1]
        result = module.stage.process(_record(1, type="order", order_id="A", amount="x"))
        assert result.reason == "schema_violation"
        (config / "beta" / "schemas" / "order" / "v3.json").write_text("{not json")
        with pytest.raises(ConfigError, match=r"v3\.json"):
            module.sync_schemas()
        assert module.stage.schemas.describe()["schemas"]["order"]["versions"] == [2, 1]
    finally:
        module.close()
