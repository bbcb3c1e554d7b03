"""The state-store contract, shared by the SQLite (embedded) and PostgreSQL (scale-out) backends.

Every write here is idempotent on a natural key, because every caller is at-least-once: a stage
that crashes after writing and before acknowledging its input will write the same thing again
after the restart. Replays must not double-count. The natural keys:

- dedupe cache: ``(key)``; the first ``origin`` (source position) that claimed a key owns it, so
  a replay of the same position is not a duplicate, a different position is;
- duplicates: ``(source_id, origin)``;
- validation failures: ``(record_id, origin, error_code, field)``;
- DLQ entries: ``(module, record_id, origin, destination_id)``;
- delivery log: ``(record_id, destination_id)``;
- source offsets: ``(source_id, position_key)``, committed with the number of records read, so
  the ingest count moves only with the committed offset.

Methods are synchronous and thread-safe; modules call them from worker threads.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dps.core import registry
from dps.core.record import Record, lineage_summary


class JobRunConflict(RuntimeError):
    """``start_job_run`` for a job that already has a RUNNING run."""


@dataclass(
    slots=True
)  # not frozen: one per record on Alpha's hot path, and a frozen __init__ costs twice
class DedupeCandidate:
    """A record asking to be remembered: its dedupe ``key`` and the ``origin`` it came from."""

    key: str
    origin: str
    record_id: str
    source_id: str


@dataclass(frozen=True, slots=True)
class ValidationFailure:
    """One record that failed validation in Alpha (the manual's validation_failures table)."""

    source_id: str
    record_id: str
    origin: str
    error_code: str
    field: str | None
    message: str


@dataclass(frozen=True, slots=True)
class DlqEntry:
    """A record that left the flow: which module, why, and the bytes needed to replay it.

    ``body`` is the encoded record (or the raw input bytes when it never became a record,
    e.g. a parse error). ``error_class`` is ``terminal`` or ``transient`` (alpha, beta) or one of
    Gamma's classes ``retryable``, ``throttle``, ``permanent``, ``poison``; ``transient``,
    ``retryable`` and ``throttle`` entries are ``retry_eligible``.

    Since schema version 3 an entry also holds the ``stage`` that saw it (alpha ``parse``,
    ``validate``; beta ``decode``, ``transform``, ``schema``, ``quality``; gamma ``route``,
    ``deliver``), the record's ``correlation_id``, the ``attempt_history`` (one dict per attempt:
    ``at``, ``error_class``, ``error``), and the ``config_version`` (the configuration checksum's
    first 12 hex digits) and ``rule_versions`` (beta: the rules applied and the one that failed;
    gamma: the routes in force and those that matched) that were running. ``docs/dlq.md`` lists
    them per module.
    """

    module: str
    record_id: str
    source_id: str
    origin: str
    reason: str
    error: str
    body: bytes
    error_class: str = "terminal"
    destination_id: str | None = None
    attempts: int = 0
    stage: str | None = None
    correlation_id: str | None = None
    attempt_history: tuple[dict[str, Any], ...] = ()
    config_version: str | None = None
    rule_versions: dict[str, Any] | None = None

    @property
    def retry_eligible(self) -> bool:
        return self.error_class in RETRY_ELIGIBLE_CLASSES


#: DLQ error classes a later attempt may fix (``retry_eligible`` entries).
RETRY_ELIGIBLE_CLASSES = frozenset({"transient", "retryable", "throttle"})


@dataclass(frozen=True, slots=True)
class DlqFilter:
    """Which DLQ entries an operation applies to (``/admin/dlq/replay`` ``filter``, ...).

    Every field left ``None`` matches anything; ``since``/``until`` are Unix times on
    ``created_at``.
    """

    module: str | None = None
    status: str = "open"
    entry_ids: tuple[str, ...] | None = None
    reason: str | None = None
    error_class: str | None = None
    destination_id: str | None = None
    source_id: str | None = None
    retry_eligible: bool | None = None
    since: float | None = None
    until: float | None = None


@dataclass(frozen=True, slots=True)
class DeliveryError:
    """One failed delivery attempt of a batch to a destination (``/errors?since=1h``)."""

    destination_id: str
    error_class: str
    error: str
    records: int = 0


@dataclass(slots=True)
class DeliveryOutcome:
    """The result of delivering one record to one destination (``delivered`` or ``failed``).

    Not frozen: one is built per record and destination on Gamma's hot path, and a frozen
    dataclass's ``__init__`` sets each field through ``object.__setattr__`` (twice the cost).
    """

    record_id: str
    destination_id: str
    status: str
    attempts: int = 1
    error: str | None = None
    #: The record's lineage summary (:func:`dps.core.record.lineage_summary`), kept in the same
    #: delivery-log row: the rules and enrichment sources that touched it, its quality score.
    rules: Sequence[str] = ()
    enrichment: Sequence[str] = ()
    quality_score: float | None = None

    @classmethod
    def of(
        cls, record: Record, destination_id: str, status: str, *, error: str | None = None
    ) -> DeliveryOutcome:
        """The outcome of delivering ``record``, with its lineage summary."""
        rules, enrichment, score = lineage_summary(record)
        return cls(
            record.record_id,
            destination_id,
            status,
            error=error,
            rules=rules,
            enrichment=enrichment,
            quality_score=score,
        )


@dataclass(slots=True)
class StoredDlqEntry:
    """A DLQ entry as listed back, with its id and timestamps."""

    entry_id: str
    module: str
    record_id: str
    source_id: str
    origin: str
    reason: str
    error: str
    error_class: str
    retry_eligible: bool
    destination_id: str | None
    attempts: int
    created_at: float
    status: str
    body: bytes = field(repr=False, default=b"")
    updated_at: float = 0.0
    stage: str | None = None
    correlation_id: str | None = None
    attempt_history: list[dict[str, Any]] = field(default_factory=list)
    config_version: str | None = None
    rule_versions: dict[str, Any] | None = None


class StateStore(abc.ABC):
    """Durable state shared by the modules (see the module docstring for idempotency keys)."""

    # -- lifecycle ---------------------------------------------------------------------------
    @abc.abstractmethod
    def migrate(self) -> int:
        """Create or upgrade the schema to the newest version; returns that version."""

    @abc.abstractmethod
    def schema_version(self) -> int:
        """The schema version the database is at (0 when empty)."""

    def close(self) -> None:  # noqa: B027 - optional
        """Release connections."""

    def describe(self) -> dict[str, Any]:
        return {}

    # -- alpha: dedupe, duplicates, validation failures, offsets ------------------------------
    @abc.abstractmethod
    def claim_dedupe_keys(
        self, candidates: Sequence[DedupeCandidate], ttl_seconds: float
    ) -> list[bool]:
        """For each candidate, True when it is a duplicate.

        A duplicate is a key already claimed (and not expired) by a *different* origin. A key
        claimed by the same origin (a replay after a crash) is not a duplicate. Unclaimed or
        expired keys are claimed by this candidate. Within one call, a later candidate with the
        same key as an earlier one (different origin) is a duplicate of it.
        """

    @abc.abstractmethod
    def record_duplicates(self, candidates: Sequence[DedupeCandidate]) -> None:
        """Count records dropped as duplicates (idempotent on ``(source_id, origin)``)."""

    @abc.abstractmethod
    def add_validation_failures(self, failures: Sequence[ValidationFailure]) -> None:
        """Record validation failures (idempotent on ``(record_id, origin, error_code, field)``)."""

    @abc.abstractmethod
    def get_offset(self, source_id: str, position_key: str) -> int:
        """The committed offset of one position (a file) of a source; 0 if none."""

    @abc.abstractmethod
    def commit_offset(
        self, source_id: str, position_key: str, offset: int, records_read: int
    ) -> None:
        """Move a position's offset forward and add ``records_read`` to the source's count."""

    @abc.abstractmethod
    def offsets(self, source_id: str | None = None) -> dict[tuple[str, str], int]:
        """All committed offsets, keyed by ``(source_id, position_key)``."""

    @abc.abstractmethod
    def get_source_state(self, source_id: str, key: str) -> str | None:
        """A named value a source keeps between runs (a watermark, a cursor), or None."""

    @abc.abstractmethod
    def set_source_state(self, source_id: str, key: str, value: str) -> None:
        """Store (replace) a named value of a source, once its records are durable."""

    # -- DLQ -------------------------------------------------------------------------------
    @abc.abstractmethod
    def add_dlq_entries(self, entries: Sequence[DlqEntry]) -> None:
        """Store DLQ entries (idempotent on ``(module, record_id, origin, destination_id)``)."""

    @abc.abstractmethod
    def list_dlq(
        self, module: str | None = None, *, limit: int = 100, offset: int = 0, status: str = "open"
    ) -> list[StoredDlqEntry]:
        """DLQ entries, oldest first."""

    @abc.abstractmethod
    def get_dlq_entries(self, entry_ids: Sequence[str]) -> list[StoredDlqEntry]:
        """The entries with these ids (unknown ids are left out)."""

    @abc.abstractmethod
    def set_dlq_status(self, entry_ids: Sequence[str], status: str) -> int:
        """Mark entries ``replayed`` or ``purged``; returns how many changed."""

    @abc.abstractmethod
    def dlq_counts(self, status: str = "open") -> dict[str, int]:
        """Open DLQ entries per module."""

    @abc.abstractmethod
    def dlq_reasons(self, module: str | None = None) -> dict[str, int]:
        """Open DLQ entries per reason."""

    def query_dlq(
        self, where: DlqFilter, *, limit: int | None = 100, offset: int = 0
    ) -> list[StoredDlqEntry]:
        """Entries matching ``where``, oldest first (``limit=None``: all of them)."""
        raise NotImplementedError

    def count_dlq(self, where: DlqFilter) -> int:
        """How many entries match ``where``."""
        raise NotImplementedError

    def archive_dlq(self, module: str | None, older_than: float) -> int:
        """Move entries created before ``older_than`` (Unix time) to ``dlq_entries_archive``."""
        raise NotImplementedError

    # -- gamma: delivery tracking -----------------------------------------------------------
    def add_delivery_errors(self, errors: Sequence[DeliveryError]) -> None:
        """Append failed delivery attempts (for ``/admin/destinations/<id>/errors``)."""
        raise NotImplementedError

    def delivery_errors(
        self, destination_id: str | None, since: float, *, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Failed delivery attempts since a Unix time, newest first."""
        raise NotImplementedError

    @abc.abstractmethod
    def record_deliveries(self, outcomes: Sequence[DeliveryOutcome]) -> None:
        """Upsert outcomes on ``(record_id, destination_id)``; ``delivered`` is never downgraded."""

    @abc.abstractmethod
    def delivered_records(self, record_ids: Sequence[str], destination_id: str) -> set[str]:
        """Which of these records are already delivered to the destination."""

    def dead_lettered_records(
        self, record_ids: Sequence[str], destination_id: str, module: str = "gamma"
    ) -> set[str]:
        """Which of these records have an open DLQ entry of ``module`` for the destination."""
        raise NotImplementedError

    @abc.abstractmethod
    def delivery_counts(self) -> dict[str, dict[str, int]]:
        """``{destination_id: {status: count}}``."""

    # -- control: audit, lineage, jobs, config versions ------------------------------------
    @abc.abstractmethod
    def append_audit(
        self, actor: str, action: str, target: str, details: dict[str, Any] | None = None
    ) -> None:
        """Append one audit log entry (never updated or deleted)."""

    @abc.abstractmethod
    def list_audit(self, *, limit: int = 100, since: float | None = None) -> list[dict[str, Any]]:
        """Audit entries, newest first."""

    def export_audit(
        self, since: float | None = None, until: float | None = None
    ) -> list[dict[str, Any]]:
        """Audit entries between two Unix times, oldest first, archived ones included."""
        raise NotImplementedError

    def verify_audit(self) -> dict[str, Any]:
        """Check the audit hash chain: ``{"ok", "entries", "problems": [...]}``."""
        raise NotImplementedError

    def archive_audit(self, older_than: float) -> int:
        """Move audit entries older than a Unix time to ``audit_log_archive``."""
        raise NotImplementedError

    @abc.abstractmethod
    def add_lineage(self, events: Sequence[tuple[str, str, str, dict[str, Any]]]) -> None:
        """Append lineage events ``(record_id, stage, action, details)``."""

    @abc.abstractmethod
    def lineage_of(self, record_id: str) -> list[dict[str, Any]]:
        """A record's lineage events in time order."""

    def record_trace(self, record_id: str) -> dict[str, Any]:
        """One record's life: ingest position, duplicates, failures, DLQ, deliveries (L.2)."""
        raise NotImplementedError

    def delivered_between(
        self, since: float | None, until: float | None, *, limit: int = 10000
    ) -> list[dict[str, Any]]:
        """Delivery log rows between two Unix times, oldest first (lineage export)."""
        raise NotImplementedError

    @abc.abstractmethod
    def start_job_run(self, job_name: str, trigger: str, owner: str = "") -> str:
        """Record a job run starting (``owner``: who runs it); returns its run id.

        Raises :class:`JobRunConflict` when the job already has a run in progress.
        """

    @abc.abstractmethod
    def finish_job_run(
        self, run_id: str, status: str, records: int = 0, message: str = "", log: str = ""
    ) -> None:
        """Record a job run's end: ``SUCCESS`` or ``FAILED``, what it did and its log."""

    @abc.abstractmethod
    def list_job_runs(self, job_name: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Job runs, newest first."""

    @abc.abstractmethod
    def save_config_version(self, module: str, checksum: str, content: str, actor: str) -> int:
        """Store a configuration snapshot unless the newest one has this checksum; its version."""

    @abc.abstractmethod
    def list_config_versions(self, module: str | None = None) -> list[dict[str, Any]]:
        """Stored configuration versions, newest first (without content)."""

    # -- accounting -------------------------------------------------------------------------
    @abc.abstractmethod
    def accounting(self) -> dict[str, Any]:
        """Durable counts for the run summary.

        ``{"ingested": int, "ingested_by_source": {...}, "duplicates": int,
        "dlq": {"alpha": n, "beta": n, "gamma": n}, "delivered": {destination: n},
        "delivered_records": distinct records delivered anywhere}``.
        """


class StateBackend(abc.ABC):
    """A state backend plugin, built from ``pipeline.yaml``'s ``state`` section."""

    @abc.abstractmethod
    def __init__(self, settings: dict[str, Any], data_dir: Path) -> None: ...

    @abc.abstractmethod
    def open(self) -> StateStore: ...


def open_state(backend: str, settings: dict[str, Any], data_dir: Path) -> StateStore:
    """Open the state store on the named backend (``sqlite`` or ``postgresql``), migrated."""
    backend_cls = registry.get("states", backend)
    instance: StateBackend = backend_cls(settings, data_dir)
    store = instance.open()
    try:
        store.migrate()
    except BaseException:
        store.close()
        raise
    return store
