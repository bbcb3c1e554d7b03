"""Load a CONFIG_DIR (or one of its files) into the typed models, collecting every problem.

The layout (DESIGN.md §4)::

    pipeline.yaml
    alpha/alpha.yaml   alpha/sources/*.yaml   alpha/validation/*.yaml   alpha/schemas/*.json
    beta/beta.yaml     beta/transforms/rules/**/*.yaml   beta/enrichment/*.yaml
                       beta/quality/scoring.yaml         beta/schemas/*.json
    gamma/gamma.yaml   gamma/destinations/*.yaml   gamma/routing/rules/*.yaml
                       gamma/formats/*.yaml        gamma/dlq.yaml

Every file is optional; ``.yml`` works as well as ``.yaml``; ``*_test.yaml`` files beside rules
are rule tests, not rules. :func:`load_config` reads everything, checks each file and then what
only the whole directory can tell (duplicate ids, routes to unknown destinations or from
unauthorized sources, schema files), and raises one :class:`~dps.core.errors.ConfigError` with
every issue, each naming the file (relative to CONFIG_DIR), the key and the line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from dps.config.base import ConfigModel, did_you_mean
from dps.config.documents import Document, KeyPath, parse_yaml
from dps.config.messages import issues_from_error
from dps.config.models import (
    AlphaConfig,
    AlphaSettings,
    BetaConfig,
    BetaSettings,
    DestinationConfig,
    DlqSettings,
    EnrichmentConfig,
    GammaConfig,
    GammaSettings,
    OutputFormat,
    PipelineConfig,
    PipelineSettings,
    QualityScoringConfig,
    RoutingRule,
    RuleConfig,
    ScoringFile,
    SourceConfig,
    ValidationRuleFile,
    classification_allows,
    files_checksum,
)
from dps.core.errors import ConfigError, ConfigIssue

YAML_SUFFIXES = (".yaml", ".yml")
MODULES = ("alpha", "beta", "gamma")


@dataclass(frozen=True)
class FileKind:
    """A kind of configuration file: its model (None: YAML checked, content free) and module."""

    name: str
    title: str
    module: str
    model: type[ConfigModel] | None


KINDS: dict[str, FileKind] = {
    kind.name: kind
    for kind in (
        FileKind("pipeline", "pipeline settings (pipeline.yaml)", "pipeline", PipelineSettings),
        FileKind("alpha", "Alpha settings (alpha.yaml)", "alpha", AlphaSettings),
        FileKind("source", "Alpha source", "alpha", SourceConfig),
        FileKind("validation", "Alpha validation rules", "alpha", ValidationRuleFile),
        FileKind("schema", "JSON Schema", "any", None),
        FileKind("beta", "Beta settings (beta.yaml)", "beta", BetaSettings),
        FileKind("rule", "Beta transformation rule", "beta", RuleConfig),
        FileKind("enrichment", "Beta enrichment source", "beta", EnrichmentConfig),
        FileKind("scoring", "Beta quality scoring (scoring.yaml)", "beta", ScoringFile),
        FileKind("gamma", "Gamma settings (gamma.yaml)", "gamma", GammaSettings),
        FileKind("destination", "Gamma destination", "gamma", DestinationConfig),
        FileKind("route", "Gamma routing rule", "gamma", RoutingRule),
        FileKind("format", "Gamma output format", "gamma", OutputFormat),
        FileKind("dlq", "Gamma DLQ settings (dlq.yaml)", "gamma", DlqSettings),
    )
}

_SETTINGS_KINDS = ("alpha", "beta", "gamma", "pipeline")
_FOLDER_KINDS = {
    "sources": "source",
    "validation": "validation",
    "enrichment": "enrichment",
    "destinations": "destination",
    "formats": "format",
    "schemas": "schema",
}


# -- single files -----------------------------------------------------------------------------


@dataclass
class FileResult:
    """What checking one file found: its kind, its model (when valid) and its issues."""

    file: str
    kind: str | None
    value: Any = None
    issues: list[ConfigIssue] = field(default_factory=list)
    doc: Document | None = None

    @property
    def ok(self) -> bool:
        return not self.issues


def is_rule_test(path: Path) -> bool:
    """``*_test.yaml`` beside rules (under a ``rules`` folder): test cases, not a rule."""
    in_rules = "rules" in (p.name for p in path.absolute().parents)
    return in_rules and path.suffix in YAML_SUFFIXES and path.stem.endswith("_test")


def detect_kind(path: Path, data: Any = None, module: str | None = None) -> str | None:
    """The kind of a file: from where it sits in the layout, else from its keys.

    ``module`` (alpha, beta or gamma) decides between settings files whose keys do not.
    """
    if path.suffix == ".json":
        return "schema"
    stem, parents = path.stem, [p.name for p in path.absolute().parents]
    if stem in _SETTINGS_KINDS or stem == "dlq":
        return stem
    if stem == "scoring" and parents[:1] == ["quality"]:
        return "scoring"
    for i, name in enumerate(parents):
        if name == "rules" and i + 1 < len(parents):
            if parents[i + 1] == "transforms":
                return "rule"
            if parents[i + 1] == "routing":
                return "route"
    if parents and parents[0] in _FOLDER_KINDS:
        return _FOLDER_KINDS[parents[0]]
    return kind_from_content(data, module)


def kind_from_content(data: Any, module: str | None = None) -> str | None:
    """The kind a mapping's keys point to (``source_type``: a source, ...), else None."""
    if not isinstance(data, Mapping):
        return None
    keys = set(data)
    if "quality_scoring" in keys:
        return "scoring"
    if "source_type" in keys:
        return "source"
    if "destination_type" in keys:
        return "destination"
    if "transform" in keys:
        return "rule"
    if "rule_id" in keys:
        # A rule without its ``transform`` or ``destination`` is either kind: the command that
        # asks decides, so that a route missing its destination is told so, not called a rule.
        return "route" if "destination" in keys or module == "gamma" else "rule"
    scores: dict[str, int] = {}
    for name in _SETTINGS_KINDS:
        model = KINDS[name].model
        assert model is not None
        scores[name] = len(keys & set(model.yaml_keys()))
    best = max(scores.values(), default=0)
    if best == 0:
        return module if module in MODULES and not keys else None
    winners = [name for name, score in scores.items() if score == best]
    if module in winners:
        return module
    return winners[0]


