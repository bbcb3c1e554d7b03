"""Pydantic's validation errors, rewritten as issues an operator can act on.

pydantic says ``Input should be greater than or equal to 1`` about ``('spec', 'connection',
'port')``; the operator needs ``gamma/destinations/warehouse.yaml:12: connection.port: 0 is not
allowed; expected an integer from 1 to 65535.`` This module

- maps an error's ``loc`` onto the document (dropping union tags and internal fields such as a
  destination's ``spec``) to get the key path and, from the document, its line;
- finds the model field at that key, and says what it expects from its type and constraints,
  whatever the error type (a type error and a range error read the same);
- turns unknown keys into a "did you mean" over the keys that model accepts.
"""

from __future__ import annotations

import json
import types
import typing
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from dps.config.base import CONFIG_ERROR, ConfigModel, did_you_mean
from dps.config.documents import Document, KeyPath, format_path
from dps.config.secrets import SecretRef
from dps.core.errors import ConfigIssue

_SHOW_KEYS_MAX = 14


def show(value: Any) -> str:
    """A value as the operator wrote it: ``-5``, ``"abc"``, ``true``, ``a mapping``."""
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 60 else text[:56] + '..."'
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# -- the model field at an error's location -------------------------------------------------


class _Target:
    """What we know about the value an error is about."""

    def __init__(self) -> None:
        self.annotation: Any = None
        self.field: FieldInfo | None = None
        self.parent: type[BaseModel] | None = None  # the model holding the last key


def _unwrap_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


def _locate(model: type[BaseModel], data: Any, loc: tuple[str | int, ...]) -> _Target:
    """Walk ``model``'s types (and the data, to pick plugin subclasses) along ``loc``."""
    target = _Target()
    current: Any = model
    value: Any = data
    for element in loc:
        current = _unwrap_optional(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            if issubclass(current, ConfigModel):
                current = current.specialize(value)
            target.parent = current
            info = _field(current, element)
            if info is None:
                target.field, target.annotation = None, None
                current = None
                continue
            target.field, target.annotation = info, info.annotation
            current = info.annotation
            value = value.get(element) if isinstance(value, Mapping) else None
            continue
        origin = get_origin(current)
        args = get_args(current)
        if origin in (dict, Mapping) and len(args) == 2:
            target.field = None
            target.annotation = args[0] if element == "[key]" else args[1]
            current = target.annotation
            target.parent = None
        elif origin is list and args:
            target.field, target.annotation, target.parent = None, args[0], None
            current = args[0]
        elif origin in (Union, types.UnionType):
            continue  # a union tag such as 'str' or 'list[str]'
        else:
            current = None
        value = value.get(element) if isinstance(value, Mapping) else None
        if isinstance(element, int) and isinstance(value, list) and element < len(value):
            value = value[element]
    return target


def _field(model: type[BaseModel], key: Any) -> FieldInfo | None:
    if not isinstance(key, str):
        return None
    if key in model.model_fields:
        return model.model_fields[key]
    for info in model.model_fields.values():
        if info.alias == key:
            return info
    return None


# -- what a type expects ----------------------------------------------------------------------

_PLURALS = {
    "a string": "strings",
    "an integer": "integers",
    "a number": "numbers",
    "a mapping": "mappings",
    "true or false": "booleans",
}


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def expected(annotation: Any, field: FieldInfo | None = None) -> str:
    """What a value of ``annotation`` with ``field``'s constraints looks like, in words."""
    annotation = _unwrap_optional(annotation)
    origin = get_origin(annotation)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in get_args(annotation))
    if origin in (Union, types.UnionType):
        parts = [expected(a) for a in get_args(annotation) if a is not type(None)]
        return " or ".join(dict.fromkeys(parts))
    if origin is typing.Annotated:
        return expected(get_args(annotation)[0], field)
    if origin is list:
        args = get_args(annotation)
        inner = expected(args[0]) if args else ""
        if inner.startswith("one of "):
            return f"a list, each {inner}"
        return f"a list of {_PLURALS[inner]}" if inner in _PLURALS else "a list"
    if origin in (dict, Mapping) and get_origin(get_args(annotation)[0]) is Literal:
        keys, values = (expected(a) for a in get_args(annotation))
        return f"a mapping of {keys.removeprefix('one of ')} to {_PLURALS.get(values, values)}"
    if origin in (dict, Mapping) or annotation is dict:
        return "a mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "a mapping"
    if annotation is bool:
        return "true or false"
    if annotation is SecretRef:
        return "a secret reference (env:NAME, file:/path or vault:secret/path/key)"
    if annotation is str:
        return "a string"
    if annotation is Path:
        return "a path"
    if annotation in (int, float):
        noun = "an integer" if annotation is int else "a number"
        return noun + _bounds(field)
    return "a valid value"


