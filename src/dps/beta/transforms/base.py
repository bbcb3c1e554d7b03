"""The transform contract.

A transform is built once per rule from the rule's ``transform.config`` (validated by its
``Config`` model) and the rule's target field: the transform's own ``field`` setting when it has
one, else the field the rule's ``match`` tests (B.1's E.164 rule names its field only in
``match``). ``apply`` changes ``record.payload`` in place — the record belongs to the stage for
the duration of the batch — and returns ``DROP`` to drop the record, ``None`` otherwise.

Raise :class:`~dps.core.errors.TerminalError` when the record cannot be transformed (a value of
the wrong type, say); the rule's ``on_failure`` decides what happens then (skip the rule, fail
the record to the DLQ).

The running module applies a rule to the records of a batch it matches in one call,
``apply_batch``: by default ``apply`` on each; transforms on the hot path override it with a loop
that binds the rule's state once. It changes the records as ``apply`` would and, instead of
raising, reports per record what ``apply`` would have returned or raised when that is not
``None``: ``DROP``, the ``TerminalError``, or a ``RecursionError`` (a payload nested too deeply),
as :data:`Events`. The two must not differ in anything else: the rule tester uses ``apply``'s
results to say what the module will do.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, ClassVar, Final, TypeAlias

from pydantic import BaseModel

from dps.core.errors import TerminalError
from dps.core.record import Record, get_path

DROP: Final = "drop"

#: What ``apply_batch`` reports: ``(position in the batch, DROP or the error)``, in batch order,
#: for the records ``apply`` would not have returned ``None`` for.
Events: TypeAlias = list[tuple[int, str | TerminalError | RecursionError]]


class Transform(abc.ABC):
    """One rule's transformation (see the module docstring)."""

    Config: ClassVar[type[BaseModel]]

    def __init__(self, config: Any, target_field: str | None) -> None:
        self.config = config
        self.target_field = target_field

    @abc.abstractmethod
    def apply(self, record: Record) -> str | None:
        """Transform ``record`` in place; return ``DROP`` to drop it."""

    def apply_batch(self, records: Sequence[Record]) -> Events:
        """``apply`` to each record, with the drops and failures reported (module docstring)."""
        events: Events = []
        apply = self.apply
        for position, record in enumerate(records):
            try:
                if apply(record) == DROP:
                    events.append((position, DROP))
            except (TerminalError, RecursionError) as exc:
                events.append((position, exc))
        return events


def split_path(path: str) -> list[str]:
    return path.split(".")


def set_path(payload: dict[str, Any], path: str, value: Any) -> None:
    """Set a dotted path, creating the dicts on the way."""
    if "." not in path:
        payload[path] = value
        return
    node = payload
    *parents, last = split_path(path)
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[last] = value


def pop_path(payload: dict[str, Any], path: str) -> tuple[bool, Any]:
    """Remove a dotted path; ``(found, value)``."""
    *parents, last = split_path(path)
    return pop_parts(payload, parents, last)


def pop_parts(payload: dict[str, Any], parents: Sequence[str], last: str) -> tuple[bool, Any]:
    """:func:`pop_path` with the path split already (a rule splits it once)."""
    node: Any = payload
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return False, None
    if isinstance(node, dict) and last in node:
        return True, node.pop(last)
    return False, None


class FieldTransform(Transform):
    """A transform of one field: ``config.field``, else the field the rule's match tests.

    Subclasses implement :meth:`change`, called with the field's value when the field is present
    (a missing field leaves the record unchanged); what it returns replaces the value.
    """

    kind: ClassVar[str] = "transform"

    def __init__(self, config: Any, target_field: str | None) -> None:
        super().__init__(config, getattr(config, "field", None) or target_field)
        if not self.target_field:
            raise ValueError(f"{self.kind} needs a field: set config.field or match a field.")
        self.field: str = self.target_field

    def apply(self, record: Record) -> str | None:
        value = get_path(record.payload, self.field, _ABSENT)
        if value is _ABSENT:
            return None
        set_path(record.payload, self.field, self.change(value))
        return None

    def apply_batch(self, records: Sequence[Record]) -> Events:
        field = self.field
        if "." in field or type(self).apply is not FieldTransform.apply:
            return super().apply_batch(records)
        # A top-level field: what get_path and set_path do, without them.
        change = self.change
        events: Events = []
        for position, record in enumerate(records):
            payload = record.payload
            value = payload.get(field, _ABSENT)
            if value is _ABSENT:
                continue
            try:
                payload[field] = change(value)
            except (TerminalError, RecursionError) as exc:
                events.append((position, exc))
        return events

    @abc.abstractmethod
    def change(self, value: Any) -> Any:
        """The new value of the field."""

    def fail(self, message: str) -> TerminalError:
        """A record-level failure naming this transform's field."""
        return TerminalError("transform_failed", message, field=self.field)

    def need_string(self, value: Any) -> str:
        if not isinstance(value, str):
            raise self.fail(f"{self.field} is a {type(value).__name__}; expected a string.")
        return value


_ABSENT: Final = object()
