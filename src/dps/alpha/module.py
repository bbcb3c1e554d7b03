"""Module Alpha: fetch from sources, parse, validate, dedupe, and make records durable.

One step takes one fetch from each enabled source. The fetches, and the parse of what they
return, run at once on ``PARSER_THREAD_COUNT`` threads; the rest runs on the worker thread, one
source after the other in configuration order. For each fetch:

1. every raw item is parsed (a parse error sends the raw bytes to the Alpha DLQ; the rest go on);
2. builds the envelope (deterministic record id, event time from ``timestamp_field``);
3. checks ``required_fields`` (failures go to the validation failures table and the DLQ);
4. claims dedupe keys in the state store (a key held by another origin is a duplicate, counted);
5. puts the valid records into the transform queue (durable, with backpressure);
6. and only then commits the source's offsets with the number of records read.

Steps 1 to 5 write only idempotent things, so a crash anywhere before 6 replays the fetch with the
same ids and origins and nothing is counted or delivered twice.

Backpressure: the ingest buffer is the transform queue, up to ``BUFFER_CAPACITY`` records. When it
is full no source is fetched (pull sources simply wait; push sources answer 429), and
``alpha_buffer_utilization`` is its fill ratio. The room is shared out among a step's fetches
before they start, so together they never fetch more than it.

A configuration reload keeps the runners of sources whose configuration did not change (their
connections, push endpoints and uncommitted fetches stay as they are; only their credentials are
resolved again) and rebuilds the others between two batches, so enabling, disabling or rotating
the credentials of one source loses nothing and disturbs no other source.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from dps.alpha import metrics as m
from dps.alpha.parsers.base import BadRecord, Parser
from dps.alpha.sources.base import Fetch, Source, SourceContext
from dps.alpha.stats import (
    SLOW_PARSE_KEPT,
    SLOW_PARSE_SECONDS,
    WINDOW_SECONDS,
    BatchStats,
    IngestStats,
    SlowParse,
    parse_duration,
)
from dps.alpha.timestamps import TimestampParser
from dps.alpha.validation.base import Outcome, SourceValidator
from dps.config import PipelineConfig
from dps.config.models import SourceConfig
from dps.config.secrets import SecretRef
from dps.core import registry
from dps.core.errors import SecretError, TerminalError
from dps.core.health import Check, combine, evaluate, worst
from dps.core.metrics import MODULE_LATENCY_SECONDS, observe_n
from dps.core.record import Record, encode_many, get_path, new_record
from dps.runtime.lifecycle import Health, HealthReport, RunState
from dps.runtime.module import TRANSFORM_QUEUE, ModuleHost
from dps.state import DedupeCandidate, DlqEntry, ValidationFailure


@dataclass(slots=True)
class _Parsed:
    """A fetch's raw items parsed: per item its payloads (None: an item handed out with an
    error, not parsed), the slow parses, and the seconds the parse took."""

    payloads: list[list[Any] | None] = field(default_factory=list)
    slow: list[SlowParse] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(slots=True)
class _Fetched:
    """What one source's fetch-and-parse task returned to the worker thread."""

    runner: SourceRunner
    batch: int
    fetch: Fetch | None
    seconds: float
    parsed: _Parsed | None = None
    error: Exception | None = None
    parse_error: Exception | None = None


class SourceRunner:
    """One configured source with its parser and its last known state."""

    def __init__(
        self, config: SourceConfig, source: Source, parser: Parser, validator: SourceValidator
    ) -> None:
        self.config = config
        self.source = source
        self.parser = parser
        self.validator = validator
        self.timestamps = TimestampParser(
            config.parsing.timestamp_format, config.parsing.timestamp_timezone
        )
        self.status = "enabled" if config.enabled else "disabled"
        self.last_success: float | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.draining = False
        self.error_count = 0
        self.records_ingested = 0

    @property
    def source_id(self) -> str:
        return self.config.source_id

    def as_dict(self) -> dict[str, Any]:
        return {
            "source_id": self.source_id,
            "source_type": self.config.source_type,
            "status": self.status,
            "last_success": self.last_success,
            "last_success_at": _iso(self.last_success),
            "last_error": self.last_error,
            "last_error_at": _iso(self.last_error_at),
            "error_count": self.error_count,
            "records_ingested": self.records_ingested,
            "pending": self.source.pending(),
            "exhausted": self.source.exhausted(),
            **self.source.info(),
        }


