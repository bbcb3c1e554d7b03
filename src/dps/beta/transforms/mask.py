"""``mask``: hide all but a few characters of a field (card numbers, phone numbers, emails)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from dps.beta.transforms.base import FieldTransform
from dps.core.model import StrictModel
from dps.core.registry import register


class MaskConfig(StrictModel):
    """``transform.config`` of ``mask``."""

    field: str | None = Field(
        default=None, description="Field to mask; default: the field the rule's match tests."
    )
    keep_first: int = Field(default=0, ge=0, description="Characters left visible at the start.")
    keep_last: int = Field(default=4, ge=0, description="Characters left visible at the end.")
    char: str = Field(default="*", min_length=1, max_length=1, description="The masking character.")
    keep: str = Field(
        default="", description="Characters never masked (separators such as '-' or '@')."
    )


@register("transforms", "mask")
class Mask(FieldTransform):
    """Numbers are masked as their text; a value shorter than what is kept is fully masked."""

    Config = MaskConfig
    config: MaskConfig
    kind = "mask"

    def change(self, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.fail(f"{self.field} is a {type(value).__name__}; expected text or a number.")
        text = value if isinstance(value, str) else str(value)
        first, last, keep = self.config.keep_first, self.config.keep_last, self.config.keep
        if first + last >= len(text):
            return "".join(c if c in keep else self.config.char for c in text)
        end = len(text) - last
        return "".join(
            c if (i < first or i >= end or c in keep) else self.config.char
            for i, c in enumerate(text)
        )
