"""``default``: fill a field with a value when it is missing (or null, or empty if asked)."""

from __future__ import annotations

import copy
from typing import Any

from pydantic import Field

from dps.beta.transforms.base import Transform, set_path
from dps.core.model import StrictModel
from dps.core.record import Record, get_path
from dps.core.registry import register


class DefaultConfig(StrictModel):
    """``transform.config`` of ``default``."""

    field: str | None = Field(
        default=None, description="Field to fill; default: the field the rule's match tests."
    )
    value: Any = Field(description="The value given to a missing field.")
    when_empty: bool = Field(
        default=False, description="Also fill a field holding an empty string, list or mapping."
    )


@register("transforms", "default")
class Default(Transform):
    """Present values are left alone; null counts as missing."""

    Config = DefaultConfig
    config: DefaultConfig

    def __init__(self, config: Any, target_field: str | None) -> None:
        super().__init__(config, config.field or target_field)
        if not self.target_field:
            raise ValueError("default needs a field: set config.field or match a field.")

    def apply(self, record: Record) -> str | None:
        field = str(self.target_field)
        current = get_path(record.payload, field)
        empty = current is None or (self.config.when_empty and current in ("", [], {}))
        if empty:
            value = self.config.value
            set_path(
                record.payload,
                field,
                copy.deepcopy(value) if isinstance(value, dict | list) else value,
            )
        return None
