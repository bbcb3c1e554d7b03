"""YAML documents that remember the line of every key, with ``${VAR}`` interpolation.

Why this is written by hand on top of PyYAML's composer: neither PyYAML's constructors nor
pydantic keep source positions, and an error that names a line is what lets an operator fix a
file in seconds (house rule 6). PyYAML's node graph carries a mark on every node, so we build the
Python values from the nodes ourselves and keep ``key path -> line`` on the side. Doing it on
nodes also lets us:

- refuse duplicate keys in one mapping (PyYAML silently keeps the last one);
- interpolate ``${VAR}`` / ``${VAR:-default}`` scalar by scalar, so line numbers stay right and an
  unset variable is reported at the key that uses it;
- resolve only YAML 1.2 booleans (``true``/``false``): ``country: NO`` stays the string ``"NO"``,
  and dates stay strings (a typed field still accepts ``yes``/``on`` through pydantic).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from dps.core.errors import ConfigIssue

#: A path into a document: mapping keys and sequence indexes.
KeyPath = tuple[str | int, ...]

_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_BOOL = "tag:yaml.org,2002:bool"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_MAX_NODES = 1_000_000  # bounds alias expansion ("billion laughs")


class _Loader(_BaseLoader):  # type: ignore[misc,valid-type]
    """SafeLoader with YAML 1.2 booleans and no implicit timestamps."""

    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL, _TIMESTAMP)]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


_Loader.add_implicit_resolver(
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)

# ``$${`` is a literal ``${``; ``${NAME}`` and ``${NAME:-default}`` are interpolated. Anything else
# that merely starts with ``${`` (a regular expression, say) is left alone.
_VARIABLE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass
class Document:
    """One parsed file: its values, the line of each key, and the problems found reading it.

    ``data`` is ``None`` when the file could not be parsed at all.
    """

    file: str
    data: Any
    lines: dict[KeyPath, int] = field(default_factory=dict)
    issues: list[ConfigIssue] = field(default_factory=list)
    #: Values holding an unset ``${VAR}``: already reported, so their type errors are not.
    unresolved: set[KeyPath] = field(default_factory=set)

    def line_of(self, path: KeyPath) -> int | None:
        """The line of ``path``, or of its nearest parent that has one."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return None

    def issue(self, path: KeyPath, message: str) -> ConfigIssue:
        """An issue at ``path`` of this document, located at its line."""
        return ConfigIssue(self.file, format_path(path), message, self.line_of(path))

    @property
    def ok(self) -> bool:
        return not self.issues


def format_path(path: KeyPath) -> str:
    """``("validation", "required_fields", 0)`` -> ``validation.required_fields[0]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def interpolate(value: str, environ: Mapping[str, str]) -> tuple[str, list[str]]:
    """Replace ``${VAR}`` and ``${VAR:-default}``; also return the variables that are unset.

    As in a shell, the default is used when the variable is unset or empty.
    """
    missing: list[str] = []

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        name, default = match.group(1), match.group(2)
        current = environ.get(name)
        if current:
            return current
        if default is not None:
            return default
        if current is None:
            missing.append(name)
            return match.group(0)
        return current

    return _VARIABLE.sub(replace, value), missing


def parse_yaml(text: str, file: str, environ: Mapping[str, str] | None = None) -> Document:
    """Parse one YAML document; problems become issues of the returned :class:`Document`.

    An empty document is an empty mapping, so a file holding only comments means "defaults".
    """
    env = os.environ if environ is None else environ
    doc = Document(file=file, data=None)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            doc.data = {}
            doc.lines[()] = 1
            return doc
        builder = _Builder(loader, doc, env)
        doc.lines[()] = node.start_mark.line + 1
        doc.data = builder.build(node, ())
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or str(exc)
        context = f" ({exc.context})" if exc.context else ""
        doc.issues.append(ConfigIssue(file, "", f"is not valid YAML: {problem}{context}.", line))
        doc.data = None
    except yaml.YAMLError as exc:
        doc.issues.append(ConfigIssue(file, "", f"is not valid YAML: {exc}.", None))
        doc.data = None
    except _TooLarge:
        doc.issues.append(
            ConfigIssue(file, "", "expands to too many values (aliases nested too deep).", None)
        )
        doc.data = None
    finally:
        loader.dispose()
    return doc


class _TooLarge(Exception):
    pass


class _Builder:
    """Builds Python values from composed nodes, recording lines and checking keys."""

    def __init__(self, loader: Any, doc: Document, environ: Mapping[str, str]) -> None:
        self.loader = loader
        self.doc = doc
        self.environ = environ
        self.nodes = 0
        self.stack: set[int] = set()

    def build(self, node: yaml.Node, path: KeyPath) -> Any:
        self.nodes += 1
        if self.nodes > _MAX_NODES:
            raise _TooLarge
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, path)
        if id(node) in self.stack:
            self.doc.issues.append(self.doc.issue(path, "refers to itself through an alias."))
            return None
        self.stack.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path)
            if isinstance(node, yaml.SequenceNode):
                items = []
                for index, item in enumerate(node.value):
                    self.doc.lines.setdefault((*path, index), item.start_mark.line + 1)
                    items.append(self.build(item, (*path, index)))
                return items
        finally:
            self.stack.discard(id(node))
        raise yaml.constructor.ConstructorError(
            None, None, f"unexpected node {type(node).__name__}", node.start_mark
        )

    def _mapping(self, node: yaml.MappingNode, path: KeyPath) -> dict[str, Any]:
        self.loader.flatten_mapping(node)  # resolves "<<: *anchor" merge keys
        result: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                self.doc.issues.append(
                    ConfigIssue(
                        self.doc.file,
                        format_path(path),
                        "has a key that is a list or mapping; keys must be plain names.",
                        line,
                    )
                )
                continue
            key = str(key_node.value)
            key_path = (*path, key)
            if key in first_line:
                self.doc.issues.append(
                    ConfigIssue(
                        self.doc.file,
                        format_path(key_path),
                        f"appears twice in the same mapping (first on line {first_line[key]}); "
                        "remove one of them.",
                        line,
                    )
                )
            else:
                first_line[key] = line
            self.doc.lines[key_path] = line
            result[key] = self.build(value_node, key_path)
        return result

    def _scalar(self, node: yaml.ScalarNode, path: KeyPath) -> Any:
        value = self.loader.construct_object(node, deep=True)
        if not isinstance(value, str) or "$" not in value:
            return value
        new, missing = interpolate(value, self.environ)
        if missing:
            self.doc.unresolved.add(path)
        for name in missing:
            self.doc.issues.append(
                ConfigIssue(
                    self.doc.file,
                    format_path(path),
                    f"${{{name}}} is not set: set the environment variable {name}, "
                    f"or give a default with ${{{name}:-value}}.",
                    node.start_mark.line + 1,
                )
            )
        if new == value or node.style not in (None, ""):
            return new
        # An unquoted scalar is typed after interpolation: ``${BATCH:-500}`` is the integer 500.
        tag = self.loader.resolve(yaml.ScalarNode, new, (True, False))
        return self.loader.construct_object(yaml.ScalarNode(tag, new), deep=True)
