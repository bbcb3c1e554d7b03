"""Beta's own admin endpoints: Runbook B.2 (``/admin/cache/...``), E.2 (``/admin/quality/...``)
and H.2 (``/admin/transform/...``).

Query parameters are read the way operators type them in the manual:
``low-scores?threshold=0.5&limit=100``, ``slow-records?threshold=100ms&limit=50``. A bad value
answers 400 saying what was expected.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from dps.admin.common import json_response, read_json
from dps.beta.rules import rule_complexity
from dps.core.errors import ConfigError

if TYPE_CHECKING:
    from dps.beta.module import BetaModule

_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|us)?\s*$")


def parse_duration(text: str) -> float:
    """``100ms``, ``0.1s``, ``250us`` or a bare number of milliseconds, in seconds."""
    match = _DURATION.match(text)
    if match is None:
        raise HTTPException(
            400, f'threshold "{text}" is not a duration; expected e.g. 100ms, 0.5s or 100.'
        )
    value, unit = float(match.group(1)), match.group(2) or "ms"
    return value / {"ms": 1000, "s": 1, "us": 1_000_000}[unit]


def _number(request: Request, name: str, default: float, low: float, high: float) -> float:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:
        raise HTTPException(
            400, f'{name} "{raw}" is not allowed; expected a number from {low:g} to {high:g}.'
        )
    return value


def beta_routes(module: BetaModule) -> list[BaseRoute]:
    """The routes (see the module docstring)."""

    async def quality_stats(request: Request) -> Response:
        """Quality scores so far: count, average, min, max, records per threshold level."""
        return json_response(await run_in_threadpool(module.quality_stats.stats, module.scorer))

    async def quality_distribution(request: Request) -> Response:
        """Quality scores in ten 0.1-wide buckets."""
        return json_response(await run_in_threadpool(module.quality_stats.distribution))

    async def quality_low_scores(request: Request) -> Response:
        """Recent records scoring below ``threshold`` (default 0.5), newest first, at most
        ``limit`` (default 100), each with its dimension scores and the checks that cost points.
        The last 1000 records scoring below 1 are retained."""
        threshold = _number(request, "threshold", 0.5, 0, 1)
        limit = int(_number(request, "limit", 100, 1, 10000))
        return json_response(module.quality_stats.low_scores(threshold, limit))

    async def quality_dimensions(request: Request) -> Response:
        """Per dimension: enabled, weight, average score; and the checks that fail most."""
        return json_response(
            await run_in_threadpool(module.quality_stats.dimensions, module.scorer)
        )

    async def parallelism(request: Request) -> Response:
        """Transformation parallelism: configured workers, batch size, recent throughput."""
        settings = module.config.beta.settings
        window = module.window()
        with module._stats_lock:
            last = module.last_step_batches
        return json_response(
            {
                "configured_parallelism": settings.TRANSFORM_PARALLELISM,
                "batch_size": settings.TRANSFORM_BATCH_SIZE,
                "worker_threads": module._executor_size or 1,
                "batches_in_last_step": last,
                "mode": (
                    "threads: up to TRANSFORM_PARALLELISM batches of TRANSFORM_BATCH_SIZE are "
                    "leased and transformed at once on that many threads of one process; the "
                    "threads overlap enrichment I/O, while rule evaluation itself is bound by "
                    "the Python GIL, so CPU-bound rule sets scale out with more beta processes "
                    "(dps beta CONFIG_DIR) on the same queue"
                ),
                "queue_depth": module.inbox.depth(),
                "recent": window,
            }
        )

    async def complexity(request: Request) -> Response:
        """Each active rule's static cost (condition tests, regexes), its counts so far and its
        measured time (match and transform, per record it looked at): the hotspots."""
        rules = module.rules
        out: list[dict[str, Any]] = []
        for rule in rules.rules:
            entry = rule_complexity(rule.config)
            entry["counts"] = {
                result: rules.totals.get((rule.rule_id, result), 0)
                for result in ("applied", "skipped", "failed")
            }
            seconds, seen = rules.timings.get(rule.rule_id, (0.0, 0.0))
            entry["measured"] = {
                "records_evaluated": int(seen),
                "seconds": round(seconds, 6),
                "us_per_record": round(seconds / seen * 1e6, 3) if seen else None,
            }
            out.append(entry)
        out.sort(key=lambda e: -int(e["score"]))
        return json_response({"rules": out, "total_score": sum(int(e["score"]) for e in out)})

    async def slow_records(request: Request) -> Response:
        """Recent records whose transformation took at least ``threshold`` (default 100ms),
        slowest first, at most ``limit`` (default 50)."""
        threshold = parse_duration(request.query_params.get("threshold", "100ms"))
        limit = int(_number(request, "limit", 50, 1, 10000))
        with module._stats_lock:
            hits = [r for r in module.slow_records if r["duration_ms"] >= threshold * 1000]
        hits.sort(key=lambda r: -float(r["duration_ms"]))
        return json_response(
            {
                "threshold_ms": threshold * 1000,
                "limit": limit,
                "count": len(hits[:limit]),
                "records": hits[:limit],
            }
        )

    # -- Runbook B.2: the enrichment cache ------------------------------------------------
    async def cache_status(request: Request) -> Response:
        """Per enrichment source: availability, entries, TTLs, on_unavailable, warmup/refresh."""
        return json_response(await run_in_threadpool(module.enrichment.status))

    async def cache_stats(request: Request) -> Response:
        """Entry counts and hit rates, overall and per source."""
        return json_response(await run_in_threadpool(module.enrichment.stats))

    async def cache_refresh(request: Request) -> Response:
        """Start reloading one source (``<source>``) or every one (``all``); 202 with progress
        (follow it with ``/admin/cache/refresh/status``)."""
        enrichment = module.enrichment
        name = request.path_params["source"]
        if name == "all":
            names = list(enrichment.sources)
        elif name in enrichment.sources:
            names = [name]
        else:
            known = ", ".join(sorted(enrichment.sources)) or "none"
            raise HTTPException(
                404, f'"{name}" is not an enrichment source; expected all or one of: {known}.'
            )
        jobs = [enrichment.refresh(n).view() for n in names]
        return json_response({"status": "started", "refreshes": jobs}, status_code=202)

    async def cache_refresh_status(request: Request) -> Response:
        """Progress of the running (and last) warmups and refreshes, with completion percent."""
        return json_response(module.enrichment.refresh_status())

    async def cache_export(request: Request) -> Response:
        """Every cache entry with its fetch time, to be imported later."""
        return json_response(await run_in_threadpool(module.enrichment.export))

    async def cache_import(request: Request) -> Response:
        """Load a ``/admin/cache/export`` document; entries keep their age."""
        data = await read_json(request)
        try:
            result = await run_in_threadpool(module.enrichment.import_, data)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        return json_response({"status": "imported", **result})

    async def cache_clear(request: Request) -> Response:
        """Drop every cache entry (or one source's, with ``?source=``)."""
        name = request.query_params.get("source")
        if name is not None and name not in module.enrichment.sources:
            raise HTTPException(404, f'"{name}" is not an enrichment source.')
        dropped = module.enrichment.clear(name)
        return json_response({"status": "cleared", "entries_dropped": dropped})

    # -- the schema registry (beta_schema_sync) ---------------------------------------------
    async def schemas(request: Request) -> Response:
        """The versioned output schemas loaded: per schema its versions and which is default."""
        return json_response(module.stage.schemas.describe() if module.stage.schemas else {})

    async def schemas_sync(request: Request) -> Response:
        """Read beta/schemas/ again and swap the registry; a wrong file answers 400 and the
        running registry stays."""
        try:
            return json_response(await run_in_threadpool(module.sync_schemas))
        except ConfigError as exc:
            raise HTTPException(400, str(exc)) from None

    return [
        Route("/admin/schemas", schemas, methods=["GET"]),
        Route("/admin/schemas/sync", schemas_sync, methods=["POST"]),
        Route("/admin/cache/status", cache_status, methods=["GET"]),
        Route("/admin/cache/stats", cache_stats, methods=["GET"]),
        Route("/admin/cache/refresh/status", cache_refresh_status, methods=["GET"]),
        Route("/admin/cache/refresh/{source}", cache_refresh, methods=["POST"]),
        Route("/admin/cache/export", cache_export, methods=["GET"]),
        Route("/admin/cache/import", cache_import, methods=["POST"]),
        Route("/admin/cache/clear", cache_clear, methods=["POST"]),
        Route("/admin/quality/stats", quality_stats, methods=["GET"]),
        Route("/admin/quality/distribution", quality_distribution, methods=["GET"]),
        Route("/admin/quality/low-scores", quality_low_scores, methods=["GET"]),
        Route("/admin/quality/dimensions", quality_dimensions, methods=["GET"]),
        Route("/admin/transform/parallelism", parallelism, methods=["GET"]),
        Route("/admin/transform/rule-complexity", complexity, methods=["GET"]),
        Route("/admin/transform/slow-records", slow_records, methods=["GET"]),
    ]
