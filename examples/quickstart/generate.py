"""Regenerates the quickstart's sample input (deterministic): python generate.py."""

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
rng = random.Random(42)
COUNTRIES = ["US", "CA", "DE", "FR", "NL", "GB", "IT", "ES"]
PHONES = ["(555) 123-{:04d}", "555.987.{:04d}", "+1 555 222 {:04d}", "555-0{:03d}"]


def order(n: int) -> dict:
    o = {
        "order_id": f"ORD-{n:06d}",
        "customer_id": f"C{rng.randrange(1, 400):05d}",
        "amount": round(rng.uniform(5, 900), 2),
        "currency": "USD",
        "country": rng.choice(COUNTRIES),
        "created_at": f"2026-11-{rng.randrange(1, 28):02d}T{rng.randrange(24):02d}:00:00Z",
        "email": f"buyer{n}@example.com",
    }
    if rng.random() < 0.8:
        o["phone_number"] = rng.choice(PHONES).format(rng.randrange(1000))
    if rng.random() < 0.1:  # older exports call it "cust"
        o["cust"] = o.pop("customer_id")
    if rng.random() < 0.15:
        del o["email"]
    return o


def write_orders(path: Path, start: int, count: int) -> None:
    lines = []
    seen: list[str] = []
    for n in range(start, start + count):
        r = rng.random()
        if r < 0.005:
            lines.append('{"order_id": "ORD-broken", "amount": ')  # not JSON
            continue
        rec = order(n)
        if r < 0.015:
            del rec["amount"]  # fails required_fields
        if seen and r > 0.985:
            lines.append(seen[rng.randrange(len(seen))])  # a duplicate order line
            continue
        line = json.dumps(rec, sort_keys=True)
        seen.append(line)
        lines.append(line)
    path.write_text("\n".join(lines) + "\n")


def write_crm(path: Path, count: int) -> None:
    records = []
    for n in range(count):
        rec = {
            "id": f"CUST-{n:05d}",
            "customer_id": f"C{n:05d}",
            "name": f"Customer {n}",
            "email": f"c{n}@example.com",
            "phone_number": PHONES[n % 3].format(n % 10000),
            "country": COUNTRIES[n % len(COUNTRIES)],
            "updated_at": "2026-11-20T08:00:00Z",
        }
        if n % 37 == 0:
            del rec["email"]
        records.append(rec)
    records.extend(records[:12])  # the export repeats its first page
    path.write_text(json.dumps({"data": {"records": records}, "next": None}, indent=1) + "\n")


if __name__ == "__main__":
    write_orders(HERE / "input/orders/orders-2026-11-26.ndjson", 0, 1500)
    write_orders(HERE / "input/orders/orders-2026-11-27.ndjson", 1500, 1500)
    write_crm(HERE / "input/crm/crm-export.json", 800)
