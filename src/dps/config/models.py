"""The typed configuration of a pipeline: one model per file of the CONFIG_DIR layout.

Each model is the single source of validation, defaults and the generated reference
(``docs/configuration-reference.md``): every field has a description. The formats of the
manual's runbooks (A.1 sources, B.1 rules, B.3 scoring, C.1 destinations and routes, the H
settings snippets) load verbatim.

Plugin sections (a source's ``connection``, a rule's ``transform.config``, a destination's
``connection`` and ``format``) are validated by the plugin's own ``Config`` model: validating a
:class:`SourceConfig`, :class:`TransformSpec` or :class:`DestinationConfig` returns an instance
of a subclass whose plugin field has that model's type, so pydantic reports a bad plugin setting
at its own key (``connection.timeout_ms``) like any other.
"""

from __future__ import annotations

import builtins
import functools
import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, cast, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    PrivateAttr,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from dps.config.base import ConfigModel, SpecializedModel, config_error, plugin_name
from dps.config.secrets import REDACTED, SecretRef
from dps.core import registry
from dps.core.conditions import ConditionError, compile_condition

_IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _identifier(value: str) -> str:
    if not _IDENTIFIER.match(value) or len(value) > 128:
        raise config_error(
            f'"{value}" is not a valid id; expected letters, digits, "_", "-" or "." '
            "(at most 128, starting with a letter or digit), since ids appear in URLs and metrics."
        )
    return value


#: An id operators type in URLs and see in metric labels: ``new_api_source``, ``TRX_042``.
Identifier = Annotated[str, AfterValidator(_identifier)]


def _condition(spec: dict[str, Any] | None) -> dict[str, Any] | None:
    try:
        compile_condition(spec)
    except ConditionError as exc:
        at = exc.key.removeprefix("match").removeprefix(".")
        raise config_error(str(exc), at=at) from None
    return spec


# --------------------------------------------------------------------------------------------
# pipeline.yaml
# --------------------------------------------------------------------------------------------


@functools.cache
def _with_backend_fields(base: type[ConfigModel], config: type[BaseModel]) -> type[ConfigModel]:
    """``base`` plus the fields of a backend's own ``Config`` that ``base`` does not have.

    ``transport:`` and ``state:`` hold the common keys and, beside them, the chosen backend's
    own (``busy_timeout_ms`` of SQLite, ``replicas`` of NATS, ...): the backend's model is the one
    source of those, so they are validated, documented and passed on without being listed here.
    """
    taken = set(base.model_fields) | {f.alias for f in base.model_fields.values() if f.alias}
    extra: dict[str, Any] = {
        name: (info.annotation, info)
        for name, info in config.model_fields.items()
        if name not in taken and (info.alias or name) not in taken
    }
    model = create_model(
        f"{base.__name__}[{config.__name__}]", __base__=base, __module__=__name__, **extra
    )
    return cast(type[ConfigModel], model)


class _BackendSection(SpecializedModel):
    """A ``pipeline.yaml`` section whose ``backend`` key picks a registered backend."""

    #: The registry kind of the backends ("queues", "states").
    backend_kind: ClassVar[str] = ""

    @classmethod
    def specialize(cls, data: Any) -> type[ConfigModel]:
        if cls.__base__ is not _BackendSection or not isinstance(data, Mapping):
            return cls
        name = data.get("backend", cls.model_fields["backend"].default)
        if isinstance(name, str) and name in registry.names(cls.backend_kind):
            config = getattr(registry.get(cls.backend_kind, name), "Config", None)
            if isinstance(config, type) and issubclass(config, BaseModel):
                return _with_backend_fields(cls, config)
        return cls

    def backend_options(self) -> dict[str, Any]:
        """The values of the backend's own keys (those the section's base model lacks)."""
        section = next(c for c in type(self).__mro__ if _BackendSection in c.__bases__)
        common = cast(type[BaseModel], section)
        return {
            (info.alias or name): getattr(self, name)
            for name, info in type(self).model_fields.items()
            if name not in common.model_fields
        }


class TransportSettings(_BackendSection):
    """``transport:`` in pipeline.yaml: the queues between the modules.

    Besides these keys, the chosen backend's own settings are accepted (see the reference).
    """

    backend_kind = "queues"

    backend: Literal["sqlite", "nats"] = Field(
        default="sqlite",
        description="Queue backend: sqlite (files in data_dir, embedded) or nats (JetStream).",
    )
    url: str = Field(default="nats://127.0.0.1:4222", description="NATS server URL (nats only).")
    stream_prefix: str = Field(
        default="DPS", description="Prefix of the JetStream stream names (nats only)."
    )
    synchronous: Literal["full", "normal"] = Field(
        default="full",
        description=(
            "SQLite synchronous mode (sqlite only): full fsyncs every commit; normal may lose "
            "the last commits on power loss."
        ),
    )
    capacity: int = Field(
        default=100000, ge=1, le=100_000_000, description="Messages a queue holds before put waits."
    )
    visibility_timeout_seconds: float = Field(
        default=30, gt=0, le=86400, description="Seconds a leased message stays hidden."
    )
    max_attempts: int = Field(
        default=5, ge=1, le=1000, description="Deliveries of a message before it is dead-lettered."
    )

    def backend_settings(self) -> dict[str, Any]:
        """The settings the chosen queue backend is built with (the rest go into QueueSpec)."""
        if self.backend == "nats":
            common = {"url": self.url, "stream_prefix": self.stream_prefix}
        else:
            common = {"synchronous": self.synchronous}
        return common | self.backend_options()


class StateSettings(_BackendSection):
    """``state:`` in pipeline.yaml: where dedupe cache, DLQ, offsets, audit and jobs live.

    Besides these keys, the chosen backend's own settings are accepted (see the reference).
    """

    backend_kind = "states"

    backend: Literal["sqlite", "postgresql"] = Field(
        default="sqlite", description="State backend: sqlite (embedded) or postgresql."
    )
    path: str | None = Field(
        default=None, description="SQLite database file (sqlite); default: in data_dir."
    )
    dsn: str | None = Field(
        default=None,
        description="PostgreSQL connection string without a password (use dsn_ref for one).",
    )
    dsn_ref: SecretRef | None = Field(
        default=None, description="PostgreSQL connection string as a secret reference."
    )
    schema_name: str = Field(
        default="public", alias="schema", description="PostgreSQL schema of the state tables."
    )
    pool_size: int = Field(default=5, ge=1, le=1000, description="PostgreSQL pooled connections.")

    @model_validator(mode="after")
    def _postgresql_needs_dsn(self) -> StateSettings:
        if self.backend == "postgresql" and not self.dsn and not self.dsn_ref:
            raise config_error(
                "is required when backend is postgresql: set dsn or dsn_ref "
                "(for example dsn_ref: env:DPS_STATE_DSN).",
                at="dsn",
            )
        return self

    def backend_settings(self) -> dict[str, Any]:
        """The settings the state backend is built with; resolves ``dsn_ref`` (may raise)."""
        if self.backend == "sqlite":
            return {"path": self.path} | self.backend_options()
        dsn = self.dsn_ref.resolve() if self.dsn_ref is not None else self.dsn
        common = {"dsn": dsn, "schema": self.schema_name, "pool_size": self.pool_size}
        return common | self.backend_options()