def _read(path: Path, display: str, environ: Mapping[str, str]) -> tuple[Document, bytes]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        doc = Document(display, None)
        doc.issues.append(ConfigIssue(display, "", f"cannot be read: {exc.strerror}.", None))
        return doc, b""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        doc = Document(display, None)
        doc.issues.append(ConfigIssue(display, "", f"is not UTF-8 text (byte {exc.start}).", None))
        return doc, raw
    if path.suffix == ".json":
        return _parse_json(text, display), raw
    return parse_yaml(text, display, environ), raw


def _parse_json(text: str, display: str) -> Document:
    doc = Document(display, None)
    try:
        doc.data = json.loads(text)
    except json.JSONDecodeError as exc:
        doc.issues.append(ConfigIssue(display, "", f"is not valid JSON: {exc.msg}.", exc.lineno))
        return doc
    if not isinstance(doc.data, dict):
        doc.issues.append(
            ConfigIssue(display, "", "is not a JSON Schema; expected a JSON object.", 1)
        )
    return doc


def _validate(doc: Document, kind: FileKind, extra: Mapping[str, Any] | None = None) -> Any:
    """Validate ``doc`` against its kind's model; issues go into ``doc.issues``."""
    if doc.data is None:
        return None
    if not isinstance(doc.data, Mapping):
        doc.issues.append(
            ConfigIssue(
                doc.file,
                "",
                f"holds {_a(doc.data)}; expected a mapping of keys to values ({kind.title}).",
                doc.line_of(()),
            )
        )
        return None
    model = kind.model
    if model is None:
        return doc.data
    payload = dict(doc.data)
    for key in sorted(model.yaml_hidden_fields & set(payload)):
        hint = did_you_mean(key, model.yaml_keys())
        tail = f'; did you mean "{hint}"?' if hint and hint != key else "."
        doc.issues.append(doc.issue((key,), f'"{key}" is not a known key{tail}'))
        del payload[key]
    payload.update(extra or {})
    try:
        value = model.model_validate(payload)
    except ValidationError as exc:
        doc.issues.extend(issues_from_error(exc, doc, model))
        return None
    if isinstance(value, ScoringFile):
        return value.quality_scoring
    return value


