"""DLQ operations (Runbook C.2): stats, entries, analysis, replay, export, purge, cleanup.

One implementation for the three DLQs (``module`` is ``alpha``, ``beta`` or ``gamma``), used by
Gamma's admin API (``/admin/dlq/...``) and by ``dps dlq --module ...`` on the CLI; both work on
the state store and the queues only, so no module is imported.

Replay puts the stored record back into the flow, never around it:

- a Gamma entry with a destination (a delivery failure) goes back into that destination's spool
  (``target: original``, the default), or with ``target: beta`` into the transform queue, through
  the *current* Beta rules (after a rule fix);
- a Gamma entry without a destination (``no_route``, ``unauthorized``) goes back into the
  delivery queue and is routed again by the current routes;
- Beta and Alpha entries go into the transform queue (Beta runs its current rules on them). An
  Alpha entry that never became a record (a parse error: its body is the raw input) cannot be
  replayed here; it is reported as ``skipped`` with the reason, to be fixed at the source.

The queue message id of a replay is ``<record_id>#replay:<entry_id>:<n>`` (``n`` counts the
entry's attempts), because the queues drop a re-put of a recently acked id; the record id inside
the envelope is unchanged, so idempotent destinations and the delivery log still see one record.
Only ``open`` entries are replayed or purged: a second replay of the same entry is a no-op.
A replayed record that fails again reopens its entry with the earlier attempts kept.
Every replay, purge and cleanup is written to the audit log.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import msgspec

from dps.config import PipelineConfig
from dps.core.record import decode, encode
from dps.gamma.delivery import SPOOL_MAX_ATTEMPTS, spool_name
from dps.queues import Queue, QueueSpec, open_queue
from dps.state import StateStore
from dps.state.base import DlqFilter, StoredDlqEntry

MODULES: Final = ("alpha", "beta", "gamma")
TRANSFORM_QUEUE: Final = "transform"
DELIVERY_QUEUE: Final = "delivery"
_json = msgspec.json.Encoder()

#: Opens a queue by name for putting (``transform``, ``delivery``, a spool).
QueueOpener = Callable[[str], Queue]


class DlqRequestError(ValueError):
    """A DLQ request that cannot be carried out as asked (answered 400)."""


def stage_queue_opener(config: PipelineConfig, data_dir: Any) -> QueueOpener:
    """Open the pipeline's queues with the same spec the modules use (spools included)."""
    transport = config.pipeline.transport

    def opener(name: str) -> Queue:
        spool = name.startswith("spool_")
        spec = QueueSpec(
            name=name,
            capacity=transport.capacity,
            visibility_timeout=transport.visibility_timeout_seconds,
            max_attempts=SPOOL_MAX_ATTEMPTS if spool else transport.max_attempts,
            consumer=f"{name}-workers",
            pack=not spool,
        )
        return open_queue(transport.backend, transport.backend_settings(), data_dir, spec)

    return opener


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def parse_since(value: str | float | None, *, now: float | None = None) -> float | None:
    """``1h``, ``30m``, ``2d``, ``45s``, a Unix time or an ISO-8601 time, to a Unix time."""
    if value is None or value == "":
        return None
    now = time.time() if now is None else now
    if isinstance(value, int | float):
        return float(value)
    text = value.strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    if text[-1:] in units and text[:-1].replace(".", "", 1).isdigit():
        return now - float(text[:-1]) * units[text[-1]]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise DlqRequestError(
            f"since/until {value!r} is not a time; expected 1h, 30m, 2d, a Unix time or ISO-8601."
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def entry_view(entry: StoredDlqEntry, *, body: bool = True) -> dict[str, Any]:
    """One entry as JSON: metadata, and the record (or the raw input) it holds."""
    view: dict[str, Any] = {
        "entry_id": entry.entry_id,
        "module": entry.module,
        "stage": entry.stage,
        "record_id": entry.record_id,
        "source_id": entry.source_id,
        "origin": entry.origin,
        "destination_id": entry.destination_id,
        "reason": entry.reason,
        "error": entry.error,
        "error_class": entry.error_class,
        "retry_eligible": entry.retry_eligible,
        "attempts": entry.attempts,
        "attempt_history": entry.attempt_history,
        "correlation_id": entry.correlation_id,
        "config_version": entry.config_version,
        "rule_versions": entry.rule_versions,
        "status": entry.status,
        "created_at": _iso(entry.created_at),
        "updated_at": _iso(entry.updated_at),
    }
    if body:
        try:
            record = decode(entry.body)
            view["record"] = msgspec.to_builtins(record)
        except msgspec.DecodeError:
            try:
                view["raw"] = entry.body.decode("utf-8")
            except UnicodeDecodeError:
                view["raw_base64"] = base64.b64encode(entry.body).decode()
    return view


@dataclass(slots=True)
class DlqService:
    """The DLQ operations of one module's DLQ (see the module docstring)."""

    state: StateStore
    module: str
    opener: QueueOpener | None = None
    actor: str = "admin_api"

    def __post_init__(self) -> None:
        if self.module not in MODULES:
            raise DlqRequestError(f"module {self.module!r} has no DLQ; expected one of {MODULES}.")

    # -- reading --------------------------------------------------------------------------------
    def filter(self, spec: dict[str, Any] | None = None, **fixed: Any) -> DlqFilter:
        """A :class:`DlqFilter` from a request's ``filter`` object (keys as in the manual)."""
        spec = dict(spec or {})
        known = {
            "retry_eligible",
            "reason",
            "error_class",
            "destination",
            "destination_id",
            "source_id",
            "since",
            "until",
            "status",
            "entry_ids",
        }
        unknown = sorted(set(spec) - known)
        if unknown:
            raise DlqRequestError(
                f"filter key {unknown[0]!r} is not known; expected some of {sorted(known)}."
            )
        eligible = spec.get("retry_eligible")
        if eligible is not None and not isinstance(eligible, bool):
            raise DlqRequestError(f"filter.retry_eligible {eligible!r} is not true or false.")
        ids = spec.get("entry_ids")
        return DlqFilter(
            module=self.module,
            status=str(spec.get("status", fixed.get("status", "open"))),
            entry_ids=tuple(ids) if ids is not None else fixed.get("entry_ids"),
            reason=spec.get("reason"),
            error_class=spec.get("error_class"),
            destination_id=spec.get("destination") or spec.get("destination_id"),
            source_id=spec.get("source_id"),
            retry_eligible=eligible,
            since=parse_since(spec.get("since")),
            until=parse_since(spec.get("until")),
        )

    def stats(self) -> dict[str, Any]:
        entries = self.state.query_dlq(DlqFilter(module=self.module, status="all"), limit=None)
        open_entries = [e for e in entries if e.status == "open"]
        by_status: dict[str, int] = {}
        for e in entries:
            by_status[e.status] = by_status.get(e.status, 0) + 1
        created = [e.created_at for e in open_entries]
        now = time.time()
        return {
            "module": self.module,
            "size": len(open_entries),
            "total_entries": len(open_entries),
            "by_status": by_status,
            "by_reason": _count(e.reason for e in open_entries),
            "by_error_class": _count(e.error_class for e in open_entries),
            "by_destination": _count(e.destination_id or "-" for e in open_entries),
            "retry_eligible": sum(1 for e in open_entries if e.retry_eligible),
            "oldest_entry": _iso(min(created)) if created else None,
            "newest_entry": _iso(max(created)) if created else None,
            "oldest_age_seconds": round(now - min(created), 3) if created else None,
            "entries_last_hour": sum(1 for e in entries if e.created_at >= now - 3600),
        }

    def entries(self, limit: int = 100, offset: int = 0, status: str = "open") -> dict[str, Any]:
        if not 1 <= limit <= 10000 or offset < 0:
            raise DlqRequestError(
                f"limit={limit}, offset={offset}: expected limit 1..10000 and offset >= 0."
            )
        where = DlqFilter(module=self.module, status=status)
        rows = self.state.query_dlq(where, limit=limit, offset=offset)
        return {
            "module": self.module,
            "total": self.state.count_dlq(where),
            "limit": limit,
            "offset": offset,
            "entries": [entry_view(e) for e in rows],
        }

    def analysis(self) -> dict[str, Any]:
        """Open entries grouped by reason, class, destination, stage, source and rule, each
        group with its count, first and last seen and an example.

        ``by_rule`` groups by the rule each entry names (:func:`entry_rules`); an entry sent by
        two routes counts under both, one that names no rule is under ``-``.
        """
        rows = self.state.query_dlq(DlqFilter(module=self.module), limit=None)
        rules_of = {e.entry_id: entry_rules(e) or ["-"] for e in rows}

        def group(keys: Callable[[StoredDlqEntry], Iterable[str]]) -> dict[str, dict[str, Any]]:
            out: dict[str, dict[str, Any]] = {}
            for e in rows:
                for key in keys(e):
                    g = out.setdefault(
                        key,
                        {
                            "count": 0,
                            "retry_eligible": 0,
                            "error_classes": {},
                            "destinations": {},
                            "stages": {},
                            "rules": {},
                            "first_seen": e.created_at,
                            "last_seen": e.created_at,
                            "example_error": e.error,
                            "example_entry_id": e.entry_id,
                        },
                    )
                    g["count"] += 1
                    g["retry_eligible"] += int(e.retry_eligible)
                    for name, value in (
                        ("error_classes", e.error_class),
                        ("destinations", e.destination_id or "-"),
                        ("stages", e.stage or "-"),
                    ):
                        g[name][value] = g[name].get(value, 0) + 1
                    for rule in rules_of[e.entry_id]:
                        g["rules"][rule] = g["rules"].get(rule, 0) + 1
                    g["first_seen"] = min(g["first_seen"], e.created_at)
                    g["last_seen"] = max(g["last_seen"], e.updated_at or e.created_at)
            for g in out.values():
                g["first_seen"] = _iso(g["first_seen"])
                g["last_seen"] = _iso(g["last_seen"])
            return dict(sorted(out.items(), key=lambda kv: -int(kv[1]["count"])))

        return {
            "module": self.module,
            "total": len(rows),
            "retry_eligible": sum(1 for e in rows if e.retry_eligible),
            "failure_reasons": group(lambda e: (e.reason,)),
            "by_error_class": group(lambda e: (e.error_class,)),
            "by_destination": group(lambda e: (e.destination_id or "-",)),
            "by_stage": group(lambda e: (e.stage or "-",)),
            "by_source": group(lambda e: (e.source_id or "-",)),
            "by_rule": group(lambda e: rules_of[e.entry_id]),
        }

    def export(self, where: DlqFilter | None = None) -> list[dict[str, Any]]:
        where = where or DlqFilter(module=self.module)
        return [entry_view(e) for e in self.state.query_dlq(where, limit=None)]

    def export_ndjson(self, where: DlqFilter | None = None) -> Iterator[bytes]:
        for view in self.export(where):
            yield _json.encode(view) + b"\n"

    # -- writing --------------------------------------------------------------------------------
    def select(self, body: dict[str, Any]) -> DlqFilter:
        """The entries a replay or purge request names: ``entry_ids`` or ``filter`` (or ``all``)."""
        ids = body.get("entry_ids")
        if ids is not None:
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise DlqRequestError("entry_ids must be a list of entry id strings.")
            return self.filter(body.get("filter"), entry_ids=tuple(ids))
        if "filter" in body:
            if not isinstance(body["filter"], dict):
                raise DlqRequestError('filter must be an object, e.g. {"retry_eligible": true}.')
            return self.filter(body["filter"])
        if body.get("all") is True:
            return self.filter({})
        raise DlqRequestError(
            'Name the entries: {"entry_ids": [...]}, {"filter": {...}} or {"all": true}.'
        )

    def replay(self, body: dict[str, Any]) -> dict[str, Any]:
        target = body.get("target", "original")
        if target not in ("original", "beta"):
            raise DlqRequestError(f"target {target!r} is not known; expected original or beta.")
        if self.opener is None:
            raise DlqRequestError("Replay needs the queues; this DLQ view has none.")
        where = self.select(body)
        entries = self.state.query_dlq(where, limit=None)
        plan: dict[str, list[tuple[str, bytes]]] = {}
        replayed: list[str] = []
        skipped: list[dict[str, str]] = []
        for e in entries:
            try:
                record = decode(e.body)
            except msgspec.DecodeError:
                skipped.append(
                    {
                        "entry_id": e.entry_id,
                        "reason": "The entry holds raw input, not a record: fix and re-ingest it "
                        "at the source.",
                    }
                )
                continue
            queue_name = self._queue_for(e, target)
            record.attempts += 1
            n = max(len(e.attempt_history), e.attempts, 1)
            plan.setdefault(queue_name, []).append(
                (f"{record.record_id}#replay:{e.entry_id}:{n}", encode(record))
            )
            replayed.append(e.entry_id)
        for name, items in plan.items():
            queue = self.opener(name)
            try:
                queue.put(items, timeout=30.0)
            finally:
                queue.close()
        changed = self.state.set_dlq_status(replayed, "replayed") if replayed else 0
        result = {
            "module": self.module,
            "target": target,
            "matched": len(entries),
            "replayed": changed,
            "entry_ids": replayed,
            "queues": {q: len(items) for q, items in plan.items()},
            "skipped": skipped,
            **_unmatched(where, entries),
        }
        self.state.append_audit(
            self.actor,
            "dlq_replay",
            f"dlq:{self.module}",
            {k: v for k, v in result.items() if k != "entry_ids"} | {"entry_ids": replayed[:1000]},
        )
        return result

    def _queue_for(self, e: StoredDlqEntry, target: str) -> str:
        if self.module != "gamma" or target == "beta":
            return TRANSFORM_QUEUE
        if e.destination_id:
            return spool_name(e.destination_id)
        return DELIVERY_QUEUE

    def purge(self, body: dict[str, Any]) -> dict[str, Any]:
        where = self.select(body)
        entries = self.state.query_dlq(where, limit=None)
        ids = [e.entry_id for e in entries]
        changed = self.state.set_dlq_status(ids, "purged") if ids else 0
        result = {
            "module": self.module,
            "matched": len(ids),
            "purged": changed,
            **_unmatched(where, entries),
        }
        self.state.append_audit(
            self.actor, "dlq_purge", f"dlq:{self.module}", result | {"entry_ids": ids[:1000]}
        )
        return result | {"entry_ids": ids}

    def cleanup(self, retention_days: int, *, now: float | None = None) -> dict[str, Any]:
        """Archive entries older than ``retention_days`` (the ``gamma_dlq_cleanup`` job)."""
        if isinstance(retention_days, bool) or not isinstance(retention_days, int):
            raise DlqRequestError(
                f"retention_days {retention_days!r} is not a whole number of days."
            )
        if retention_days < 0:
            raise DlqRequestError(
                f"retention_days is {retention_days}; expected 0 or more (0 archives every entry)."
            )
        cutoff = (time.time() if now is None else now) - retention_days * 86400
        archived = self.state.archive_dlq(self.module, cutoff)
        result = {
            "module": self.module,
            "retention_days": retention_days,
            "archived": archived,
            "cutoff": _iso(cutoff),
        }
        self.state.append_audit(self.actor, "dlq_cleanup", f"dlq:{self.module}", result)
        return result


def entry_rules(entry: StoredDlqEntry) -> list[str]:
    """The rules a DLQ entry holds responsible (``by_rule`` of the analysis).

    Beta: the rule that failed (``rule_versions.failed_rule``, or the ``rule_failed:<rule_id>``
    reason of an entry written before rule versions were kept) or the ``drop_record`` rule that
    dropped it. Gamma: the routes that sent the record (``rule_versions.matched``: to the
    entry's destination for a delivery failure; that matched at all for a routing failure).
    Nothing for the rest (Alpha entries, decode errors, schema and quality rejects, ``no_route``,
    a record that reached its destination as the default destination).
    """
    versions = entry.rule_versions if isinstance(entry.rule_versions, dict) else {}
    for key in ("failed_rule", "dropped_by"):
        rule = versions.get(key)
        if isinstance(rule, str) and rule:
            return [rule]
    if entry.reason.startswith("rule_failed:"):
        return [entry.reason.partition(":")[2]]
    matched = versions.get("matched")
    if isinstance(matched, list):
        return [str(rule) for rule in matched]
    return []


def _unmatched(where: DlqFilter, entries: list[StoredDlqEntry]) -> dict[str, list[str]]:
    """The named entry ids that matched no entry: unknown, already replayed or purged, or
    outside the filter. Said out loud, since a mistyped id otherwise reads as success."""
    if where.entry_ids is None:
        return {}
    found = {e.entry_id for e in entries}
    return {"unmatched_entry_ids": [i for i in dict.fromkeys(where.entry_ids) if i not in found]}


def _count(values: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


__all__ = [
    "MODULES",
    "DlqRequestError",
    "DlqService",
    "entry_rules",
    "entry_view",
    "parse_since",
    "stage_queue_opener",
]
