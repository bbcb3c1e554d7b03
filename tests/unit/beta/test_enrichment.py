"""The enrichment cache and the ``lookup`` transform, on file-backed sources (csv, SQLite).

The servers (PostgreSQL, Redis, HTTP) are in ``tests/integration/test_beta_enrichment.py``.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.integration.pipeline_harness import copy_quickstart

from dps.beta.enrichment.base import Unavailable
from dps.beta.enrichment.cache import EXPORT_FORMAT, Enrichment
from dps.beta.module import BetaModule
from dps.beta.rules import RuleSet
from dps.beta.stage import Stage
from dps.config.models import BetaSettings, EnrichmentConfig, RuleConfig
from dps.core.record import Record
from dps.core.registry import names


def _csv(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    path.write_text("id,name,tier\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    return path


def _source(name: str, type_: str, connection: dict[str, Any], **cache: Any) -> EnrichmentConfig:
    return EnrichmentConfig.model_validate(
        {"name": name, "type": type_, "connection": connection, "cache": cache}
    )


def _settings(**values: Any) -> BetaSettings:
    return BetaSettings.model_validate(values)


def _record(n: int, **payload: Any) -> Record:
    return Record(
        record_id=f"s:{n}", source_id="s", correlation_id="c", ingested_at=0.0, payload=payload
    )


def _lookup_rule(source: str, **config: Any) -> RuleConfig:
    return RuleConfig.model_validate(
        {
            "rule_id": "TRX_LOOKUP",
            "match": {"field": "customer_id", "condition": "exists"},
            "transform": {
                "type": "lookup",
                "config": {"source": source, "fields": {"customer.name": "name"}, **config},
            },
            "on_failure": "dlq",
        }
    )


def test_the_four_source_types_are_registered() -> None:
    assert names("enrichment") == ["csv", "database", "http", "redis"]


def test_csv_lookup_hits_misses_and_negative_cache(tmp_path: Path) -> None:
    path = _csv(tmp_path / "c.csv", [("C1", "Ada", "gold"), ("C2", "Bob", "silver")])
    enrichment = Enrichment(
        {"customers": _source("customers", "csv", {"path": str(path), "key_column": "id"})},
        _settings(),
    )
    first = enrichment.lookup_many("customers", ["C1", "C2", "C1", "C9"])
    assert first == {
        "C1": {"id": "C1", "name": "Ada", "tier": "gold"},
        "C2": {"id": "C2", "name": "Bob", "tier": "silver"},
        "C9": None,
    }
    # A key added to the source stays a miss while the negative entry is fresh (60 s default).
    _csv(path, [("C1", "Ada", "gold"), ("C9", "Cy", "bronze")])
    assert enrichment.lookup_many("customers", ["C9"]) == {"C9": None}
    stats = enrichment.stats()["sources"]["customers"]
    # 5 lookups: C1, C2, C9 needed the source; the second C1 and the cached miss were hits.
    assert (stats["lookups"], stats["hits"], stats["misses"], stats["fetches"]) == (5, 2, 3, 1)
    assert (stats["entries"], stats["negative_entries"], stats["negative_hits"]) == (3, 1, 1)
    enrichment.clear("customers")
    assert enrichment.lookup_many("customers", ["C9"])["C9"] == {
        "id": "C9",
        "name": "Cy",
        "tier": "bronze",
    }


def test_lru_keeps_at_most_max_size_entries(tmp_path: Path) -> None:
    path = _csv(tmp_path / "c.csv", [(f"K{i}", f"n{i}", "t") for i in range(10)])
    enrichment = Enrichment(
        {"c": _source("c", "csv", {"path": str(path), "key_column": "id"})},
        _settings(ENRICHMENT_CACHE_MAX_SIZE=3),
    )
    enrichment.lookup_many("c", ["K0", "K1", "K2"])
    enrichment.lookup_many("c", ["K0"])  # K0 is now the most recently used
    enrichment.lookup_many("c", ["K3"])  # evicts K1, the least recently used
    exported = {e["key"] for e in enrichment.export()["sources"]["c"]}
    assert exported == {"K0", "K2", "K3"}
    assert enrichment.stats()["evictions"] == 1
    assert enrichment.size() == 3


def test_one_database_query_per_batch_of_distinct_missing_keys(tmp_path: Path) -> None:
    db = tmp_path / "ref.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE customers (customer_id TEXT, name TEXT, tier TEXT)")
        conn.executemany(
            "INSERT INTO customers VALUES (?, ?, ?)",
            [(f"C{i}", f"name{i}", "gold") for i in range(50)],
        )
    source = _source(
        "customer_db",
        "database",
        {
            "url": f"sqlite:///{db}",
            "query": "SELECT customer_id, name, tier FROM customers WHERE customer_id = :key",
        },
    )
    enrichment = Enrichment({"customer_db": source}, _settings())
    stage = Stage(RuleSet([_lookup_rule("customer_db")], enrichment=enrichment), None)
    batch = [_record(i, customer_id=f"C{i % 20}") for i in range(100)]
    results = stage.process_batch(batch)
    assert {r.verdict for r in results} == {"delivered"}
    assert results[45].record.payload["customer"] == {"name": "name5"}
    stats = enrichment.stats()["sources"]["customer_db"]
    assert (stats["fetches"], stats["lookups"], stats["misses"], stats["hits"]) == (1, 100, 20, 80)
    # The next batch is answered by the cache, the source is not asked again.
    stage.process_batch(batch[:10])
    assert enrichment.stats()["sources"]["customer_db"]["fetches"] == 1
    assert enrichment.hit_rate() == pytest.approx(90 / 110)
    enrichment.close()


def test_lookup_on_miss_leave_default_and_fail(tmp_path: Path) -> None:
    path = _csv(tmp_path / "c.csv", [("C1", "Ada", "gold")])
    enrichment = Enrichment(
        {"c": _source("c", "csv", {"path": str(path), "key_column": "id"})}, _settings()
    )

    def run(**config: Any) -> Any:
        stage = Stage(RuleSet([_lookup_rule("c", **config)], enrichment=enrichment), None)
        return stage.process(_record(1, customer_id="C404"))

    assert run().record.payload == {"customer_id": "C404"}
    assert run(on_miss="default", defaults={"customer.name": "?"}).record.payload == {
        "customer_id": "C404",
        "customer": {"name": "?"},
    }
    failed = run(on_miss="fail")
    assert (failed.verdict, failed.reason) == ("dlq", "rule_failed:TRX_LOOKUP")
    assert "C404" in failed.message and "not in enrichment source c" in failed.message
    found = Stage(RuleSet([_lookup_rule("c")], enrichment=enrichment), None).process(
        _record(2, customer_id="C1")
    )
    assert found.record.payload["customer"] == {"name": "Ada"}
    assert any(step.action == "enrichment:c" for step in found.record.lineage)


def test_a_lookup_naming_an_unknown_source_fails_at_load(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match='lookup source "nope" is not a configured'):
        RuleSet([_lookup_rule("nope")], enrichment=Enrichment({}, _settings()))


def _aged_export(source: str, key: str, value: dict[str, Any], age: float) -> dict[str, Any]:
    return {
        "format": EXPORT_FORMAT,
        "sources": {source: [{"key": key, "value": value, "fetched_at": time.time() - age}]},
    }


@pytest.mark.parametrize("policy", ["STALE_CACHE", "FAIL"])
def test_source_down_stale_cache_or_fail_then_back(tmp_path: Path, policy: str) -> None:
    path = _csv(tmp_path / "c.csv", [("C1", "Ada", "gold")])
    settings = _settings(
        ENRICHMENT_CACHE_TTL=60,
        enrichment_sources={"c": {"on_unavailable": policy, "stale_ttl_seconds": 300}},
    )
    enrichment = Enrichment(
        {"c": _source("c", "csv", {"path": str(path), "key_column": "id"})}, settings
    )
    # C1 was fetched 2 minutes ago: expired (TTL 60 s) but within the stale TTL (60 + 300 s);
    # C2 was fetched 10 minutes ago: too old to serve even stale.
    enrichment.import_(_aged_export("c", "C1", {"id": "C1", "name": "Ada (cached)"}, 120))
    enrichment.import_(_aged_export("c", "C2", {"id": "C2", "name": "Bob (cached)"}, 600))
    stage = Stage(RuleSet([_lookup_rule("c")], enrichment=enrichment), None)
    path.unlink()  # the source is down

    one = stage.process(_record(1, customer_id="C1"))
    two = stage.process(_record(2, customer_id="C2"))
    if policy == "STALE_CACHE":
        assert (one.verdict, one.record.payload["customer"]) == (
            "delivered",
            {"name": "Ada (cached)"},
        )
        assert enrichment.stats()["sources"]["c"]["stale_served"] == 1
    else:
        assert (one.verdict, one.reason) == ("dlq", "rule_failed:TRX_LOOKUP")
        assert "on_unavailable is FAIL" in one.message
    assert (two.verdict, two.reason) == ("dlq", "rule_failed:TRX_LOOKUP")
    assert "Enrichment source c is unavailable" in two.message
    assert enrichment.status()["sources"]["c"]["available"] is False
    # Nothing about the outage was cached: when the source is back, records flow again.
    _csv(path, [("C1", "Ada", "gold"), ("C2", "Bob", "silver")])
    again = stage.process(_record(3, customer_id="C2"))
    assert (again.verdict, again.record.payload["customer"]) == ("delivered", {"name": "Bob"})
    assert enrichment.status()["sources"]["c"]["available"] is True


def test_warmup_loads_the_source_with_progress(tmp_path: Path) -> None:
    path = _csv(tmp_path / "c.csv", [(f"K{i}", f"n{i}", "t") for i in range(2500)])
    enrichment = Enrichment(
        {"c": _source("c", "csv", {"path": str(path), "key_column": "id"}, warmup=True)},
        _settings(),
    )
    jobs = enrichment.warmup()
    assert [j.source for j in jobs] == ["c"]
    deadline = time.time() + 10
    while enrichment.refresh_status()["in_progress"] and time.time() < deadline:
        time.sleep(0.01)
    status = enrichment.refresh_status()
    assert status["completion_percent"] == 100.0
    job = status["refreshes"][0]
    assert (job["kind"], job["state"], job["strategy"]) == ("warmup", "completed", "full_scan")
    assert (job["entries_loaded"], job["entries_total"]) == (2500, 2500)
    assert enrichment.size("c") == 2500
    # Warm: a lookup is a hit.
    assert enrichment.lookup_many("c", ["K7"])["K7"] == {"id": "K7", "name": "n7", "tier": "t"}
    assert enrichment.stats()["sources"]["c"]["fetches"] == 0


def test_refresh_of_a_source_that_cannot_list_refetches_cached_keys(tmp_path: Path) -> None:
    db = tmp_path / "ref.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (k TEXT, v TEXT)")
        conn.executemany("INSERT INTO t VALUES (?, ?)", [("a", "1"), ("b", "2")])
    source = _source(
        "t", "database", {"url": f"sqlite:///{db}", "query": "SELECT k, v FROM t WHERE k = :key"}
    )
    enrichment = Enrichment({"t": source}, _settings())
    enrichment.lookup_many("t", ["a", "b"])
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE t SET v = 'changed' WHERE k = 'a'")
    job = enrichment.refresh("t")
    deadline = time.time() + 10
    while job.state == "running" and time.time() < deadline:
        time.sleep(0.01)
    assert (job.state, job.strategy, job.loaded, job.total) == (
        "completed",
        "refetch_cached_keys",
        2,
        2,
    )
    assert enrichment.lookup_many("t", ["a"])["a"] == {"k": "a", "v": "changed"}
    enrichment.close()


def test_export_import_round_trip_and_bad_import(tmp_path: Path) -> None:
    path = _csv(tmp_path / "c.csv", [("C1", "Ada", "gold")])
    configs = {"c": _source("c", "csv", {"path": str(path), "key_column": "id"})}
    one = Enrichment(configs, _settings())
    one.lookup_many("c", ["C1", "C2"])
    exported = one.export()
    two = Enrichment(configs, _settings())
    assert two.import_(exported) == {"imported": {"c": 2}, "skipped_sources": [], "entries": 2}
    assert two.lookup_many("c", ["C1", "C2"]) == {
        "C1": {"id": "C1", "name": "Ada", "tier": "gold"},
        "C2": None,
    }
    assert two.stats()["sources"]["c"]["fetches"] == 0
    with pytest.raises(ValueError, match="not a cache export"):
        two.import_({"entries": []})


def test_unavailable_is_never_cached(tmp_path: Path) -> None:
    path = tmp_path / "missing.csv"
    enrichment = Enrichment(
        {"c": _source("c", "csv", {"path": str(path), "key_column": "id"})}, _settings()
    )
    answer = enrichment.lookup_many("c", ["C1"])["C1"]
    assert isinstance(answer, Unavailable) and "cannot read" in answer.message
    assert enrichment.size() == 0


def test_the_loader_checks_names_across_files(tmp_path: Path) -> None:
    from dps.config import load_config
    from dps.core.errors import ConfigError

    beta = tmp_path / "beta"
    (beta / "enrichment").mkdir(parents=True)
    (beta / "transforms" / "rules").mkdir(parents=True)
    csv_source = "name: customers\ntype: csv\nconnection: {path: c.csv, key_column: id}\n"
    (beta / "enrichment" / "a.yaml").write_text(csv_source)
    (beta / "enrichment" / "b.yaml").write_text(csv_source)
    (beta / "transforms" / "rules" / "lookup.yaml").write_text(
        "rule_id: TRX_L\nmatch: {field: customer_id, condition: exists}\n"
        "transform: {type: lookup, config: {source: customer, fields: {n: name}}}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path, environ={})
    text = str(caught.value)
    assert "enrichment/b.yaml" in text and '"customers" is already the name of' in text
    assert "lookup.yaml" in text and "transform.config.source" in text
    assert '"customer" is not a configured enrichment source' in text and "known: customers" in text


def test_a_bad_enrichment_file_names_its_key(tmp_path: Path) -> None:
    from dps.config import load_file
    from dps.core.errors import ConfigError

    path = tmp_path / "beta" / "enrichment" / "x.yaml"
    path.parent.mkdir(parents=True)
    path.write_text("name: x\ntype: database\nconnection: {url: mysql://h/db, query: SELECT 1}\n")
    with pytest.raises(ConfigError) as caught:
        load_file(path, "enrichment")
    text = str(caught.value)
    assert "connection.url" in text and "postgresql://" in text
    assert "connection.query" in text and ":key" in text
    path.write_text("name: x\ntype: redi\nconnection: {}\n")
    with pytest.raises(ConfigError, match='Did you mean "redis"'):
        load_file(path, "enrichment")


def test_a_reload_during_a_warmup_finishes_it_and_keeps_the_source_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = copy_quickstart(tmp_path / "config")
    path = _csv(tmp_path / "c.csv", [(f"K{i}", f"n{i}", "t") for i in range(2500)])
    (config / "beta" / "enrichment").mkdir()
    (config / "beta" / "enrichment" / "customers.yaml").write_text(
        f"name: customers\ntype: csv\nconnection: {{path: {path}, key_column: id}}\n"
        "cache: {warmup: true}\n"
    )
    module = BetaModule(config, data_dir=tmp_path / "data")
    release = threading.Event()
    try:
        # The warmup is held after its first 1000 rows, as a long one is by a slow source.
        source = module.enrichment.sources["customers"].source
        real_scan = source.scan

        def held_scan() -> tuple[int, Iterator[list[tuple[str, dict[str, Any]]]]]:
            total, chunks = real_scan()

            def held() -> Iterator[list[tuple[str, dict[str, Any]]]]:
                for chunk in chunks:
                    yield chunk
                    release.wait(10)

            return total, held()

        monkeypatch.setattr(source, "scan", held_scan)
        first = module.enrichment.refresh("customers", "warmup")
        deadline = time.time() + 10
        while first.loaded < 1000 and time.time() < deadline:
            time.sleep(0.01)
        assert first.state == "running" and module.enrichment.size("customers") == 1000

        threading.Timer(0.3, release.set).start()
        module.reload_config()  # the source's file did not change: its cache is kept

        again = module.enrichment.sources["customers"].refresh
        assert again is not None and again.kind == "warmup"
        deadline = time.time() + 10
        while again.state == "running" and time.time() < deadline:
            time.sleep(0.01)
        assert again.state == "completed" and module.enrichment.size("customers") == 2500
        # Another reload keeps the finished warmup's report and the source's availability.
        module.reload_config()
        status = module.enrichment.status()["sources"]["customers"]
        assert status["available"] is True
        assert status["refresh"]["state"] == "completed"
        assert status["refresh"]["entries_loaded"] == 2500
    finally:
        release.set()
        module.close()
