"""``observe_many`` counts a batch into a histogram exactly as ``observe`` one by one would."""

from __future__ import annotations

import math
import random

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


def test_a_large_batch_with_values_on_the_bounds_counts_as_observe_does() -> None:
    rng = random.Random(5)
    buckets = (0.005, 0.01, 0.1, 0.5, 1.0, 5.0)
    values = [rng.choice([*buckets, rng.uniform(-1, 10), rng.expovariate(20)]) for _ in range(5000)]
    registry = CollectorRegistry()
    one = Histogram("one_by_one", "", buckets=buckets, registry=registry)
    many = Histogram("batch", "", buckets=buckets, registry=registry)
    for value in values:
        one.observe(value)
    for start in range(0, len(values), 2000):
        observe_many(many, values[start : start + 2000])
    expected = {
        (name.replace("one_by_one", "batch"), le): v for (name, le), v in samples(one).items()
    }
    assert samples(many) == pytest.approx(expected)


def test_a_nan_is_summed_and_left_out_of_the_buckets_as_observe_does() -> None:
    registry = CollectorRegistry()
    buckets = (0.1, 1.0)
    one = Histogram("one_by_one", "", buckets=buckets, registry=registry)
    many = Histogram("batch", "", buckets=buckets, registry=registry)
    values = [0.5, math.nan, 0.05, 3.0]
    for value in values:
        one.observe(value)
    observe_many(many, values)
    got, want = samples(many), samples(one)
    assert [v for (name, _), v in got.items() if name == "batch_bucket"] == [
        v for (name, _), v in want.items() if name == "one_by_one_bucket"
    ]
    assert math.isnan(got[("batch_sum", "")]) and math.isnan(want[("one_by_one_sum", "")])
