"""The one condition language used by Beta's rule ``match`` and Gamma's routing ``match``.

Two spellings, both from the manual, compile to the same predicate:

- one test, Beta B.1 style::

      match: {field: phone_number, condition: exists}
      match: {field: country, condition: in, value: [US, CA]}

- field tests by name, Gamma C.1 style (several fields and several operators are all ANDed)::

      match:
        source_id: {in: [api_source_1, file_source_1]}
        quality_score: {gte: 0.7}

and the combinators ``all: [...]``, ``any: [...]``, ``not: {...}`` around either.

Subjects: ``source_id``, ``record_id``, ``quality_score`` and ``record_type`` read the envelope
(``record_type`` is the payload's ``type`` field when the envelope has none); ``payload.<path>``
and any other dotted path read the payload. Conditions are compiled once at load, so a bad
operator or regex is a configuration error, never a runtime surprise.

:func:`compile_batch_condition` compiles the same condition for a batch of records (Beta applies
its rules, and Gamma its routes, rule by rule over a batch): the common single tests (``exists``,
``not_exists``, ``equals``, ``not_equals``, ``in``, ``not_in``, ``gt``, ``gte``, ``lt``,
``lte`` on one subject) read the subject's column once and test it in one comprehension, as the
per-record predicate tests each value; anything else calls that predicate record by record.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from dps.core.record import Record, get_path

Predicate = Callable[[Record], bool]
Getter = Callable[[Record], Any]
#: A condition over a batch: one truth value per record, in order.
BatchPredicate = Callable[[Sequence[Record]], list[bool]]

_MISSING = object()
ENVELOPE_SUBJECTS = ("source_id", "record_id", "quality_score", "record_type")
OPERATORS = (
    "exists",
    "not_exists",
    "equals",
    "not_equals",
    "in",
    "not_in",
    "regex",
    "gt",
    "gte",
    "lt",
    "lte",
)
_UNARY = {"exists", "not_exists"}
_COMBINATORS = {"all", "any", "not"}


class ConditionError(ValueError):
    """A condition that cannot compile; ``key`` is the path inside ``match`` where it is wrong."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def subject_getter(path: str) -> Getter:
    """A function reading ``path`` from a record (envelope subjects or payload paths)."""
    if path == "source_id":
        return lambda r: r.source_id
    if path == "record_id":
        return lambda r: r.record_id
    if path == "quality_score":
        return lambda r: r.quality.score if r.quality is not None else _MISSING
    if path == "record_type":
        return lambda r: r.payload.get("type", _MISSING)
    inner = path.removeprefix("payload.")
    if "." not in inner:
        return lambda r: r.payload.get(inner, _MISSING)
    return lambda r: get_path(r.payload, inner, _MISSING)


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConditionError(key, f"{value!r} is not a number; expected a number to compare with.")
    return float(value)


def _compare(op: str, key: str, value: Any, get: Getter) -> Predicate:
    """Compile one ``<op>: <value>`` test on one subject."""
    if op == "exists":
        return lambda r: get(r) not in (_MISSING, None)
    if op == "not_exists":
        return lambda r: get(r) in (_MISSING, None)
    if op == "equals":
        return lambda r: get(r) == value
    if op == "not_equals":
        return lambda r: get(r) != value
    if op in ("in", "not_in"):
        members = _members(key, value)
        if op == "in":
            return lambda r: _member(get(r), members)
        return lambda r: not _member(get(r), members)
    if op == "regex":
        if not isinstance(value, str):
            raise ConditionError(key, f"{value!r} is not a string; expected a regular expression.")
        try:
            pattern = re.compile(value)
        except re.error as exc:
            raise ConditionError(
                key, f"{value!r} is not a valid regular expression: {exc}."
            ) from None
        return lambda r: isinstance(v := get(r), str) and pattern.search(v) is not None
    if op in _NUMERIC:
        test = _numeric_test(op, _number(key, value))
        return lambda r: test(get(r))
    raise ConditionError(
        key, f"{op!r} is not a known condition; expected one of {', '.join(OPERATORS)}."
    )


