"""``uppercase``: upper-case a string field."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from dps.beta.transforms.base import FieldTransform
from dps.core.model import StrictModel
from dps.core.registry import register


class UppercaseConfig(StrictModel):
    """``transform.config`` of ``uppercase``."""

    field: str | None = Field(
        default=None, description="Field to change; default: the field the rule's match tests."
    )


@register("transforms", "uppercase")
class Uppercase(FieldTransform):
    """A value that is not a string fails the rule (``on_failure`` decides)."""

    Config = UppercaseConfig
    kind = "uppercase"

    def change(self, value: Any) -> Any:
        return self.need_string(value).upper()
