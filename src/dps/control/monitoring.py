"""The control service's summaries (runbook J.3): pipeline health, throughput, errors.

Health is aggregated from each module's ``/admin/health``: the pipeline is UNHEALTHY when a
module is UNHEALTHY or does not answer, DEGRADED when one is DEGRADED, HEALTHY otherwise.
Throughput is computed from the durable accounting (so it survives restarts): totals, plus rates
over the last minute and five minutes from samples the control service takes every few seconds.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from dps.control.modules import MODULES, ModuleClient, ModuleUnreachable
from dps.state import StateStore

_RANK = {"HEALTHY": 0, "DEGRADED": 1, "UNHEALTHY": 2}


def health_summary(modules: ModuleClient, control_status: str = "HEALTHY") -> dict[str, Any]:
    """``{"status": HEALTHY|DEGRADED|UNHEALTHY, "modules": {name: {"status", "checks"}}}``."""
    found: dict[str, Any] = {"control": {"status": control_status}}
    for module in MODULES:
        try:
            response = modules.request(module, "GET", "/admin/health")
            body = response.json()
            found[module] = {
                "status": body.get("status", "UNHEALTHY"),
                "checks": body.get("checks"),
            }
        except (ModuleUnreachable, ValueError) as exc:
            found[module] = {"status": "UNHEALTHY", "error": str(exc)}
    status = max((m["status"] for m in found.values()), key=lambda s: _RANK.get(s, 2))
    unhealthy = sorted(n for n, m in found.items() if m["status"] != "HEALTHY")
    return {
        "status": status,
        "modules": found,
        "not_healthy": unhealthy,
        "checked_at": time.time(),
    }


class ThroughputSampler:
    """Keeps (time, ingested, delivered) samples of the durable accounting for rates."""

    def __init__(self, read: Callable[[], dict[str, Any]], keep_seconds: float = 900.0) -> None:
        self.read = read  # the durable accounting (the control service's shared read)
        self.keep_seconds = keep_seconds
        self._samples: deque[tuple[float, int, int, int]] = deque()
        self._lock = threading.Lock()

    def sample(self, now: float | None = None) -> dict[str, Any]:
        acc = self.read()
        now = time.time() if now is None else now
        dlq_total = sum(acc.get("dlq", {}).values())
        with self._lock:
            self._samples.append(
                (now, int(acc["ingested"]), int(acc.get("delivered_records", 0)), dlq_total)
            )
            while self._samples and now - self._samples[0][0] > self.keep_seconds:
                self._samples.popleft()
        return acc

    def rates(self, window: float, now: float | None = None) -> dict[str, float | None]:
        now = time.time() if now is None else now
        with self._lock:
            samples = list(self._samples)
        if len(samples) < 2:
            return {"ingested_per_second": None, "delivered_per_second": None}
        newest = samples[-1]
        oldest = next((s for s in samples if now - s[0] <= window), samples[0])
        span = newest[0] - oldest[0]
        if span <= 0:
            return {"ingested_per_second": None, "delivered_per_second": None}
        return {
            "ingested_per_second": round((newest[1] - oldest[1]) / span, 3),
            "delivered_per_second": round((newest[2] - oldest[2]) / span, 3),
        }

    def summary(self, queue_depths: dict[str, int]) -> dict[str, Any]:
        acc = self.sample()
        return {
            "totals": {
                "ingested": acc["ingested"],
                "duplicates": acc["duplicates"],
                "dlq": acc.get("dlq", {}),
                "delivered": acc.get("delivered", {}),
                "delivered_records": acc.get("delivered_records", 0),
            },
            "ingested_by_source": acc.get("ingested_by_source", {}),
            "rates": {"last_1m": self.rates(60.0), "last_5m": self.rates(300.0)},
            "queue_depths": queue_depths,
            "generated_at": time.time(),
        }


def errors_summary(
    store: StateStore, modules: ModuleClient, since_seconds: float = 86400.0
) -> dict[str, Any]:
    """Open DLQ entries per module and reason, recent delivery errors, module last errors."""
    since = time.time() - since_seconds
    summary: dict[str, Any] = {
        "dlq_open": store.dlq_counts(),
        "dlq_reasons": {m: store.dlq_reasons(m) for m in MODULES},
        "window_seconds": since_seconds,
    }
    try:
        errors = store.delivery_errors(None, since, limit=50)
    except NotImplementedError:
        errors = []
    summary["delivery_errors"] = errors
    last_errors: dict[str, Any] = {}
    for module in MODULES:
        try:
            status = modules.get_json(module, "/admin/status")
            last_errors[module] = status.get("last_error")
        except (ModuleUnreachable, RuntimeError) as exc:
            last_errors[module] = f"unreachable: {exc}"
    summary["module_last_errors"] = last_errors
    summary["generated_at"] = time.time()
    return summary