class AdminPorts(ConfigModel):
    """``admin.ports:``: the admin API port of each module in the all-in-one ``dps run``."""

    control: int = Field(default=8080, ge=1, le=65535, description="Control service port.")
    alpha: int = Field(default=8081, ge=1, le=65535, description="Alpha admin API port.")
    beta: int = Field(default=8082, ge=1, le=65535, description="Beta admin API port.")
    gamma: int = Field(default=8083, ge=1, le=65535, description="Gamma admin API port.")

    @model_validator(mode="after")
    def _distinct(self) -> AdminPorts:
        seen: dict[int, str] = {}
        for name in ("control", "alpha", "beta", "gamma"):
            port = getattr(self, name)
            if port in seen:
                raise config_error(
                    f"{port} is already the {seen[port]} port; expected a different port for each "
                    "module.",
                    at=name,
                )
            seen[port] = name
        return self


class AdminToken(ConfigModel):
    """``admin.tokens[]``: one bearer token of the admin APIs and the role it grants."""

    name: str = Field(description="Who holds the token; the actor in the audit log.")
    token_ref: SecretRef = Field(description="The token, as a secret reference (env:, file:).")
    role: Literal["viewer", "operator", "admin"] = Field(
        description="viewer: read; operator: also pause, resume, drain, reload, replay, trigger "
        "jobs; admin: also emergency stop, purge, restore."
    )


class AdminTls(ConfigModel):
    """``admin.tls:``: serve every admin API over HTTPS (see docs/operations.md)."""

    cert_file: str = Field(
        description="PEM certificate (chain) the admin APIs present; relative paths are relative "
        "to CONFIG_DIR."
    )
    key_file: str = Field(
        description="PEM private key of cert_file; relative paths are relative to CONFIG_DIR."
    )
    ca_file: str | None = Field(
        default=None,
        description="PEM CA bundle the control service, the supervisor and the CLI verify the "
        "admin APIs against (default: cert_file itself, for a self-signed certificate); "
        "relative paths are relative to CONFIG_DIR.",
    )

    def path(self, name: Literal["cert_file", "key_file", "ca_file"], root: Path) -> Path | None:
        """One of the files as an absolute path (relative to ``root``, the CONFIG_DIR)."""
        value: str | None = getattr(self, name)
        if value is None:
            return None
        path = Path(value).expanduser()
        return path if path.is_absolute() else (root / path).resolve()


class AdminSettings(ConfigModel):
    """``admin:`` in pipeline.yaml: the admin APIs."""

    bind: str = Field(default="127.0.0.1", description="Address the admin APIs listen on.")
    ports: AdminPorts = Field(default_factory=AdminPorts, description="Port of each module.")
    auth_token_ref: SecretRef | None = Field(
        default=None,
        description="Bearer token required by the admin APIs (none: no authentication); it "
        "grants the admin role.",
    )
    tokens: list[AdminToken] = Field(
        default_factory=list,
        description="Named tokens with roles (see docs/operations.md). With neither tokens nor "
        "auth_token_ref the admin APIs are open: keep bind on loopback then.",
    )
    tls: AdminTls | None = Field(
        default=None,
        description="Serve the admin APIs over HTTPS with this certificate and key (none: plain "
        "HTTP). Everything that calls them then uses https and verifies the certificate.",
    )

    def token_roles(self) -> dict[str, tuple[str, str]]:
        """Every configured token, resolved: ``{token: (name, role)}``."""
        roles: dict[str, tuple[str, str]] = {
            t.token_ref.resolve(): (t.name, t.role) for t in self.tokens
        }
        if self.auth_token_ref is not None:
            roles.setdefault(self.auth_token_ref.resolve(), ("admin-token", "admin"))
        return roles

    def client_token(self) -> str | None:
        """The token the control service and the CLI use to call the modules (an admin's)."""
        if self.auth_token_ref is not None:
            return self.auth_token_ref.resolve()
        admins = [t for t in self.tokens if t.role == "admin"]
        return admins[0].token_ref.resolve() if admins else None


def _cron(value: str) -> str:
    """A five-field cron expression that fires at least once (checked with croniter)."""
    from datetime import UTC, datetime

    from croniter import CroniterBadDateError, croniter

    if not croniter.is_valid(value) or len(value.split()) != 5:
        raise config_error(
            f"{value!r} is not a cron expression; expected five fields such as '15 * * * *'."
        )
    try:
        croniter(value, datetime(2000, 1, 1, tzinfo=UTC)).get_next(datetime)
    except CroniterBadDateError:
        raise config_error(
            f"{value!r} never fires; expected a schedule that has a next run."
        ) from None
    return value


class JobOverride(ConfigModel):
    """``jobs.overrides.<job_name>:``: changes to one job of the control service's catalog."""

    schedule: Annotated[str, AfterValidator(_cron)] | None = Field(
        default=None,
        description="Cron expression (five fields, UTC) replacing the catalog's schedule.",
    )
    enabled: bool | None = Field(
        default=None, description="false: the job is suspended until resumed or re-enabled."
    )
    expected_duration_minutes: float | None = Field(
        default=None,
        gt=0,
        description="A run longer than this is flagged as overrunning.",
    )


class BackupS3(ConfigModel):
    """``backup.s3:``: how to reach an S3-compatible store when the target is ``s3://``."""

    endpoint_url: str | None = Field(
        default=None,
        description="The S3 API endpoint, e.g. https://minio.internal:9000 (none: AWS S3).",
    )
    region: str | None = Field(
        default=None, description="Region (none: the AWS SDK's default, e.g. AWS_REGION)."
    )
    access_key_id_ref: SecretRef | None = Field(
        default=None,
        description="Access key id, as a secret reference (env:, file:, vault:); none: the AWS "
        "SDK's default credential chain.",
    )
    secret_access_key_ref: SecretRef | None = Field(
        default=None,
        description="Secret access key, as a secret reference; set with access_key_id_ref.",
    )
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        default="auto",
        description="Bucket addressing: path (https://host/bucket/key, most S3-compatible "
        "servers), virtual (https://bucket.host/key) or auto.",
    )

    @model_validator(mode="after")
    def _both_keys(self) -> BackupS3:
        if (self.access_key_id_ref is None) != (self.secret_access_key_ref is None):
            raise config_error(
                "access_key_id_ref and secret_access_key_ref go together; expected both or "
                "neither (neither: the AWS SDK's default credentials).",
                at="access_key_id_ref",
            )
        return self


class BackupSettings(ConfigModel):
    """``backup:`` in pipeline.yaml: where ``dps backup create`` and weekly_full_backup write."""

    directory: str | None = Field(
        default=None,
        description="Target directory (default: <data_dir>/backups); relative paths are relative "
        "to the data directory. s3://bucket/prefix: an S3-compatible bucket (see s3).",
    )
    s3: BackupS3 = Field(
        default_factory=BackupS3,
        description="Endpoint, region and credentials for an s3:// directory or --target.",
    )
    keep: int = Field(
        default=4,
        ge=1,
        le=1000,
        description="Backups kept; older ones are deleted after a new one.",
    )

    def location(self, data_dir: Path) -> str:
        """Where backups go: an ``s3://`` URL, or the target directory as a string."""
        if self.directory is not None and self.directory.startswith("s3://"):
            return self.directory
        return str(self.target(data_dir))

    def target(self, data_dir: Path) -> Path:
        """The target directory for a data directory (a local ``directory`` only)."""
        if self.directory is None:
            return data_dir / "backups"
        path = Path(self.directory).expanduser()
        return path if path.is_absolute() else data_dir / path


