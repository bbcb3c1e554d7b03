"""The schema registry: named, versioned output schemas, checked after the rules.

Layout: ``beta/schemas/<name>/v<N>.json``, one JSON Schema (draft-07) per version. The schemas
of ``<name>`` apply to records whose type (``record_type``: the payload's ``type`` field) is
``<name>``, or the type given by the top-level keyword ``"x-dps": {"record_type": ...}``. The
plain files directly in ``beta/schemas/`` are not versioned output schemas: they are what the
quality scoring's ``schema_ref`` names, and the registry leaves them alone.

Compatibility mode (the manual's Beta rolling update): several versions of a schema are loaded at
once, and each record is checked against one of them, chosen by its characteristics:

1. a record carrying ``schema_version`` (payload field) gets that version; a version that is not
   loaded sends it to the DLQ (``schema_version_unknown``);
2. otherwise, the highest version whose ``"x-dps": {"match": <condition>}`` matches the record
   (the condition language of rules and routes);
3. otherwise, the highest version without a ``match`` (the default);
4. no version applies: DLQ (``schema_negotiation_failed``).

A record that does not meet its version goes to the Beta DLQ as ``schema_violation`` with the
schema, the version and what is wrong; one that does carries ``schema:<name>/v<N>`` in its
lineage. Records of a type without schemas are not checked.

The registry is built at start and on reload; ``POST /admin/schemas/sync`` (the
``beta_schema_sync`` job) reads the folder again and swaps the registry atomically, keeping the
old one if any file is wrong. Validators are compiled once (jsonschema-rs, see
:mod:`dps.core.json_schema`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from dps.core.conditions import ConditionError, Predicate, compile_condition
from dps.core.errors import ConfigError, ConfigIssue
from dps.core.json_schema import Schema, json_path, schema_problem
from dps.core.record import Record

_VERSION_FILE: Final = re.compile(r"^v([0-9]{1,6})\.json$")
VERSION_FIELD: Final = "schema_version"


@dataclass(frozen=True, slots=True)
class SchemaVersion:
    name: str
    version: int
    record_type: str
    file: Path
    match: Predicate | None
    validate: Schema

    @property
    def ref(self) -> str:
        return f"{self.name}/v{self.version}"


@dataclass(frozen=True, slots=True)
class Check:
    """The schema check of one record: ``ok``, or the DLQ reason and message."""

    ok: bool
    reason: str = ""
    message: str = ""
    ref: str | None = None


_UNCHECKED: Final = Check(True)


class SchemaRegistry:
    """The versioned schemas of ``beta/schemas/`` (see the module docstring)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        #: record type -> its versions, highest first.
        self.by_type: dict[str, list[SchemaVersion]] = {}
        issues: list[ConfigIssue] = []
        if folder.is_dir():
            for directory in sorted(p for p in folder.iterdir() if p.is_dir()):
                for path in sorted(directory.iterdir()):
                    version = self._load(directory.name, path, issues)
                    if version is None:
                        continue
                    others = self.by_type.setdefault(version.record_type, [])
                    if others and others[0].name != version.name:
                        issues.append(
                            ConfigIssue(
                                f"beta/schemas/{version.name}/{path.name}",
                                "x-dps.record_type",
                                f'"{version.record_type}" already has the schemas of '
                                f"beta/schemas/{others[0].name}/; expected one schema name "
                                "per record type.",
                                None,
                            )
                        )
                        continue
                    others.append(version)
        if issues:
            raise ConfigError(issues)
        for versions in self.by_type.values():
            versions.sort(key=lambda v: -v.version)

    def _load(self, name: str, path: Path, issues: list[ConfigIssue]) -> SchemaVersion | None:
        shown = f"beta/schemas/{name}/{path.name}"
        found = _VERSION_FILE.match(path.name)
        if not found:
            if path.suffix == ".json":
                issues.append(
                    ConfigIssue(shown, "", "is not named v<N>.json; expected e.g. v1.json.", None)
                )
            return None
        try:
            schema = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            issues.append(ConfigIssue(shown, "", f"cannot be read as JSON: {exc}.", None))
            return None
        if not isinstance(schema, dict):
            issues.append(ConfigIssue(shown, "", "is not a JSON object; expected a schema.", None))
            return None
        meta = schema.get("x-dps", {})
        if not isinstance(meta, dict) or set(meta) - {"record_type", "match"}:
            issues.append(
                ConfigIssue(
                    shown, "x-dps", "expected an object with record_type and/or match.", None
                )
            )
            return None
        match: Predicate | None = None
        if meta.get("match") is not None:
            try:
                match = compile_condition(meta["match"])
            except ConditionError as exc:
                issues.append(ConfigIssue(shown, f"x-dps.{exc.key}", str(exc), None))
                return None
        body = {k: v for k, v in schema.items() if k != "x-dps"}
        problem = schema_problem(body)
        if problem:
            issues.append(ConfigIssue(shown, "", f"is not a valid JSON Schema: {problem}.", None))
            return None
        validate = Schema(body)
        record_type = meta.get("record_type", name)
        return SchemaVersion(name, int(found.group(1)), str(record_type), path, match, validate)

    def check(self, record: Record) -> Check:
        """Choose the record's version and check the payload against it."""
        record_type = record.payload.get("type")
        versions = self.by_type.get(record_type) if isinstance(record_type, str) else None
        if not versions:
            return _UNCHECKED
        chosen = self.negotiate(record, versions)
        if isinstance(chosen, Check):
            return chosen
        problem = chosen.validate.problem(record.payload)
        if problem is not None:
            where, message = problem
            return Check(
                False,
                "schema_violation",
                f"The record does not meet schema {chosen.ref}: {json_path(where)}: {message}.",
                chosen.ref,
            )
        record.touched("beta", f"schema:{chosen.ref}")
        return Check(True, ref=chosen.ref)

    def negotiate(self, record: Record, versions: list[SchemaVersion]) -> SchemaVersion | Check:
        asked = record.payload.get(VERSION_FIELD)
        if asked is not None:
            for version in versions:
                if str(asked) in (str(version.version), f"v{version.version}"):
                    return version
            loaded = ", ".join(str(v.version) for v in versions)
            return Check(
                False,
                "schema_version_unknown",
                f"The record asks for {versions[0].name} version {asked}, which is not loaded "
                f"(loaded: {loaded}).",
            )
        for version in versions:
            if version.match is not None and version.match(record):
                return version
        for version in versions:
            if version.match is None:
                return version
        return Check(
            False,
            "schema_negotiation_failed",
            f"No version of {versions[0].name} applies to the record: none has a match it "
            "meets, and none is a default (without match).",
        )

    def describe(self) -> dict[str, Any]:
        """What ``/admin/schemas`` shows."""
        return {
            "folder": str(self.folder),
            "schemas": {
                versions[0].name: {
                    "record_type": record_type,
                    "versions": [v.version for v in versions],
                    "default_version": next((v.version for v in versions if v.match is None), None),
                    "negotiated_versions": [v.version for v in versions if v.match is not None],
                }
                for record_type, versions in sorted(self.by_type.items())
            },
        }