def _bounds(field: FieldInfo | None) -> str:
    if field is None:
        return ""
    low: Any = None
    high: Any = None
    low_strict = high_strict = False
    for meta in field.metadata:
        if isinstance(meta, annotated_types.Ge):
            low = meta.ge
        elif isinstance(meta, annotated_types.Gt):
            low, low_strict = meta.gt, True
        elif isinstance(meta, annotated_types.Le):
            high = meta.le
        elif isinstance(meta, annotated_types.Lt):
            high, high_strict = meta.lt, True
    if low is not None and high is not None and not low_strict and not high_strict:
        return f" from {_number(low)} to {_number(high)}"
    parts = []
    if low is not None:
        parts.append(f"greater than {_number(low)}" if low_strict else f"at least {_number(low)}")
    if high is not None:
        parts.append(f"less than {_number(high)}" if high_strict else f"at most {_number(high)}")
    if len(parts) == 1 and parts[0].startswith("at "):
        return f" of {parts[0]}"
    return (" " + " and ".join(parts)) if parts else ""


_TYPE_WORDS = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}
_RANGE_WORDS = {
    "greater_than": "greater than",
    "greater_than_equal": "at least",
    "less_than": "less than",
    "less_than_equal": "at most",
}


def _fallback_expected(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind in _TYPE_WORDS:
        return _TYPE_WORDS[kind]
    if kind in _RANGE_WORDS:
        bound = next(iter(ctx.values()), "?")
        return f"a number {_RANGE_WORDS[kind]} {_number(bound)}"
    if kind == "literal_error":
        return "one of " + str(ctx.get("expected", "")).replace("'", "").replace(" or ", ", ")
    return ""


# -- errors to issues -------------------------------------------------------------------------


def _split_at(at: str) -> list[str | int]:
    parts: list[str | int] = []
    for token in at.replace("[", ".[").split("."):
        if not token:
            continue
        if token.startswith("[") and token.endswith("]") and token[1:-1].isdigit():
            parts.append(int(token[1:-1]))
        else:
            parts.append(token)
    return parts


def data_path(data: Any, loc: tuple[str | int, ...], missing_last: bool = False) -> KeyPath:
    """The part of ``loc`` that names keys of the document.

    Elements that are not in the data are union tags or internal fields and are dropped, except
    the last one when ``missing_last`` (the error is about a missing key). A dotted name is
    matched greedily (``payload.customer.id`` can be one key of a ``match``).
    """
    path: list[str | int] = []
    current = data
    elements = [e for e in loc if e != "[key]"]
    i = 0
    while i < len(elements):
        element = elements[i]
        if isinstance(current, Mapping):
            found = False
            for j in range(len(elements), i, -1):
                chunk = elements[i:j]
                if all(isinstance(c, str) for c in chunk):
                    name = ".".join(str(c) for c in chunk)
                    if name in current:
                        path.append(name)
                        current = current[name]
                        i = j
                        found = True
                        break
            if found:
                continue
        elif isinstance(current, list) and isinstance(element, int) and 0 <= element < len(current):
            path.append(element)
            current = current[element]
            i += 1
            continue
        if missing_last and i == len(elements) - 1 and isinstance(current, Mapping):
            path.append(element)
        i += 1  # a union tag or an internal field: not in the document
    return tuple(path)


def _message(error: Mapping[str, Any], target: _Target) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    value = error.get("input")
    if kind == CONFIG_ERROR:
        return str(ctx.get("message", error["msg"]))
    if kind == "missing":
        description = target.field.description if target.field is not None else None
        return f"is required. {description.rstrip('.')}." if description else "is required."
    if kind == "extra_forbidden":
        return _unknown_key(error, target)
    if kind in ("value_error", "assertion_error"):
        text = str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        return text.rstrip(".") + "."
    if kind in ("too_short", "too_long"):
        bound = ctx.get("min_length" if kind == "too_short" else "max_length")
        word = "at least" if kind == "too_short" else "at most"
        return f"has {ctx.get('actual_length')} items; expected {word} {bound}."
    if kind in _TYPE_WORDS or kind in _RANGE_WORDS or kind == "literal_error":
        wanted = expected(target.annotation, target.field) if target.annotation else ""
        if not wanted or wanted == "a valid value":
            wanted = _fallback_expected(error)
        return f"{show(value)} is not allowed; expected {wanted}."
    return f"{show(value)} is not allowed: {str(error['msg']).rstrip('.')}."


def _unknown_key(error: Mapping[str, Any], target: _Target) -> str:
    key = str(error["loc"][-1])
    parent = target.parent
    keys: list[str] = []
    if parent is not None:
        keys = parent.yaml_keys() if issubclass(parent, ConfigModel) else list(parent.model_fields)
    hint = did_you_mean(key, keys)
    text = f'"{key}" is not a known key'
    text += f'; did you mean "{hint}"?' if hint else "."
    if keys and len(keys) <= _SHOW_KEYS_MAX:
        text += f" Allowed here: {', '.join(keys)}."
    return text


def issues_from_error(
    exc: ValidationError, doc: Document, model: type[BaseModel], prefix: KeyPath = ()
) -> list[ConfigIssue]:
    """One issue per problem of ``exc`` (raised validating ``doc.data`` at ``prefix``).

    Several errors about the same key (the branches of a union) become one issue.
    """
    root = doc.data
    for part in prefix:
        root = root.get(part) if isinstance(root, Mapping) else None
    grouped: dict[KeyPath, list[tuple[Mapping[str, Any], _Target]]] = defaultdict(list)
    for error in exc.errors():
        loc = tuple(error["loc"])
        ctx = error.get("ctx") or {}
        if error["type"] == CONFIG_ERROR and ctx.get("at"):
            loc = loc + tuple(_split_at(str(ctx["at"])))
        at_key = error["type"] == "missing" or (error["type"] == CONFIG_ERROR and ctx.get("at"))
        path = prefix + data_path(root, loc, missing_last=bool(at_key))
        if path in doc.unresolved:
            continue  # already reported: an unset ${VAR}
        target = _locate(model, root, tuple(e for e in loc if e != "[key]"))
        grouped[path].append((error, target))
    issues: list[ConfigIssue] = []
    for path, errors in grouped.items():
        line = doc.line_of(path)
        messages = list(dict.fromkeys(_message(e, t) for e, t in errors))
        if len(messages) > 1 and all(" is not allowed; expected " in m for m in messages):
            head = messages[0].split(" is not allowed; expected ")[0]
            wants = [m.split(" is not allowed; expected ", 1)[1].rstrip(".") for m in messages]
            messages = [f"{head} is not allowed; expected {' or '.join(dict.fromkeys(wants))}."]
        for message in messages:
            issues.append(ConfigIssue(doc.file, format_path(path), message, line))
    return issues
