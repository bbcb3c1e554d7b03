"""``concat``: join the values of several fields into one string field."""

from __future__ import annotations

from pydantic import Field

from dps.beta.transforms.base import Transform, set_path
from dps.core.errors import TerminalError
from dps.core.model import StrictModel
from dps.core.record import Record, get_path
from dps.core.registry import register


class ConcatConfig(StrictModel):
    """``transform.config`` of ``concat``."""

    fields: list[str] = Field(min_length=1, description="Fields to join, in order (dotted paths).")
    to: str = Field(description="Field (dotted path) that receives the joined string.")
    separator: str = Field(default="", description="Placed between the values.")
    skip_missing: bool = Field(
        default=False,
        description="Leave out missing or null fields; false: a missing field fails the rule.",
    )


@register("transforms", "concat")
class Concat(Transform):
    """Values are turned into text with ``str``; missing fields fail unless ``skip_missing``."""

    Config = ConcatConfig
    config: ConcatConfig

    def apply(self, record: Record) -> str | None:
        parts: list[str] = []
        for path in self.config.fields:
            value = get_path(record.payload, path)
            if value is None:
                if self.config.skip_missing:
                    continue
                raise TerminalError(
                    "transform_failed", f"Field {path} is missing.", field=self.config.to
                )
            parts.append(value if isinstance(value, str) else str(value))
        set_path(record.payload, self.config.to, self.config.separator.join(parts))
        return None