#: A tuple, not ``int | float``: that expression builds a union object on every evaluation.
NUMBERS: Final = (int, float)
_NUMERIC: Final[dict[str, Callable[[float, float], bool]]] = {
    "gt": float.__gt__,
    "gte": float.__ge__,
    "lt": float.__lt__,
    "lte": float.__le__,
}


def _numeric_test(op: str, bound: float) -> Callable[[Any], bool]:
    """``<op>: bound`` on one value: a number (not a boolean) compared as a float, else False."""
    cmp = _NUMERIC[op]

    def numeric(v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, NUMBERS):
            return False
        return cmp(float(v), bound)

    return numeric


def _members(key: str, value: Any) -> frozenset[Any] | tuple[Any, ...]:
    """The values of an ``in``/``not_in`` test: a set when they are all hashable."""
    if not isinstance(value, list | tuple):
        raise ConditionError(key, f"{value!r} is not a list; expected a list of values.")
    try:
        return frozenset(value)
    except TypeError:
        return tuple(value)


def _member(value: Any, members: frozenset[Any] | tuple[Any, ...]) -> bool:
    try:
        return value in members
    except TypeError:  # unhashable payload value (a list or dict) against a frozenset
        return False


def _all(preds: list[Predicate]) -> Predicate:
    if len(preds) == 1:
        return preds[0]
    return lambda r: all(p(r) for p in preds)


def _any(preds: list[Predicate]) -> Predicate:
    return lambda r: any(p(r) for p in preds)


def _not(pred: Predicate) -> Predicate:
    return lambda r: not pred(r)


def compile_condition(spec: Any, key: str = "match") -> Predicate:
    """Compile a ``match`` mapping (see the module docstring) into a predicate on records.

    An empty or missing match (``None`` or ``{}``) matches every record.
    """
    if spec is None or spec == {}:
        return lambda r: True
    if not isinstance(spec, Mapping):
        raise ConditionError(
            key, f"{spec!r} is not a mapping; expected field tests or all/any/not."
        )
    if "field" in spec or "condition" in spec:
        return _single(spec, key)
    preds: list[Predicate] = []
    for name, body in spec.items():
        sub = f"{key}.{name}"
        if name in ("all", "any"):
            if not isinstance(body, list) or not body:
                raise ConditionError(
                    sub, f"{body!r} is not a list; expected a non-empty list of conditions."
                )
            parts = [compile_condition(item, f"{sub}[{i}]") for i, item in enumerate(body)]
            preds.append(_all(parts) if name == "all" else _any(parts))
        elif name == "not":
            preds.append(_not(compile_condition(body, sub)))
        else:
            preds.append(_field_tests(str(name), body, sub))
    return _all(preds)


def _single(spec: Mapping[str, Any], key: str) -> Predicate:
    unknown = set(spec) - {"field", "condition", "value"}
    if unknown:
        raise ConditionError(
            f"{key}.{sorted(unknown)[0]}", "is not allowed here; expected field, condition, value."
        )
    field = spec.get("field")
    if not isinstance(field, str) or not field:
        raise ConditionError(f"{key}.field", f"{field!r} is not a field path; expected a string.")
    op = spec.get("condition", "exists")
    if op not in OPERATORS:
        raise ConditionError(
            f"{key}.condition",
            f"{op!r} is not a known condition; expected one of {', '.join(OPERATORS)}.",
        )
    if op not in _UNARY and "value" not in spec:
        raise ConditionError(f"{key}.value", f"is required for condition {op!r}.")
    return _compare(op, f"{key}.value", spec.get("value"), subject_getter(field))


