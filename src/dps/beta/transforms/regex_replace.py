"""``regex_replace``: replace what a regular expression matches in a string field.

The replacement uses ``$1``-style group references, as in the manual's E.164 rule
(``"+1$1$2$3"``); ``\\1`` and ``\\g<name>`` work too.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import Field, field_validator

from dps.beta.transforms.base import Events, Transform, set_path
from dps.core.errors import TerminalError
from dps.core.model import StrictModel
from dps.core.record import Record, get_path
from dps.core.registry import register

_DOLLAR_GROUP = re.compile(r"\$(\d+|\{\w+\})")


class RegexReplaceConfig(StrictModel):
    """``transform.config`` of ``regex_replace``."""

    pattern: str = Field(description="Regular expression (Python syntax) searched in the field.")
    replacement: str = Field(description="Replacement; $1 or \\1 refer to groups.")
    field: str | None = Field(
        default=None, description="Field to change; default: the field the rule's match tests."
    )
    count: int = Field(default=0, ge=0, description="Replace at most this many matches; 0 = all.")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"{value!r} is not a valid regular expression: {exc}") from None
        return value


def python_replacement(replacement: str) -> str:
    """``$1`` / ``${name}`` to Python's ``\\g<1>`` / ``\\g<name>``."""
    return _DOLLAR_GROUP.sub(lambda m: f"\\g<{m.group(1).strip('{}')}>", replacement)


_GROUP_REF = re.compile(r"\\g<(\w+)>")


def compiled_replacement(
    pattern: re.Pattern[str], replacement: str
) -> str | Callable[[re.Match[str]], str]:
    """A function building the replacement from a match, when ``replacement`` (Python syntax)
    is only literal text and ``\\g<...>`` references to groups the pattern has; else the
    template itself, for ``re.sub`` to interpret (escapes, ``\\1``, errors).

    ``re.sub`` re-expands a string template for every match; a rule runs once per record.
    """
    if "\\" not in replacement:
        return replacement  # plain text: re.sub copies it without a Python call
    parts: list[tuple[str, int]] = []  # (literal text before, group number)
    position = 0
    for ref in _GROUP_REF.finditer(replacement):
        literal = replacement[position : ref.start()]
        name = ref.group(1)
        group = int(name) if name.isdigit() else pattern.groupindex.get(name)
        if "\\" in literal or group is None or not 0 <= group <= pattern.groups:
            return replacement
        parts.append((literal, group))
        position = ref.end()
    tail = replacement[position:]
    if "\\" in tail:
        return replacement
    # A format string over the match's groups (an unmatched one is "", as in re.sub): group n
    # is argument n - 1 of groups(""), or argument n after the whole match when it is used.
    whole = any(group == 0 for _, group in parts)
    shift = 0 if whole else 1
    template = "".join(f"{_escaped(literal)}{{{group - shift}}}" for literal, group in parts)
    template += _escaped(tail)
    if whole:
        return lambda match: template.format(match.group(), *match.groups(""))
    return lambda match: template.format(*match.groups(""))


def _escaped(text: str) -> str:
    """``text`` as literal text of a format string."""
    return text.replace("{", "{{").replace("}", "}}")


@register("transforms", "regex_replace")
class RegexReplace(Transform):
    """Regex substitution on one string field; non-string values are left alone."""

    Config = RegexReplaceConfig
    config: RegexReplaceConfig

    def __init__(self, config: Any, target_field: str | None) -> None:
        super().__init__(config, config.field or target_field)
        if not self.target_field:
            raise ValueError("regex_replace needs a field: set config.field or match a field.")
        self._pattern = re.compile(self.config.pattern)
        self._replacement = compiled_replacement(
            self._pattern, python_replacement(self.config.replacement)
        )

    def apply(self, record: Record) -> str | None:
        field = str(self.target_field)
        value = get_path(record.payload, field)
        if value is None:
            return None
        set_path(record.payload, field, self.replace(value))
        return None

    def apply_batch(self, records: Sequence[Record]) -> Events:
        field = str(self.target_field)
        if "." in field:
            return super().apply_batch(records)
        replace = self.replace
        events: Events = []
        for position, record in enumerate(records):
            payload = record.payload
            value = payload.get(field)
            if value is None:
                continue
            try:
                payload[field] = replace(value)
            except TerminalError as exc:
                events.append((position, exc))
        return events

    def replace(self, value: Any) -> str:
        """The field's new value; TerminalError when it is not a string or the replacement
        cannot be built."""
        if not isinstance(value, str):
            field = str(self.target_field)
            raise TerminalError(
                "transform_failed",
                f"{field} is a {type(value).__name__}; expected a string.",
                field=field,
            )
        try:
            return self._pattern.sub(self._replacement, value, count=self.config.count)
        except (re.error, IndexError) as exc:
            raise TerminalError(
                "transform_failed", f"Replacement failed: {exc}.", field=str(self.target_field)
            ) from None
