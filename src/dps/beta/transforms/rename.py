"""``rename``: move a field to a new name (dotted paths allowed on both sides)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import Field

from dps.beta.transforms.base import Events, Transform, pop_parts, set_path, split_path
from dps.core.model import StrictModel
from dps.core.record import Record
from dps.core.registry import register


class RenameConfig(StrictModel):
    """``transform.config`` of ``rename``."""

    to: str = Field(description="The new name (dotted path) of the field.")
    field: str | None = Field(
        default=None, description="Field to rename; default: the field the rule's match tests."
    )


@register("transforms", "rename")
class Rename(Transform):
    """A missing source field leaves the record unchanged."""

    Config = RenameConfig
    config: RenameConfig

    def __init__(self, config: Any, target_field: str | None) -> None:
        super().__init__(config, config.field or target_field)
        if not self.target_field:
            raise ValueError("rename needs a field: set config.field or match a field.")
        *self._parents, self._last = split_path(self.target_field)

    def apply(self, record: Record) -> str | None:
        self._move(record.payload)
        return None

    def apply_batch(self, records: Sequence[Record]) -> Events:
        move = self._move
        for record in records:
            move(record.payload)
        return []

    def _move(self, payload: dict[str, Any]) -> None:
        found, value = pop_parts(payload, self._parents, self._last)
        if found:
            set_path(payload, self.config.to, value)
