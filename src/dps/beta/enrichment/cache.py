"""The enrichment cache: every ``lookup`` goes through it, one fetch per batch of missing keys.

One LRU of ``ENRICHMENT_CACHE_MAX_SIZE`` entries is shared by all sources (``(source, key)`` ->
row or miss, with the time it was fetched). An entry is fresh for the source's TTL (its
``cache.ttl_seconds``, else ``ENRICHMENT_CACHE_TTL``), a miss for ``cache.negative_ttl_seconds``.
Expired entries stay until evicted: when a source is down and beta.yaml says
``enrichment_sources.<name>.on_unavailable: STALE_CACHE``, an entry expired less than
``stale_ttl_seconds`` ago is served; with ``FAIL`` (the default) the lookup fails, and the rule's
``on_failure`` decides what happens to the record. A source being down is never cached.

Batches: a ``lookup`` rule looks up the keys of all the records of a batch it matches in one
:meth:`Enrichment.lookup_many` (duplicates collapse; the keys the cache cannot answer go to the
source in one ``fetch``); one record at a time (the rule tester) it is :meth:`Enrichment.resolve`.

Counting: every record's lookup counts once in ``beta_enrichment_lookups_total``; it is a hit when
the cache (or an earlier record of the same batch) answered it, a miss when it needed the source.
``beta_enrichment_cache_hit_rate`` is the hit ratio over the last :data:`HIT_WINDOW` lookups.

Written by hand rather than with ``cachetools``: the stale-serving, negative entries, per-source
counts and export/import all need the entries' fetch times, which its caches hide.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from dps.beta import metrics as m
from dps.beta.enrichment.base import EnrichmentSource, Row, SourceUnavailable, Unavailable
from dps.config.models import BetaSettings, EnrichmentConfig
from dps.core import registry
from dps.core.logging import get_logger

log = get_logger("beta.enrichment")

#: Lookups the hit-rate gauge is computed over.
HIT_WINDOW: Final = 10_000
#: Keys per ``fetch`` during a refresh that re-fetches cached keys.
REFRESH_CHUNK: Final = 500
EXPORT_FORMAT: Final = "dps-beta-cache/1"


#: A lookup's answer: the row, ``None`` for a miss, or :class:`Unavailable`.
Answer = Row | None | Unavailable


@dataclass(slots=True)
class Entry:
    value: Row | None
    fetched_at: float


@dataclass(slots=True)
class Counts:
    lookups: int = 0
    hits: int = 0
    misses: int = 0
    negative_hits: int = 0
    stale_served: int = 0
    unavailable: int = 0
    fetches: int = 0
    fetch_seconds: float = 0.0


@dataclass(slots=True)
class Refresh:
    """A warmup or refresh of one source, as ``/admin/cache/refresh/status`` shows it."""

    source: str
    kind: str
    strategy: str
    state: str = "running"
    total: int | None = None
    loaded: int = 0
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    error: str | None = None

    def view(self) -> dict[str, Any]:
        now = self.finished_at or time.time()
        elapsed = now - self.started_at
        percent: float | None = None
        eta: float | None = None
        if self.total is not None:
            percent = 100.0 if self.total == 0 else round(100 * self.loaded / self.total, 1)
            if self.state == "completed":
                percent = 100.0
            if self.loaded and self.state == "running":
                eta = round(elapsed * (self.total - self.loaded) / self.loaded, 1)
        return {
            "source": self.source,
            "kind": self.kind,
            "strategy": self.strategy,
            "state": self.state,
            "entries_loaded": self.loaded,
            "entries_total": self.total,
            "completion_percent": percent,
            "estimated_remaining_seconds": eta,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "elapsed_seconds": round(elapsed, 3),
            "error": self.error,
        }


class SourceCache:
    """One source, its policy and its counts; the entries live in the shared LRU."""

    def __init__(self, config: EnrichmentConfig, settings: BetaSettings) -> None:
        self.config = config
        self.name = config.name
        cls = registry.get("enrichment", config.type)
        self.source: EnrichmentSource = cls(config.name, config.connection)
        policy = config.cache
        self.ttl = float(
            policy.ttl_seconds if policy.ttl_seconds is not None else settings.ENRICHMENT_CACHE_TTL
        )
        self.negative_ttl = float(policy.negative_ttl_seconds)
        degrade = settings.enrichment_sources.get(config.name)
        self.on_unavailable = degrade.on_unavailable if degrade else "FAIL"
        self.stale_ttl = float(degrade.stale_ttl_seconds if degrade else 0)
        self.counts = Counts()
        self.available: bool | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.refresh: Refresh | None = None

    def fresh(self, entry: Entry, now: float) -> bool:
        ttl = self.ttl if entry.value is not None else self.negative_ttl
        return now - entry.fetched_at < ttl


class Enrichment:
    """The enrichment sources of a configuration and their cache (see the module docstring)."""

    def __init__(self, configs: Mapping[str, EnrichmentConfig], settings: BetaSettings) -> None:
        self.max_size = settings.ENRICHMENT_CACHE_MAX_SIZE
        #: ``enrichment_sources`` entries of beta.yaml naming no configured source (unused).
        self.unused_settings = sorted(set(settings.enrichment_sources) - set(configs))
        self.sources = {name: SourceCache(c, settings) for name, c in configs.items()}
        self._entries: OrderedDict[tuple[str, str], Entry] = OrderedDict()
        self._per_source: dict[str, int] = {name: 0 for name in self.sources}
        self._lock = threading.RLock()
        self._window: deque[tuple[int, int]] = deque()
        self._window_hits = 0
        self._window_total = 0
        self.evictions = 0
        self._threads: list[threading.Thread] = []
        self._closed = threading.Event()

    # -- entries ----------------------------------------------------------------------------
    def _put(self, source: str, key: str, value: Row | None, fetched_at: float) -> None:
        if self.max_size <= 0:
            return
        with self._lock:
            slot = (source, key)
            if slot in self._entries:
                self._entries.move_to_end(slot)
            else:
                self._per_source[source] = self._per_source.get(source, 0) + 1
            self._entries[slot] = Entry(value, fetched_at)
            while len(self._entries) > self.max_size:
                (old_source, _), _ = self._entries.popitem(last=False)
                self._per_source[old_source] -= 1
                self.evictions += 1
            m.BETA_CACHE_SIZE.set(len(self._entries))

    def size(self, source: str | None = None) -> int:
        with self._lock:
            return len(self._entries) if source is None else self._per_source.get(source, 0)

    def _count_window(self, hits: int, total: int) -> None:
        self._window.append((hits, total))
        self._window_hits += hits
        self._window_total += total
        while self._window_total - self._window[0][1] >= HIT_WINDOW:
            old_hits, old_total = self._window.popleft()
            self._window_hits -= old_hits
            self._window_total -= old_total
        m.BETA_ENRICHMENT_CACHE_HIT_RATE.set(self.hit_rate() or 0.0)

    def hit_rate(self) -> float | None:
        """Hit ratio over the recent lookups; None before the first."""
        with self._lock:
            if not self._window_total:
                return None
            return self._window_hits / self._window_total

    # -- lookups ----------------------------------------------------------------------------
    def lookup_many(self, source_name: str, keys: Sequence[str]) -> dict[str, Answer]:
        """The answer for each key (duplicates allowed; each counts as one lookup)."""
        cache = self.sources[source_name]
        now = time.time()
        answers: dict[str, Answer] = {}
        stale: dict[str, Entry] = {}
        missing: dict[str, None] = {}  # an ordered set: "in" stays cheap on a big cold batch
        hits = 0
        with self._lock:
            for key in keys:
                if key in answers or key in missing:
                    hits += 1  # answered by the same batch's fetch
                    continue
                entry = self._entries.get((source_name, key))
                if entry is not None:
                    self._entries.move_to_end((source_name, key))
                    if cache.fresh(entry, now):
                        answers[key] = entry.value
                        hits += 1
                        if entry.value is None:
                            cache.counts.negative_hits += 1
                        continue
                    if entry.value is not None:
                        stale[key] = entry
                missing[key] = None
        if missing:
            self._fetch(cache, list(missing), stale, answers)
        with self._lock:
            cache.counts.lookups += len(keys)
            cache.counts.hits += hits
            cache.counts.misses += len(missing)
            self._count_window(hits, len(keys))
        m.BETA_ENRICHMENT_LOOKUPS_TOTAL.inc(len(keys))
        return answers

    def _fetch(
        self,
        cache: SourceCache,
        missing: list[str],
        stale: dict[str, Entry],
        answers: dict[str, Answer],
    ) -> None:
        started = time.perf_counter()
        try:
            found = cache.source.fetch(missing)
        except SourceUnavailable as exc:
            seconds = time.perf_counter() - started
            m.BETA_ENRICHMENT_DURATION_SECONDS.observe(seconds)
            now = time.time()
            with self._lock:
                cache.counts.fetches += 1
                cache.counts.fetch_seconds += seconds
                if cache.available is not False:
                    log.warning(
                        "Enrichment source is unavailable.", source=cache.name, error=str(exc)
                    )
                cache.available, cache.last_error, cache.last_error_at = False, str(exc), now
                for key in missing:
                    entry = stale.get(key)
                    if (
                        cache.on_unavailable == "STALE_CACHE"
                        and entry is not None
                        and now - entry.fetched_at < cache.ttl + cache.stale_ttl
                    ):
                        answers[key] = entry.value
                        cache.counts.stale_served += 1
                    else:
                        why = (
                            "no cached entry is recent enough to serve"
                            if cache.on_unavailable == "STALE_CACHE"
                            else "on_unavailable is FAIL"
                        )
                        answers[key] = Unavailable(
                            f"Enrichment source {cache.name} is unavailable ({exc}); {why}."
                        )
                        cache.counts.unavailable += 1
            return
        seconds = time.perf_counter() - started
        m.BETA_ENRICHMENT_DURATION_SECONDS.observe(seconds)
        now = time.time()
        with self._lock:
            cache.counts.fetches += 1
            cache.counts.fetch_seconds += seconds
            if cache.available is False:
                log.info("Enrichment source is available again.", source=cache.name)
            cache.available = True
        for key in missing:
            value = found.get(key)
            answers[key] = value
            if value is not None or cache.negative_ttl > 0:
                self._put(cache.name, key, value, now)

    def resolve(self, source_name: str, key: str) -> Answer:
        """One record's answer (a lookup of one key)."""
        return self.lookup_many(source_name, [key])[key]

    # -- operations (Runbook B.2, backups) --------------------------------------------------
    def refresh(self, source_name: str, kind: str = "refresh") -> Refresh:
        """Start reloading a source in the background (warmup at start, refresh on demand).

        A source that can list its content is loaded whole; the others re-fetch the keys
        already cached. A refresh already running is returned as it is.
        """
        cache = self.sources[source_name]
        with self._lock:
            running = cache.refresh
            if running is not None and running.state == "running":
                return running
            strategy = "full_scan" if cache.source.can_scan else "refetch_cached_keys"
            job = cache.refresh = Refresh(source_name, kind, strategy)
        thread = threading.Thread(
            target=self._run_refresh, args=(cache, job), name=f"beta-cache-{kind}-{source_name}"
        )
        thread.daemon = True
        self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)
        thread.start()
        return job

    def _run_refresh(self, cache: SourceCache, job: Refresh) -> None:
        log.info("Enrichment cache refresh started.", source=cache.name, kind=job.kind)
        try:
            if cache.source.can_scan:
                total, chunks = cache.source.scan()
                job.total = total
                for chunk in chunks:
                    if self._closed.is_set():
                        raise SourceUnavailable("Beta is stopping.")
                    now = time.time()
                    for key, row in chunk:
                        self._put(cache.name, key, row, now)
                    job.loaded += len(chunk)
            else:
                with self._lock:
                    keys = [k for (s, k) in self._entries if s == cache.name]
                job.total = len(keys)
                for start in range(0, len(keys), REFRESH_CHUNK):
                    if self._closed.is_set():
                        raise SourceUnavailable("Beta is stopping.")
                    chunk_keys = keys[start : start + REFRESH_CHUNK]
                    found = cache.source.fetch(chunk_keys)
                    now = time.time()
                    for key in chunk_keys:
                        value = found.get(key)
                        if value is not None or cache.negative_ttl > 0:
                            self._put(cache.name, key, value, now)
                    job.loaded += len(chunk_keys)
        except (SourceUnavailable, OSError, ValueError) as exc:
            job.state, job.error = "failed", str(exc)
            with self._lock:
                cache.available, cache.last_error = False, str(exc)
                cache.last_error_at = time.time()
            log.warning("Enrichment cache refresh failed.", source=cache.name, error=str(exc))
        else:
            job.state = "completed"
            with self._lock:
                cache.available = True
            log.info("Enrichment cache refresh completed.", source=cache.name, entries=job.loaded)
        finally:
            job.finished_at = time.time()

    def warmup(self) -> list[Refresh]:
        """Start the warmup of every source with ``cache.warmup: true``."""
        return [
            self.refresh(name, "warmup")
            for name, cache in self.sources.items()
            if cache.config.cache.warmup
        ]

    def clear(self, source_name: str | None = None) -> int:
        """Drop the entries (of one source, or all); how many were dropped."""
        with self._lock:
            if source_name is None:
                dropped = len(self._entries)
                self._entries.clear()
                self._per_source = {name: 0 for name in self.sources}
            else:
                slots = [slot for slot in self._entries if slot[0] == source_name]
                for slot in slots:
                    del self._entries[slot]
                dropped = len(slots)
                self._per_source[source_name] = 0
            m.BETA_CACHE_SIZE.set(len(self._entries))
        return dropped

    def export(self) -> dict[str, Any]:
        """Every entry with its fetch time (``/admin/cache/export``)."""
        with self._lock:
            entries = list(self._entries.items())
        sources: dict[str, list[dict[str, Any]]] = {name: [] for name in self.sources}
        for (source, key), entry in entries:
            sources.setdefault(source, []).append(
                {"key": key, "value": entry.value, "fetched_at": entry.fetched_at}
            )
        return {
            "format": EXPORT_FORMAT,
            "exported_at": time.time(),
            "entries": len(entries),
            "sources": sources,
        }

    def import_(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """Load an export back, keeping each entry's fetch time (so its age)."""
        if data.get("format") != EXPORT_FORMAT or not isinstance(data.get("sources"), dict):
            raise ValueError(
                f'The body is not a cache export; expected {{"format": "{EXPORT_FORMAT}", '
                '"sources": {...}} as /admin/cache/export writes it.'
            )
        imported: dict[str, int] = {}
        skipped: list[str] = []
        for source, entries in data["sources"].items():
            if source not in self.sources or not isinstance(entries, list):
                skipped.append(str(source))
                continue
            count = 0
            for item in entries:
                if not isinstance(item, dict) or not isinstance(item.get("key"), str):
                    continue
                value = item.get("value")
                fetched_at = item.get("fetched_at")
                if not isinstance(fetched_at, int | float):
                    fetched_at = time.time()
                row = value if isinstance(value, dict) else None
                self._put(source, item["key"], row, fetched_at)
                count += 1
            imported[source] = count
        return {"imported": imported, "skipped_sources": skipped, "entries": self.size()}

    # -- what the admin API shows -----------------------------------------------------------
    def status(self) -> dict[str, Any]:
        sources: dict[str, Any] = {}
        for name, cache in self.sources.items():
            sources[name] = {
                "type": cache.config.type,
                "available": cache.available,
                "last_error": cache.last_error,
                "last_error_at": cache.last_error_at,
                "entries": self.size(name),
                "ttl_seconds": cache.ttl,
                "negative_ttl_seconds": cache.negative_ttl,
                "on_unavailable": cache.on_unavailable,
                "stale_ttl_seconds": cache.stale_ttl,
                "warmup": cache.config.cache.warmup,
                "refresh": cache.refresh.view() if cache.refresh else None,
            }
        return {
            "entries": self.size(),
            "max_size": self.max_size,
            "hit_rate": _round(self.hit_rate()),
            "sources": sources,
            "unused_enrichment_sources_settings": self.unused_settings,
        }

    def stats(self) -> dict[str, Any]:
        sources: dict[str, Any] = {}
        totals = Counts()
        with self._lock:
            negative = {name: 0 for name in self.sources}
            for (source, _), entry in self._entries.items():
                if entry.value is None:
                    negative[source] = negative.get(source, 0) + 1
            for name, cache in self.sources.items():
                c = cache.counts
                for attr in ("lookups", "hits", "misses", "stale_served", "unavailable"):
                    setattr(totals, attr, getattr(totals, attr) + getattr(c, attr))
                sources[name] = {
                    "entries": self._per_source.get(name, 0),
                    "negative_entries": negative.get(name, 0),
                    "lookups": c.lookups,
                    "hits": c.hits,
                    "misses": c.misses,
                    "negative_hits": c.negative_hits,
                    "stale_served": c.stale_served,
                    "unavailable": c.unavailable,
                    "hit_rate": _round(c.hits / c.lookups if c.lookups else None),
                    "fetches": c.fetches,
                    "average_fetch_seconds": _round(
                        c.fetch_seconds / c.fetches if c.fetches else None
                    ),
                }
            entries = len(self._entries)
        return {
            "entries": entries,
            "max_size": self.max_size,
            "evictions": self.evictions,
            "lookups": totals.lookups,
            "hits": totals.hits,
            "misses": totals.misses,
            "hit_rate": _round(totals.hits / totals.lookups if totals.lookups else None),
            "recent_hit_rate": _round(self.hit_rate()),
            "sources": sources,
        }

    def refresh_status(self) -> dict[str, Any]:
        jobs = [c.refresh.view() for c in self.sources.values() if c.refresh is not None]
        running = [j for j in jobs if j["state"] == "running"]
        loaded = sum(int(j["entries_loaded"]) for j in jobs)
        totals = [j["entries_total"] for j in jobs]
        percent: float | None = None
        if jobs and all(t is not None for t in totals):
            total = sum(int(t) for t in totals)
            percent = 100.0 if not running else round(100 * loaded / max(total, 1), 1)
        return {
            "in_progress": bool(running),
            "completion_percent": percent,
            "refreshes": jobs,
        }

    # -- lifecycle --------------------------------------------------------------------------
    def adopt(self, old: Enrichment) -> list[Refresh]:
        """Keep what ``old`` knows of the sources configured the same way (a reload): their
        entries, counts, availability and last refresh.

        Returns the refreshes of those sources that were still running: closing ``old`` stops
        them, so the caller starts them again on this cache once ``old`` is closed (a reload in
        the middle of a long warmup or B.2 refresh must not leave it half done).
        """
        same = [
            name
            for name, cache in self.sources.items()
            if name in old.sources
            and old.sources[name].config.model_dump() == cache.config.model_dump()
        ]
        with old._lock:
            kept = [(slot, e) for slot, e in old._entries.items() if slot[0] in same]
        for (source, key), entry in kept:
            self._put(source, key, entry.value, entry.fetched_at)
        interrupted: list[Refresh] = []
        for name in same:
            mine, theirs = self.sources[name], old.sources[name]
            mine.counts = theirs.counts
            mine.available, mine.last_error = theirs.available, theirs.last_error
            mine.last_error_at = theirs.last_error_at
            if theirs.refresh is not None and theirs.refresh.state == "running":
                interrupted.append(theirs.refresh)
            else:
                mine.refresh = theirs.refresh
        return interrupted

    def close(self) -> None:
        self._closed.set()
        for thread in self._threads:
            thread.join(timeout=5)
        for cache in self.sources.values():
            cache.source.close()


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
