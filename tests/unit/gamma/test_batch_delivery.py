"""The per-batch builders of the delivery path give what the per-record code gave.

Delivery-log outcomes (with each record's lineage summary), the ``database`` destination's rows
(column mapping) and the percentile windows are built a batch at a time; each is compared here
with the per-record construction it replaces.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dps.core.record import LineageStep, Quality, Record
from dps.gamma.delivery import Percentiles, delivered_outcomes
from dps.gamma.destinations.database import (
    MISSING,
    DatabaseDestination,
    DatabaseDestinationConfig,
    extractor,
)
from dps.state import DeliveryOutcome


def _record(n: int, payload: dict[str, Any], lineage: list[tuple[str, str]], **kw: Any) -> Record:
    return Record(
        record_id=f"src:{n}",
        source_id="src",
        correlation_id=f"c{n}",
        ingested_at=1_764_234_000.0 + n,
        payload=payload,
        lineage=[LineageStep(stage, action, float(i)) for i, (stage, action) in enumerate(lineage)],
        **kw,
    )


LINEAGES: list[list[tuple[str, str]]] = [
    [],
    [("beta", "TRX_1"), ("beta", "enrichment:customers"), ("beta", "TRX_2")],
    [("beta", "TRX_1"), ("beta", "enrichment:customers"), ("beta", "TRX_2"), ("gamma", "route:a")],
    [("beta", "TRX_1"), ("beta", "TRX_1"), ("beta", "enrichment:crm:default")],
    [("alpha", "ingest"), ("beta", "schema:orders/v2"), ("gamma", "route:b")],
    [("beta", "TRX_2"), ("beta", "TRX_1")],
]


def _records() -> list[Record]:
    records = []
    for n in range(60):
        lineage = LINEAGES[n % len(LINEAGES)]
        quality = Quality(score=n / 60, dimensions={"completeness": 1.0}) if n % 4 else None
        records.append(_record(n, {"n": n}, lineage, quality=quality))
    return records


def _fields(outcome: DeliveryOutcome) -> tuple[Any, ...]:
    return tuple(getattr(outcome, name) for name in DeliveryOutcome.__slots__)


def test_delivered_outcomes_are_those_built_record_by_record() -> None:
    records = _records()
    expected = [DeliveryOutcome.of(r, "warehouse", "delivered") for r in records]
    got = delivered_outcomes(records, "warehouse")
    assert [_fields(o) for o in got] == [_fields(o) for o in expected]
    assert {o.quality_score for o in got} >= {None, 0.5}
    assert delivered_outcomes([], "warehouse") == []


def test_add_many_is_add_for_each_value() -> None:
    values = [0.25 * (n % 9) for n in range(3000)]  # exact in binary: sums do not round
    one, many = Percentiles(size=100), Percentiles(size=100)
    for value in values:
        one.add(value)
    for start in range(0, len(values), 700):
        many.add_many(values[start : start + 700])
    many.add_many([])
    assert many.summary() == one.summary()
    assert list(many.values) == list(one.values)


MAPPING = {
    "record_id": "event_id",
    "source_id": "source_id",
    "correlation_id": "correlation_id",
    "ingested_at": "ingested_at",
    "event_time": "event_time",
    "timestamp": "event_timestamp",
    "quality_score": "quality_score",
    "payload": "event_data",
    "amount": "amount",
    "customer": "customer",
    "customer.id": "customer_id",
    "tags": "tags",
    "tags.0": "first_tag",
    "absent": "absent",
}


def _payloads() -> list[dict[str, Any]]:
    return [
        {"amount": "12.50", "customer": {"id": "C1"}, "tags": ["x", "y"]},
        {"amount": 7, "customer": "C2", "tags": [], "absent": None},
        {"customer": {"id": None}, "tags": "t"},
        {"amount": [1, {"a": 2}], "customer": {"id": 5, "more": [1]}, "absent": {"k": "v"}},
        {},
    ]


@pytest.mark.parametrize("mapping", [MAPPING, {"record_id": "id", "payload": "doc"}])
def test_the_rows_of_a_batch_are_the_rows_built_record_by_record(
    tmp_path: Path, mapping: dict[str, str]
) -> None:
    spec = DatabaseDestinationConfig.model_validate(
        {
            "connection": {"type": "sqlite", "path": str(tmp_path / "db.sqlite")},
            "format": {"table": "events", "column_mapping": mapping},
        }
    )
    destination = DatabaseDestination("warehouse", spec)  # not opened: rows only
    records = [
        _record(
            n,
            payload,
            [],
            event_time="2026-11-27T10:00:00Z" if n % 2 else None,
            quality=Quality(score=0.5) if n % 3 else None,
        )
        for n, payload in enumerate(_payloads() * 3)
    ]
    getters = [extractor(field)[0] for field in destination.mapping]
    expected = [
        tuple(None if v is MISSING else v for v in (get(r) for get in getters)) for r in records
    ]
    rows = destination._rows(records)
    assert rows == expected
    assert all(type(row) is tuple for row in rows)
    assert destination._rows([]) == []
