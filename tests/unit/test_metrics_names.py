"""Every metric the operations manual names exists, with the manual's type and buckets.

The manual is read from ``../shared/spec/operations-manual.md`` beside the repository (as in CI):
its "Metric Types" tables, the ``condition:`` of every alert rule, the PromQL of the runbooks and
the ``curl .../metrics | grep ...`` lines.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric

import dps.alpha.metrics
import dps.beta.metrics
import dps.core.metrics
import dps.gamma.metrics

MANUAL = Path(__file__).parents[2] / ".." / "shared" / "spec" / "operations-manual.md"
DOCS = Path(__file__).parents[2] / "docs" / "metrics.md"
MODULES: dict[str, ModuleType] = {
    "alpha": dps.alpha.metrics,
    "beta": dps.beta.metrics,
    "gamma": dps.gamma.metrics,
    "core": dps.core.metrics,
}
PROMQL_WORDS = {"offset", "by", "without", "on", "ignoring", "bool", "and", "or", "unless", "le"}
#: ``curl .../metrics | grep X`` lines where X is a label value, not part of a metric name.
GREPPED_LABELS = {"new_api_source": ("alpha", "source_id"), "TRX_042": ("beta", "rule_id")}


@cache
def manual() -> str:
    if not MANUAL.is_file():
        pytest.fail(
            f"The operations manual is not at {MANUAL.resolve()}; these tests need the shared "
            "spec checked out beside the repository (../shared/spec/operations-manual.md)."
        )
    return MANUAL.read_text(encoding="utf-8")


def section(start: str, end: str) -> str:
    text = manual()
    begin = text.index(start)
    return text[begin : text.index(end, begin)]


def family(metric: MetricWrapperBase) -> Metric:
    [described] = metric.describe()
    return described


def exported_name(metric: MetricWrapperBase) -> str:
    described = family(metric)
    suffix = {"counter": "_total", "info": "_info"}.get(described.type, "")
    return str(described.name) + suffix


def metric_type(metric: MetricWrapperBase) -> str:
    return str(family(metric).type)


def metrics_of(module: ModuleType) -> Iterator[tuple[str, MetricWrapperBase]]:
    for attr, value in vars(module).items():
        if isinstance(value, MetricWrapperBase):
            yield attr, value


@cache
def defined() -> dict[str, tuple[str, MetricWrapperBase]]:
    """Exported metric name -> (module key, metric)."""
    out: dict[str, tuple[str, MetricWrapperBase]] = {}
    for key, module in MODULES.items():
        for _, metric in metrics_of(module):
            out[exported_name(metric)] = (key, metric)
    return out


def buckets(metric: MetricWrapperBase) -> tuple[float, ...]:
    # prometheus-client keeps the bounds privately; +Inf is added by the library.
    bounds: list[float] = metric._upper_bounds  # type: ignore[attr-defined]
    return tuple(b for b in bounds if not math.isinf(b))


def labels(metric: MetricWrapperBase) -> tuple[str, ...]:
    return tuple(metric._labelnames)


def table_rows() -> Iterator[tuple[str, str, str]]:
    """(type, name, last column) of each row of the "Metric Types" tables."""
    text = section("#### Metric Types", "### Dashboard Configuration")
    kind = ""
    for line in text.splitlines():
        heading = re.match(r"\*\*(Counter|Gauge|Histogram) Metrics\*\*", line)
        if heading:
            kind = heading.group(1).lower()
            continue
        row = re.match(r"\|\s*`([a-z0-9_]+)`\s*\|([^|]*)\|([^|]*)\|", line)
        if row:
            yield kind, row.group(1), row.group(3).strip()


def alert_rules() -> dict[str, dict[str, str]]:
    text = section("#### Alert Definitions", "### Alert Routing")
    rules: dict[str, dict[str, str]] = {}
    for block in re.findall(r"```yaml\n(.*?)```", text, re.S):
        rules.update(yaml.safe_load(block))
    return rules


def condition_metrics(condition: str) -> dict[str, str]:
    """Metric names in a PromQL condition -> the type their use implies (or "")."""
    expr = re.sub(r"\[[^\]]*\]", "", condition)  # range selectors: [5m]
    expr = re.sub(r"\b\d+(\.\d+)?[smhdw]?\b", "", expr)
    found: dict[str, str] = {}
    for match in re.finditer(r"[a-zA-Z_][a-zA-Z0-9_]*", expr):
        name = match.group(0)
        if name in PROMQL_WORDS or expr[match.end() :].lstrip().startswith("("):
            continue
        before = expr[: match.start()].rstrip()
        if before.endswith("rate(") or before.endswith("increase("):
            found[name] = "counter"
        elif re.search(r"histogram_quantile\(\s*,?\s*$", before):
            found[name] = "histogram"
        elif before.endswith("delta("):
            found[name] = "gauge"
        else:
            found.setdefault(name, "")
    return found


def test_manual_tables_are_parsed() -> None:
    kinds = {kind for kind, _, _ in table_rows()}
    assert kinds == {"counter", "gauge", "histogram"}
    assert len(list(table_rows())) >= 18
    assert len(alert_rules()) >= 18


@pytest.mark.parametrize(("kind", "name", "extra"), list(table_rows()) if MANUAL.is_file() else [])
def test_metric_types_table(kind: str, name: str, extra: str) -> None:
    assert name in defined(), f"{name} from the manual's Metric Types table is not defined."
    _, metric = defined()[name]
    assert metric_type(metric) == kind, f"{name} is a {metric_type(metric)}, the manual a {kind}."
    if kind == "histogram":
        expected = tuple(float(b) for b in extra.split(","))
        assert buckets(metric) == expected, f"{name} buckets differ from the manual's."


def test_every_alert_condition_metric_is_defined_with_a_fitting_type() -> None:
    problems = []
    for alert, rule in alert_rules().items():
        for name, kind in condition_metrics(rule["condition"]).items():
            if name not in defined():
                problems.append(f"{alert}: {name} is not defined")
                continue
            _, metric = defined()[name]
            if kind and metric_type(metric) != kind:
                problems.append(f"{alert}: {name} is a {metric_type(metric)}, used as a {kind}")
            for label in re.findall(r"\$labels\.(\w+)", rule.get("summary", "")):
                if label not in labels(metric):
                    problems.append(f"{alert}: {name} has no label {label!r} for its summary")
    assert not problems, "\n".join(problems)


def test_runbook_queries_use_defined_histograms() -> None:
    names = set(re.findall(r"\b([a-z_]+)_bucket\b", manual()))
    assert names, "no *_bucket query found in the manual"
    for name in names:
        assert name in defined(), f"{name} (a runbook query) is not defined."
        assert metric_type(defined()[name][1]) == "histogram"


def test_runbook_greps_find_a_metric_of_that_module() -> None:
    greps = re.findall(
        r"http://(alpha|beta|gamma):8080/metrics\s*\|\s*grep\s+(\S+?)\"?$", manual(), re.M
    )
    assert len(greps) >= 10
    for module, pattern in greps:
        names = [n for n, (key, _) in defined().items() if key == module]
        if pattern in GREPPED_LABELS:
            label_module, label = GREPPED_LABELS[pattern]
            assert label_module == module
            assert any(label in labels(m) for _, m in metrics_of(MODULES[module])), pattern
        else:
            assert any(pattern in n for n in names), f"grep {pattern} on {module} finds no metric"


def test_each_file_defines_its_own_module_metrics_with_help() -> None:
    for key, module in MODULES.items():
        for attr, metric in metrics_of(module):
            name = exported_name(metric)
            assert attr == name.upper() or key == "core", f"{attr} should be named {name.upper()}"
            if key != "core":
                assert name.startswith(f"{key}_"), f"{name} is defined in {key}/metrics.py"
            assert metric._documentation, f"{name} has no help text"


def test_docs_list_every_metric() -> None:
    text = DOCS.read_text(encoding="utf-8")
    missing = [name for name in defined() if f"`{name}`" not in text]
    assert not missing, f"docs/metrics.md does not describe {missing}"


def test_alert_rules_expose_with_the_names_prometheus_will_query() -> None:
    from prometheus_client import REGISTRY, generate_latest

    dps.alpha.metrics.ALPHA_RECORDS_INGESTED_TOTAL.labels(source_id="test_source").inc()
    text = generate_latest(REGISTRY).decode()
    assert 'alpha_records_ingested_total{source_id="test_source"}' in text
    assert "alpha_records_ingested_created" not in text
    assert 'alpha_parse_duration_seconds_bucket{le="0.001"}' in text
