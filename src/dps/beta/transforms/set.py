"""``set``: give a field a constant value, or a value built from other fields by a template.

A template is a Python format string over the payload, e.g. ``"{first_name} {last_name}"``;
nested fields are reached with ``{customer[name]}``. A template naming a missing field fails the
record (the rule's ``on_failure`` decides what happens).
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Any

from pydantic import Field, field_validator, model_validator

from dps.beta.transforms.base import Events, Transform, set_path
from dps.core.errors import TerminalError
from dps.core.model import StrictModel
from dps.core.record import Record
from dps.core.registry import register


class SetConfig(StrictModel):
    """``transform.config`` of ``set``: exactly one of ``value`` and ``template``."""

    field: str | None = Field(
        default=None, description="Field to set; default: the field the rule's match tests."
    )
    value: Any = Field(default=None, description="A constant value.")
    template: str | None = Field(default=None, description="A format string over the payload.")

    @model_validator(mode="after")
    def _one_of(self) -> SetConfig:
        if self.template is not None and self.value is not None:
            raise ValueError("set takes either value or template, not both")
        return self

    @field_validator("template")
    @classmethod
    def _well_formed(cls, value: str | None) -> str | None:
        # A broken template would fail every record at run time; refuse it at load.
        if value is None:
            return value
        try:
            fields = [name for _, name, _, _ in string.Formatter().parse(value) if name is not None]
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a valid template: {exc}") from None
        if any(name == "" or name.split("[")[0].split(".")[0].isdigit() for name in fields):
            raise ValueError(f"{value!r} has a positional field; expected payload field names")
        return value


@register("transforms", "set")
class Set(Transform):
    """Sets one field."""

    Config = SetConfig
    config: SetConfig

    def __init__(self, config: Any, target_field: str | None) -> None:
        super().__init__(config, config.field or target_field)
        if not self.target_field:
            raise ValueError("set needs a field: set config.field or match a field.")

    def apply(self, record: Record) -> str | None:
        field = str(self.target_field)
        if self.config.template is None:
            set_path(record.payload, field, self.config.value)
            return None
        try:
            value = self.config.template.format_map(record.payload)
        except KeyError as exc:
            raise TerminalError(
                "transform_failed", f"Template field {exc} is missing.", field=field
            ) from None
        except (IndexError, AttributeError, TypeError, ValueError) as exc:
            # A value of the wrong shape for the template: "{customer[name]}" on a string
            # customer, "{amount:.2f}" on a text amount. Bad data, not a bad batch.
            raise TerminalError(
                "transform_failed", f"Template cannot be filled: {exc}.", field=field
            ) from None
        set_path(record.payload, field, value)
        return None

    def apply_batch(self, records: Sequence[Record]) -> Events:
        field = str(self.target_field)
        if self.config.template is not None:
            return super().apply_batch(records)
        value = self.config.value
        if "." in field:
            for record in records:
                set_path(record.payload, field, value)
        else:
            for record in records:
                record.payload[field] = value
        return []
