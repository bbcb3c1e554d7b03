"""``map``: replace a field's value through a value table, with a default for the rest.

Keys are compared as strings (YAML keys are strings), so ``{"1": gold}`` maps the number 1 too.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from dps.beta.transforms.base import FieldTransform
from dps.core.model import StrictModel
from dps.core.registry import register


class MapConfig(StrictModel):
    """``transform.config`` of ``map``."""

    field: str | None = Field(
        default=None, description="Field to change; default: the field the rule's match tests."
    )
    values: dict[str, Any] = Field(description="Value table: old value -> new value.")
    default: Any = Field(
        default=None,
        description="Value for anything not in the table; not set: such values are kept.",
    )
    fail_unmapped: bool = Field(
        default=False,
        description="Fail the rule (on_failure decides) on an unmapped value without default.",
    )
    case_insensitive: bool = Field(
        default=False, description="Compare string values without regard to case."
    )


@register("transforms", "map")
class Map(FieldTransform):
    """The table is built once; a lookup per record is one dict access."""

    Config = MapConfig
    config: MapConfig
    kind = "map"

    def __init__(self, config: Any, target_field: str | None) -> None:
        super().__init__(config, target_field)
        fold = str.casefold if config.case_insensitive else str
        self._table = {fold(k): v for k, v in config.values.items()}
        self._fold = fold
        self._has_default = "default" in config.model_fields_set

    def change(self, value: Any) -> Any:
        key = self._fold(value if isinstance(value, str) else _key(value))
        if key in self._table:
            return self._table[key]
        if self._has_default:
            return self.config.default
        if self.config.fail_unmapped:
            raise self.fail(f"{value!r} is not in the value table of {self.field}.")
        return value


def _key(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
