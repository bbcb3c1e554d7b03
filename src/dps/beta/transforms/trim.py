"""``trim``: strip whitespace (or the given characters) from both ends of a string field."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from dps.beta.transforms.base import FieldTransform
from dps.core.model import StrictModel
from dps.core.registry import register


class TrimConfig(StrictModel):
    """``transform.config`` of ``trim``."""

    field: str | None = Field(
        default=None, description="Field to change; default: the field the rule's match tests."
    )
    characters: str | None = Field(
        default=None, description="Characters to strip; default: whitespace."
    )
    side: Literal["both", "left", "right"] = Field(
        default="both", description="Which end(s) to strip."
    )


@register("transforms", "trim")
class Trim(FieldTransform):
    """A value that is not a string fails the rule (``on_failure`` decides)."""

    Config = TrimConfig
    config: TrimConfig
    kind = "trim"

    def change(self, value: Any) -> Any:
        text = self.need_string(value)
        chars = self.config.characters
        if self.config.side == "left":
            return text.lstrip(chars)
        if self.config.side == "right":
            return text.rstrip(chars)
        return text.strip(chars)