class JobsSettings(ConfigModel):
    """``jobs:`` in pipeline.yaml: the control service's scheduler (see docs/jobs.md)."""

    enabled: bool = Field(
        default=True,
        description="false: no job runs on its schedule (manual triggers still work).",
    )
    overrides: dict[str, JobOverride] = Field(
        default_factory=dict,
        description="Per job name: schedule, enabled, expected duration. Unknown job names are "
        "refused when the control service loads the configuration.",
    )


class LoggingSettings(ConfigModel):
    """``logging:`` in pipeline.yaml."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Lowest level written to the JSON logs."
    )


class PipelineSettings(ConfigModel):
    """pipeline.yaml: settings of the whole pipeline (the file and every key are optional)."""

    name: str = Field(default="pipeline", description="Name shown in status and metrics.")
    data_dir: str | None = Field(
        default=None,
        description="Directory of queues and state files; relative paths are relative to "
        "CONFIG_DIR.",
    )
    transport: TransportSettings = Field(
        default_factory=TransportSettings, description="Queues between the modules."
    )
    state: StateSettings = Field(default_factory=StateSettings, description="State store.")
    admin: AdminSettings = Field(default_factory=AdminSettings, description="Admin APIs.")
    logging: LoggingSettings = Field(default_factory=LoggingSettings, description="Logging.")
    jobs: JobsSettings = Field(default_factory=JobsSettings, description="Scheduled jobs.")
    backup: BackupSettings = Field(default_factory=BackupSettings, description="Backups.")

    def resolved_data_dir(self, root: Path) -> Path | None:
        """``data_dir`` as an absolute path (relative to ``root``, the CONFIG_DIR), or None."""
        if self.data_dir is None:
            return None
        path = Path(self.data_dir).expanduser()
        return path if path.is_absolute() else (root / path).resolve()


# --------------------------------------------------------------------------------------------
# alpha/
# --------------------------------------------------------------------------------------------


class AlphaSettings(ConfigModel):
    """alpha/alpha.yaml: Alpha's operational parameters (the manual's names)."""

    DEFAULT_BATCH_SIZE: int = Field(
        default=1000, ge=1, le=1_000_000, description="Records read per batch cycle."
    )
    MAX_RETRY_COUNT: int = Field(
        default=3, ge=0, le=100, description="Retries of a failed operation before the DLQ."
    )
    CONNECTION_TIMEOUT_MS: int = Field(
        default=30000, ge=1, le=3_600_000, description="Maximum wait for a source connection."
    )
    BUFFER_CAPACITY: int = Field(
        default=10000, ge=1, le=100_000_000, description="Records buffered before backpressure."
    )
    PARSER_THREAD_COUNT: int = Field(
        default=4,
        ge=1,
        le=256,
        description="Threads that fetch and parse the sources at once, one source per thread "
        "(1: one source after the other); ingest stays on the worker thread.",
    )
    VALIDATION_PARALLEL_RULES: bool = Field(
        default=False,
        description="Accepted, no effect: validating on threads was measured slower under the "
        "GIL (docs/alpha.md).",
    )
    VALIDATION_STRICT_MODE: bool = Field(
        default=True,
        description="Refuse records with unknown fields or failed optional checks (else warn).",
    )
    CONNECTION_POOL_SIZE: int = Field(
        default=10, ge=1, le=1000, description="Connections pooled per source."
    )
    CONNECTION_IDLE_TIMEOUT_MS: int = Field(
        default=300000, ge=0, le=86_400_000, description="Idle time before a connection closes."
    )
    DEDUPE_WINDOW_SECONDS: int = Field(
        default=86400, ge=0, le=31_536_000, description="How long a record id is remembered."
    )
    POLL_INTERVAL_MS: int = Field(
        default=500, ge=1, le=3_600_000, description="Pause between fetches of an idle source."
    )


class PollingConfig(ConfigModel):
    """``polling:`` of a source."""

    interval_seconds: float = Field(
        default=60, gt=0, le=86400, description="Seconds between polls of the source."
    )
    batch_size: int = Field(
        default=1000, ge=1, le=1_000_000, description="Records fetched per poll at most."
    )


class CsvOptions(ConfigModel):
    """``parsing.csv:`` of a source read with the csv parser (see docs/sources/csv.md)."""

    header: bool = Field(
        default=True,
        description="The first line of each file (or of each fetched document) names the columns.",
    )
    columns: list[str] | None = Field(
        default=None,
        description="Column names, in order; required when header is false, and replaces the "
        "header's names when given with header true.",
    )
    delimiter: str = Field(
        default=",", min_length=1, max_length=1, description="Field separator (one character)."
    )
    quote: str = Field(
        default='"',
        min_length=1,
        max_length=1,
        description="Quote character; a quoted field may hold the delimiter, quotes (doubled) and "
        "newlines.",
    )
    types: dict[str, Literal["string", "integer", "number", "boolean"]] = Field(
        default_factory=dict,
        description="Column name to type; an empty cell of a typed column becomes null, a value "
        "that does not convert sends the row to the DLQ. Untyped columns stay strings.",
    )
    skip_empty: bool = Field(
        default=True, description="Empty cells are left out of the record instead of being ''."
    )

    @model_validator(mode="after")
    def _names(self) -> CsvOptions:
        if not self.header and not self.columns:
            raise config_error("header is false, so columns must list the column names.")
        if self.delimiter == self.quote:
            raise config_error("delimiter and quote must be different characters.")
        return self


class ParsingConfig(ConfigModel):
    """``parsing:`` of a source: how fetched bytes become records."""

    format: str = Field(default="json", description="Parser: a registered parser name.")
    record_path: str | None = Field(
        default=None, description="JSONPath of the records in a document, e.g. $.data.records."
    )
    timestamp_field: str | None = Field(
        default=None, description="Payload field holding the record's event time."
    )
    timestamp_format: str | None = Field(
        default=None,
        description="strptime format of timestamp_field, or epoch_s / epoch_ms (default: ISO "
        "8601; numbers are epoch seconds). event_time is normalised to ISO 8601 UTC.",
    )
    timestamp_timezone: str = Field(
        default="UTC",
        description="IANA time zone of timestamps that carry none (e.g. Europe/Berlin).",
    )
    id_field: str | None = Field(
        default="id",
        description="Payload field giving the record id; records without it get a content hash.",
    )
    csv: CsvOptions = Field(
        default_factory=CsvOptions,
        description="Options of the csv parser (header, columns, delimiter, quote, types).",
    )

    @field_validator("format")
    @classmethod
    def _parser(cls, value: str) -> str:
        return plugin_name("parsers", value)

    @field_validator("timestamp_timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise config_error(
                f'"{value}" is not a known time zone; expected an IANA name such as UTC or '
                "Europe/Berlin."
            ) from None
        return value

    @field_validator("record_path")
    @classmethod
    def _jsonpath(cls, value: str | None) -> str | None:
        if value is None or value in ("", "$"):
            return value
        import jsonpath

        try:
            jsonpath.compile(value)
        except Exception as exc:  # python-jsonpath raises its own JSONPathSyntaxError family
            raise config_error(f'"{value}" is not a valid JSONPath: {exc}.') from None
        return value


class DedupeConfig(ConfigModel):
    """``validation.dedupe:`` of a source."""

    enabled: bool = Field(default=True, description="Drop records whose id was seen recently.")
    key: list[str] | None = Field(
        default=None,
        description="Payload fields whose values identify a duplicate (default: the record id).",
    )
    window_seconds: int | None = Field(
        default=None,
        ge=0,
        le=31_536_000,
        description="How long ids are remembered (default: DEDUPE_WINDOW_SECONDS).",
    )


class SourceValidation(ConfigModel):
    """``validation:`` of a source."""

    required_fields: list[str] = Field(
        default_factory=list, description="Payload fields every record must have."
    )
    schema_ref: str | None = Field(
        default=None,
        description="JSON Schema (draft-07) file, relative to the alpha config directory.",
    )
    dedupe: DedupeConfig = Field(default_factory=DedupeConfig, description="Duplicate handling.")

    def schema_path(self, alpha_dir: Path) -> Path | None:
        """The schema file, resolved against ``alpha_dir`` (CONFIG_DIR/alpha)."""
        if self.schema_ref is None:
            return None
        path = Path(self.schema_ref).expanduser()
        return path if path.is_absolute() else alpha_dir / path


def _regex(value: str | None) -> str | None:
    if value is not None:
        try:
            re.compile(value)
        except re.error as exc:
            raise config_error(f'"{value}" is not a valid regular expression: {exc}.') from None
    return value


class FieldCompare(ConfigModel):
    """``compare:`` of a validation rule: the rule's field against another field of the record."""

    op: Literal["eq", "ne", "lt", "lte", "gt", "gte"] = Field(
        description="How the rule's field must compare to the other field (e.g. gte)."
    )
    other: str = Field(description="Payload path of the other field.")


