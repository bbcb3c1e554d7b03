"""``lowercase``: lower-case a string field."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from dps.beta.transforms.base import FieldTransform
from dps.core.model import StrictModel
from dps.core.registry import register


class LowercaseConfig(StrictModel):
    """``transform.config`` of ``lowercase``."""

    field: str | None = Field(
        default=None, description="Field to change; default: the field the rule's match tests."
    )


@register("transforms", "lowercase")
class Lowercase(FieldTransform):
    """A value that is not a string fails the rule (``on_failure`` decides)."""

    Config = LowercaseConfig
    kind = "lowercase"

    def change(self, value: Any) -> Any:
        return self.need_string(value).lower()
