"""``cast``: convert a field to int, float, decimal, bool, string or timestamp.

A value that does not convert (``"abc"`` to decimal) fails the rule with a message naming the
value and the type; ``on_failure`` decides what happens (``dlq``: the record goes to the Beta DLQ
with the rule id). Decimals are kept as their exact text (``"19.90"``), since the record codec
has no decimal type and a float would lose digits; ``scale`` rounds them (half-even).
Timestamps are parsed with ``formats`` (strptime) in order, else as ISO 8601, and written as
ISO 8601 text; a timestamp without a zone is taken as UTC.
"""

from __future__ import annotations

import datetime as dt
import decimal
from typing import Any, Literal

from pydantic import Field

from dps.beta.transforms.base import FieldTransform
from dps.core.model import StrictModel
from dps.core.registry import register

_TRUE = frozenset({"true", "t", "yes", "y", "1", "on"})
_FALSE = frozenset({"false", "f", "no", "n", "0", "off", ""})


class CastConfig(StrictModel):
    """``transform.config`` of ``cast``."""

    field: str | None = Field(
        default=None, description="Field to convert; default: the field the rule's match tests."
    )
    to: Literal["int", "float", "decimal", "bool", "string", "timestamp"] = Field(
        description="Target type."
    )
    formats: list[str] = Field(
        default_factory=list,
        description="timestamp: strptime formats tried in order before ISO 8601 "
        "(e.g. '%d/%m/%Y %H:%M').",
    )
    scale: int | None = Field(
        default=None, ge=0, le=30, description="decimal: digits after the point (rounded)."
    )
    epoch_unit: Literal["s", "ms"] = Field(
        default="s", description="timestamp: unit of numeric epoch values."
    )


@register("transforms", "cast")
class Cast(FieldTransform):
    """Null stays null; a failed conversion raises a terminal error naming value and type."""

    Config = CastConfig
    config: CastConfig
    kind = "cast"

    def change(self, value: Any) -> Any:
        if value is None:
            return None
        to = self.config.to
        try:
            if to == "int":
                return _to_int(value)
            if to == "float":
                if isinstance(value, bool):
                    raise ValueError
                return float(value)
            if to == "decimal":
                return self._decimal(value)
            if to == "bool":
                return _to_bool(value)
            if to == "string":
                return value if isinstance(value, str) else str(value)
            return self._timestamp(value)
        except (ValueError, TypeError, ArithmeticError):
            raise self.fail(f"{value!r} in {self.field} cannot be cast to {to}.") from None

    def _decimal(self, value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError
        number = decimal.Decimal(value.strip() if isinstance(value, str) else str(value))
        if not number.is_finite():
            raise ValueError
        if self.config.scale is not None:
            number = number.quantize(decimal.Decimal(1).scaleb(-self.config.scale))
        return str(number)

    def _timestamp(self, value: Any) -> str:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, int | float):
            seconds = value / 1000 if self.config.epoch_unit == "ms" else value
            return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat()
        if not isinstance(value, str):
            raise ValueError
        text = value.strip()
        parsed: dt.datetime | None = None
        for fmt in self.config.formats:
            try:
                parsed = dt.datetime.strptime(text, fmt)
                break
            except ValueError:
                continue
        if parsed is None:
            parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        return parsed.isoformat()


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            number = decimal.Decimal(text)
            if number != number.to_integral_value():
                raise
            return int(number)
    if isinstance(value, int):
        return value
    raise TypeError


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise ValueError
