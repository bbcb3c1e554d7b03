"""Module Alpha: fetch from sources, parse, validate, dedupe, and make records durable.

One step takes one fetch from each enabled source in turn and, for that fetch:

1. parses every raw item (a parse error sends the raw bytes to the Alpha DLQ; the rest go on);
2. builds the envelope (deterministic record id, event time from ``timestamp_field``);
3. checks ``required_fields`` (failures go to the validation failures table and the DLQ);
4. claims dedupe keys in the state store (a key held by another origin is a duplicate, counted);
5. puts the valid records into the transform queue (durable, with backpressure);
6. and only then commits the source's offsets with the number of records read.

Steps 1 to 5 write only idempotent things, so a crash anywhere before 6 replays the fetch with the
same ids and origins and nothing is counted or delivered twice.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from dps.alpha import metrics as m
from dps.alpha.parsers.base import Parser
from dps.alpha.sources.base import Fetch, Source
from dps.config import PipelineConfig
from dps.config.models import SourceConfig
from dps.core import registry
from dps.core.errors import TerminalError, TransientError
from dps.core.record import Record, encode_many, get_path, new_record
from dps.runtime.lifecycle import Health, HealthReport
from dps.runtime.module import TRANSFORM_QUEUE, ModuleHost
from dps.state import DedupeCandidate, DlqEntry, ValidationFailure


class SourceRunner:
    """One configured source with its parser and its last known state."""

    def __init__(self, config: SourceConfig, source: Source, parser: Parser) -> None:
        self.config = config
        self.source = source
        self.parser = parser
        self.status = "enabled" if config.enabled else "disabled"
        self.last_success: float | None = None
        self.last_error: str | None = None

    @property
    def source_id(self) -> str:
        return self.config.source_id

    def as_dict(self) -> dict[str, Any]:
        return {
            "source_id": self.source_id,
            "source_type": self.config.source_type,
            "status": self.status,
            "last_success": self.last_success,
            "last_error": self.last_error,
            "exhausted": self.source.exhausted(),
        }


class AlphaModule(ModuleHost):
    """The ingest stage (see the module docstring)."""

    name = "alpha"

    def __init__(self, config_dir: Path, *, data_dir: Path | None = None) -> None:
        super().__init__(config_dir, data_dir=data_dir)
        self.queue = self.open_queue(TRANSFORM_QUEUE)
        self.runners: dict[str, SourceRunner] = {}
        self._build(self.config)
        self._next = 0

    def _build(self, config: PipelineConfig) -> None:
        for runner in self.runners.values():
            runner.source.close()
        self.runners = {}
        for source_id, sc in config.alpha.sources.items():
            runner = SourceRunner(sc, self._make_source(config, sc), self._make_parser(sc))
            self.runners[source_id] = runner
            m.ALPHA_SOURCE_CONNECTION_STATUS.labels(source=source_id).set(1 if sc.enabled else 0)

    def _make_source(self, config: PipelineConfig, sc: SourceConfig) -> Source:
        cls = registry.get("sources", sc.source_type)
        connection = sc.connection
        path = getattr(connection, "path", None)
        if isinstance(path, str) and not Path(path).is_absolute():
            # Relative source paths are relative to the configuration directory.
            connection = connection.model_copy(update={"path": str(config.root / path)})
        kwargs: dict[str, Any] = {}
        if sc.source_type == "file":
            kwargs["fmt"] = sc.parsing.format
        source: Source = cls(sc.source_id, connection, self.state_store, **kwargs)
        return source

    @staticmethod
    def _make_parser(sc: SourceConfig) -> Parser:
        parser: Parser = registry.get("parsers", sc.parsing.format)(sc.parsing.record_path)
        return parser

    def apply_config(self, new: PipelineConfig) -> None:
        self._build(new)

    # -- the work -------------------------------------------------------------------------------
    def step(self) -> bool:
        active = [r for r in self.runners.values() if r.config.enabled and r.status != "paused"]
        if not active:
            return False
        worked = False
        for runner in active:
            try:
                fetch = runner.source.fetch(self.config.alpha.settings.DEFAULT_BATCH_SIZE)
            except TransientError as exc:
                self._source_failed(runner, exc)
                continue
            except Exception as exc:
                self._source_failed(runner, exc)
                continue
            if fetch:
                try:
                    self._ingest(runner, fetch)
                except BaseException:
                    # Nothing of this fetch is committed: hand it out again next time.
                    runner.source.rewind()
                    raise
                worked = True
            runner.last_success = time.time()
            runner.status = "enabled"
            runner.last_error = None
            m.ALPHA_SOURCE_CONNECTION_STATUS.labels(source=runner.source_id).set(1)
        return worked

    def _source_failed(self, runner: SourceRunner, exc: Exception) -> None:
        message = str(exc)
        if runner.last_error != message:
            self.log.error("Source fetch failed.", source_id=runner.source_id, error=message)
        runner.status = "error"
        runner.last_error = message
        m.ALPHA_SOURCE_CONNECTION_STATUS.labels(source=runner.source_id).set(0)

    def _ingest(self, runner: SourceRunner, fetch: Fetch) -> None:
        sc = runner.config
        sid = sc.source_id
        read: Counter[str] = Counter()
        dlq: list[DlqEntry] = []
        failures: list[ValidationFailure] = []
        candidates: list[tuple[Record, DedupeCandidate]] = []
        parse_errors = 0
        started = time.perf_counter()
        for item in fetch.items:
            try:
                payloads = runner.parser.parse(item.data)
            except TerminalError as exc:
                read[item.position_key] += 1
                parse_errors += 1
                dlq.append(
                    DlqEntry(
                        "alpha",
                        f"{sid}:{item.origin}",
                        sid,
                        item.origin,
                        exc.reason,
                        str(exc),
                        item.data,
                    )
                )
                continue
            multi = len(payloads) > 1
            for index, payload in enumerate(payloads):
                read[item.position_key] += 1
                origin = f"{item.origin}#{index}" if multi else item.origin
                record = new_record(
                    sid,
                    payload,
                    id_field=sc.parsing.id_field,
                    event_time=_event_time(payload, sc.parsing.timestamp_field),
                    origin=origin,
                )
                problem = self._validate(sc, record)
                if problem is not None:
                    failures.append(
                        ValidationFailure(
                            sid,
                            record.record_id,
                            origin,
                            problem.reason,
                            problem.field,
                            str(problem),
                        )
                    )
                    dlq.append(self._dlq_entry(record, problem))
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
        m.ALPHA_PARSE_DURATION_SECONDS.observe((parsed_at - started) / max(1, len(fetch.items)))

        valid, duplicates = self._dedupe(sc, candidates)
        if valid:
            self.queue.put(encode_many(valid))
        if duplicates:
            self.state_store.record_duplicates(duplicates)
        if failures:
            self.state_store.add_validation_failures(failures)
        if dlq:
            self.state_store.add_dlq_entries(dlq)
        runner.source.commit(fetch, dict(read))

        total = sum(read.values())
        m.ALPHA_RECORDS_INGESTED_TOTAL.labels(source_id=sid).inc(total)
        m.ALPHA_RECORDS_VALIDATED_TOTAL.labels(source_id=sid).inc(len(valid))
        m.ALPHA_VALIDATION_FAILURES_TOTAL.labels(source_id=sid).inc(len(failures))
        m.ALPHA_PARSE_ERRORS_TOTAL.labels(source_id=sid).inc(parse_errors)
        m.ALPHA_DUPLICATES_TOTAL.labels(source_id=sid).inc(len(duplicates))
        m.ALPHA_VALIDATION_DURATION_SECONDS.observe(
            (time.perf_counter() - parsed_at) / max(1, total)
        )
        self._update_buffer_gauge()
        self.log.debug(
            "Batch ingested.",
            source_id=sid,
            records=total,
            valid=len(valid),
            duplicates=len(duplicates),
            dlq=len(dlq),
        )

    @staticmethod
    def _validate(sc: SourceConfig, record: Record) -> TerminalError | None:
        for field in sc.validation.required_fields:
            value = get_path(record.payload, field)
            if value is None or value == "":
                return TerminalError(
                    "missing_field", f"Required field {field} is missing.", field=field
                )
        return None

    @staticmethod
    def _dlq_entry(record: Record, problem: TerminalError) -> DlqEntry:
        from dps.core.record import encode

        return DlqEntry(
            "alpha",
            record.record_id,
            record.source_id,
            record.origin,
            problem.reason,
            str(problem),
            encode(record),
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

    def _update_buffer_gauge(self) -> None:
        capacity = self.config.pipeline.transport.capacity
        m.ALPHA_BUFFER_UTILIZATION.set(self.queue.depth() / capacity if capacity else 0.0)

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
        report = super().health()
        broken = [
            r.source_id for r in self.runners.values() if r.config.enabled and r.status == "error"
        ]
        if broken:
            report.checks["sources"] = {"ok": False, "error": broken}
            if report.status == Health.HEALTHY:
                report.status = Health.DEGRADED
        return report

    def routes(self) -> list[BaseRoute]:
        async def list_sources(_: Request) -> JSONResponse:
            return JSONResponse([r.as_dict() for r in self.runners.values()])

        async def source_status(request: Request) -> JSONResponse:
            runner = self.runners.get(request.path_params["source_id"])
            if runner is None:
                return JSONResponse({"error": "unknown source"}, status_code=404)
            return JSONResponse(runner.as_dict())

        return [
            Route("/admin/sources", list_sources),
            Route("/admin/sources/{source_id}/status", source_status),
        ]


def _event_time(payload: dict[str, Any], field: str | None) -> str | None:
    if not field:
        return None
    value = get_path(payload, field)
    return None if value is None else str(value)
