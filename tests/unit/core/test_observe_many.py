"""``observe_many`` counts a batch into a histogram exactly as ``observe`` one by one would."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram

from dps.core.metrics import observe_many

VALUES = [0.0, 0.004, 0.005, 0.0051, 0.2, 0.2, 1.0, 7.5, 1e9, -1.0]


def samples(histogram: Histogram) -> dict[tuple[str, str], float]:
    return {
        (s.name, s.labels.get("le", "")): s.value
        for metric in histogram.collect()
        for s in metric.samples
    }


def test_observe_many_matches_observe() -> None:
    registry = CollectorRegistry()
    buckets = (0.005, 0.01, 0.1, 0.5, 1.0, 5.0)
    one = Histogram("one_by_one", "", buckets=buckets, registry=registry)
    many = Histogram("batch", "", buckets=buckets, registry=registry)
    for value in VALUES:
        one.observe(value)
    observe_many(many, VALUES[:4])
    observe_many(many, [])
    observe_many(many, VALUES[4:])
    expected = {
        (name.replace("one_by_one", "batch"), le): v for (name, le), v in samples(one).items()
    }
    assert samples(many) == pytest.approx(expected)  # the sum adds in another order
    assert samples(many)[("batch_count", "")] == len(VALUES)


def test_observe_many_on_a_labelled_child() -> None:
    registry = CollectorRegistry()
    histogram = Histogram("lat", "", ["destination"], buckets=(0.1, 1.0), registry=registry)
    observe_many(histogram.labels(destination="warehouse"), [0.05, 0.5, 2.0])
    got = {
        (s.name, s.labels.get("le")): s.value
        for metric in histogram.collect()
        for s in metric.samples
    }
    assert got[("lat_bucket", "0.1")] == 1
    assert got[("lat_bucket", "1.0")] == 2
    assert got[("lat_bucket", "+Inf")] == 3
    assert got[("lat_sum", None)] == pytest.approx(2.55)
