"""``rename``: move a field to a new name (dotted paths allowed on both sides)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from dps.beta.transforms.base import Transform, pop_path, set_path
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

    def apply(self, record: Record) -> str | None:
        found, value = pop_path(record.payload, str(self.target_field))
        if found:
            set_path(record.payload, self.config.to, value)
        return None
