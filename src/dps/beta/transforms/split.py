"""``split``: split a string field into a list, or into several named fields."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from dps.beta.transforms.base import FieldTransform, set_path
from dps.core.model import StrictModel
from dps.core.record import Record, get_path
from dps.core.registry import register


class SplitConfig(StrictModel):
    """``transform.config`` of ``split``."""

    field: str | None = Field(
        default=None, description="Field to split; default: the field the rule's match tests."
    )
    separator: str = Field(default=",", min_length=1, description="Separator between parts.")
    to: str | None = Field(
        default=None, description="Field receiving the list of parts; default: the field itself."
    )
    into: list[str] = Field(
        default_factory=list,
        description="Instead of a list: the fields receiving the parts in order (extra parts "
        "are joined into the last).",
    )
    max_split: int = Field(default=-1, ge=-1, description="At most this many splits; -1: all.")
    trim: bool = Field(default=True, description="Strip whitespace around each part.")


@register("transforms", "split")
class Split(FieldTransform):
    """A value that is not a string fails the rule (``on_failure`` decides)."""

    Config = SplitConfig
    config: SplitConfig
    kind = "split"

    def apply(self, record: Record) -> str | None:
        value = get_path(record.payload, self.field)
        if value is None:
            return None
        parts = self.change(value)
        if self.config.into:
            for index, target in enumerate(self.config.into):
                set_path(record.payload, target, parts[index] if index < len(parts) else None)
        else:
            set_path(record.payload, self.config.to or self.field, parts)
        return None

    def change(self, value: Any) -> Any:
        text = self.need_string(value)
        limit = self.config.max_split
        if self.config.into and (limit < 0 or limit >= len(self.config.into)):
            limit = len(self.config.into) - 1
        parts = text.split(self.config.separator, limit)
        return [p.strip() for p in parts] if self.config.trim else parts