def _field_tests(name: str, body: Any, key: str) -> Predicate:
    get = subject_getter(name)
    if not isinstance(body, Mapping):
        # `source_id: api_source_1` is a plain equality test.
        return _compare("equals", key, body, get)
    if not body:
        raise ConditionError(key, "is empty; expected at least one test such as {exists: true}.")
    preds = []
    for op, value in body.items():
        if op in _UNARY:
            unary = _compare(str(op), f"{key}.{op}", None, get)
            preds.append(unary if value is not False else _not(unary))
        else:
            preds.append(_compare(str(op), f"{key}.{op}", value, get))
    return _all(preds)


# -- over a batch -----------------------------------------------------------------------------


def compile_batch_condition(spec: Any, key: str = "match") -> BatchPredicate:
    """:func:`compile_condition` for a batch: ``select(records)`` is ``[matches(r) for r in
    records]``, computed column-wise for the common single tests (see the module docstring).

    Raises :class:`ConditionError` exactly as :func:`compile_condition` does.
    """
    matches = compile_condition(spec, key)
    if spec is None or spec == {}:
        return lambda records: [True] * len(records)
    single = _single_test(spec)
    if single is None:
        return lambda records: [matches(r) for r in records]
    subject, op, value = single
    test = _column_test(op, value)
    if test is None:
        return lambda records: [matches(r) for r in records]
    column = _column(subject)
    return lambda records: test(column(records))


def _single_test(spec: Mapping[str, Any]) -> tuple[str, str, Any] | None:
    """``(subject, operator, value)`` of a condition that is one test, else None."""
    if "field" in spec or "condition" in spec:
        return spec["field"], spec.get("condition", "exists"), spec.get("value")
    if len(spec) != 1:
        return None
    ((name, body),) = spec.items()
    if name in _COMBINATORS:
        return None
    if not isinstance(body, Mapping):
        return str(name), "equals", body
    if len(body) != 1:
        return None
    ((op, value),) = body.items()
    if op in _UNARY:
        # `{exists: false}` is not_exists, as _field_tests negates it.
        flipped = {"exists": "not_exists", "not_exists": "exists"}[op]
        return str(name), (flipped if value is False else str(op)), None
    return str(name), str(op), value


def _column(path: str) -> Callable[[Sequence[Record]], list[Any]]:
    """What :func:`subject_getter` reads, for each record of a batch."""
    if path == "source_id":
        return lambda records: [r.source_id for r in records]
    if path == "record_id":
        return lambda records: [r.record_id for r in records]
    if path == "quality_score":
        return lambda records: [
            r.quality.score if r.quality is not None else _MISSING for r in records
        ]
    field = "type" if path == "record_type" else path.removeprefix("payload.")
    if "." not in field:
        # A top-level payload field (the common case): read in place, no getter per record.
        return lambda records: [r.payload.get(field, _MISSING) for r in records]
    get = subject_getter(path)
    return lambda records: [get(r) for r in records]


def _column_test(op: str, value: Any) -> Callable[[list[Any]], list[bool]] | None:
    """The test of one operator over a column (the expressions of :func:`_compare`), or None
    for the operators tested record by record."""
    if op == "exists":
        return lambda values: [v is not _MISSING and v is not None for v in values]
    if op == "not_exists":
        return lambda values: [v is _MISSING or v is None for v in values]
    if op == "equals":
        return lambda values: [v == value for v in values]
    if op == "not_equals":
        return lambda values: [v != value for v in values]
    if op in ("in", "not_in"):
        members = _members("", value)
        if not isinstance(members, frozenset):
            return None
        negate = op == "not_in"

        def member(values: list[Any]) -> list[bool]:
            try:
                if negate:
                    return [v not in members for v in values]
                return [v in members for v in values]
            except TypeError:  # an unhashable value: _member's answer for each
                return [_member(v, members) is not negate for v in values]

        return member
    if op in _NUMERIC:
        bound = _number("", value)
        cmp, test = _NUMERIC[op], _numeric_test(op, bound)
        # A float (a quality score, a parsed amount) is compared in place; anything else the
        # way one record's test does it.
        return lambda values: [cmp(v, bound) if v.__class__ is float else test(v) for v in values]
    return None
