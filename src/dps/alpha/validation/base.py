"""The validation contract, and the per-source validator built from the configuration.

A check looks at one :class:`~dps.core.record.Record` and answers the problems it found, each a
:class:`~dps.core.errors.TerminalError` whose ``reason`` is the error code written into the
validation failures table (``missing_field``, ``schema_violation``, ``type_mismatch``,
``out_of_range``, ``pattern_mismatch``, ``not_in_enum``, ``length_out_of_range``,
``comparison_failed``) and whose ``field`` is the path of the offending field. Checks keep no
state between records and never raise for bad data.

:class:`SourceValidator` is built once per source when the configuration is loaded or reloaded
(the JSON Schema is compiled then, never per record). Its :meth:`~SourceValidator.check` sorts a
record's problems into:

- **hard** problems (``required_fields``): the record goes to the DLQ whatever the mode;
- **soft** problems (schema, rule files): with ``VALIDATION_STRICT_MODE: true`` (the default) the
  record goes to the DLQ; with ``false`` each problem is recorded in the validation failures
  table and counted in ``alpha_validation_failures_total``, and the record is passed on.

``VALIDATION_PARALLEL_RULES`` is accepted and has no effect: a record's checks are a few
microseconds of Python each, and threads under the GIL only add overhead — measured by
``benchmarks/alpha/validation_parallel.py``: a batch split over 2 or 4 threads validates at
0.4 to 0.95 times the serial rate (docs/alpha.md). All of a record's problems are reported, not
only the first.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path

from dps.config.models import SourceConfig, ValidationRuleFile
from dps.core.errors import TerminalError
from dps.core.record import Record, get_path


class Check(abc.ABC):
    """One check of a record."""

    @abc.abstractmethod
    def check(self, record: Record) -> list[TerminalError]:
        """The problems of ``record``; empty when it passes."""

    def describe(self) -> str:
        """What this check is, for the admin API."""
        return type(self).__name__


class RequiredFields(Check):
    """``validation.required_fields``: present, not null, not ''."""

    def __init__(self, fields: list[str]) -> None:
        self.fields = fields
        #: Top-level names are read straight from the payload; dotted paths through ``get_path``.
        self._top = tuple(name for name in fields if "." not in name)
        self._nested = any("." in name for name in fields)

    def describe(self) -> str:
        return f"required_fields: {', '.join(self.fields)}"

    def check(self, record: Record) -> list[TerminalError]:
        payload = record.payload
        if not self._nested and type(payload) is dict:
            # The common case, one check per record: no problem, no list built.
            get = payload.get
            for name in self._top:
                value = get(name)
                if value is None or value == "":
                    break
            else:
                return []
        problems = []
        for name in self.fields:
            value = get_path(payload, name)
            if value is None or value == "":
                problems.append(
                    TerminalError("missing_field", f"Required field {name} is missing.", field=name)
                )
        return problems


@dataclass(slots=True)
class Outcome:
    """What validating one record found."""

    hard: list[TerminalError] = field(default_factory=list)
    soft: list[TerminalError] = field(default_factory=list)

    @property
    def problems(self) -> list[TerminalError]:
        return self.hard + self.soft


class SourceValidator:
    """Every check configured for one source (see the module docstring)."""

    def __init__(self, hard: list[Check], soft: list[Check]) -> None:
        self.hard = hard
        self.soft = soft

    @classmethod
    def build(
        cls, source: SourceConfig, rule_files: list[ValidationRuleFile], alpha_dir: Path
    ) -> SourceValidator:
        """Compile the checks of ``source`` (its schema is read and compiled here, once)."""
        from dps.alpha.validation.field_rules import FieldRules
        from dps.alpha.validation.json_schema import JsonSchema

        hard: list[Check] = []
        soft: list[Check] = []
        if source.validation.required_fields:
            hard.append(RequiredFields(source.validation.required_fields))
        schema_path = source.validation.schema_path(alpha_dir)
        if schema_path is not None:
            soft.append(JsonSchema.from_file(schema_path))
        for rules in rule_files:
            if rules.applies_to is None or source.source_id in rules.applies_to:
                soft.append(FieldRules(rules))
        return cls(hard, soft)

    def describe(self) -> list[str]:
        """The checks, by name, in the order they run (``/admin/validation/rule-performance``)."""
        return [check.describe() for check in self.hard + self.soft]

    def check(self, record: Record) -> Outcome | None:
        """What the checks found; None when the record passed them all (the common case: then
        nothing is built for it)."""
        hard: list[TerminalError] = []
        for check in self.hard:
            if found := check.check(record):
                hard = hard + found
        soft: list[TerminalError] = []
        for check in self.soft:
            if found := check.check(record):
                soft = soft + found
        return Outcome(hard, soft) if hard or soft else None
