"""Module Gamma's metrics (deliver): names, types and buckets as in the manual.

Per-destination series are labelled ``destination`` (the alerts print ``$labels.destination``).
"""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "ACK_WAIT_BUCKETS",
    "BREAKER_CLOSED",
    "BREAKER_HALF_OPEN",
    "BREAKER_OPEN",
    "DELIVERY_BUCKETS",
    "GAMMA_ACK_WAIT_DURATION_SECONDS",
    "GAMMA_CIRCUIT_BREAKER_STATE",
    "GAMMA_DELIVERY_DURATION_SECONDS",
    "GAMMA_DELIVERY_FAILURES_TOTAL",
    "GAMMA_DESTINATION_STATUS",
    "GAMMA_DLQ_SIZE",
    "GAMMA_PENDING_DELIVERIES",
    "GAMMA_RECORDS_DELIVERED_TOTAL",
    "GAMMA_RECORDS_ROUTED_TOTAL",
    "GAMMA_RENDER_DURATION_SECONDS",
    "RENDER_BUCKETS",
]

#: The manual's "Histogram Metrics" table.
DELIVERY_BUCKETS: Final = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0)
#: Not in the manual's table: rendering a batch is CPU work, milliseconds.
RENDER_BUCKETS: Final = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5)
#: Not in the manual's table: ACK_WAIT_TIMEOUT_MS is seconds to tens of seconds.
ACK_WAIT_BUCKETS: Final = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)

#: Values of ``gamma_circuit_breaker_state``; alert ``gamma_circuit_breaker_open`` tests ``== 1``.
BREAKER_CLOSED: Final = 0
BREAKER_OPEN: Final = 1
BREAKER_HALF_OPEN: Final = 2

GAMMA_RECORDS_DELIVERED_TOTAL: Final = Counter(
    "gamma_records_delivered_total",
    "Records acknowledged by a destination.",
    ["destination"],
)
GAMMA_DELIVERY_FAILURES_TOTAL: Final = Counter(
    "gamma_delivery_failures_total",
    "Failed delivery attempts to a destination (each retry counts).",
    ["destination"],
)
GAMMA_RECORDS_ROUTED_TOTAL: Final = Counter(
    "gamma_records_routed_total",
    "Records routed to a destination by the routing rules.",
    ["destination"],
)

GAMMA_PENDING_DELIVERIES: Final = Gauge(
    "gamma_pending_deliveries",
    "Deliveries sent and awaiting acknowledgement.",
)
GAMMA_DLQ_SIZE: Final = Gauge(
    "gamma_dlq_size",
    "Open entries in the gamma dead letter queue (counted in the state store when scraped).",
)
GAMMA_DESTINATION_STATUS: Final = Gauge(
    "gamma_destination_status",
    "1 when the destination is reachable, 0 when it is down.",
    ["destination"],
)
GAMMA_CIRCUIT_BREAKER_STATE: Final = Gauge(
    "gamma_circuit_breaker_state",
    "Circuit breaker of a destination: 0 closed, 1 open, 2 half-open.",
    ["destination"],
)

GAMMA_DELIVERY_DURATION_SECONDS: Final = Histogram(
    "gamma_delivery_duration_seconds",
    "Seconds one delivery (a batch to one destination) took until acknowledged.",
    ["destination"],
    buckets=DELIVERY_BUCKETS,
)
GAMMA_RENDER_DURATION_SECONDS: Final = Histogram(
    "gamma_render_duration_seconds",
    "Seconds to render a batch in the destination's format.",
    buckets=RENDER_BUCKETS,
)
GAMMA_ACK_WAIT_DURATION_SECONDS: Final = Histogram(
    "gamma_ack_wait_duration_seconds",
    "Seconds between sending a batch and the destination's acknowledgement.",
    buckets=ACK_WAIT_BUCKETS,
)
