"""Micro-benchmark behind ``VALIDATION_PARALLEL_RULES`` (docs/alpha.md): does validating a batch
on several threads help?

It validates one batch of records with a typical source's checks (required fields, a JSON Schema,
a rule file of five field rules) on this thread, then split into equal slices over a pool of 2
and 4 threads (the fetch-and-parse pool of PARSER_THREAD_COUNT would be that pool), and prints
the records per second of each. Run it with
``.venv/bin/python benchmarks/alpha/validation_parallel.py``.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dps.alpha.validation.base import RequiredFields, SourceValidator
from dps.alpha.validation.field_rules import FieldRules
from dps.alpha.validation.json_schema import JsonSchema
from dps.config.models import ValidationRuleFile
from dps.core.record import Record, new_record

BATCH = 5000
ROUNDS = 5


def validator() -> SourceValidator:
    schema = JsonSchema(
        {
            "type": "object",
            "required": ["order_id", "amount", "customer"],
            "properties": {
                "order_id": {"type": "string"},
                "amount": {"type": "number", "minimum": 0},
                "customer": {
                    "type": "object",
                    "properties": {"email": {"type": "string"}, "tier": {"enum": ["a", "b"]}},
                },
            },
        }
    )
    rules = ValidationRuleFile.model_validate(
        {
            "rules": [
                {"field": "order_id", "required": True, "regex": "^o-[0-9]+$"},
                {"field": "amount", "type": "number", "min": 0, "max": 1e6},
                {"field": "customer.email", "type": "string", "max_length": 200},
                {"field": "customer.tier", "enum": ["a", "b"]},
                {"field": "currency", "type": "string", "min_length": 3, "max_length": 3},
            ],
            "file": Path("bench.yaml"),
        }
    )
    return SourceValidator([RequiredFields(["order_id", "amount"])], [schema, FieldRules(rules)])


def records() -> list[Record]:
    return [
        new_record(
            "bench",
            {
                "order_id": f"o-{i}",
                "amount": i % 1000 + 0.5,
                "currency": "EUR",
                "customer": {"email": f"c{i}@example.com", "tier": "ab"[i % 2]},
            },
            id_field="order_id",
        )
        for i in range(BATCH)
    ]


def best(run: object) -> float:
    times = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        run()  # type: ignore[operator]
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    v = validator()
    batch = records()

    def serial() -> None:
        for r in batch:
            v.check(r)

    print(f"Python {sys.version.split()[0]}, batch of {BATCH} records, best of {ROUNDS}")
    base = best(serial)
    print(f"  serial          {BATCH / base:>10,.0f} records/s")
    for threads in (2, 4):
        with ThreadPoolExecutor(threads) as pool:
            size = -(-BATCH // threads)
            slices = [batch[i : i + size] for i in range(0, BATCH, size)]

            def split(slices: list[list[Record]] = slices, pool: ThreadPoolExecutor = pool) -> None:
                list(pool.map(lambda part: [v.check(r) for r in part], slices))

            took = best(split)
        print(
            f"  {threads} threads       {BATCH / took:>10,.0f} records/s  "
            f"({base / took:.2f}x serial)"
        )


if __name__ == "__main__":
    main()
