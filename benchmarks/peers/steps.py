"""The benchmark pipeline's steps as plain Python, shared by the peers (``naive.py``,
``dlt_peer.py``): each runs as a script from this folder, so ``import steps`` finds this file.

Required fields, the five rules (E.164 phone, lower-case e-mail, upper-case currency, EU tag,
lift the channel), the customer enrichment from the reference table and the completeness score
— what ``benchmarks/pipeline`` configures, with no queues and no state.
"""

from __future__ import annotations

import csv
import re
from typing import Any

PHONE = re.compile(r"^\+?1?[\s.-]?\(?([0-9]{3})\)?[\s.-]?([0-9]{3})[\s.-]?([0-9]{4})$")
REQUIRED = ("id", "timestamp", "customer_id", "amount")
SCORED = ("customer_id", "phone_number", "email", "country", "currency")
EU = {"DE", "FR", "NL", "IT", "ES"}
CUSTOMERS: dict[str, tuple[str, str]] = {}


def load_customers(path: str | None) -> None:
    """The reference table: customer_id -> (tier, region), as the pipeline's lookup rule."""
    if path:
        with open(path, newline="") as fh:
            for row in csv.DictReader(fh):
                CUSTOMERS[row["customer_id"]] = (row["tier"], row["region"])


def valid(r: Any) -> bool:
    """A JSON object with every required field set."""
    return isinstance(r, dict) and all(r.get(f) for f in REQUIRED)


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


def score(r: dict[str, Any]) -> float:
    """Completeness: 0.2 off per missing scored field."""
    return max(0.0, 1.0 - 0.2 * sum(1 for f in SCORED if not r.get(f)))
