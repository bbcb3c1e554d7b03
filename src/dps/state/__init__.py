"""The state store: dedupe cache, DLQ, delivery tracking, audit, lineage, jobs, config versions."""

from dps.state.base import (
    DedupeCandidate,
    DeliveryOutcome,
    DlqEntry,
    StateStore,
    ValidationFailure,
    open_state,
)

__all__ = [
    "DedupeCandidate",
    "DeliveryOutcome",
    "DlqEntry",
    "StateStore",
    "ValidationFailure",
    "open_state",
]