class ValidationRule(ConfigModel):
    """One entry of ``rules:`` in alpha/validation/*.yaml (see docs/sources/validation.md)."""

    field: str = Field(description="Payload path the rule checks (dotted, e.g. customer.email).")
    name: str = Field(default="", description="Name of the rule, shown in failures (optional).")
    required: bool = Field(default=False, description="The field must be present and not null.")
    type: Literal["string", "integer", "number", "boolean", "object", "array"] | None = Field(
        default=None, description="JSON type the value must have."
    )
    min: float | None = Field(default=None, description="Smallest allowed number (inclusive).")
    max: float | None = Field(default=None, description="Largest allowed number (inclusive).")
    min_length: int | None = Field(
        default=None, ge=0, description="Shortest allowed string or list."
    )
    max_length: int | None = Field(
        default=None, ge=0, description="Longest allowed string or list."
    )
    regex: Annotated[str, AfterValidator(_regex)] | None = Field(
        default=None, description="Regular expression a string value must match (re.search)."
    )
    enum: list[Any] | None = Field(default=None, description="The allowed values.")
    compare: FieldCompare | None = Field(
        default=None, description="Cross-field check: this field against another field."
    )
    when: dict[str, Any] | None = Field(
        default=None,
        description="Condition (the rule-match language) on the record; the rule applies only "
        "to records it matches.",
    )

    _check_when = field_validator("when")(_condition)

    @model_validator(mode="after")
    def _something(self) -> ValidationRule:
        checks = (self.type, self.min, self.max, self.min_length, self.max_length, self.regex)
        if not self.required and all(c is None for c in checks) and not (self.enum or self.compare):
            raise config_error(
                f"rule on {self.field} checks nothing; expected at least one of required, type, "
                "min, max, min_length, max_length, regex, enum, compare."
            )
        if self.min is not None and self.max is not None and self.min > self.max:
            raise config_error(f"min {self.min} is above max {self.max}.", at="min")
        return self


class ValidationRuleFile(ConfigModel):
    """alpha/validation/*.yaml: field rules for some or all sources (docs/sources/validation.md)."""

    yaml_hidden_fields = frozenset({"file"})

    applies_to: list[Identifier] | None = Field(
        default=None,
        description="source_ids the rules apply to; omitted: every source.",
    )
    rules: list[ValidationRule] = Field(description="The rules, checked in order.")
    file: Path = Field(
        default=Path(), exclude=True, description="The file these rules were loaded from."
    )


class SourceConfig(SpecializedModel):
    """alpha/sources/*.yaml: one source (the manual's A.1 format)."""

    yaml_hidden_fields = frozenset({"file"})

    source_id: Identifier = Field(description="Unique id of the source (URLs, metrics, records).")
    source_type: str = Field(description="Source type: a registered source name.")
    enabled: bool = Field(default=True, description="Disabled sources are loaded but not run.")
    data_classification: Literal["public", "internal", "confidential", "restricted"] = Field(
        default="internal",
        description=(
            "How sensitive the source's data is (public < internal < confidential < restricted); "
            "Gamma delivers it only to destinations classified at this level or above."
        ),
    )
    connection: Any = Field(
        description="Connection settings of the source type (see the source types below)."
    )
    polling: PollingConfig = Field(default_factory=PollingConfig, description="Polling.")
    parsing: ParsingConfig = Field(default_factory=ParsingConfig, description="Parsing.")
    validation: SourceValidation = Field(
        default_factory=SourceValidation, description="Record validation and dedupe."
    )
    file: Path = Field(
        default=Path(), exclude=True, description="The file this source was loaded from."
    )

    @field_validator("source_type")
    @classmethod
    def _known(cls, value: str) -> str:
        return plugin_name("sources", value)

    @classmethod
    def specialize(cls, data: Any) -> type[ConfigModel]:
        name = data.get("source_type") if isinstance(data, Mapping) else None
        if cls is SourceConfig and isinstance(name, str) and name in registry.names("sources"):
            return _source_model(registry.get("sources", name).Config)
        return cls


@functools.cache
def _source_model(config: type[BaseModel]) -> type[SourceConfig]:
    model = create_model(
        f"SourceConfig[{config.__name__}]",
        __base__=SourceConfig,
        __module__=__name__,
        connection=(config, Field(description=SourceConfig.model_fields["connection"].description)),
    )
    return cast(type[SourceConfig], model)


class AlphaConfig(ConfigModel):
    """Everything under CONFIG_DIR/alpha."""

    settings: AlphaSettings = Field(default_factory=AlphaSettings, description="alpha.yaml.")
    sources: dict[str, SourceConfig] = Field(
        default_factory=dict, description="sources/*.yaml, by source_id."
    )
    validation: list[ValidationRuleFile] = Field(
        default_factory=list, description="validation/*.yaml, in file name order."
    )


# --------------------------------------------------------------------------------------------
# beta/
# --------------------------------------------------------------------------------------------


class EnrichmentSourceSettings(ConfigModel):
    """``enrichment_sources.<name>:`` in beta.yaml: how one enrichment source degrades."""

    on_unavailable: Literal["FAIL", "STALE_CACHE"] = Field(
        default="FAIL",
        description="When the source is down: FAIL the lookup, or serve STALE_CACHE entries.",
    )
    stale_ttl_seconds: int = Field(
        default=300, ge=0, le=31_536_000, description="How stale a served cache entry may be."
    )


class EnrichmentCachePolicy(ConfigModel):
    """``cache:`` of an enrichment source: how its entries are cached."""

    ttl_seconds: int | None = Field(
        default=None,
        ge=0,
        le=31_536_000,
        description="Seconds an entry stays fresh; not set: ENRICHMENT_CACHE_TTL of beta.yaml.",
    )
    negative_ttl_seconds: int = Field(
        default=60,
        ge=0,
        le=31_536_000,
        description="Seconds a miss (key not in the source) is remembered; 0: misses not cached.",
    )
    warmup: bool = Field(
        default=False,
        description="Load the whole source into the cache when Beta starts (if it can be listed).",
    )


