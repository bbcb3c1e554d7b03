"""Field rules from ``alpha/validation/*.yaml`` (the format is in docs/sources/validation.md).

Each rule names a payload ``field`` and the constraints on it: ``required``, ``type``,
``min``/``max``, ``min_length``/``max_length``, ``regex``, ``enum`` and ``compare`` (against
another field: the cross-field check), optionally only for records matching ``when`` (the same
condition language as Beta's rule ``match``). Rules are compiled when the configuration is
loaded; an absent field fails only ``required`` (the other constraints apply to values that are
there), so "optional but well-formed" needs no extra syntax.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from typing import Any

from dps.alpha.validation.base import Check
from dps.config.models import ValidationRule, ValidationRuleFile
from dps.core.conditions import compile_condition
from dps.core.errors import TerminalError
from dps.core.record import Record, get_path

_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
}
_OPS: dict[str, tuple[Callable[[Any, Any], bool], str]] = {
    "eq": (operator.eq, "=="),
    "ne": (operator.ne, "!="),
    "lt": (operator.lt, "<"),
    "lte": (operator.le, "<="),
    "gt": (operator.gt, ">"),
    "gte": (operator.ge, ">="),
}


class _Rule:
    def __init__(self, rule: ValidationRule, file: str) -> None:
        self.rule = rule
        self.label = f"{file}: {rule.name or rule.field}"
        self.when = compile_condition(rule.when, "when") if rule.when else None
        self.regex = re.compile(rule.regex) if rule.regex is not None else None
        self.enum = list(rule.enum) if rule.enum is not None else None

    def check(self, record: Record) -> TerminalError | None:
        rule = self.rule
        if self.when is not None and not self.when(record):
            return None
        value = get_path(record.payload, rule.field)
        if value is None:
            if rule.required:
                return self._fail("missing_field", "is required and missing")
            return None
        if rule.type is not None and not _TYPES[rule.type](value):
            return self._fail("type_mismatch", f"{value!r} is not of type {rule.type}")
        if rule.min is not None or rule.max is not None:
            if not _TYPES["number"](value):
                return self._fail("type_mismatch", f"{value!r} is not a number")
            if (rule.min is not None and value < rule.min) or (
                rule.max is not None and value > rule.max
            ):
                return self._fail(
                    "out_of_range",
                    f"{value!r} is outside [{_n(rule.min, '-inf')}, {_n(rule.max, 'inf')}]",
                )
        if rule.min_length is not None or rule.max_length is not None:
            if not isinstance(value, str | list):
                return self._fail("type_mismatch", f"{value!r} has no length")
            size = len(value)
            if (rule.min_length is not None and size < rule.min_length) or (
                rule.max_length is not None and size > rule.max_length
            ):
                return self._fail(
                    "length_out_of_range",
                    f"length {size} is outside "
                    f"[{_n(rule.min_length, '0')}, {_n(rule.max_length, 'inf')}]",
                )
        if self.regex is not None and (
            not isinstance(value, str) or self.regex.search(value) is None
        ):
            return self._fail("pattern_mismatch", f"{value!r} does not match {rule.regex}")
        if self.enum is not None and value not in self.enum:
            return self._fail("not_in_enum", f"{value!r} is not one of {self.enum}")
        if rule.compare is not None:
            other = get_path(record.payload, rule.compare.other)
            test, symbol = _OPS[rule.compare.op]
            try:
                ok = other is not None and test(value, other)
            except TypeError:
                ok = False
            if not ok:
                return self._fail(
                    "comparison_failed",
                    f"{value!r} {symbol} {rule.compare.other} ({other!r}) does not hold",
                )
        return None

    def _fail(self, code: str, what: str) -> TerminalError:
        return TerminalError(
            code, f"{self.label}: field {self.rule.field}: {what}.", field=self.rule.field
        )


def _n(value: float | None, unbounded: str) -> str:
    return unbounded if value is None else f"{value:g}"


class FieldRules(Check):
    """The rules of one rule file, checked in order; every failing rule is reported."""

    def __init__(self, rules: ValidationRuleFile) -> None:
        name = rules.file.name or "validation"
        self.rules = [_Rule(rule, name) for rule in rules.rules]
        self.name = name

    def describe(self) -> str:
        return f"rules: {self.name} ({len(self.rules)} rules)"

    def check(self, record: Record) -> list[TerminalError]:
        problems = []
        for rule in self.rules:
            problem = rule.check(record)
            if problem is not None:
                problems.append(problem)
        return problems
