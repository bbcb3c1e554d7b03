"""``copy``: copy a field's value to another field (dotted paths on both sides)."""

from __future__ import annotations

import copy as _copy
from typing import Any

from pydantic import Field

from dps.beta.transforms.base import Transform, set_path
from dps.core.model import StrictModel
from dps.core.record import Record, get_path
from dps.core.registry import register

_ABSENT = object()


class CopyConfig(StrictModel):
    """``transform.config`` of ``copy``."""

    to: str = Field(description="Field (dotted path) that receives the copy.")
    field: str | None = Field(
        default=None, description="Field to copy; default: the field the rule's match tests."
    )


@register("transforms", "copy")
class Copy(Transform):
    """A missing source field leaves the record unchanged; nested values are copied, not shared."""

    Config = CopyConfig
    config: CopyConfig

    def __init__(self, config: Any, target_field: str | None) -> None:
        super().__init__(config, config.field or target_field)
        if not self.target_field:
            raise ValueError("copy needs a field: set config.field or match a field.")

    def apply(self, record: Record) -> str | None:
        value = get_path(record.payload, str(self.target_field), _ABSENT)
        if value is not _ABSENT:
            if isinstance(value, dict | list):
                value = _copy.deepcopy(value)
            set_path(record.payload, self.config.to, value)
        return None