class EnrichmentConfig(SpecializedModel):
    """beta/enrichment/*.yaml: one enrichment source that ``lookup`` rules read from."""

    yaml_hidden_fields = frozenset({"file"})

    name: Identifier = Field(
        description="Name of the source (lookup rules, /admin/cache/refresh/<name>, beta.yaml)."
    )
    type: str = Field(description="Enrichment source type: a registered enrichment name.")
    connection: Any = Field(
        description="Settings of the source type (see the enrichment source types below)."
    )
    cache: EnrichmentCachePolicy = Field(
        default_factory=EnrichmentCachePolicy, description="Caching policy of this source."
    )
    file: Path = Field(
        default=Path(), exclude=True, description="The file this source was loaded from."
    )

    @field_validator("type")
    @classmethod
    def _known(cls, value: str) -> str:
        return plugin_name("enrichment", value)

    @classmethod
    def specialize(cls, data: Any) -> builtins.type[ConfigModel]:
        name = data.get("type") if isinstance(data, Mapping) else None
        if (
            cls is EnrichmentConfig
            and isinstance(name, str)
            and name in registry.names("enrichment")
        ):
            return _enrichment_model(registry.get("enrichment", name).Config)
        return cls


@functools.cache
def _enrichment_model(config: type[BaseModel]) -> type[EnrichmentConfig]:
    model = create_model(
        f"EnrichmentConfig[{config.__name__}]",
        __base__=EnrichmentConfig,
        __module__=__name__,
        connection=(
            config,
            Field(description=EnrichmentConfig.model_fields["connection"].description),
        ),
    )
    return cast(type[EnrichmentConfig], model)


class BetaSettings(ConfigModel):
    """beta/beta.yaml: Beta's operational parameters (the manual's names)."""

    TRANSFORM_PARALLELISM: int = Field(
        default=8, ge=1, le=1024, description="Concurrent transformation workers."
    )
    TRANSFORM_BATCH_SIZE: int = Field(
        default=500, ge=1, le=1_000_000, description="Records transformed per batch."
    )
    ENRICHMENT_CACHE_TTL: int = Field(
        default=3600, ge=0, le=31_536_000, description="Seconds an enrichment entry stays fresh."
    )
    ENRICHMENT_CACHE_MAX_SIZE: int = Field(
        default=100000, ge=0, le=100_000_000, description="Entries in the enrichment cache."
    )
    QUALITY_THRESHOLD_WARN: float = Field(
        default=0.7, ge=0, le=1, description="Quality score below which Beta warns."
    )
    QUALITY_THRESHOLD_ERROR: float = Field(
        default=0.5, ge=0, le=1, description="Quality score below which Beta reports an error."
    )
    enrichment_sources: dict[str, EnrichmentSourceSettings] = Field(
        default_factory=dict, description="Per enrichment source: what to do when it is down."
    )

    @model_validator(mode="after")
    def _thresholds(self) -> BetaSettings:
        if self.QUALITY_THRESHOLD_ERROR > self.QUALITY_THRESHOLD_WARN:
            raise config_error(
                f"{self.QUALITY_THRESHOLD_ERROR} is above QUALITY_THRESHOLD_WARN "
                f"({self.QUALITY_THRESHOLD_WARN}); expected the error threshold to be the lower.",
                at="QUALITY_THRESHOLD_ERROR",
            )
        return self


class TransformSpec(SpecializedModel):
    """``transform:`` of a rule."""

    type: str = Field(description="Transform type: a registered transform name.")
    config: Any = Field(
        default_factory=dict,
        description="Settings of the transform type (see the transform types below).",
    )

    @field_validator("type")
    @classmethod
    def _known(cls, value: str) -> str:
        return plugin_name("transforms", value)

    @classmethod
    def specialize(cls, data: Any) -> builtins.type[ConfigModel]:
        name = data.get("type") if isinstance(data, Mapping) else None
        if cls is TransformSpec and isinstance(name, str) and name in registry.names("transforms"):
            return _transform_model(registry.get("transforms", name).Config)
        return cls


@functools.cache
def _transform_model(config: type[BaseModel]) -> type[TransformSpec]:
    model = create_model(
        f"TransformSpec[{config.__name__}]",
        __base__=TransformSpec,
        __module__=__name__,
        config=(
            config,
            Field(
                default_factory=dict,
                # An omitted ``config:`` is the plugin's defaults, validated like a written one.
                validate_default=True,
                description=TransformSpec.model_fields["config"].description,
            ),
        ),
    )
    return cast(type[TransformSpec], model)


class RuleMetrics(ConfigModel):
    """``metrics:`` of a rule."""

    emit: bool = Field(default=False, description="Emit per-rule metrics labelled with rule_id.")
    tags: dict[str, str] = Field(default_factory=dict, description="Extra labels (documentation).")


def _match_field(match: Any) -> str | None:
    if isinstance(match, Mapping) and isinstance(match.get("field"), str):
        return cast(str, match["field"])
    return None


class RuleConfig(ConfigModel):
    """beta/transforms/rules/*.yaml: one transformation rule (the manual's B.1 format)."""

    yaml_hidden_fields = frozenset({"file"})

    rule_id: Identifier = Field(description="Unique id of the rule (metrics, lineage).")
    name: str = Field(default="", description="Human-readable name.")
    description: str = Field(default="", description="What the rule is for.")
    enabled: bool = Field(default=True, description="Disabled rules are loaded but not applied.")
    priority: int = Field(default=0, description="Higher priorities run first; ties by rule_id.")
    match: dict[str, Any] | None = Field(
        default=None,
        description="Condition selecting the records the rule applies to (none: every record).",
    )
    transform: TransformSpec = Field(description="What the rule does.")
    on_failure: Literal["skip", "fail", "dlq"] = Field(
        default="skip",
        description="When the transform fails on a record: skip the rule, or fail/dlq the record.",
    )
    metrics: RuleMetrics = Field(default_factory=RuleMetrics, description="Rule metrics.")
    file: Path = Field(default=Path(), exclude=True, description="The file of this rule.")

    _check_match = field_validator("match")(_condition)

    @field_validator("transform")
    @classmethod
    def _builds(cls, transform: TransformSpec, info: ValidationInfo) -> TransformSpec:
        if "match" not in info.data or not isinstance(transform.config, BaseModel):
            return transform
        plugin = registry.get("transforms", transform.type)
        try:
            plugin(transform.config, _match_field(info.data["match"]))
        except ValueError as exc:
            raise config_error(str(exc).rstrip(".") + ".") from None
        return transform

    @property
    def match_field(self) -> str | None:
        """The field a B.1-style single test names (``match: {field: x, ...}``), else None."""
        return _match_field(self.match)


class QualityThresholds(ConfigModel):
    """``quality_scoring.thresholds:``: scores below each threshold warn, error, reject."""

    warn: float = Field(default=0.7, ge=0, le=1, description="Below this a record is flagged.")
    error: float = Field(default=0.5, ge=0, le=1, description="Below this it counts as an error.")
    reject: float = Field(default=0.3, ge=0, le=1, description="Below this it goes to the DLQ.")

    @model_validator(mode="after")
    def _descending(self) -> QualityThresholds:
        if not self.warn > self.error > self.reject:
            raise config_error(
                f"warn {self.warn}, error {self.error}, reject {self.reject} are not in order; "
                "expected warn > error > reject."
            )
        return self


