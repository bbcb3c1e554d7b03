"""load_config / load_file: defaults, messages, line numbers, cross-file checks, secrets."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from dps.config import ConfigError, PipelineConfig, load_config, load_file
from dps.config.loader import check_file, detect_kind
from dps.config.models import (
    DestinationConfig,
    QualityScoringConfig,
    RoutingRule,
    RuleConfig,
    SourceConfig,
    StateSettings,
)
from dps.core.errors import ConfigIssue, SecretError

SOURCE = """\
source_id: {id}
source_type: file
connection:
  path: /data/in
parsing:
  format: ndjson
"""

RULE = """\
rule_id: {id}
priority: {priority}
match:
  field: phone_number
  condition: exists
transform:
  type: regex_replace
  config:
    pattern: "a"
    replacement: "b"
"""

DESTINATION = """\
destination_id: {id}
destination_type: file
connection:
  path: /data/out.jsonl
authorization:
  allowed_sources: [src_a, src_b]
"""

ROUTE = """\
rule_id: {id}
priority: {priority}
match:
  source_id:
    in: [{sources}]
destination: {destination}
"""


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def issues_of(root: Path, environ: dict[str, str] | None = None) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as caught:
        load_config(root, environ=environ or {})
    return list(caught.value.issues)


def one_issue(root: Path, environ: dict[str, str] | None = None) -> ConfigIssue:
    issues = issues_of(root, environ)
    assert len(issues) == 1, "\n".join(map(str, issues))
    return issues[0]


# -- defaults -------------------------------------------------------------------------------


def test_empty_directory_loads_with_defaults(tmp_path: Path) -> None:
    config = load_config(tmp_path, environ={})
    assert isinstance(config, PipelineConfig)
    assert config.root == tmp_path.absolute()
    assert config.pipeline.name == "pipeline"
    assert config.pipeline.transport.backend == "sqlite"
    assert config.pipeline.state.backend_settings()["path"] is None
    assert config.pipeline.admin.ports.alpha == 8081
    assert config.alpha.settings.DEFAULT_BATCH_SIZE == 1000
    assert config.alpha.sources == {}
    assert config.beta.scoring is None
    assert config.beta.settings.TRANSFORM_PARALLELISM == 8
    assert config.gamma.settings.ACK_TIMEOUT_ACTION == "RETRY_DELIVERY"
    assert config.gamma.dlq.retention_days == 14
    assert config.data_dir() is None


def test_empty_files_mean_defaults_and_data_dir_is_relative_to_config_dir(tmp_path: Path) -> None:
    tree(tmp_path, {"pipeline.yaml": "data_dir: ../data\n", "alpha/alpha.yaml": "# nothing\n"})
    config = load_config(tmp_path, environ={})
    assert config.data_dir() == (tmp_path / "../data").resolve()
    assert config.alpha.settings.PARSER_THREAD_COUNT == 4


def test_missing_config_dir_is_an_issue(tmp_path: Path) -> None:
    issue = one_issue(tmp_path / "nope")
    assert "does not exist" in issue.message


def test_yml_files_and_rule_tests(tmp_path: Path) -> None:
    tree(
        tmp_path,
        {
            "alpha/sources/a.yml": SOURCE.format(id="src_a"),
            "beta/transforms/rules/r.yaml": RULE.format(id="R1", priority=1),
            "beta/transforms/rules/r_test.yaml": "cases: [whatever]\n",
            "alpha/sources/load_test.yaml": SOURCE.format(id="src_t"),
        },
    )
    config = load_config(tmp_path, environ={})
    assert list(config.alpha.sources) == ["src_a", "src_t"]  # *_test only beside rules
    assert [r.rule_id for r in config.beta.rules] == ["R1"]


# -- sort orders ----------------------------------------------------------------------------


def test_rules_and_routes_sorted_by_priority_then_id(tmp_path: Path) -> None:
    tree(
        tmp_path,
        {
            "beta/transforms/rules/1.yaml": RULE.format(id="B", priority=10),
            "beta/transforms/rules/2.yaml": RULE.format(id="A", priority=10),
            "beta/transforms/rules/sub/3.yaml": RULE.format(id="C", priority=500),
            "beta/transforms/rules/4.yaml": RULE.format(id="D", priority=-1),
            "gamma/destinations/d.yaml": DESTINATION.format(id="out"),
            "gamma/routing/rules/1.yaml": ROUTE.format(
                id="low", priority=1, sources="src_a", destination="out"
            ),
            "gamma/routing/rules/2.yaml": ROUTE.format(
                id="high", priority=100, sources="src_a", destination="out"
            ),
        },
    )
    config = load_config(tmp_path, environ={})
    assert [r.rule_id for r in config.beta.rules] == ["C", "A", "B", "D"]
    assert [r.rule_id for r in config.gamma.routes] == ["high", "low"]


# -- messages ---------------------------------------------------------------------------------


def test_house_rule_message_shape(tmp_path: Path) -> None:
    text = DESTINATION.format(id="warehouse") + "delivery:\n  batch_size: -5\n"
    tree(tmp_path, {"gamma/destinations/warehouse.yaml": text})
    issue = one_issue(tmp_path)
    assert str(issue) == (
        "gamma/destinations/warehouse.yaml:8: delivery.batch_size: -5 is not allowed; "
        "expected an integer from 1 to 100000."
    )


def test_unknown_key_did_you_mean_and_allowed_keys(tmp_path: Path) -> None:
    text = SOURCE.format(id="src_a") + "polling:\n  batch_sise: 10\n"
    tree(tmp_path, {"alpha/sources/a.yaml": text})
    issue = one_issue(tmp_path)
    assert (issue.key, issue.line) == ("polling.batch_sise", 8)
    assert issue.message == (
        '"batch_sise" is not a known key; did you mean "batch_size"? '
        "Allowed here: interval_seconds, batch_size."
    )


def test_unknown_key_without_a_close_match(tmp_path: Path) -> None:
    tree(tmp_path, {"alpha/alpha.yaml": "ZZZ_UNRELATED: 1\n"})
    issue = one_issue(tmp_path)
    assert issue.message.startswith('"ZZZ_UNRELATED" is not a known key.')


def test_case_insensitive_suggestion_for_settings(tmp_path: Path) -> None:
    tree(tmp_path, {"gamma/gamma.yaml": "output_batch_size: 10\n"})
    assert 'did you mean "OUTPUT_BATCH_SIZE"' in one_issue(tmp_path).message


def test_unknown_plugin_type_did_you_mean(tmp_path: Path) -> None:
    tree(tmp_path, {"alpha/sources/a.yaml": SOURCE.format(id="a").replace("file", "fiel")})
    issue = one_issue(tmp_path)
    assert (issue.key, issue.line) == ("source_type", 2)
    assert '"fiel" is not a known source type' in issue.message
    assert 'Did you mean "file"?' in issue.message


def test_plugin_section_errors_are_located_in_it(tmp_path: Path) -> None:
    text = DESTINATION.format(id="out").replace("  path: /data/out.jsonl\n", "  pth: x\n")
    tree(tmp_path, {"gamma/destinations/d.yaml": text})
    issues = issues_of(tmp_path)
    keys = {(i.key, i.line) for i in issues}
    assert ("connection.pth", 4) in keys
    assert ("connection.path", 3) in keys  # missing: reported at its parent's line


def test_type_errors_say_what_was_expected(tmp_path: Path) -> None:
    tree(
        tmp_path,
        {
            "alpha/alpha.yaml": "VALIDATION_STRICT_MODE: maybe\nPARSER_THREAD_COUNT: 2.5\n",
            "gamma/gamma.yaml": "ACK_TIMEOUT_ACTION: NEVER\n",
        },
    )
    messages = {i.key: i.message for i in issues_of(tmp_path)}
    assert messages["VALIDATION_STRICT_MODE"] == '"maybe" is not allowed; expected true or false.'
    assert messages["PARSER_THREAD_COUNT"] == (
        "2.5 is not allowed; expected an integer from 1 to 256."
    )
    assert messages["ACK_TIMEOUT_ACTION"] == (
        '"NEVER" is not allowed; expected one of RETRY_DELIVERY, ASSUME_SUCCESS.'
    )


def test_missing_required_key(tmp_path: Path) -> None:
    tree(tmp_path, {"alpha/sources/a.yaml": "source_type: file\nconnection: {path: /x}\n"})
    issue = one_issue(tmp_path)
    assert (issue.key, issue.line) == ("source_id", 1)
    assert issue.message.startswith("is required")


def test_condition_errors_point_inside_match(tmp_path: Path) -> None:
    text = RULE.format(id="R1", priority=1).replace("condition: exists", "condition: exist")
    tree(tmp_path, {"beta/transforms/rules/r.yaml": text})
    issue = one_issue(tmp_path)
    assert (issue.key, issue.line) == ("match.condition", 5)
    assert "'exist' is not a known condition" in issue.message


def test_transform_that_cannot_build_is_an_issue_at_transform(tmp_path: Path) -> None:
    text = RULE.format(id="R1", priority=1).replace(
        "match:\n  field: phone_number\n  condition: exists\n", ""
    )
    tree(tmp_path, {"beta/transforms/rules/r.yaml": text})
    issue = one_issue(tmp_path)
    assert (issue.key, issue.line) == ("transform", 3)
    assert "regex_replace needs a field" in issue.message


def test_union_errors_are_merged(tmp_path: Path) -> None:
    tree(
        tmp_path,
        {
            "gamma/destinations/d.yaml": DESTINATION.format(id="out"),
            "gamma/routing/rules/r.yaml": "rule_id: r\ndestination: {a: 1}\n",
        },
    )
    issue = one_issue(tmp_path)
    assert issue.key == "destination"
    assert issue.message == "a mapping is not allowed; expected a string or a list of strings."


def test_hidden_fields_are_not_keys(tmp_path: Path) -> None:
    tree(tmp_path, {"alpha/sources/a.yaml": SOURCE.format(id="a") + "file: /etc/passwd\n"})
    issue = one_issue(tmp_path)
    assert (issue.key, issue.message) == ("file", '"file" is not a known key.')


def test_weights_thresholds_and_dimensions(tmp_path: Path) -> None:
    scoring = """\
    quality_scoring:
      weights: {completeness: 0.5, consistency: 0.6}
      thresholds: {warn: 0.3, error: 0.5}
      enabled_dimensions: [completeness]
      disabled_dimensions: [completeness, speed]
    """
    tree(tmp_path, {"beta/quality/scoring.yaml": scoring})
    messages = {i.key: i.message for i in issues_of(tmp_path)}
    assert "add up to 1.1" in messages["quality_scoring.weights"]
    assert "expected warn > error > reject" in messages["quality_scoring.thresholds"]
    assert messages["quality_scoring.disabled_dimensions[1]"].startswith('"speed" is not allowed')


def test_scoring_defaults_when_only_dimensions_given(tmp_path: Path) -> None:
    tree(
        tmp_path,
        {
            "beta/quality/scoring.yaml": (
                "quality_scoring:\n  enabled_dimensions: [completeness, conformance]\n"
                "  disabled_dimensions: [timeliness]\n"
            )
        },
    )
    scoring = load_config(tmp_path, environ={}).beta.scoring
    assert scoring is not None
    assert scoring.weights["timeliness"] == 0.25
    assert scoring.active_dimensions == ["completeness", "conformance"]


def test_postgresql_state_needs_a_dsn(tmp_path: Path) -> None:
    tree(tmp_path, {"pipeline.yaml": "state:\n  backend: postgresql\n"})
    issue = one_issue(tmp_path)
    assert (issue.file, issue.key, issue.line) == ("pipeline.yaml", "state.dsn", 1)


def test_backend_specific_keys_reach_the_backend(tmp_path: Path) -> None:
    tree(
        tmp_path,
        {
            "pipeline.yaml": (
                "transport:\n  backend: nats\n  replicas: 3\nstate:\n  busy_timeout_ms: 5\n"
            )
        },
    )
    pipeline = load_config(tmp_path, environ={}).pipeline
    assert pipeline.transport.backend_settings()["replicas"] == 3
    assert pipeline.state.backend_settings() == {
        "path": None,
        "busy_timeout_ms": 5,
        "cache_size_mb": 16,
    }
    tree(tmp_path, {"pipeline.yaml": "transport:\n  backend: nats\n  replica: 3\n"})
    assert 'did you mean "replicas"' in one_issue(tmp_path).message


def test_every_issue_of_every_file_is_collected(tmp_path: Path) -> None:
    tree(
        tmp_path,
        {
            "pipeline.yaml": "logging: {level: LOUD}\n",
            "alpha/alpha.yaml": "DEFAULT_BATCH_SIZE: 0\n",
            "beta/beta.yaml": "TRANSFORM_PARALLELISM: [1]\n",
            "gamma/dlq.yaml": "retention_days: -1\n",
            "gamma/gamma.yaml": "OUTPUT_BATCH_SIZE: x\n",
        },
    )
    files = [i.file for i in issues_of(tmp_path)]
    assert files == [
        "alpha/alpha.yaml",
        "beta/beta.yaml",
        "gamma/dlq.yaml",
        "gamma/gamma.yaml",
        "pipeline.yaml",
    ]


def test_non_mapping_file(tmp_path: Path) -> None:
    tree(tmp_path, {"alpha/sources/a.yaml": "- a\n- b\n"})
    assert "expected a mapping" in one_issue(tmp_path).message


# -- interpolation through the loader ----------------------------------------------------------


def test_interpolation_in_every_file(tmp_path: Path) -> None:
    text = SOURCE.format(id="${SRC_ID}").replace("/data/in", "${IN_DIR:-/default/in}")
    tree(tmp_path, {"alpha/sources/a.yaml": text, "alpha/alpha.yaml": "DEFAULT_BATCH_SIZE: ${B}\n"})
    config = load_config(tmp_path, environ={"SRC_ID": "from_env", "B": "77"})
    assert config.alpha.settings.DEFAULT_BATCH_SIZE == 77
    assert config.alpha.sources["from_env"].connection.path == "/default/in"


def test_unset_variable_is_reported_once(tmp_path: Path) -> None:
    tree(tmp_path, {"alpha/alpha.yaml": "\nDEFAULT_BATCH_SIZE: ${BATCH}\n"})
    issue = one_issue(tmp_path)
    assert (issue.key, issue.line) == ("DEFAULT_BATCH_SIZE", 2)
    assert "environment variable BATCH" in issue.message


# -- cross-file checks ------------------------------------------------------------------------


def test_duplicate_source_ids_name_both_files(tmp_path: Path) -> None:
    tree(
        tmp_path,
        {
            "alpha/sources/a.yaml": SOURCE.format(id="same"),
            "alpha/sources/b.yaml": SOURCE.format(id="same"),
        },
    )
    issue = one_issue(tmp_path)
    assert (issue.file, issue.key, issue.line) == ("alpha/sources/b.yaml", "source_id", 1)
    assert "alpha/sources/a.yaml:1" in issue.message


def test_duplicate_rule_and_destination_ids(tmp_path: Path) -> None:
    tree(
        tmp_path,
        {
            "beta/transforms/rules/a.yaml": RULE.format(id="R", priority=1),
            "beta/transforms/rules/b.yaml": RULE.format(id="R", priority=2),
            "gamma/destinations/a.yaml": DESTINATION.format(id="out"),
            "gamma/destinations/b.yaml": DESTINATION.format(id="out"),
        },
    )
    files = sorted(i.file for i in issues_of(tmp_path))
    assert files == ["beta/transforms/rules/b.yaml", "gamma/destinations/b.yaml"]


def test_route_to_unknown_destination(tmp_path: Path) -> None:
    tree(
        tmp_path,
        {
            "gamma/destinations/d.yaml": DESTINATION.format(id="analytics_warehouse"),
            "gamma/routing/rules/r.yaml": ROUTE.format(
                id="r", priority=1, sources="src_a", destination="analytics_warehous"
            ),
        },
    )
    issue = one_issue(tmp_path)
    assert (issue.file, issue.key, issue.line) == ("gamma/routing/rules/r.yaml", "destination", 6)
    assert 'Did you mean "analytics_warehouse"?' in issue.message


def test_route_sending_unauthorized_sources(tmp_path: Path) -> None:
    tree(
        tmp_path,
        {
            "gamma/destinations/d.yaml": DESTINATION.format(id="out"),
            "gamma/routing/rules/r.yaml": ROUTE.format(
                id="r", priority=1, sources="src_a, src_z", destination="[out]"
            ),
        },
    )
    issue = one_issue(tmp_path)
    assert (issue.key, issue.line) == ("match.source_id", 4)
    assert issue.message.startswith('would send records of src_z to "out", whose authorization')
    assert "gamma/destinations/d.yaml" in issue.message


def test_route_within_allowed_sources_and_to_a_broken_destination(tmp_path: Path) -> None:
    tree(
        tmp_path,
        {
            "gamma/destinations/d.yaml": DESTINATION.format(id="out"),
            "gamma/routing/rules/r.yaml": ROUTE.format(
                id="r", priority=1, sources="src_a, src_b", destination="out"
            ),
        },
    )
    assert load_config(tmp_path, environ={}).gamma.routes[0].destinations == ["out"]
    # A destination file with an error is reported once, not again from the route.
    broken = DESTINATION.format(id="out").replace("destination_type: file", "destination_type: x")
    tree(tmp_path, {"gamma/destinations/d.yaml": broken})
    assert one_issue(tmp_path).file == "gamma/destinations/d.yaml"


def test_gamma_settings_name_existing_destinations_and_override_them(tmp_path: Path) -> None:
    files = {
        "gamma/destinations/d.yaml": DESTINATION.format(id="out"),
        "gamma/gamma.yaml": "destinations:\n  out:\n    delivery_mode: async\n",
    }
    tree(tmp_path, files)
    destination = load_config(tmp_path, environ={}).gamma.destinations["out"]
    assert (destination.delivery_mode, destination.ack_mode) == ("async", "batch")
    tree(
        tmp_path,
        {"gamma/gamma.yaml": "default_destination: nowhere\ndestinations:\n  other: {}\n"},
    )
    keys = sorted((i.key, i.line) for i in issues_of(tmp_path))
    assert keys == [("default_destination", 1), ("destinations.other", 3)]


def test_schema_ref_must_exist_and_be_json(tmp_path: Path) -> None:
    text = SOURCE.format(id="a") + "validation:\n  schema_ref: schemas/s.json\n"
    tree(tmp_path, {"alpha/sources/a.yaml": text})
    issue = one_issue(tmp_path)
    assert (issue.key, issue.line) == ("validation.schema_ref", 8)
    assert "does not exist" in issue.message
    tree(tmp_path, {"alpha/schemas/s.json": "{not json"})
    messages = [i.message for i in issues_of(tmp_path)]
    assert any("is not valid JSON" in m for m in messages)
    (tmp_path / "alpha/schemas/s.json").write_text(json.dumps({"type": "object"}))
    source = load_config(tmp_path, environ={}).alpha.sources["a"]
    assert source.validation.schema_path(tmp_path / "alpha") == tmp_path / "alpha/schemas/s.json"


# -- export, checksum, secrets ----------------------------------------------------------------


def test_export_redacts_literal_secrets_and_keeps_references(tmp_path: Path) -> None:
    tree(
        tmp_path,
        {
            "pipeline.yaml": (
                "state:\n  backend: postgresql\n  dsn: postgresql://dps:hunter2@db:5432/dps\n"
                "admin:\n  auth_token_ref: env:DPS_TOKEN\n"
            ),
            "alpha/sources/a.yaml": (
                "source_id: a\nsource_type: rest_api\nconnection:\n"
                "  endpoint: https://x\n  headers: {Authorization: Bearer abc, X-Trace: t}\n"
                "  auth_config: {password_ref: vault:secret/p/pw}\n"
            ),
        },
    )
    config = load_config(tmp_path, environ={})
    exported = config.export()
    json.dumps(exported)  # JSON-able
    assert exported["pipeline"]["state"]["dsn"] == "postgresql://dps:***@db:5432/dps"
    assert exported["pipeline"]["admin"]["auth_token_ref"] == "env:DPS_TOKEN"
    connection = exported["alpha"]["sources"]["a"]["connection"]
    assert connection["headers"] == {"Authorization": "***", "X-Trace": "t"}
    assert connection["auth_config"]["password_ref"] == "vault:secret/p/pw"
    assert "file" not in exported["alpha"]["sources"]["a"]
    assert "hunter2" not in json.dumps(exported)


def test_checksum_is_stable_and_follows_content(tmp_path: Path) -> None:
    tree(tmp_path, {"alpha/sources/a.yaml": SOURCE.format(id="a")})
    first = load_config(tmp_path, environ={}).checksum()
    assert first == load_config(tmp_path, environ={}).checksum()
    assert len(first) == 64
    tree(tmp_path, {"alpha/sources/a.yaml": SOURCE.format(id="b")})
    assert load_config(tmp_path, environ={}).checksum() != first


def test_vault_reference_loads_and_fails_only_when_resolved(tmp_path: Path) -> None:
    tree(
        tmp_path,
        {"pipeline.yaml": "state:\n  backend: postgresql\n  dsn_ref: vault:secret/dps/dsn\n"},
    )
    config = load_config(tmp_path, environ={})
    ref = config.pipeline.state.dsn_ref
    assert ref is not None
    with pytest.raises(SecretError, match="VAULT_ADDR"):
        ref.resolve(environ={})


def test_env_and_file_references_resolve(tmp_path: Path) -> None:
    secret = tmp_path / "dsn.txt"
    secret.write_text("postgresql://u@h/db\n")
    state = StateSettings.model_validate({"backend": "postgresql", "dsn_ref": f"file:{secret}"})
    assert state.backend_settings()["dsn"] == "postgresql://u@h/db"


def test_malformed_reference_is_refused_at_load(tmp_path: Path) -> None:
    tree(tmp_path, {"pipeline.yaml": "admin:\n  auth_token_ref: s3cr3t\n"})
    issue = one_issue(tmp_path)
    assert (issue.key, issue.line) == ("admin.auth_token_ref", 2)
    assert "is not a secret reference" in issue.message


# -- single files -----------------------------------------------------------------------------


def test_load_file_detects_kind_from_location_and_content(tmp_path: Path) -> None:
    tree(
        tmp_path,
        {
            "anywhere/src.yaml": SOURCE.format(id="a"),
            "anywhere/rule.yaml": RULE.format(id="R", priority=1),
            "anywhere/dest.yaml": DESTINATION.format(id="out"),
            "anywhere/route.yaml": ROUTE.format(id="r", priority=1, sources="x", destination="out"),
            "anywhere/scoring.yaml": "quality_scoring: {}\n",
            "beta/transforms/rules/broken.yaml": "rule_idd: x\n",
        },
    )
    assert isinstance(load_file(tmp_path / "anywhere/src.yaml"), SourceConfig)
    assert isinstance(load_file(tmp_path / "anywhere/rule.yaml"), RuleConfig)
    assert isinstance(load_file(tmp_path / "anywhere/dest.yaml"), DestinationConfig)
    assert isinstance(load_file(tmp_path / "anywhere/route.yaml"), RoutingRule)
    assert isinstance(load_file(tmp_path / "anywhere/scoring.yaml"), QualityScoringConfig)
    assert detect_kind(tmp_path / "beta/transforms/rules/broken.yaml") == "rule"
    with pytest.raises(ConfigError, match='did you mean "rule_id"'):
        load_file(tmp_path / "beta/transforms/rules/broken.yaml")


def test_settings_kind_from_keys_or_the_asking_module(tmp_path: Path) -> None:
    tree(tmp_path, {"x/a.yaml": "OUTPUT_BATCH_SIZE: 10\n", "x/empty.yaml": ""})
    assert check_file(tmp_path / "x/a.yaml").kind == "gamma"
    assert check_file(tmp_path / "x/empty.yaml", module="beta").kind == "beta"


def test_single_source_file_resolves_schema_from_its_config_dir(tmp_path: Path) -> None:
    text = SOURCE.format(id="a") + "validation:\n  schema_ref: schemas/s.json\n"
    tree(tmp_path, {"config/sources/a.yaml": text})
    result = check_file(tmp_path / "config/sources/a.yaml")
    [issue] = result.issues
    assert issue.key == "validation.schema_ref"
    assert str(tmp_path / "config/schemas/s.json") in issue.message
    tree(tmp_path, {"config/schemas/s.json": "{}"})
    assert check_file(tmp_path / "config/sources/a.yaml").ok


def test_file_records_where_it_came_from(tmp_path: Path) -> None:
    tree(tmp_path, {"alpha/sources/a.yaml": SOURCE.format(id="a")})
    source = load_config(tmp_path, environ={}).alpha.sources["a"]
    assert source.file == tmp_path.absolute() / "alpha/sources/a.yaml"


def test_models_built_in_code_pick_the_plugin_model() -> None:
    source = SourceConfig(source_id="a", source_type="file", connection={"path": "/x"})
    assert source.connection.pattern == "*"
    rule = RuleConfig.model_validate(
        {"rule_id": "R", "transform": {"type": "rename", "config": {"field": "a", "to": "b"}}}
    )
    assert rule.transform.config.to == "b"
    assert rule.match_field is None
    destination = DestinationConfig.model_validate(
        {"destination_id": "d", "destination_type": "file", "connection": {"path": "/o"}}
    )
    assert destination.connection.path == "/o"
    assert destination.format.type == "jsonl"