class AlphaModule(ModuleHost):
    """The ingest stage (see the module docstring)."""

    name = "alpha"

    def __init__(self, config_dir: Path, *, data_dir: Path | None = None) -> None:
        super().__init__(config_dir, data_dir=data_dir)
        self.queue = self.open_queue(TRANSFORM_QUEUE)
        self.runners: dict[str, SourceRunner] = {}
        self.stats = IngestStats()
        self._room = 0
        self._pool: ThreadPoolExecutor | None = None
        self._pool_size = 0
        self._next = 0
        self._build(self.config)

    def _build(self, config: PipelineConfig) -> None:
        old = self.runners
        runners: dict[str, SourceRunner] = {}
        # Schemas and rule files are compiled here, once per load or reload; one that does not
        # compile refuses the whole configuration before anything changes.
        validators = {
            source_id: SourceValidator.build(sc, config.alpha.validation, config.root / "alpha")
            for source_id, sc in config.alpha.sources.items()
        }
        try:
            for source_id, sc in config.alpha.sources.items():
                kept = old.get(source_id)
                if kept is not None and _same_source(kept.config, sc):
                    kept.config = sc
                    kept.validator = validators[source_id]
                    kept.source.refresh_credentials()
                    runners[source_id] = kept
                    continue
                source = self._make_source(config, sc)
                runners[source_id] = SourceRunner(
                    sc, source, self._make_parser(sc), validators[source_id]
                )
        except BaseException:
            for source_id, runner in runners.items():
                if old.get(source_id) is not runner:
                    runner.source.close()
            raise
        for source_id, runner in old.items():
            if runners.get(source_id) is not runner:
                self._flush(runner)
                runner.source.close()
        self.runners = runners
        for source_id, runner in runners.items():
            m.ALPHA_SOURCE_CONNECTION_STATUS.labels(source=source_id).set(
                1 if runner.config.enabled and runner.status != "error" else 0
            )

    def _make_source(self, config: PipelineConfig, sc: SourceConfig) -> Source:
        cls = registry.get("sources", sc.source_type)
        connection = sc.connection
        path = getattr(connection, "path", None)
        if isinstance(path, str) and not Path(path).is_absolute():
            # Relative source paths are relative to the configuration directory.
            connection = connection.model_copy(update={"path": str(config.root / path)})
        source_id = sc.source_id

        def accepting() -> bool:
            runner = self.runners.get(source_id)
            return (
                self.run_state == RunState.RUNNING
                and runner is not None
                and runner.config.enabled
                and runner.status != "paused"
                and not runner.draining
            )

        context = SourceContext(
            poll_interval_seconds=sc.polling.interval_seconds,
            batch_size=sc.polling.batch_size,
            parsing_format=sc.parsing.format,
            record_path=sc.parsing.record_path,
            csv_header=sc.parsing.csv.header,
            csv_quote=sc.parsing.csv.quote,
            connection_timeout_ms=config.alpha.settings.CONNECTION_TIMEOUT_MS,
            max_retry_count=config.alpha.settings.MAX_RETRY_COUNT,
            connection_pool_size=config.alpha.settings.CONNECTION_POOL_SIZE,
            connection_idle_timeout_ms=config.alpha.settings.CONNECTION_IDLE_TIMEOUT_MS,
            buffer_capacity=min(
                config.alpha.settings.BUFFER_CAPACITY, config.pipeline.transport.capacity
            ),
            buffer_room=lambda: self._room,
            accepting=accepting,
            wake=self.wake,
        )
        source: Source = cls(sc.source_id, connection, self.state_store, context=context)
        return source

    def _buffer_room(self) -> int:
        """Records the transform queue takes before it holds BUFFER_CAPACITY (backpressure)."""
        capacity = min(
            self.config.alpha.settings.BUFFER_CAPACITY, self.config.pipeline.transport.capacity
        )
        depth = self.queue.depth()
        m.ALPHA_BUFFER_UTILIZATION.set(min(1.0, depth / capacity))
        # Push endpoints read this from their own threads; the queue is only used by the worker.
        self._room = max(0, capacity - depth)
        return self._room

    @staticmethod
    def _make_parser(sc: SourceConfig) -> Parser:
        parser: Parser = registry.get("parsers", sc.parsing.format)(
            sc.parsing.record_path, parsing=sc.parsing
        )
        return parser

    def apply_config(self, new: PipelineConfig) -> None:
        self._build(new)
        if self._pool_size != new.alpha.settings.PARSER_THREAD_COUNT:
            # Resized between two steps (the caller holds the worker lock): the next step
            # starts a pool of the new size.
            self._close_pool()

    # -- the work -------------------------------------------------------------------------------
    def _executor(self) -> ThreadPoolExecutor | None:
        """The fetch-and-parse pool of ``PARSER_THREAD_COUNT`` threads (None: serial, here)."""
        size = self.config.alpha.settings.PARSER_THREAD_COUNT
        if size <= 1:
            return None
        if self._pool is None or self._pool_size != size:
            self._close_pool()
            self._pool = ThreadPoolExecutor(size, thread_name_prefix="alpha-parse")
            self._pool_size = size
        return self._pool

    def _close_pool(self) -> None:
        """Stop the pool's threads (no fetch is in flight: the caller holds the worker lock)."""
        pool, self._pool, self._pool_size = self._pool, None, 0
        if pool is not None:
            pool.shutdown(wait=True)

    def _plan(self, active: list[SourceRunner], room: int) -> list[tuple[SourceRunner, int]]:
        """How many items each source may fetch now, in source order: the room, shared out.

        The sum never exceeds ``room`` (the fetches run at once, so each gets its own share of
        the buffer). When the room does not go round, the source served first rotates, so a busy
        first source cannot starve the others.
        """
        size = self.config.alpha.settings.DEFAULT_BATCH_SIZE
        start = self._next % len(active)
        self._next = start + 1
        shares: dict[str, int] = {}
        left = room
        for runner in active[start:] + active[:start]:
            if left <= 0:
                break
            shares[runner.source_id] = min(size, left)
            left -= shares[runner.source_id]
        return [(r, shares[r.source_id]) for r in active if r.source_id in shares]

    def _fetch_and_parse(self, runner: SourceRunner, batch: int) -> _Fetched:
        """One fetch of one source and the parse of what it returned (on a pool thread).

        Only the source and its parser are touched: a source is never fetched twice at once
        (one task per source per step), and everything shared is left to :meth:`_ingest`.
        """
        started = time.perf_counter()
        try:
            fetch = runner.source.fetch(batch)
        except Exception as exc:  # TransientError, or a source's own bug: the same handling
            return _Fetched(runner, batch, None, time.perf_counter() - started, error=exc)
        out = _Fetched(runner, batch, fetch, time.perf_counter() - started)
        if fetch:
            try:
                out.parsed = self._parse(runner, fetch)
            except Exception as exc:
                out.parse_error = exc
        return out

    def step(self) -> bool:
        """One fetch of every enabled source, ingested in source order.

        The fetches (and the parse of what they return) run at once on the pool of
        ``PARSER_THREAD_COUNT`` threads: fetching is waiting on HTTP, brokers and disks. The
        ingest (validation, dedupe claims, transform-queue writes, then the source's commit)
        stays on this thread, one source after the other, so a source's offsets or acks still
        move only once its records are durable. The step returns only when every fetch it
        started is done: a reload, a pause or a flush never meets a fetch in flight.
        """
        active = [r for r in self.runners.values() if r.config.enabled and r.status != "paused"]
        if not active:
            return False
        room = self._buffer_room()
        if room <= 0:
            # Backpressure: nothing is fetched until beta has made room.
            return False
        plan = self._plan(active, room)
        pool = self._executor() if len(plan) > 1 else None
        worked = False
        if pool is None:
            # Serial: each source is fetched, parsed and ingested before the next is fetched.
            for runner, batch in plan:
                worked = self._take(self._fetch_and_parse(runner, batch)) or worked
        else:
            results = [pool.submit(self._fetch_and_parse, r, b) for r, b in plan]
            ingested = 0
            try:
                for future in results:
                    fetched = future.result()
                    ingested += 1
                    worked = self._take(fetched) or worked
            except BaseException:
                # What the other sources fetched is not committed: hand it out again next time.
                wait(results)
                for future in results[ingested:]:
                    fetched = future.result()
                    if fetched.fetch:
                        fetched.runner.source.rewind()
                raise
        m.ALPHA_ACTIVE_CONNECTIONS.set(
            sum(r.source.open_connections() for r in self.runners.values())
        )
        return worked

    def _take(self, fetched: _Fetched) -> bool:
        """Ingest one source's fetch on the worker thread; True when it returned data."""
        runner = fetched.runner
        if fetched.error is not None:
            self._fetched(runner, fetched.seconds, ok=False)
            self._source_failed(runner, fetched.error)
            return False
        fetch = fetched.fetch
        worked = False
        if fetch:
            self._fetched(runner, fetched.seconds, ok=True)
            try:
                if fetched.parse_error is not None:
                    raise fetched.parse_error
                self._ingest(
                    runner,
                    fetch,
                    fetched.parsed,
                    full=len(fetch.items) >= fetched.batch,
                    fetch_seconds=fetched.seconds,
                )
            except BaseException:
                # Nothing of this fetch is committed: hand it out again next time.
                runner.source.rewind()
                raise
            worked = True
            runner.last_success = time.time()
            self._buffer_room()
        elif runner.status == "error" and runner.source.waiting_to_retry():
            return False
        runner.status = "enabled"
        runner.last_error = None
        m.ALPHA_SOURCE_CONNECTION_STATUS.labels(source=runner.source_id).set(1)
        return worked

    def _fetched(self, runner: SourceRunner, seconds: float, *, ok: bool) -> None:
        """Record a fetch attempt that returned data or failed, and its duration."""
        m.ALPHA_SOURCE_FETCH_DURATION_SECONDS.labels(source_id=runner.source_id).observe(seconds)
        self.stats.attempt(runner.source_id, ok)

    def _flush(self, runner: SourceRunner) -> None:
        """Make durable what a source being replaced has received but not committed.

        Only push sources hold such items (their senders wait for the answer); pull sources are
        simply asked again by the new runner, from their committed position.
        """
        runner.source.stop_intake()
        for _ in range(1000):
            if not runner.source.pending():
                return
            fetch = runner.source.fetch(self.config.alpha.settings.DEFAULT_BATCH_SIZE)
            if not fetch:
                return
            try:
                self._ingest(runner, fetch)
            except Exception as exc:
                runner.source.rewind()
                self.log.error(
                    "Records of a replaced source could not be made durable; their senders "
                    "get an error and will send them again.",
                    source_id=runner.source_id,
                    error=str(exc),
                )
                return

    def _source_failed(self, runner: SourceRunner, exc: Exception) -> None:
        message = str(exc)
        if runner.last_error != message:
            self.log.error("Source fetch failed.", source_id=runner.source_id, error=message)
        runner.status = "error"
        runner.last_error = message
        runner.last_error_at = time.time()
        runner.error_count += 1
        m.ALPHA_SOURCE_CONNECTION_STATUS.labels(source=runner.source_id).set(0)

    def _parse(self, runner: SourceRunner, fetch: Fetch) -> _Parsed:
        """Parse every raw item of a fetch (on a pool thread when PARSER_THREAD_COUNT > 1).

        Touches only the source's parser; the slow parses are kept here and remembered by the
        worker thread in :meth:`_ingest`.
        """
        out = _Parsed()
        started = time.perf_counter()
        for item in fetch.items:
            if item.error is not None:
                out.payloads.append(None)
                continue
            parse_started = time.perf_counter()
            parsed = runner.parser.parse_each(item.data)
            parse_took = time.perf_counter() - parse_started
            out.payloads.append(parsed)
            if parse_took >= SLOW_PARSE_SECONDS:
                out.slow.append(
                    SlowParse(
                        time.time(),
                        runner.source_id,
                        item.origin,
                        parse_took,
                        len(item.data),
                        len(parsed),
                        item.data[:200].decode("utf-8", "replace"),
                    )
                )
        out.seconds = time.perf_counter() - started
        return out

    def _ingest(
        self,
        runner: SourceRunner,
        fetch: Fetch,
        parsed_fetch: _Parsed | None = None,
        *,
        full: bool = False,
        fetch_seconds: float = 0.0,
    ) -> None:
        """Validate, dedupe and make durable a fetch's records, then commit it (worker thread)."""
        if parsed_fetch is None:
            parsed_fetch = self._parse(runner, fetch)
        sc = runner.config
        sid = sc.source_id
        read: Counter[str] = Counter()
        dlq: list[DlqEntry] = []
        failures: list[ValidationFailure] = []
        candidates: list[tuple[Record, DedupeCandidate]] = []
        parse_errors = 0
        failed_records = 0
        validate_seconds = 0.0
        strict = self.config.alpha.settings.VALIDATION_STRICT_MODE
        for slow in parsed_fetch.slow:
            self.stats.slow_parse(slow)
        started = time.perf_counter()
        for item, parsed in zip(fetch.items, parsed_fetch.payloads, strict=True):
            if item.error is not None or parsed is None:
                read[item.position_key] += 1
                parse_errors += 1
                dlq.append(
                    DlqEntry(
                        "alpha",
                        f"{sid}:{item.origin}",
                        sid,
                        item.origin,
                        "record_too_large",
                        item.error or "The item was not parsed.",
                        item.data,
                        stage="parse",
                        config_version=self.config_version,
                    )
                )
                continue
            if not parsed:
                continue
            # Counted per item, not per record; one origin per record, the item's own when it
            # holds one record (a line of NDJSON), #<index> after it when several.
            read[item.position_key] += len(parsed)
            origins = (
                (item.origin,)
                if len(parsed) == 1
                else [f"{item.origin}#{index}" for index in range(len(parsed))]
            )
            for payload, origin in zip(parsed, origins, strict=True):
                if payload.__class__ is BadRecord:
                    parse_errors += 1
                    bad_origin = item.origin + payload.where
                    dlq.append(
                        DlqEntry(
                            "alpha",
                            f"{sid}:{bad_origin}",
                            sid,
                            bad_origin,
                            payload.error.reason,
                            str(payload.error),
                            payload.raw,
                            stage="parse",
                            config_version=self.config_version,
                        )
                    )
                    continue
                event_time, time_problem = self._event_time(runner, payload)
                record = new_record(
                    sid,
                    payload,
                    id_field=sc.parsing.id_field,
                    event_time=event_time,
                    origin=origin,
                )
                checked_at = time.perf_counter()
                outcome = runner.validator.check(record)
                validate_seconds += time.perf_counter() - checked_at
                if time_problem is not None:
                    outcome = Outcome(
                        [time_problem, *(outcome.hard if outcome else [])],
                        outcome.soft if outcome else [],
                    )
                if outcome is not None:
                    problems = outcome.problems
                    failed_records += 1
                    failures.extend(
                        ValidationFailure(sid, record.record_id, origin, p.reason, p.field, str(p))
                        for p in problems
                    )
                    if outcome.hard or strict:
                        dlq.append(self._dlq_entry(record, problems))
                        continue
                candidates.append(
                    (
                        record,
                        DedupeCandidate(
                            self._dedupe_key(sc, record), origin, record.record_id, sid
                        ),
                    )
                )
        parsed_at = time.perf_counter()
        # The parse proper (maybe on a pool thread) and the envelopes built here.
        parse_seconds = parsed_fetch.seconds + max(0.0, parsed_at - started - validate_seconds)
        m.ALPHA_PARSE_DURATION_SECONDS.observe(parse_seconds / max(1, sum(read.values())))

        valid, duplicates = self._dedupe(sc, candidates)
        if valid:
            self.queue.put(encode_many(valid))
            # From the source's fetch to the transform queue, shared by the batch's records.
            in_module = fetch_seconds + parsed_fetch.seconds + time.perf_counter() - started
            observe_n(MODULE_LATENCY_SECONDS.labels(module="alpha"), in_module, len(valid))
        if duplicates:
            self.state_store.record_duplicates(duplicates)
        if failures:
            self.state_store.add_validation_failures(failures)
        if dlq:
            self.state_store.add_dlq_entries(dlq)
        runner.source.commit(fetch, dict(read))

        total = sum(read.values())
        runner.records_ingested += total
        m.ALPHA_RECORDS_INGESTED_TOTAL.labels(source_id=sid).inc(total)
        m.ALPHA_RECORDS_VALIDATED_TOTAL.labels(source_id=sid).inc(len(valid))
        m.ALPHA_VALIDATION_FAILURES_TOTAL.labels(source_id=sid).inc(failed_records)
        m.ALPHA_DLQ_TOTAL.labels(source_id=sid).inc(len(dlq))
        m.ALPHA_PARSE_ERRORS_TOTAL.labels(source_id=sid).inc(parse_errors)
        m.ALPHA_DUPLICATES_TOTAL.labels(source_id=sid).inc(len(duplicates))
        m.ALPHA_VALIDATION_DURATION_SECONDS.observe(validate_seconds / max(1, total))
        self.stats.batch(
            BatchStats(
                at=time.time(),
                source_id=sid,
                items=len(fetch.items),
                records=total,
                parse_errors=parse_errors,
                failed=failed_records,
                parse_seconds=parse_seconds,
                validate_seconds=validate_seconds,
                busy_seconds=fetch_seconds + parsed_fetch.seconds + time.perf_counter() - started,
                full=full,
            )
        )
        self.log.debug(
            "Batch ingested.",
            source_id=sid,
            records=total,
            valid=len(valid),
            duplicates=len(duplicates),
            dlq=len(dlq),
        )

    def _event_time(
        self, runner: SourceRunner, payload: dict[str, Any]
    ) -> tuple[str | None, TerminalError | None]:
        """``timestamp_field`` as ISO 8601 UTC; a bad one fails the record in strict mode only."""
        field = runner.config.parsing.timestamp_field
        if not field:
            return None, None
        value = get_path(payload, field)
        if value is None:
            return None, None
        try:
            return runner.timestamps.normalise(value), None
        except ValueError as exc:
            if self.config.alpha.settings.VALIDATION_STRICT_MODE:
                return None, TerminalError(
                    "invalid_timestamp", f"Field {field}: {exc}", field=field
                )
            return str(value), None

    def _dlq_entry(self, record: Record, problems: list[TerminalError]) -> DlqEntry:
        """The record with its first problem's code as the reason and every problem's message."""
        from dps.core.record import encode

        return DlqEntry(
            "alpha",
            record.record_id,
            record.source_id,
            record.origin,
            problems[0].reason,
            " ".join(str(p) for p in problems),
            encode(record),
            stage="validate",
            correlation_id=record.correlation_id,
            config_version=self.config_version,
        )

    @staticmethod
    def _dedupe_key(sc: SourceConfig, record: Record) -> str:
        fields = sc.validation.dedupe.key
        if not fields:
            return record.record_id
        values = [str(get_path(record.payload, f)) for f in fields]
        return f"{sc.source_id}:" + "\x1f".join(values)

    def _dedupe(
        self, sc: SourceConfig, candidates: list[tuple[Record, DedupeCandidate]]
    ) -> tuple[list[Record], list[DedupeCandidate]]:
        if not candidates:
            return [], []
        if not sc.validation.dedupe.enabled:
            return [r for r, _ in candidates], []
        window = (
            sc.validation.dedupe.window_seconds or self.config.alpha.settings.DEDUPE_WINDOW_SECONDS
        )
        flags = self.state_store.claim_dedupe_keys([c for _, c in candidates], float(window))
        valid = [r for (r, _), dup in zip(candidates, flags, strict=True) if not dup]
        duplicates = [c for (_, c), dup in zip(candidates, flags, strict=True) if dup]
        return valid, duplicates

    # -- held items and credentials (jobs alpha_buffer_flush, alpha_credential_rotate) ---------
    def buffer_status(self) -> dict[str, Any]:
        """What Alpha holds that is not yet durable, per source, and the transform queue's fill.

        Between two steps only push sources hold records (batches whose senders wait for the
        answer); pull sources hold nothing (a fetch is committed or rewound within its step), and
        a file's last line without its newline stays on disk until it is complete.
        """
        now = time.time()
        capacity = min(
            self.config.alpha.settings.BUFFER_CAPACITY, self.config.pipeline.transport.capacity
        )
        depth = self.queue.depth()
        sources: dict[str, Any] = {}
        for sid, runner in self.runners.items():
            since = runner.source.held_since()
            sources[sid] = {
                "source_type": runner.config.source_type,
                "status": runner.status,
                "held_records": runner.source.pending(),
                "held_since": _iso(since),
                "oldest_age_seconds": round(now - since, 3) if since is not None else None,
            }
        return {
            "state": self.run_state.value,
            "held_records": sum(s["held_records"] for s in sources.values()),
            "transform_queue_depth": depth,
            "buffer_capacity": capacity,
            "buffer_utilization": round(min(1.0, depth / capacity), 4),
            "sources": sources,
        }

    def flush_buffers(self) -> dict[str, Any]:
        """Make durable now what sources hold (``POST /admin/buffer/flush``), between two steps.

        As much as the ingest buffer has room for: a flush never writes past BUFFER_CAPACITY, and
        writes nothing while Alpha is paused or stopped (a backup may be copying). A paused,
        draining or disabled source keeps what it holds. Answers per source what was written,
        what is still held and why.
        """
        before = self.buffer_status()
        flushed: dict[str, Any] = {}
        with self.exclusive():
            running = self.run_state == RunState.RUNNING
            for sid, runner in self.runners.items():
                held = runner.source.pending()
                if not held:
                    continue
                entry: dict[str, Any] = {"held_before": held, "records_written": 0}
                flushed[sid] = entry
                if not running:
                    entry["kept"] = f"Alpha is {self.run_state.value}"
                elif not runner.config.enabled:
                    entry["kept"] = "the source is disabled"
                elif runner.status == "paused" or runner.draining:
                    entry["kept"] = "the source is paused or draining"
                else:
                    self._flush_held(runner, entry)
                entry["held_after"] = runner.source.pending()
        after = self.buffer_status()
        written = sum(e["records_written"] for e in flushed.values())
        if written or flushed:
            self.log.info("Held records flushed.", records=written, sources=sorted(flushed))
        return {
            "records_written": written,
            "held_before": before["held_records"],
            "held_after": after["held_records"],
            "errors": {sid: e["error"] for sid, e in flushed.items() if "error" in e},
            "flushed": flushed,
            "buffer": after,
        }

    def _flush_held(self, runner: SourceRunner, entry: dict[str, Any]) -> None:
        for _ in range(1000):
            if not runner.source.pending():
                return
            room = self._buffer_room()
            if room <= 0:
                entry["kept"] = "the ingest buffer is full (BUFFER_CAPACITY)"
                return
            try:
                fetch = runner.source.fetch(
                    min(self.config.alpha.settings.DEFAULT_BATCH_SIZE, room)
                )
                if not fetch:
                    return
                self._ingest(runner, fetch)
            except Exception as exc:
                runner.source.rewind()
                entry["error"] = str(exc)
                self.log.error(
                    "Held records could not be made durable; they stay held.",
                    source_id=runner.source_id,
                    error=str(exc),
                )
                return
            entry["records_written"] += len(fetch.items)
            runner.last_success = time.time()
            self._buffer_room()

    def rotate_credentials(self) -> dict[str, Any]:
        """Resolve every source's secret references again (``POST /admin/credentials/rotate``).

        Runbook A.2's reload does the same for an edited file; this is for a secret rotated
        behind an unchanged reference (a file rewritten, a Vault secret updated). Between two
        steps: an enabled source switches to the new values (an ``oauth2`` source fetches a new
        token, a broker source whose password changed reconnects) and loses nothing; a reference
        that does not resolve leaves that source on the credentials it has. Values are never
        answered, only the references and whether they changed.
        """
        results: dict[str, Any] = {}
        with self.exclusive():
            for sid, runner in self.runners.items():
                refs = dict(_secret_refs(runner.config.connection))
                entry: dict[str, Any] = {
                    "source_type": runner.config.source_type,
                    "enabled": runner.config.enabled,
                    "secret_refs": {path: str(ref) for path, ref in refs.items()},
                    "ok": True,
                    "changed": False,
                }
                results[sid] = entry
                problems = []
                for path, ref in refs.items():
                    try:
                        ref.resolve()
                    except SecretError as exc:
                        problems.append(f"{path}: {exc}")
                if problems:
                    entry.update(ok=False, error=" ".join(problems))
                    continue
                if not runner.config.enabled:
                    runner.source.refresh_credentials()  # resolved when it is enabled
                    continue
                try:
                    entry.update(runner.source.rotate_credentials())
                except Exception as exc:
                    entry.update(ok=False, error=str(exc))
        failed = sorted(sid for sid, e in results.items() if not e["ok"])
        self.log.info(
            "Credentials resolved again.",
            sources=len(results),
            changed=sorted(sid for sid, e in results.items() if e["changed"]),
            failed=failed,
        )
        return {"sources": results, "failed": failed}

    def close(self) -> None:
        """Close every source (connections, listeners, files), then the queues and the store.

        What a queue consumer fetched and did not commit goes back to its server (unacked).
        """
        self._close_pool()
        for runner in self.runners.values():
            try:
                runner.source.close()
            except Exception as exc:
                self.log.warning(
                    "A source did not close cleanly.", source_id=runner.source_id, error=str(exc)
                )
        super().close()

    # -- admin ----------------------------------------------------------------------------------
    def queue_depths(self) -> dict[str, int]:
        return {TRANSFORM_QUEUE: self.queue.depth()}

    def status(self) -> dict[str, Any]:
        status = super().status()
        status["sources"] = {sid: r.as_dict() for sid, r in self.runners.items()}
        enabled = [r for r in self.runners.values() if r.config.enabled]
        status["idle"] = self.idle and all(
            r.source.exhausted() or r.status == "error" for r in enabled
        )
        return status

    def health(self) -> HealthReport:
        """The worker's health, then the manual's Alpha thresholds (see dps.alpha.stats).

        Each row of the "Module Alpha Metrics" table is a check: parse error rate, validation
        failure rate, buffer utilization, source connection success, average parse latency and,
        while there is a backlog, the ingestion rate. A configured source in error makes Alpha
        at least DEGRADED.
        """
        base = super().health()
        window = self.stats.window()
        capacity = min(
            self.config.alpha.settings.BUFFER_CAPACITY, self.config.pipeline.transport.capacity
        )
        checks: dict[str, Check] = {
            "parse_error_rate": evaluate("alpha.parse_error_rate", window["parse_error_rate"]),
            "validation_failure_rate": evaluate(
                "alpha.validation_failure_rate", window["validation_failure_rate"]
            ),
            "buffer_utilization": evaluate(
                "alpha.buffer_utilization", min(1.0, self.queue.depth() / capacity)
            ),
            "source_connection_success": evaluate(
                "alpha.source_connection_success", window["source_connection_success"]
            ),
            "parse_latency": evaluate("alpha.parse_latency", window["parse_latency"]),
        }
        if window["ingestion_rate"] is not None:
            checks["ingestion_rate"] = evaluate("alpha.ingestion_rate", window["ingestion_rate"])
        broken = [
            r.source_id for r in self.runners.values() if r.config.enabled and r.status == "error"
        ]
        if broken:
            checks["sources"] = Check.failed(
                f"Sources in error: {', '.join(sorted(broken))}.", Health.DEGRADED
            )
        report = combine(checks)
        report.checks.update(base.checks)
        report.status = worst(report.status, base.status)
        return report

    def routes(self) -> list[BaseRoute]:
        async def list_sources(_: Request) -> JSONResponse:
            return JSONResponse([r.as_dict() for r in self.runners.values()])

        async def source_status(request: Request) -> JSONResponse:
            runner = self.runners.get(request.path_params["source_id"])
            if runner is None:
                return JSONResponse({"error": "unknown source"}, status_code=404)
            return JSONResponse(runner.as_dict())

        def find(request: Request) -> SourceRunner:
            runner = self.runners.get(request.path_params["source_id"])
            if runner is None:
                raise HTTPException(
                    404,
                    f"Source {request.path_params['source_id']!r} is not configured; "
                    f"known sources: {', '.join(sorted(self.runners)) or 'none'}.",
                )
            return runner

        async def source_test(request: Request) -> JSONResponse:
            """Connect and authenticate to the source now, and report (works while disabled)."""
            runner = find(request)
            result = await run_in_threadpool(runner.source.test)
            return JSONResponse({"source_id": runner.source_id, **result})

        def drain(runner: SourceRunner, timeout: float) -> dict[str, Any]:
            runner.draining = True
            try:
                deadline = time.monotonic() + timeout
                while runner.source.pending() and time.monotonic() < deadline:
                    time.sleep(0.05)
            finally:
                runner.draining = False
            with self.exclusive():
                if runner.config.enabled and runner.status != "error":
                    runner.status = "paused"
            left = runner.source.pending()
            return {
                "source_id": runner.source_id,
                "status": runner.status,
                "drained": left == 0,
                "pending": left,
                "transform_queue_depth": self.queue.depth(),
            }

        async def source_drain(request: Request) -> JSONResponse:
            """Stop the source's intake and wait until what it received is durable (max 30 s).

            An enabled source is left ``paused``; ``/admin/sources/<id>/resume`` starts it again.
            """
            runner = find(request)
            return JSONResponse(await run_in_threadpool(drain, runner, 30.0))

        async def source_pause(request: Request) -> JSONResponse:
            """Stop fetching from this source (its position is kept)."""
            runner = find(request)
            with self.exclusive():
                if runner.config.enabled:
                    runner.status = "paused"
            return JSONResponse(runner.as_dict())

        async def source_resume(request: Request) -> JSONResponse:
            """Fetch from a paused source again."""
            runner = find(request)
            with self.exclusive():
                if runner.config.enabled and runner.status == "paused":
                    runner.status = "enabled"
            return JSONResponse(runner.as_dict())

        async def slow_records(request: Request) -> JSONResponse:
            """H.1: raw items whose parse took at least ``threshold`` (e.g. 50ms), slowest first."""
            try:
                threshold = parse_duration(request.query_params.get("threshold", "50ms"))
                limit = int(request.query_params.get("limit", "50"))
            except ValueError as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
            found = self.stats.slow_parses(threshold, max(0, limit))
            return JSONResponse(
                {
                    "threshold_ms": threshold * 1000,
                    "kept": f"parses over {SLOW_PARSE_SECONDS * 1000:g} ms, the last "
                    f"{SLOW_PARSE_KEPT}",
                    "records": [e.as_dict() for e in found],
                }
            )

        async def parser_stats(_: Request) -> JSONResponse:
            """H.1: per source over the last 5 minutes: items, records, parse errors, avg time."""
            settings = self.config.alpha.settings
            return JSONResponse(
                {
                    "window_seconds": WINDOW_SECONDS,
                    "parser_thread_count": settings.PARSER_THREAD_COUNT,
                    # The sources' fetch-and-parse run at once on this many threads; 1: one
                    # after the other on the worker thread. Ingest is always the worker's.
                    "fetch_parse_mode": (
                        "concurrent" if settings.PARSER_THREAD_COUNT > 1 else "serial"
                    ),
                    "fetch_parse_threads_started": self._pool_size,
                    "sources": {
                        sid: {
                            "format": r.config.parsing.format,
                            **{
                                k: v
                                for k, v in self.stats.per_source().get(sid, {}).items()
                                if k not in ("validate_seconds", "avg_validate_ms")
                            },
                        }
                        for sid, r in self.runners.items()
                    },
                }
            )

        async def validation_performance(_: Request) -> JSONResponse:
            """H.1: per source: checks configured, records validated, failures, avg time."""
            per_source = self.stats.per_source()
            settings = self.config.alpha.settings
            return JSONResponse(
                {
                    "window_seconds": WINDOW_SECONDS,
                    "strict_mode": settings.VALIDATION_STRICT_MODE,
                    "parallel_rules": settings.VALIDATION_PARALLEL_RULES,
                    "sources": {
                        sid: {
                            "checks": r.validator.describe(),
                            "records": per_source.get(sid, {}).get("records", 0),
                            "validation_failures": per_source.get(sid, {}).get(
                                "validation_failures", 0
                            ),
                            "avg_validate_ms": per_source.get(sid, {}).get("avg_validate_ms"),
                        }
                        for sid, r in self.runners.items()
                    },
                }
            )

        async def connection_stats(_: Request) -> JSONResponse:
            """H.1: per source: open connections, connection status, fetch attempts and failures."""
            settings = self.config.alpha.settings
            per_source = self.stats.per_source()
            return JSONResponse(
                {
                    "pool_size": settings.CONNECTION_POOL_SIZE,
                    "idle_timeout_ms": settings.CONNECTION_IDLE_TIMEOUT_MS,
                    "connection_timeout_ms": settings.CONNECTION_TIMEOUT_MS,
                    "active_connections": sum(
                        r.source.open_connections() for r in self.runners.values()
                    ),
                    "sources": {
                        sid: {
                            "source_type": r.config.source_type,
                            "status": r.status,
                            "open_connections": r.source.open_connections(),
                            "fetch_attempts": per_source.get(sid, {}).get("fetch_attempts", 0),
                            "fetch_failures": per_source.get(sid, {}).get("fetch_failures", 0),
                            "error_count": r.error_count,
                        }
                        for sid, r in self.runners.items()
                    },
                }
            )

        async def buffer_status(_: Request) -> JSONResponse:
            """Records held by sources and not yet durable, with their age; the queue's fill."""
            return JSONResponse(await run_in_threadpool(self.buffer_status))

        async def buffer_flush(_: Request) -> JSONResponse:
            """Make durable now what sources hold (job ``alpha_buffer_flush``)."""
            return JSONResponse(await run_in_threadpool(self.flush_buffers))

        async def credentials_rotate(_: Request) -> JSONResponse:
            """Resolve every source's secrets again (job ``alpha_credential_rotate``)."""
            return JSONResponse(await run_in_threadpool(self.rotate_credentials))

        return [
            Route("/admin/buffer", buffer_status),
            Route("/admin/buffer/flush", buffer_flush, methods=["POST"]),
            Route("/admin/credentials/rotate", credentials_rotate, methods=["POST"]),
            Route("/admin/parser/stats", parser_stats),
            Route("/admin/parser/slow-records", slow_records),
            Route("/admin/validation/rule-performance", validation_performance),
            Route("/admin/connections/stats", connection_stats),
            Route("/admin/sources", list_sources),
            Route("/admin/sources/{source_id}/status", source_status),
            Route("/admin/sources/{source_id}/test", source_test, methods=["GET", "POST"]),
            Route("/admin/sources/{source_id}/drain", source_drain, methods=["GET", "POST"]),
            Route("/admin/sources/{source_id}/pause", source_pause, methods=["POST"]),
            Route("/admin/sources/{source_id}/resume", source_resume, methods=["POST"]),
        ]


def _same_source(a: SourceConfig, b: SourceConfig) -> bool:
    """Same settings: the runner (connection, push endpoint, position) can be kept on reload."""
    return a.model_dump(mode="json") == b.model_dump(mode="json")


def _secret_refs(value: Any, path: str = "") -> Iterator[tuple[str, SecretRef]]:
    """Every secret reference of a source's ``connection:``, with its dotted path."""
    if isinstance(value, SecretRef):
        yield path, value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _secret_refs(getattr(value, name), f"{path}.{name}" if path else name)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _secret_refs(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _secret_refs(item, f"{path}[{index}]")


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")