class CompletenessRule(ConfigModel):
    """``rules.completeness:``."""

    required_fields: list[str] = Field(
        default_factory=list, description="Fields whose absence lowers the score."
    )
    penalty_per_missing: float = Field(
        default=0.2, ge=0, le=1, description="Score lost per missing field."
    )


class TimelinessRule(ConfigModel):
    """``rules.timeliness:``."""

    max_age_hours: float = Field(
        default=24, gt=0, description="Age after which the score starts to drop."
    )
    penalty_per_hour: float = Field(
        default=0.01, ge=0, le=1, description="Score lost per hour beyond max_age_hours."
    )
    field: str | None = Field(
        default=None, description="Payload field holding the event time (default: event_time)."
    )


class ConsistencyCheck(ConfigModel):
    """One cross-field check of ``rules.consistency.rules``.

    Either ``compare`` (``{left: ship_date, op: gte, right: order_date}``: two fields compared,
    numbers as numbers, text such as ISO dates as text) or ``require`` (a condition of the rule
    language), optionally only ``when`` another condition holds.
    """

    name: str = Field(description="Name of the check (shown in the record's quality checks).")
    when: dict[str, Any] | None = Field(
        default=None, description="Condition: check only records it matches (none: all)."
    )
    require: dict[str, Any] | None = Field(
        default=None, description="Condition every checked record must meet."
    )
    compare: dict[str, str] | None = Field(
        default=None,
        description="{left: field, op: eq|ne|lt|lte|gt|gte, right: field}: a field comparison.",
    )
    penalty: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Score lost when it fails (default: penalty_per_failure).",
    )

    _check_when = field_validator("when")(_condition)
    _check_require = field_validator("require")(_condition)

    @field_validator("compare")
    @classmethod
    def _comparison(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return value
        if set(value) != {"left", "op", "right"}:
            raise config_error(
                f"{sorted(value)} are its keys; expected exactly left, op and right."
            )
        if value["op"] not in ("eq", "ne", "lt", "lte", "gt", "gte"):
            raise config_error(
                f'"{value["op"]}" is not a comparison; expected eq, ne, lt, lte, gt or gte.',
                at="op",
            )
        return value

    @model_validator(mode="after")
    def _one_test(self) -> ConsistencyCheck:
        if (self.require is None) == (self.compare is None):
            raise config_error("expected exactly one of require and compare.")
        return self


class ConsistencyRule(ConfigModel):
    """``rules.consistency:``."""

    rules: list[ConsistencyCheck] = Field(
        default_factory=list, description="Cross-field checks; each failing one lowers the score."
    )
    penalty_per_failure: float = Field(
        default=0.25, ge=0, le=1, description="Score lost per failed check without its own penalty."
    )


class ConformanceRule(ConfigModel):
    """``rules.conformance:``."""

    formats: dict[str, str] = Field(
        default_factory=dict,
        description="Field -> expected format: a named format (email, uuid, e164, iso_date, "
        "iso_datetime, country_code, currency_code, decimal, integer) or a regular expression.",
    )
    schema_ref: str | None = Field(
        default=None,
        description="A JSON Schema (draft-07) in beta/schemas/ (file name) the payload must meet.",
    )
    penalty_per_violation: float = Field(
        default=0.25, ge=0, le=1, description="Score lost per field in the wrong format."
    )
    schema_penalty: float = Field(
        default=0.5, ge=0, le=1, description="Score lost when the payload does not meet the schema."
    )


class ScoringRules(ConfigModel):
    """``quality_scoring.rules:``: how each dimension is scored."""

    completeness: CompletenessRule = Field(
        default_factory=CompletenessRule, description="Completeness."
    )
    timeliness: TimelinessRule = Field(default_factory=TimelinessRule, description="Timeliness.")
    consistency: ConsistencyRule = Field(
        default_factory=ConsistencyRule, description="Consistency."
    )
    conformance: ConformanceRule = Field(
        default_factory=ConformanceRule, description="Conformance."
    )


Dimension = Literal["completeness", "consistency", "conformance", "timeliness"]
DIMENSIONS: tuple[Dimension, ...] = get_args(Dimension)


class QualityScoringConfig(ConfigModel):
    """``quality_scoring:`` in beta/quality/scoring.yaml (the manual's B.3 and H.2 formats)."""

    weights: dict[Dimension, float] = Field(
        default_factory=lambda: dict.fromkeys(DIMENSIONS, 0.25),
        description="Weight of each dimension; when given they must add up to 1.",
    )
    thresholds: QualityThresholds = Field(
        default_factory=QualityThresholds, description="Score thresholds."
    )
    rules: ScoringRules = Field(default_factory=ScoringRules, description="Dimension rules.")
    enabled_dimensions: list[Dimension] | None = Field(
        default=None, description="Dimensions scored (none: all of them)."
    )
    disabled_dimensions: list[Dimension] = Field(
        default_factory=list, description="Dimensions not scored."
    )

    @field_validator("weights")
    @classmethod
    def _sum_to_one(cls, weights: dict[str, float]) -> dict[str, float]:
        for name, weight in weights.items():
            if not 0 <= weight <= 1:
                raise config_error(
                    f"{weight} is not allowed; expected a number from 0 to 1.", at=name
                )
        total = sum(weights.values())
        if abs(total - 1) > 0.001:
            raise config_error(
                f"the weights add up to {total:g}; expected them to add up to 1 (within 0.001)."
            )
        return weights

    @model_validator(mode="after")
    def _dimensions(self) -> QualityScoringConfig:
        both = set(self.enabled_dimensions or ()) & set(self.disabled_dimensions)
        if both:
            raise config_error(
                f"{', '.join(sorted(both))} is both enabled and disabled; expected it in only "
                "one of enabled_dimensions and disabled_dimensions.",
                at="disabled_dimensions",
            )
        return self

    @property
    def active_dimensions(self) -> list[str]:
        """The dimensions that are scored: enabled (or all) minus disabled."""
        enabled = self.enabled_dimensions or list(DIMENSIONS)
        return [d for d in enabled if d not in self.disabled_dimensions]


class ScoringFile(ConfigModel):
    """beta/quality/scoring.yaml: the file holds one root key."""

    quality_scoring: QualityScoringConfig = Field(description="Quality scoring settings.")


class BetaConfig(ConfigModel):
    """Everything under CONFIG_DIR/beta."""

    settings: BetaSettings = Field(default_factory=BetaSettings, description="beta.yaml.")
    rules: list[RuleConfig] = Field(
        default_factory=list,
        description="transforms/rules/*.yaml, higher priority first (ties by rule_id).",
    )
    scoring: QualityScoringConfig | None = Field(
        default=None, description="quality/scoring.yaml (none: the file is absent)."
    )
    enrichment: dict[str, EnrichmentConfig] = Field(
        default_factory=dict, description="enrichment/*.yaml, by name."
    )

    @field_validator("rules")
    @classmethod
    def _order(cls, rules: list[RuleConfig]) -> list[RuleConfig]:
        return sorted(rules, key=lambda rule: (-rule.priority, rule.rule_id))


# --------------------------------------------------------------------------------------------
# gamma/
# --------------------------------------------------------------------------------------------


class DestinationOverrides(ConfigModel):
    """``destinations.<destination_id>:`` in gamma.yaml (H.3): overrides of a destination file."""

    delivery_mode: Literal["sync", "async"] | None = Field(
        default=None, description="Overrides the destination's delivery_mode."
    )
    ack_mode: Literal["batch", "record"] | None = Field(
        default=None, description="Overrides the destination's ack_mode."
    )


class GammaSettings(ConfigModel):
    """gamma/gamma.yaml: Gamma's operational parameters (the manual's names)."""

    OUTPUT_BATCH_SIZE: int = Field(
        default=500, ge=1, le=100000, description="Records per delivery batch (default)."
    )
    OUTPUT_LINGER_MS: int = Field(
        default=50, ge=0, le=60000, description="Wait for a batch to fill before sending it."
    )
    MAX_DELIVERY_RETRIES: int = Field(
        default=5, ge=0, le=100, description="Retries of a failed batch before the DLQ."
    )
    RETRY_BACKOFF_MS: int = Field(
        default=1000,
        ge=0,
        le=3_600_000,
        description=(
            "First retry delay of a failed batch (doubles each retry, with full jitter) for "
            "destinations that set no delivery.retry_delay_ms of their own."
        ),
    )
    DLQ_RETENTION_DAYS: int = Field(
        default=14, ge=1, le=3650, description="Days Gamma's DLQ entries are kept."
    )
    ACK_WAIT_TIMEOUT_MS: int = Field(
        default=60000, ge=1, le=3_600_000, description="Wait for a destination acknowledgement."
    )
    ACK_TIMEOUT_ACTION: Literal["RETRY_DELIVERY", "ASSUME_SUCCESS"] = Field(
        default="RETRY_DELIVERY",
        description="When the acknowledgement times out: redeliver, or count it delivered.",
    )
    default_destination: str | None = Field(
        default=None, description="Destination of records no route matches (none: DLQ no_route)."
    )
    destinations: dict[str, DestinationOverrides] = Field(
        default_factory=dict, description="Per-destination overrides, by destination_id."
    )


class DeliverySettings(ConfigModel):
    """``delivery:`` of a destination."""

    batch_size: int = Field(default=500, ge=1, le=100000, description="Records per batch.")
    timeout_ms: int = Field(
        default=30000, ge=1, le=3_600_000, description="Timeout of one delivery call."
    )
    retry_count: int = Field(default=3, ge=0, le=100, description="Retries of a failed batch.")
    retry_delay_ms: int | None = Field(
        default=None,
        ge=0,
        le=3_600_000,
        description=(
            "Delay before the first retry (doubles each retry, with full jitter); "
            "none: gamma.yaml's RETRY_BACKOFF_MS."
        ),
    )
    max_in_flight: int = Field(
        default=4,
        ge=1,
        le=64,
        description=(
            "delivery_mode async: batches in flight at once, each on its own connection and "
            "acknowledged as it completes (sync: always 1)."
        ),
    )


class CircuitBreakerSettings(ConfigModel):
    """``circuit_breaker:`` of a destination (Runbook C.3)."""

    failure_threshold: int = Field(
        default=5, ge=1, le=10000, description="Failed batches within the window that open it."
    )
    window_seconds: float = Field(
        default=60.0, gt=0, le=86400, description="The window failures are counted in."
    )
    cooldown_seconds: float = Field(
        default=30.0, gt=0, le=86400, description="Seconds OPEN before a probe (HALF_OPEN)."
    )
    max_cooldown_seconds: float = Field(
        default=300.0, gt=0, le=86400, description="Cool-down cap (it doubles per failed probe)."
    )
    success_threshold: int = Field(
        default=1, ge=1, le=100, description="Successful probes in a row that close it."
    )


#: Data classifications, least sensitive first: a destination of one level may receive the data
#: of sources of that level or a lower one.
DataClassification = Literal["public", "internal", "confidential", "restricted"]
DATA_CLASSIFICATIONS: tuple[str, ...] = ("public", "internal", "confidential", "restricted")


def classification_allows(destination: str, source: str) -> bool:
    """True when a destination classified ``destination`` may receive ``source`` data."""
    return DATA_CLASSIFICATIONS.index(source) <= DATA_CLASSIFICATIONS.index(destination)


class Authorization(ConfigModel):
    """``authorization:`` of a destination."""

    data_classification: DataClassification = Field(
        default="internal",
        description=(
            "Most sensitive data the destination may receive (public < internal < confidential "
            "< restricted), compared with each source's data_classification."
        ),
    )
    allowed_sources: list[Identifier] | None = Field(
        default=None, description="Sources whose records it may receive (none: any source)."
    )


class DestinationConfig(SpecializedModel):
    """gamma/destinations/*.yaml: one destination (the manual's C.1 format).

    ``connection`` and ``format`` are validated together by the destination type's model into
    :attr:`spec`, which is what the destination plugin is built with.
    """

    yaml_extra_keys = ("connection", "format")
    yaml_hidden_fields = frozenset({"spec", "file"})

    destination_id: Identifier = Field(description="Unique id of the destination.")
    destination_type: str = Field(description="Destination type: a registered destination name.")
    enabled: bool = Field(default=True, description="Disabled destinations receive nothing.")
    spec: Any = Field(
        description="connection: and format: of the destination type (see the types below)."
    )
    delivery: DeliverySettings = Field(
        default_factory=DeliverySettings, description="Batching and retries."
    )
    authorization: Authorization = Field(
        default_factory=Authorization, description="What the destination may receive."
    )
    delivery_mode: Literal["sync", "async"] = Field(
        default="sync",
        description=(
            "sync: one batch at a time; async: up to delivery.max_in_flight batches at once, "
            "each acknowledged as it completes (order across batches is not kept)."
        ),
    )
    ack_mode: Literal["batch", "record"] = Field(
        default="batch",
        description=(
            "batch: a batch's records leave the spool together once the batch is settled; "
            "record: each record leaves the spool as soon as its own outcome is known."
        ),
    )
    circuit_breaker: CircuitBreakerSettings = Field(
        default_factory=CircuitBreakerSettings, description="When to stop sending (C.3)."
    )
    output_format: Identifier | None = Field(
        default=None,
        description=(
            "format_id of a gamma/formats/*.yaml that shapes each record (field selection, "
            "renaming, template); none: the type's own format.envelope choice."
        ),
    )
    file: Path = Field(default=Path(), exclude=True, description="The file of this destination.")

    @field_validator("destination_type")
    @classmethod
    def _known(cls, value: str) -> str:
        return plugin_name("destinations", value)

    @classmethod
    def specialize(cls, data: Any) -> type[ConfigModel]:
        name = data.get("destination_type") if isinstance(data, Mapping) else None
        known = registry.names("destinations")
        if cls is DestinationConfig and isinstance(name, str) and name in known:
            return _destination_model(registry.get("destinations", name).Config)
        return cls

    @classmethod
    def prepare(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "spec" not in data:
            data = dict(data)
            data["spec"] = {key: data.pop(key) for key in ("connection", "format") if key in data}
        return data

    @property
    def connection(self) -> Any:
        """``spec.connection``."""
        return getattr(self.spec, "connection", None)

    @property
    def format(self) -> Any:
        """``spec.format``."""
        return getattr(self.spec, "format", None)


@functools.cache
def _destination_model(config: type[BaseModel]) -> type[DestinationConfig]:
    model = create_model(
        f"DestinationConfig[{config.__name__}]",
        __base__=DestinationConfig,
        __module__=__name__,
        spec=(config, Field(description=DestinationConfig.model_fields["spec"].description)),
    )
    return cast(type[DestinationConfig], model)


class RoutingRule(ConfigModel):
    """gamma/routing/rules/*.yaml: one route (the manual's C.1 step 8 format)."""

    yaml_hidden_fields = frozenset({"file"})

    rule_id: Identifier = Field(description="Unique id of the route.")
    enabled: bool = Field(default=True, description="Disabled routes are not evaluated.")
    priority: int = Field(default=0, description="Higher priorities are evaluated first.")
    description: str = Field(default="", description="What the route is for.")
    match: dict[str, Any] | None = Field(
        default=None, description="Condition selecting the records routed (none: every record)."
    )
    destination: Identifier | list[Identifier] = Field(
        description="Destination id, or a list of them (the record goes to each)."
    )
    file: Path = Field(default=Path(), exclude=True, description="The file of this route.")

    _check_match = field_validator("match")(_condition)

    @field_validator("destination")
    @classmethod
    def _not_empty(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise config_error("is an empty list; expected at least one destination id.")
        return value

    @property
    def destinations(self) -> list[str]:
        """``destination`` as a list."""
        return [self.destination] if isinstance(self.destination, str) else list(self.destination)


class OutputFormat(ConfigModel):
    """gamma/formats/*.yaml: the shape of each record at the destinations naming it.

    The document sent for a record is the selected ``fields`` (renamed when given as a mapping)
    with the rendered ``template`` merged over them, plus ``record_id``. A record field is an
    envelope field (``record_id``, ``source_id``, ``correlation_id``, ``event_time``,
    ``ingested_at``, ``timestamp``, ``quality_score``, ``payload``) or a dotted path into the
    payload; a field the record lacks is null.
    """

    yaml_hidden_fields = frozenset({"file"})

    format_id: Identifier = Field(description="Unique id; destinations name it in output_format.")
    description: str = Field(default="", description="What the format is for.")
    fields: list[str] | dict[str, str] | None = Field(
        default=None,
        description=(
            "Field selection: a list of record fields, or a mapping output name -> record field "
            "(renaming). None: no fields besides the template (neither: the whole payload)."
        ),
    )
    template: dict[str, Any] | None = Field(
        default=None,
        description=(
            "An object template: in its strings, {field} is replaced by the record field's "
            "value (a string that is only {field} keeps the value's type); nested mappings and "
            "lists are rendered too."
        ),
    )
    include_record_id: bool = Field(
        default=True,
        description="Add record_id (destinations that read ids back, such as file, need it).",
    )
    file: Path = Field(default=Path(), exclude=True, description="The file of this format.")

    @field_validator("fields")
    @classmethod
    def _some_fields(
        cls, value: list[str] | dict[str, str] | None
    ) -> list[str] | dict[str, str] | None:
        if value is not None and not value:
            raise config_error("is empty; expected at least one field (or leave it out).")
        return value


class DlqSettings(ConfigModel):
    """gamma/dlq.yaml: Gamma's dead letter queue (the file is optional)."""

    retention_days: int = Field(default=14, ge=1, le=3650, description="Days entries are kept.")
    max_entries: int = Field(
        default=100000, ge=1, le=100_000_000, description="Entries kept at most (oldest go first)."
    )


class GammaConfig(ConfigModel):
    """Everything under CONFIG_DIR/gamma."""

    settings: GammaSettings = Field(default_factory=GammaSettings, description="gamma.yaml.")
    destinations: dict[str, DestinationConfig] = Field(
        default_factory=dict, description="destinations/*.yaml, by destination_id."
    )
    routes: list[RoutingRule] = Field(
        default_factory=list,
        description="routing/rules/*.yaml, higher priority first (ties by rule_id).",
    )
    dlq: DlqSettings = Field(default_factory=DlqSettings, description="dlq.yaml.")
    formats: dict[str, OutputFormat] = Field(
        default_factory=dict, description="formats/*.yaml, by format_id."
    )

    @field_validator("routes")
    @classmethod
    def _order(cls, routes: list[RoutingRule]) -> list[RoutingRule]:
        return sorted(routes, key=lambda route: (-route.priority, route.rule_id))


# --------------------------------------------------------------------------------------------
# the whole directory
# --------------------------------------------------------------------------------------------

_SECRET_KEYS = {"password", "passwd", "token", "secret", "api_key", "apikey", "authorization"}
_SECRET_SUFFIXES = ("_password", "_token", "_secret", "_api_key", "-api-key", "-token")
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)[^@/\s]+(?=@)")
_KV_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)


def _secret_key(key: str) -> bool:
    lowered = key.lower()
    if lowered.endswith("_ref"):
        return False
    return lowered in _SECRET_KEYS or lowered.endswith(_SECRET_SUFFIXES)


def redact(value: Any, key: str = "") -> Any:
    """A copy of ``value`` without literal secrets (references are kept: they are not secret).

    Scalars under keys named like a secret become ``***``, and so does the password of any
    connection string (``postgresql://user:pw@host`` or ``password=pw``).
    """
    if isinstance(value, Mapping):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if value is not None and _secret_key(key):
        return REDACTED
    if isinstance(value, str):
        value = _URL_PASSWORD.sub(rf"\g<head>{REDACTED}", value)
        return _KV_PASSWORD.sub(rf"\g<head>{REDACTED}", value)
    return value


class PipelineConfig(ConfigModel):
    """A whole CONFIG_DIR, loaded and checked (see :func:`dps.config.load_config`)."""

    root: Path = Field(description="The CONFIG_DIR the configuration was loaded from.")
    pipeline: PipelineSettings = Field(
        default_factory=PipelineSettings, description="pipeline.yaml."
    )
    alpha: AlphaConfig = Field(default_factory=AlphaConfig, description="alpha/.")
    beta: BetaConfig = Field(default_factory=BetaConfig, description="beta/.")
    gamma: GammaConfig = Field(default_factory=GammaConfig, description="gamma/.")

    _checksum: str | None = PrivateAttr(default=None)

    def export(self) -> dict[str, Any]:
        """The configuration as JSON-able data, secrets redacted (``/admin/config/export``)."""
        data = self.model_dump(mode="json", by_alias=True, serialize_as_any=True)
        return cast(dict[str, Any], redact(data))

    def checksum(self) -> str:
        """sha256 of the configuration files' paths and contents, as they were loaded."""
        if self._checksum is None:
            self._checksum = files_checksum(self.root, config_files(self.root))
        return self._checksum

    def data_dir(self) -> Path | None:
        """``pipeline.data_dir`` resolved against the CONFIG_DIR."""
        return self.pipeline.resolved_data_dir(self.root)


def config_files(root: Path) -> list[Path]:
    """Every YAML and JSON file under ``root``, sorted (what the checksum covers)."""
    suffixes = {".yaml", ".yml", ".json"}
    return sorted(
        p
        for p in root.rglob("*")
        if p.suffix in suffixes and p.is_file() and not p.name.startswith(".")
    )


def files_checksum(root: Path, files: list[Path], contents: dict[Path, bytes] | None = None) -> str:
    """sha256 over each file's path relative to ``root`` and its bytes, in path order."""
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.relative_to(root).as_posix()):
        data = contents[path] if contents and path in contents else path.read_bytes()
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(b"\0")
        digest.update(hashlib.sha256(data).digest())
    return digest.hexdigest()
