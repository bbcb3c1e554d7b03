"""``lookup``: copy fields of an enrichment source's row into the record, by a key field.

The rule names the source (``beta/enrichment/<name>.yaml``), the record field holding the key and
the fields to copy (``target path: source column``). The cache answers (see
:mod:`dps.beta.enrichment.cache`); the rule engine has usually prefetched the whole batch's keys
in one fetch. When the key is not in the source, ``on_miss`` decides: ``leave`` the record as it
is, write the ``defaults``, or ``fail`` the rule. When the source is down and the cache cannot
stand in (``on_unavailable``), the rule fails with reason ``enrichment_unavailable``; the rule's
``on_failure`` decides (``dlq`` sends the record to the Beta DLQ with the rule id and why).

A record without the key field is left unchanged.

Over a batch (:meth:`Lookup.apply_batch`) the keys of all the records the rule matches are looked
up in one :meth:`~dps.beta.enrichment.cache.Enrichment.lookup_many` (duplicates collapse; what
the cache cannot answer goes to the source in one ``fetch``), and the records of the batch share
one lineage step per outcome.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from dps.beta.enrichment.base import Row, Unavailable, key_text
from dps.beta.transforms.base import Events, Transform, set_path
from dps.core.errors import TerminalError
from dps.core.model import StrictModel
from dps.core.record import ENRICHMENT_PREFIX, LineageStep, Record, get_path
from dps.core.registry import register

if TYPE_CHECKING:
    from dps.beta.enrichment.cache import Answer, Enrichment

_ABSENT = object()


class LookupConfig(StrictModel):
    """``transform.config`` of ``lookup``."""

    source: str = Field(description="Enrichment source name (beta/enrichment/<name>.yaml).")
    key_field: str | None = Field(
        default=None, description="Field holding the key; default: the field the match tests."
    )
    fields: dict[str, str] = Field(
        min_length=1,
        description="What to copy: target field (dotted path) -> column of the source's row.",
    )
    on_miss: Literal["leave", "default", "fail"] = Field(
        default="leave",
        description="Key not in the source: leave the record, write defaults, or fail the rule.",
    )
    defaults: dict[str, Any] = Field(
        default_factory=dict, description="on_miss default: target field -> value written."
    )


@register("transforms", "lookup")
class Lookup(Transform):
    """Copies columns of an enrichment source's row into the record, through the cache."""

    Config = LookupConfig
    config: LookupConfig

    def __init__(self, config: Any, target_field: str | None) -> None:
        super().__init__(config, config.key_field or target_field)
        if not self.target_field:
            raise ValueError("lookup needs a key field: set config.key_field or match a field.")
        self.key_field: str = self.target_field
        unknown = sorted(set(config.defaults) - set(config.fields))
        if unknown:
            raise ValueError(
                f"lookup defaults name {', '.join(unknown)}, which are not in fields; "
                "expected defaults only for the target fields"
            )
        self.enrichment: Enrichment | None = None
        #: The lineage actions of a hit and of a miss answered with the defaults.
        self._hit = f"{ENRICHMENT_PREFIX}{config.source}"
        self._default = f"{ENRICHMENT_PREFIX}{config.source}:default"
        self._fields = list(config.fields.items())

    def bind(self, enrichment: Enrichment | None) -> None:
        """Use ``enrichment``'s cache; raises ValueError when it has no such source."""
        if enrichment is None or self.config.source not in enrichment.sources:
            known = ", ".join(sorted(enrichment.sources)) if enrichment else ""
            raise ValueError(
                f'lookup source "{self.config.source}" is not a configured enrichment source '
                f"(beta/enrichment/*.yaml); known: {known or 'none'}."
            )
        self.enrichment = enrichment

    def key(self, record: Record) -> str | None:
        value = get_path(record.payload, self.key_field, _ABSENT)
        if value is _ABSENT or value is None:
            return None
        return key_text(value)

    def apply(self, record: Record) -> str | None:
        key = self.key(record)
        if key is None:
            return None
        enrichment = self._enrichment()
        action = self.fill(record, key, enrichment.resolve(self.config.source, key))
        if action is not None:
            record.touched("beta", action)
        return None

    def apply_batch(self, records: Sequence[Record]) -> Events:
        events: Events = []
        keyed: list[tuple[int, Record, str]] = []
        key_field, key = self.key_field, self.key
        top_level = "." not in key_field
        for position, record in enumerate(records):
            if top_level:  # the common case: a top-level text key, read in place
                value = record.payload.get(key_field)
                if value is None:
                    continue
                if value.__class__ is str:
                    keyed.append((position, record, value))
                    continue
            try:
                found = key(record)
            except RecursionError as exc:  # str() of a key nested too deeply
                events.append((position, exc))
                continue
            if found is not None:
                keyed.append((position, record, found))
        if not keyed:
            return events
        try:
            enrichment = self._enrichment()
        except TerminalError as exc:
            events += [(position, exc) for position, _, _ in keyed]
            return sorted(events, key=lambda event: event[0])
        answers = enrichment.lookup_many(self.config.source, [text for _, _, text in keyed])
        now = time.time()
        steps = {action: LineageStep("beta", action, now) for action in (self._hit, self._default)}
        fill, copy, hit = self.fill, self._copy, steps[self._hit]
        for position, record, text in keyed:
            answer = answers[text]
            if answer.__class__ is dict:  # a row: the common case, what fill does with it
                copy(record.payload, answer)
                record.lineage.append(hit)
                continue
            try:
                action = fill(record, text, answer)
            except TerminalError as exc:
                events.append((position, exc))
                continue
            if action is not None:
                record.lineage.append(steps[action])
        if len(events) > 1:
            events.sort(key=lambda event: event[0])
        return events

    def _enrichment(self) -> Enrichment:
        if self.enrichment is None:
            raise TerminalError(
                "enrichment_unavailable",
                f"No enrichment source {self.config.source} is configured.",
                field=self.key_field,
            )
        return self.enrichment

    def fill(self, record: Record, key: str, answer: Answer) -> str | None:
        """Write ``answer`` (the source's row for ``key``) into ``record``; the lineage action
        to note, if any. TerminalError when the rule fails (source unavailable, miss to fail)."""
        if isinstance(answer, Unavailable):
            raise TerminalError("enrichment_unavailable", answer.message, field=self.key_field)
        if answer is None:
            if self.config.on_miss == "fail":
                raise TerminalError(
                    "enrichment_miss",
                    f"{self.key_field} {key!r} is not in enrichment source {self.config.source}.",
                    field=self.key_field,
                )
            if self.config.on_miss == "default":
                for target, value in self.config.defaults.items():
                    set_path(record.payload, target, value)
                return self._default
            return None
        self._copy(record.payload, answer)
        return self._hit

    def _copy(self, payload: dict[str, Any], row: Row) -> None:
        for target, column in self._fields:
            if column in row:
                set_path(payload, target, row[column])
