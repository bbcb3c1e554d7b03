"""The benchmark pipeline's steps as plain Python, shared by the peers (``naive.py``,
``dlt_peer.py``): each runs as a script from this folder, so ``import steps`` finds this file.

Required fields and the JSON Schema, the five rules (E.164 phone, lower-case e-mail, upper-case
currency, EU tag, lift the channel), the customer enrichment from the reference table and the
quality score's four dimensions (completeness, consistency, conformance, timeliness) — what
``benchmarks/pipeline`` configures, with no queues and no state.
"""

from __future__ import annotations

import csv
import json
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema_rs

PHONE = re.compile(r"^\+?1?[\s.-]?\(?([0-9]{3})\)?[\s.-]?([0-9]{3})[\s.-]?([0-9]{4})$")
REQUIRED = ("id", "timestamp", "customer_id", "amount")
SCORED = ("customer_id", "phone_number", "email", "country", "currency")
EU = {"DE", "FR", "NL", "IT", "ES"}
CUSTOMERS: dict[str, tuple[str, str]] = {}
#: The source's JSON Schema (``validation.schema_ref``), with the validator Alpha uses (so the
#: ratios compare the pipelines, not two JSON Schema libraries).
SCHEMA = jsonschema_rs.Draft7Validator(
    json.loads((Path(__file__).parents[1] / "pipeline/alpha/schemas/events.json").read_text()),
    validate_formats=True,
)
#: ``quality/scoring.yaml``: weights, the conformance formats (the scorer's named patterns) and
#: timeliness.
WEIGHTS = {"completeness": 0.30, "consistency": 0.25, "conformance": 0.25, "timeliness": 0.20}
FORMATS = (
    ("email", re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")),
    ("phone_number", re.compile(r"^\+[1-9][0-9]{6,14}$")),
    ("country", re.compile(r"^[A-Z]{2}$")),
    ("currency", re.compile(r"^[A-Z]{3}$")),
    ("amount", re.compile(r"^-?\d+(\.\d+)?$")),
)
MAX_AGE_HOURS, PENALTY_PER_HOUR = 24, 0.01


def load_customers(path: str | None) -> None:
    """The reference table: customer_id -> (tier, region), as the pipeline's lookup rule."""
    if path:
        with open(path, newline="") as fh:
            for row in csv.DictReader(fh):
                CUSTOMERS[row["customer_id"]] = (row["tier"], row["region"])


def valid(r: Any) -> bool:
    """A JSON object with every required field set, that the JSON Schema accepts."""
    return isinstance(r, dict) and all(r.get(f) for f in REQUIRED) and SCHEMA.is_valid(r)


def transform(r: dict[str, Any]) -> dict[str, Any]:
    if "phone_number" in r:
        r["phone_number"] = PHONE.sub(r"+1\1\2\3", r["phone_number"])
    if "email" in r:
        r["email"] = r["email"].lower()
    if "currency" in r:
        r["currency"] = r["currency"].upper()
    if r.get("country") in EU:
        r["region"] = "EU"
    payload = r.get("payload")
    if isinstance(payload, dict) and "channel" in payload:
        r["channel"] = payload.pop("channel")
    customer = CUSTOMERS.get(r.get("customer_id"))
    r["customer_tier"] = customer[0] if customer else "unknown"
    if customer:
        r["customer_region"] = customer[1]
    return r


def score(r: dict[str, Any], now: float | None = None) -> float:
    """The weighted four dimensions, as the pipeline's scorer computes them."""
    completeness = max(0.0, 1.0 - 0.2 * sum(1 for f in SCORED if not r.get(f)))
    consistency = 1.0
    if r.get("country") in EU and r.get("region") != "EU":
        consistency -= 0.25
    if r.get("customer_tier") != "unknown" and r.get("customer_region") is None:
        consistency -= 0.25
    conformance = 1.0
    for field, pattern in FORMATS:
        value = r.get(field)
        if (
            value is not None
            and pattern.search(value if isinstance(value, str) else json.dumps(value)) is None
        ):
            conformance -= 0.25
    timeliness = 1.0
    stamp = r.get("timestamp")
    if isinstance(stamp, str):
        try:
            age = ((now or time.time()) - datetime.fromisoformat(stamp).timestamp()) / 3600
        except ValueError:
            timeliness = 0.0
        else:
            late = age - MAX_AGE_HOURS
            if late > 0:
                timeliness = round(1.0 - min(1.0, late * PENALTY_PER_HOUR), 6)
    values = {
        "completeness": completeness,
        "consistency": max(0.0, consistency),
        "conformance": max(0.0, conformance),
        "timeliness": timeliness,
    }
    return round(sum(WEIGHTS[d] * values[d] for d in WEIGHTS), 6)
