"""House rule 11: the committed configuration reference is what the models generate."""

from __future__ import annotations

from dps.config.reference import DEFAULT_OUTPUT, generate


def test_reference_is_up_to_date() -> None:
    assert DEFAULT_OUTPUT.exists(), f"{DEFAULT_OUTPUT} is missing"
    committed = DEFAULT_OUTPUT.read_text(encoding="utf-8")
    assert committed == generate(), (
        "docs/configuration-reference.md is out of date: run "
        "`.venv/bin/python -m dps.config.reference` and commit the result."
    )


def test_reference_covers_every_file_and_plugin() -> None:
    text = generate()
    for heading in (
        "`pipeline.yaml`",
        "`alpha/sources/*.yaml`",
        "`beta/quality/scoring.yaml`",
        "`gamma/routing/rules/*.yaml`",
        "`source_type: rest_api`",
        "`transform.type: regex_replace`",
        "`destination_type: database`",
        "`transport.backend: nats`",
    ):
        assert heading in text
    assert "| `delivery.batch_size` | integer from 1 to 100000 | `500` |" in text