def _a(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    return "a single value" if value is not None else "nothing"


def check_file(
    path: str | os.PathLike[str],
    kind: str | None = None,
    *,
    module: str | None = None,
    environ: Mapping[str, str] | None = None,
    display: str | None = None,
) -> FileResult:
    """Check one file on its own (the validator commands); never raises for a bad file.

    Cross-file checks need the whole directory (see :func:`load_config`); the one exception is
    a source's ``schema_ref``, resolved against the file's parent's parent (``alpha/``).
    """
    path = Path(path)
    shown = display or str(path)
    env = os.environ if environ is None else environ
    doc, _ = _read(path, shown, env)
    name = kind or detect_kind(path, doc.data, module)
    result = FileResult(shown, name, doc=doc)
    if name is None:
        if doc.ok:
            wanted = ", ".join(k.title for k in KINDS.values())
            doc.issues.append(
                ConfigIssue(
                    shown,
                    "",
                    f"is not a configuration file this command knows; expected one of: {wanted}.",
                    doc.line_of(()),
                )
            )
        result.issues = doc.issues
        return result
    if name not in KINDS:
        raise ValueError(f"{name!r} is not a kind of configuration file.")
    if name == "schema":
        result.value = doc.data if doc.ok else None
    else:
        result.value = _validate(doc, KINDS[name], _file_field(KINDS[name], path))
    if isinstance(result.value, SourceConfig):
        _check_schema(doc, result.value, path.absolute().parent.parent, {})
    result.issues = doc.issues
    if result.issues:
        result.value = None
    return result


def load_file(
    path: str | os.PathLike[str],
    kind: str | None = None,
    *,
    module: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Any:
    """Load one configuration file on its own; raises :class:`ConfigError` listing its issues.

    ``kind`` is one of :data:`KINDS` (detected from the file's place in the layout, else from its
    keys). Returns the model (:class:`SourceConfig`, :class:`RuleConfig`,
    :class:`QualityScoringConfig`, ...), the parsed mapping for kinds without a model.
    """
    result = check_file(path, kind, module=module, environ=environ)
    if result.issues:
        raise ConfigError(result.issues)
    return result.value


def _file_field(kind: FileKind, path: Path) -> dict[str, Any]:
    if kind.model is not None and "file" in kind.model.model_fields:
        return {"file": path.absolute()}
    return {}


def _check_schema(doc: Document, source: SourceConfig, base: Path, seen: dict[Path, str]) -> None:
    """``validation.schema_ref`` must name a readable JSON file."""
    path = source.validation.schema_path(base)
    if path is None:
        return
    key: KeyPath = ("validation", "schema_ref")
    if path not in seen:
        if not path.is_file():
            seen[path] = f"does not exist (looked for {path}); create it or correct the path."
        else:
            try:
                schema = json.loads(path.read_text(encoding="utf-8"))
                seen[path] = "" if isinstance(schema, dict) else "is not a JSON object."
                if not seen[path]:
                    seen[path] = _schema_problem(schema)
            except (OSError, UnicodeDecodeError) as exc:
                seen[path] = f"cannot be read ({path}): {exc}."
            except json.JSONDecodeError as exc:
                seen[path] = f"is not valid JSON ({path}, line {exc.lineno}: {exc.msg})."
    if seen[path]:
        doc.issues.append(doc.issue(key, f'"{source.validation.schema_ref}" {seen[path]}'))


def _schema_problem(schema: dict[str, Any]) -> str:
    """Why ``schema`` does not compile as the checks compile it (draft-07 unless its
    ``$schema`` says otherwise); "" if it does."""
    from dps.core.json_schema import schema_problem

    problem = schema_problem(schema)
    return f"is not a valid JSON Schema (draft-07): {problem}." if problem else ""


# -- the whole directory ----------------------------------------------------------------------


@dataclass
class LoadResult:
    """What loading a CONFIG_DIR found: the config (None when any issue), issues, files read."""

    config: PipelineConfig | None
    issues: list[ConfigIssue]
    files: list[str]


def load_config(
    config_dir: str | os.PathLike[str], environ: Mapping[str, str] | None = None
) -> PipelineConfig:
    """Load and check a whole CONFIG_DIR; raises one :class:`ConfigError` with every issue."""
    result = check_directory(config_dir, environ)
    if result.config is None:
        raise ConfigError(result.issues)
    return result.config


def check_directory(
    config_dir: str | os.PathLike[str], environ: Mapping[str, str] | None = None
) -> LoadResult:
    """Like :func:`load_config`, but returns the issues and the files read instead of raising."""
    loader = _DirectoryLoader(Path(config_dir).absolute(), environ)
    config = loader.load()
    files = sorted(loader.contents_by_name)
    if loader.issues:
        return LoadResult(None, loader.issues, files)
    return LoadResult(config, [], files)


def _yaml_files(folder: Path, recursive: bool = False) -> list[Path]:
    if not folder.is_dir():
        return []
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p
        for p in candidates
        if p.suffix in YAML_SUFFIXES
        and p.is_file()
        and not p.name.startswith(".")
        and not is_rule_test(p)
    )


class _DirectoryLoader:
    def __init__(self, root: Path, environ: Mapping[str, str] | None) -> None:
        self.root = root
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        self.docs: list[Document] = []
        self.contents: dict[Path, bytes] = {}
        self.contents_by_name: dict[str, Path] = {}
        self.extra_issues: list[ConfigIssue] = []

    @property
    def issues(self) -> list[ConfigIssue]:
        found = [issue for doc in self.docs for issue in doc.issues] + self.extra_issues
        return sorted(found, key=lambda i: (i.file, i.line or 0))

    def name(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def read(self, path: Path) -> Document:
        doc, raw = _read(path, self.name(path), self.environ)
        self.docs.append(doc)
        self.contents[path] = raw
        self.contents_by_name[doc.file] = path
        return doc

    def one(self, path: Path, kind: str) -> tuple[Any, Document]:
        doc = self.read(path)
        return _validate(doc, KINDS[kind], _file_field(KINDS[kind], path)), doc

    def settings(self, folder: Path, stem: str, kind: str) -> Any:
        found = [folder / f"{stem}{suffix}" for suffix in YAML_SUFFIXES]
        found = [p for p in found if p.is_file()]
        if len(found) > 1:
            self.extra_issues.append(
                ConfigIssue(
                    self.name(found[1]),
                    "",
                    f"and {found[0].name} both exist; keep one of them.",
                    None,
                )
            )
        if not found:
            return None
        value, _ = self.one(found[0], kind)
        return value

    def load(self) -> PipelineConfig | None:
        if not self.root.is_dir():
            what = "is not a directory" if self.root.exists() else "does not exist"
            self.extra_issues.append(
                ConfigIssue(str(self.root), "", f"{what}; expected a CONFIG_DIR.", None)
            )
            return None
        pipeline = self.settings(self.root, "pipeline", "pipeline") or PipelineSettings()
        alpha = self.load_alpha(self.root / "alpha")
        beta = self.load_beta(self.root / "beta")
        gamma = self.load_gamma(self.root / "gamma", alpha.sources)
        if self.issues:
            return None
        config = PipelineConfig(
            root=self.root, pipeline=pipeline, alpha=alpha, beta=beta, gamma=gamma
        )
        config._checksum = files_checksum(self.root, list(self.contents), self.contents)
        return config

    # -- alpha ------------------------------------------------------------------------------
    def load_alpha(self, folder: Path) -> AlphaConfig:
        settings = self.settings(folder, "alpha", "alpha") or AlphaSettings()
        sources: dict[str, SourceConfig] = {}
        ids = _Ids(self, "source_id", "source")
        schemas: dict[Path, str] = {}
        for path in _yaml_files(folder / "sources", recursive=True):
            source, doc = self.one(path, "source")
            ids.see(doc)
            if isinstance(source, SourceConfig):
                _check_schema(doc, source, folder, schemas)
                if ids.unique(source.source_id, doc):
                    sources[source.source_id] = source
        rule_files: list[ValidationRuleFile] = []
        for path in _yaml_files(folder / "validation", recursive=True):
            rules, doc = self.one(path, "validation")
            if isinstance(rules, ValidationRuleFile):
                rule_files.append(rules)
                for i, source_id in enumerate(rules.applies_to or []):
                    if source_id not in sources:
                        known = ", ".join(sorted(sources)) or "none"
                        doc.issues.append(
                            doc.issue(
                                ("applies_to", i),
                                f'"{source_id}" is not a configured source; known: {known}.',
                            )
                        )
        self.read_schemas(folder / "schemas")
        return AlphaConfig(settings=settings, sources=sources, validation=rule_files)

    def read_schemas(self, folder: Path) -> None:
        if folder.is_dir():
            for path in sorted(folder.rglob("*.json")):
                self.read(path)

    # -- beta -------------------------------------------------------------------------------
    def load_beta(self, folder: Path) -> BetaConfig:
        settings = self.settings(folder, "beta", "beta") or BetaSettings()
        rules: list[RuleConfig] = []
        rule_docs: list[tuple[RuleConfig, Document]] = []
        ids = _Ids(self, "rule_id", "rule")
        for path in _yaml_files(folder / "transforms" / "rules", recursive=True):
            rule, doc = self.one(path, "rule")
            ids.see(doc)
            if isinstance(rule, RuleConfig) and ids.unique(rule.rule_id, doc):
                rules.append(rule)
                rule_docs.append((rule, doc))
        enrichment: dict[str, EnrichmentConfig] = {}
        names = _Ids(self, "name", "enrichment source")
        for path in _yaml_files(folder / "enrichment", recursive=True):
            source, doc = self.one(path, "enrichment")
            names.see(doc)
            if isinstance(source, EnrichmentConfig) and names.unique(source.name, doc):
                enrichment[source.name] = source
        for rule, doc in rule_docs:
            source_name = getattr(rule.transform.config, "source", None)
            if rule.transform.type == "lookup" and source_name not in names.seen:
                known = ", ".join(sorted(names.seen)) or "none"
                doc.issues.append(
                    doc.issue(
                        ("transform", "config", "source"),
                        f'"{source_name}" is not a configured enrichment source '
                        f"(beta/enrichment/*.yaml); known: {known}.",
                    )
                )
        scoring = self.settings(folder / "quality", "scoring", "scoring")
        self.read_schemas(folder / "schemas")
        return BetaConfig(
            settings=settings,
            rules=rules,
            scoring=scoring if isinstance(scoring, QualityScoringConfig) else None,
            enrichment=enrichment,
        )

    # -- gamma ------------------------------------------------------------------------------
    def load_gamma(
        self, folder: Path, sources: Mapping[str, SourceConfig] | None = None
    ) -> GammaConfig:
        settings: GammaSettings | None = self.settings(folder, "gamma", "gamma")
        settings_doc = self.docs[-1] if settings is not None else None
        destinations: dict[str, DestinationConfig] = {}
        dest_ids = _Ids(self, "destination_id", "destination")
        dest_docs: dict[str, Document] = {}
        for path in _yaml_files(folder / "destinations", recursive=True):
            dest, doc = self.one(path, "destination")
            dest_ids.see(doc)
            if isinstance(dest, DestinationConfig) and dest_ids.unique(dest.destination_id, doc):
                destinations[dest.destination_id] = dest
                dest_docs[dest.destination_id] = doc
        routes: list[RoutingRule] = []
        route_ids = _Ids(self, "rule_id", "routing rule")
        route_docs: list[tuple[RoutingRule, Document]] = []
        for path in _yaml_files(folder / "routing" / "rules", recursive=True):
            route, doc = self.one(path, "route")
            route_ids.see(doc)
            if isinstance(route, RoutingRule) and route_ids.unique(route.rule_id, doc):
                routes.append(route)
                route_docs.append((route, doc))
        formats: dict[str, OutputFormat] = {}
        format_ids = _Ids(self, "format_id", "output format")
        for path in _yaml_files(folder / "formats", recursive=True):
            fmt, doc = self.one(path, "format")
            format_ids.see(doc)
            if isinstance(fmt, OutputFormat) and format_ids.unique(fmt.format_id, doc):
                formats[fmt.format_id] = fmt
        self.check_output_formats(destinations, dest_docs, formats, format_ids.seen)
        dlq = self.settings(folder, "dlq", "dlq") or DlqSettings()

        known = set(destinations) | dest_ids.seen
        for route, doc in route_docs:
            self.check_route(route, doc, destinations, known)
            self.check_classification(route, doc, destinations, sources or {})
        if settings is not None and settings_doc is not None:
            destinations = self.apply_overrides(settings, settings_doc, destinations, known)
            self.check_default_destination(settings, settings_doc, destinations, sources or {})
        return GammaConfig(
            settings=settings or GammaSettings(),
            destinations=destinations,
            routes=routes,
            dlq=dlq,
            formats=formats,
        )

    def unknown_destination(self, doc: Document, key: KeyPath, name: str, known: set[str]) -> None:
        if name in known:
            return
        hint = did_you_mean(name, known)
        suggestion = f' Did you mean "{hint}"?' if hint else ""
        listed = ", ".join(sorted(known)) or "none"
        doc.issues.append(
            doc.issue(
                key,
                f'"{name}" is not a known destination; expected a destination_id of '
                f"gamma/destinations/ (known: {listed}).{suggestion}",
            )
        )

    def check_route(
        self,
        route: RoutingRule,
        doc: Document,
        destinations: Mapping[str, DestinationConfig],
        known: set[str],
    ) -> None:
        for index, name in enumerate(route.destinations):
            key: KeyPath = (
                ("destination",)
                if isinstance(route.destination, str)
                else (
                    "destination",
                    index,
                )
            )
            self.unknown_destination(doc, key, name, known)
            dest = destinations.get(name)
            sources = _routed_sources(route.match)
            allowed = dest.authorization.allowed_sources if dest is not None else None
            if dest is None or allowed is None or sources is None:
                continue
            refused = [s for s in sources if s not in allowed]
            if refused:
                doc.issues.append(
                    doc.issue(
                        ("match", "source_id"),
                        f'would send records of {", ".join(refused)} to "{name}", whose '
                        f"authorization.allowed_sources ({', '.join(allowed) or 'none'}) does not "
                        f"include {'it' if len(refused) == 1 else 'them'}; remove "
                        f"{'it' if len(refused) == 1 else 'them'} from the match or allow "
                        f"{'it' if len(refused) == 1 else 'them'} in {self.name(dest.file)}.",
                    )
                )

    def check_output_formats(
        self,
        destinations: Mapping[str, DestinationConfig],
        docs: Mapping[str, Document],
        formats: Mapping[str, OutputFormat],
        seen: set[str],
    ) -> None:
        """Every ``output_format`` names a format; database destinations use column_mapping."""
        for dest in destinations.values():
            name = dest.output_format
            if name is None:
                continue
            doc = docs[dest.destination_id]
            if dest.destination_type == "database":
                doc.issues.append(
                    doc.issue(
                        ("output_format",),
                        "is not used by database destinations; map record fields to columns "
                        "with format.column_mapping instead.",
                    )
                )
            elif name not in formats and name not in seen:
                hint = did_you_mean(name, set(formats))
                suggestion = f' Did you mean "{hint}"?' if hint else ""
                doc.issues.append(
                    doc.issue(
                        ("output_format",),
                        f'"{name}" is not a known output format; expected a format_id of '
                        f"gamma/formats/ (known: {', '.join(sorted(formats)) or 'none'})."
                        f"{suggestion}",
                    )
                )

    def check_classification(
        self,
        route: RoutingRule,
        doc: Document,
        destinations: Mapping[str, DestinationConfig],
        sources: Mapping[str, SourceConfig],
    ) -> None:
        """A route may not send a source's data to a less classified destination.

        A route restricted by ``source_id`` is checked against those sources; one that is not
        could carry any configured source's data, so it is checked against all of them.
        """
        routed = _routed_sources(route.match)
        candidates = [s for s in (routed if routed is not None else sources) if s in sources]
        for name in route.destinations:
            dest = destinations.get(name)
            if dest is None:
                continue
            level = dest.authorization.data_classification
            refused = [
                f"{s} ({sources[s].data_classification})"
                for s in candidates
                if not classification_allows(level, sources[s].data_classification)
            ]
            if refused:
                hint = (
                    "restrict the match's source_id"
                    if routed is None
                    else "remove them from the match"
                )
                doc.issues.append(
                    doc.issue(
                        ("match", "source_id") if routed is not None else ("destination",),
                        f'would send data of {", ".join(refused)} to "{name}", whose '
                        f"authorization.data_classification is {level} (order: public < "
                        f"internal < confidential < restricted); {hint}, or raise the "
                        f"destination's classification in {self.name(dest.file)}.",
                    )
                )

    def check_default_destination(
        self,
        settings: GammaSettings,
        doc: Document,
        destinations: Mapping[str, DestinationConfig],
        sources: Mapping[str, SourceConfig],
    ) -> None:
        """The default destination receives whatever no rule routes, from any configured source:
        every source must be allowed there, and its data classification must allow them all."""
        dest = destinations.get(settings.default_destination or "")
        if dest is None or not sources:
            return
        allowed = dest.authorization.allowed_sources
        level = dest.authorization.data_classification
        refused = [
            s
            for s, source in sources.items()
            if (allowed is not None and s not in allowed)
            or not classification_allows(level, source.data_classification)
        ]
        if refused:
            doc.issues.append(
                doc.issue(
                    ("default_destination",),
                    f'"{dest.destination_id}" would receive the unrouted records of '
                    f"{', '.join(sorted(refused))}, which its authorization does not allow "
                    f"(allowed_sources, or data_classification {level}); allow them in "
                    f"{self.name(dest.file)}, or choose another default destination.",
                )
            )

    def apply_overrides(
        self,
        settings: GammaSettings,
        doc: Document,
        destinations: dict[str, DestinationConfig],
        known: set[str],
    ) -> dict[str, DestinationConfig]:
        if settings.default_destination is not None:
            self.unknown_destination(
                doc, ("default_destination",), settings.default_destination, known
            )
        merged = dict(destinations)
        for name, override in settings.destinations.items():
            self.unknown_destination(doc, ("destinations", name), name, known)
            if name in merged:
                update = override.model_dump(exclude_none=True)
                merged[name] = merged[name].model_copy(update=update)
        return merged


def _routed_sources(match: Mapping[str, Any] | None) -> list[str] | None:
    """The source ids a route's match restricts to (``source_id: {in: [...]}``), else None."""
    if not match or "source_id" not in match:
        return None
    spec = match["source_id"]
    if isinstance(spec, str):
        return [spec]
    if isinstance(spec, Mapping):
        if isinstance(spec.get("in"), list):
            return [str(s) for s in spec["in"]]
        if isinstance(spec.get("equals"), str):
            return [spec["equals"]]
    return None


class _Ids:
    """Duplicate ids across the files of one folder; both files are named."""

    def __init__(self, loader: _DirectoryLoader, key: str, noun: str) -> None:
        self.loader = loader
        self.key = key
        self.noun = noun
        self.first: dict[str, Document] = {}
        self.seen: set[str] = set()

    def see(self, doc: Document) -> None:
        """Remember every id written, even in a file that failed to load: a route to a broken
        destination is reported once, at the destination, not again as "unknown"."""
        value = doc.data.get(self.key) if isinstance(doc.data, Mapping) else None
        if isinstance(value, str):
            self.seen.add(value)

    def unique(self, value: str, doc: Document) -> bool:
        first = self.first.get(value)
        if first is None:
            self.first[value] = doc
            return True
        line = first.line_of((self.key,))
        where = f"{first.file}:{line}" if line else first.file
        doc.issues.append(
            doc.issue(
                (self.key,),
                f'"{value}" is already the {self.key} of {where}; expected each {self.noun} '
                "to have its own id (rename one, or remove one of the files).",
            )
        )
        return False


def iter_config_files(paths: Iterable[Path]) -> list[Path]:
    """The YAML files under each path (files as given), without rule tests, sorted per path."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(_yaml_files(path, recursive=True))
        else:
            out.append(path)
    return out
