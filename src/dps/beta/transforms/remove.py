"""``remove``: delete one or more fields (dotted paths) from the payload."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from dps.beta.transforms.base import Transform, pop_path
from dps.core.model import StrictModel
from dps.core.record import Record
from dps.core.registry import register


class RemoveConfig(StrictModel):
    """``transform.config`` of ``remove``."""

    field: str | None = Field(
        default=None, description="Field to remove; default: the field the rule's match tests."
    )
    fields: list[str] = Field(
        default_factory=list, description="More fields to remove (dotted paths)."
    )


@register("transforms", "remove")
class Remove(Transform):
    """Fields that are absent are ignored."""

    Config = RemoveConfig
    config: RemoveConfig

    def __init__(self, config: Any, target_field: str | None) -> None:
        super().__init__(config, config.field or (None if config.fields else target_field))
        self.paths = [p for p in [self.target_field, *config.fields] if p]
        if not self.paths:
            raise ValueError("remove needs a field: set config.field or config.fields.")

    def apply(self, record: Record) -> str | None:
        for path in self.paths:
            pop_path(record.payload, path)
        return None
