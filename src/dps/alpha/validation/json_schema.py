"""``validation.schema_ref``: a JSON Schema file applied to each payload (see
:mod:`dps.core.json_schema`: jsonschema-rs, draft-07 unless ``$schema`` says otherwise, formats
checked). The first violation is reported with its path (``$.items[0].sku``) in the DLQ entry's
message and as ``validation_failures.field`` (``items[0].sku``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dps.alpha.validation.base import Check
from dps.core.errors import ConfigError, ConfigIssue, TerminalError
from dps.core.json_schema import Schema, json_path
from dps.core.record import Record


class JsonSchema(Check):
    """A compiled schema applied to the payload."""

    def __init__(self, schema: dict[str, Any], name: str = "schema") -> None:
        self.name = name
        self._schema = Schema(schema)
        self._is_valid = self._schema.is_valid

    @classmethod
    def from_file(cls, path: Path) -> JsonSchema:
        """Read and compile ``path``; a bad schema is a :class:`ConfigError` (reload refused)."""
        try:
            schema = json.loads(path.read_text(encoding="utf-8"))
            return cls(schema, path.name)
        except (OSError, ValueError) as exc:  # jsonschema_rs.ValidationError is a ValueError
            raise ConfigError(
                [ConfigIssue(str(path), "", f"is not a usable JSON Schema: {exc}.", None)]
            ) from None

    def describe(self) -> str:
        return f"schema: {self.name}"

    def check(self, record: Record) -> list[TerminalError]:
        payload = record.payload
        try:
            if self._is_valid(payload):  # the common case, without a call more per record
                return []
        except ValueError:
            pass  # problem() says what it is
        problem = self._schema.problem(payload)
        if problem is None:
            return []
        where, message = problem
        return [
            TerminalError(
                "schema_violation",
                f"{self.name}: {json_path(where)}: {message}.",
                field=where or None,
            )
        ]
