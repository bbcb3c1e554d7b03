"""The source contract.

A source fetches raw bytes from somewhere and says where each piece came from. It does not
parse, validate or acknowledge on its own: Alpha parses what it fetched, makes the records
durable in the transform queue, and only then calls :meth:`Source.commit` with the fetch's
checkpoints. A source must therefore be able to hand out the same data again after a crash
(a file offset not yet committed, a queue message not yet acked): that is the at-least-once
half of the guarantee; the deterministic record id and idempotent sinks are the other half.

Each source type is one file declaring ``Config``, the pydantic model of its ``connection:``
section (extra keys forbidden, a description on every field), and registering its class with
``@register("sources", "<source_type>")``.

Errors: raise :class:`~dps.core.errors.TransientError` when the source cannot be reached (the
fetch is retried with backoff and the source's connection status goes to 0); never raise for one
bad record — hand its bytes out and let the parser send it to the DLQ.

Alpha calls ``fetch`` on every step of its worker (a few times a second when idle), so a polling
source keeps its own schedule: it answers an empty :class:`Fetch` when its next poll or retry is
not due. It must not block the worker longer than one request's timeout; sleeping out a backoff
or a ``Retry-After`` is done by answering empty fetches until the time has come.

A source receives, besides its ``connection``, a :class:`SourceContext`: the source's ``polling``
and ``parsing`` settings and a view of the ingest buffer (push sources refuse work when it is
full, pull sources simply are not fetched faster than Alpha makes room). Sources built without
one (unit and contract tests) get the defaults.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

if TYPE_CHECKING:
    from dps.state.base import StateStore


@dataclass(
    slots=True
)  # not frozen: one per line read on Alpha's hot path, and a frozen __init__ costs twice
class RawItem:
    """One piece of fetched data, and where it came from.

    ``origin`` names the exact position (``/data/in/a.ndjson:42``): it goes into the record, into
    DLQ entries and into the dedupe cache, where it tells a replay from a true duplicate.
    ``position_key`` names the stream of positions it belongs to (a file), for the commit.
    """

    data: bytes
    origin: str
    position_key: str
    #: Set when the source could not hand the data out whole (a line over the size limit): the
    #: item goes to the DLQ with this message and reason ``record_too_large``, unparsed.
    error: str | None = None


@dataclass(slots=True)
class Fetch:
    """What one ``fetch`` returned: the items, and per position key the offset just after them.

    ``ends`` can move without items (blank lines skipped), and is what :meth:`Source.commit`
    receives back once the items are durable.
    """

    items: list[RawItem] = field(default_factory=list)
    ends: dict[str, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.items) or bool(self.ends)


def _always_room() -> int:
    return 1 << 30


def _always_accepting() -> bool:
    return True


def _nothing() -> None:
    return None


@dataclass(frozen=True, slots=True)
class SourceContext:
    """What Alpha tells a source besides its ``connection:`` section."""

    #: ``polling.interval_seconds``: pause between two polls of a pull source.
    poll_interval_seconds: float = 60.0
    #: ``polling.batch_size``: records asked for per request (page size).
    batch_size: int = 1000
    #: ``parsing.format`` and ``parsing.record_path``: where records sit in a fetched document.
    parsing_format: str = "json"
    record_path: str | None = None
    #: ``parsing.csv.header`` and ``.quote``: a line-reading source hands every CSV row out with
    #: its file's header line in front, and keeps a quoted field's newlines inside one row.
    csv_header: bool = True
    csv_quote: str = '"'
    #: BUFFER_CAPACITY (capped by the transform queue's capacity): what a queue consumer may hold
    #: unacked at most (its prefetch).
    buffer_capacity: int = 1 << 30
    #: Records the ingest buffer (transform queue up to BUFFER_CAPACITY) can take right now.
    buffer_room: Callable[[], int] = _always_room
    #: alpha.yaml's H.1 keys: defaults for a source's own timeout and retries when its
    #: ``connection:`` does not set them, and the size and idle expiry of its connection pool.
    connection_timeout_ms: int = 30000
    max_retry_count: int = 3
    connection_pool_size: int = 10
    connection_idle_timeout_ms: int = 300000
    #: False while Alpha does not take work (paused, emergency stop, source paused or disabled).
    accepting: Callable[[], bool] = _always_accepting
    #: Wakes Alpha's worker from its idle wait: a push source calls it when a batch arrives, so
    #: the batch is written at once rather than after the idle pause.
    wake: Callable[[], None] = _nothing


class Source(abc.ABC):
    """A source of raw records (see the module docstring)."""

    Config: ClassVar[type[BaseModel]]

    def __init__(
        self,
        source_id: str,
        connection: Any,
        state: StateStore,
        *,
        context: SourceContext | None = None,
    ) -> None:
        self.source_id = source_id
        self.connection = connection
        self.state = state
        self.context = context or SourceContext()

    @abc.abstractmethod
    def fetch(self, max_items: int) -> Fetch:
        """Up to ``max_items`` raw items not yet committed; an empty fetch when there is none."""

    @abc.abstractmethod
    def commit(self, fetch: Fetch, records_read: dict[str, int]) -> None:
        """Acknowledge a fetch whose records are durable; ``records_read`` per position key."""

    def rewind(self) -> None:  # noqa: B027 - optional
        """Forget what was fetched and not committed: the next fetch hands it out again."""

    def exhausted(self) -> bool:
        """True when a bounded source has nothing left (files fully read); streams never are."""
        return False

    def test(self) -> dict[str, Any]:
        """Connect, authenticate and report (``/admin/sources/<id>/test``)."""
        return {"ok": True}

    def info(self) -> dict[str, Any]:
        """Source-specific status (request and error counts, token expiry) for ``/status``."""
        return {}

    def waiting_to_retry(self) -> bool:
        """True while a failed source waits out its backoff (its empty fetches prove nothing)."""
        return False

    def pending(self) -> int:
        """Items received and not yet committed (a push source's waiting batches)."""
        return 0

    def open_connections(self) -> int:
        """Connections and listeners this source holds open (``alpha_active_connections``)."""
        return 0

    def stop_intake(self) -> None:  # noqa: B027 - optional
        """Take nothing new (the source is being replaced); what is pending may still be fetched."""

    def held_since(self) -> float | None:
        """Wall-clock time the oldest item of :meth:`pending` was received (None: none held)."""
        return None

    def refresh_credentials(self) -> None:  # noqa: B027 - optional
        """Forget cached credentials and tokens: a reload may have rotated the secrets.

        Must not raise: a secret that does not resolve shows at the next fetch.
        """

    def rotate_credentials(self) -> dict[str, Any]:
        """Resolve the secret references again now (an OAuth2 source fetches a new token) and
        use them from the next request; ``/admin/credentials/rotate``.

        Called between two steps. Raises :class:`~dps.core.errors.TransientError` when the new
        credentials cannot be had; the source then keeps those it uses. Answers what changed
        (never a secret): ``{"changed": bool, ...}``.
        """
        self.refresh_credentials()
        return {}

    def close(self) -> None:  # noqa: B027 - optional
        """Release connections and files."""
