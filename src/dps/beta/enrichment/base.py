"""The enrichment source contract.

A source is built once per ``beta/enrichment/<name>.yaml`` from its ``connection`` (validated by
the plugin's ``Config`` model). The cache (:mod:`dps.beta.enrichment.cache`) is the only caller:
it asks :meth:`EnrichmentSource.fetch` for the distinct keys of a batch that the cache cannot
answer, so one call serves a whole batch. Keys are strings (a record's key value as text).

``fetch`` returns the rows it found, by key; a key it leaves out is a miss (the cache remembers
it for ``negative_ttl_seconds``). The returned dicts belong to the cache: they are shared by the
records that look the key up and must not be mutated afterwards.

Raise :class:`SourceUnavailable` (a :class:`~dps.core.errors.TransientError`) when the source
cannot answer at all (down, timed out, refused the credentials): the cache then applies the
source's ``on_unavailable`` (FAIL the lookups, or serve STALE_CACHE entries). A plugin wraps its
client's exceptions; it raises nothing else.

A source that can list its content implements :meth:`scan`, used by warmup and full refresh;
the others are refreshed by re-fetching the keys already in the cache.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel

from dps.core.errors import TransientError

Row = dict[str, Any]


class SourceUnavailable(TransientError):
    """The enrichment source cannot answer (down, slow, refused)."""


@dataclass(frozen=True, slots=True)
class Unavailable:
    """The answer to a lookup when the source is down and no usable entry is cached."""

    message: str


class EnrichmentSource(abc.ABC):
    """One enrichment source (see the module docstring)."""

    Config: ClassVar[type[BaseModel]]
    #: Whether :meth:`scan` lists the whole source.
    can_scan: ClassVar[bool] = False

    def __init__(self, name: str, config: Any) -> None:
        self.name = name
        self.config = config

    @abc.abstractmethod
    def fetch(self, keys: Sequence[str]) -> dict[str, Row]:
        """The rows of ``keys`` that exist, by key; raise :class:`SourceUnavailable` if down."""

    def scan(self) -> tuple[int, Iterator[list[tuple[str, Row]]]]:
        """``(total, chunks)``: how many rows, and the rows in chunks (warmup, full refresh)."""
        raise NotImplementedError(f"{type(self).__name__} cannot list its content.")

    def close(self) -> None:  # noqa: B027 - most sources hold nothing to release
        """Release connections; the source is not used afterwards."""


def key_text(value: Any) -> str:
    """A record's key value as the cache and the sources see it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
