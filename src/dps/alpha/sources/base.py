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
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

if TYPE_CHECKING:
    from dps.state.base import StateStore


@dataclass(frozen=True, slots=True)
class RawItem:
    """One piece of fetched data, and where it came from.

    ``origin`` names the exact position (``/data/in/a.ndjson:42``): it goes into the record, into
    DLQ entries and into the dedupe cache, where it tells a replay from a true duplicate.
    ``position_key`` names the stream of positions it belongs to (a file), for the commit.
    """

    data: bytes
    origin: str
    position_key: str


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


class Source(abc.ABC):
    """A source of raw records (see the module docstring)."""

    Config: ClassVar[type[BaseModel]]

    def __init__(self, source_id: str, connection: Any, state: StateStore) -> None:
        self.source_id = source_id
        self.connection = connection
        self.state = state

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

    def close(self) -> None:  # noqa: B027 - optional
        """Release connections and files."""
