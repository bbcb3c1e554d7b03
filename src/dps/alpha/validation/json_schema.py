"""``validation.schema_ref``: a JSON Schema (draft-07) file, compiled once with fastjsonschema.

fastjsonschema generates Python code for the schema, so checking a record costs about as much
as the hand-written ``if`` statements would. It stops at the first violation; that one is
reported with its path (``$.items[0].sku``) in the DLQ entry's message and as
``validation_failures.field`` (``items[0].sku``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastjsonschema

from dps.alpha.validation.base import Check
from dps.core.errors import ConfigError, ConfigIssue, TerminalError
from dps.core.record import Record


class JsonSchema(Check):
    """A compiled draft-07 schema applied to the payload."""

    def __init__(self, schema: dict[str, Any], name: str = "schema") -> None:
        self.name = name
        self._validate: Callable[[Any], Any] = fastjsonschema.compile(schema)

    @classmethod
    def from_file(cls, path: Path) -> JsonSchema:
        """Read and compile ``path``; a bad schema is a :class:`ConfigError` (reload refused)."""
        try:
            schema = json.loads(path.read_text(encoding="utf-8"))
            return cls(schema, path.name)
        except (OSError, ValueError, fastjsonschema.JsonSchemaDefinitionException) as exc:
            raise ConfigError(
                [ConfigIssue(str(path), "", f"is not a usable JSON Schema: {exc}.", None)]
            ) from None

    def describe(self) -> str:
        return f"schema: {self.name}"

    def check(self, record: Record) -> list[TerminalError]:
        try:
            self._validate(record.payload)
        except fastjsonschema.JsonSchemaValueException as exc:
            name = str(exc.name or "data")
            where = name.removeprefix("data").lstrip(".")
            path = "$" + ("." + where if where and not where.startswith("[") else where)
            return [
                TerminalError(
                    "schema_violation",
                    f"{self.name}: {path}: {exc.message}.",
                    field=where or None,
                )
            ]
        return []
