"""Reconciling pending acknowledgements: spool messages whose outcome is already settled.

A record leaves a destination's spool only when its worker acks it, after writing its outcome
(``delivery_log``, and a DLQ entry when it failed for good). A crash — or a lost ack, or a
worker stopped by a reload — between the write and the ack leaves the message in the spool
although nothing remains to be done for it: a **pending acknowledgement**. Left alone, such a
message is leased again later; the worker then skips a delivered record (the delivery log says
so), but a dead-lettered one would be delivered after all while its DLQ entry stays open, and
a disabled destination's spool keeps both kinds indefinitely.

:func:`reconcile_spool` settles them: it leases what is visible in the spool (at most
``limit`` messages), acks every message whose record the delivery log shows delivered to this
destination or that has an open gamma DLQ entry for it, and hands the rest back at once
(``nack`` with no delay, their order kept). Messages leased by the delivery worker at that
moment are not touched: they are being settled by it, and reported as ``leased_elsewhere``.
A replayed DLQ entry is no longer open, so the record it put back in the spool is delivered.

Why lease rather than read the spool directly: the queue contract (:mod:`dps.queues.base`) is
the only way into a spool whatever the backend, and a lease keeps the worker away from the
messages being judged.
"""

from __future__ import annotations

import contextlib
from typing import Any, Final

from dps.queues import Lease, Queue
from dps.state import StateStore

#: Messages leased per call while scanning.
SCAN_BATCH: Final = 500
#: The most messages one reconcile looks at per destination (the rest wait for the next run).
DEFAULT_LIMIT: Final = 100_000


def reconcile_spool(
    spool: Queue, state: StateStore, destination_id: str, *, limit: int = DEFAULT_LIMIT
) -> dict[str, Any]:
    """Ack the settled messages of one destination's spool; the counts (module docstring)."""
    depth_before = spool.depth()
    leases: list[Lease] = []
    scanned = delivered_acked = dead_acked = 0
    try:
        while scanned < limit:
            lease = spool.lease(min(SCAN_BATCH, limit - scanned), wait=0.0)
            if not lease:
                break
            leases.append(lease)
            scanned += len(lease)
        for lease in leases:
            ids = [msg.msg_id for msg in lease.messages]  # the record id (the router's put)
            delivered = state.delivered_records(ids, destination_id)
            dead = state.dead_lettered_records(ids, destination_id) - delivered
            settled = [i for i in ids if i in delivered or i in dead]
            if settled:
                spool.ack(lease, settled)
            delivered_acked += sum(1 for i in ids if i in delivered)
            dead_acked += sum(1 for i in ids if i in dead)
            rest = [i for i in ids if i not in delivered and i not in dead]
            if rest:
                spool.nack(lease, rest, reason="reconcile_scan", delay=0.0)
        leases = []
    finally:
        # On an error, whatever is still held goes back at once rather than after the lease.
        for lease in leases:
            # If this fails too the lease expires on its own; the first error is the one raised.
            with contextlib.suppress(Exception):
                spool.nack(lease, reason="reconcile_scan", delay=0.0)
    return {
        "destination": destination_id,
        "depth_before": depth_before,
        "scanned": scanned,
        "acked_delivered": delivered_acked,
        "acked_dead_lettered": dead_acked,
        "pending": scanned - delivered_acked - dead_acked,
        "leased_elsewhere": max(0, depth_before - scanned),
        "depth_after": spool.depth(),
        "complete": scanned < limit,
    }
