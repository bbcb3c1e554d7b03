"""The plugin registry: registration, lookups with suggestions, built-ins and entry points."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest

from dps.core import registry
from dps.core.registry import UnknownPluginError


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Register into copies of the tables, so a test's plugins never leak into other tests."""
    monkeypatch.setattr(registry, "_plugins", copy.deepcopy(registry._plugins))
    monkeypatch.setattr(registry, "_loaded", set(registry._loaded))
    yield


class _FakeEntryPoint:
    def __init__(self, name: str, target: Any) -> None:
        self.name = name
        self._target = target

    def load(self) -> Any:
        return self._target


def test_builtin_plugins_are_found_without_importing_them_first() -> None:
    assert registry.names("sources") == sorted(registry.names("sources"))
    assert {"file", "rest_api"} <= set(registry.names("sources"))
    assert {"json", "ndjson"} <= set(registry.names("parsers"))
    assert {"regex_replace", "rename", "set"} <= set(registry.names("transforms"))
    assert {"database", "file"} <= set(registry.names("destinations"))
    assert {"sqlite", "postgresql"} <= set(registry.names("states"))


def test_get_returns_the_registered_class() -> None:
    from dps.gamma.destinations.file import FileDestination

    assert registry.get("destinations", "file") is FileDestination


def test_the_file_name_is_the_registered_name() -> None:
    for kind in ("sources", "parsers", "transforms", "destinations"):
        for name in registry.names(kind):
            module = registry.get(kind, name).__module__
            assert module == f"{registry.BUILTIN_PACKAGES[kind]}.{name}"


def test_register_is_a_decorator_that_returns_the_class(isolated: None) -> None:
    @registry.register("transforms", "reverse_words")
    class ReverseWords:
        pass

    assert registry.get("transforms", "reverse_words") is ReverseWords
    assert "reverse_words" in registry.names("transforms")


def test_registering_the_same_class_twice_is_harmless(isolated: None) -> None:
    class Widget:
        pass

    registry.register("transforms", "widget")(Widget)
    registry.register("transforms", "widget")(Widget)

    assert registry.get("transforms", "widget") is Widget


def test_two_classes_under_one_name_are_refused(isolated: None) -> None:
    class First:
        pass

    class Second:
        pass

    registry.register("transforms", "clash")(First)
    with pytest.raises(ValueError, match="Two transforms plugins are registered as 'clash'"):
        registry.register("transforms", "clash")(Second)
    assert registry.get("transforms", "clash") is First


def test_an_unknown_name_lists_the_known_ones_and_suggests_the_closest() -> None:
    with pytest.raises(UnknownPluginError) as caught:
        registry.get("sources", "rest-api")

    message = str(caught.value)
    assert "'rest-api' is not a known source type" in message
    assert f"expected one of {', '.join(registry.names('sources'))}." in message
    assert "Did you mean 'rest_api'?" in message
    assert isinstance(caught.value, LookupError)


def test_an_unknown_name_without_a_close_match_has_no_suggestion() -> None:
    with pytest.raises(UnknownPluginError) as caught:
        registry.get("destinations", "zzzzzz")
    assert "Did you mean" not in str(caught.value)


def test_third_party_plugins_register_through_their_entry_point_group(
    isolated: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    class KafkaSink:
        pass

    groups: list[str] = []

    def fake_entry_points(*, group: str) -> list[_FakeEntryPoint]:
        groups.append(group)
        return [_FakeEntryPoint("kafka", KafkaSink)] if group == "dps.sinks" else []

    monkeypatch.setattr(registry, "entry_points", fake_entry_points)

    assert registry.names("sinks") == ["kafka"]
    assert registry.get("sinks", "kafka") is KafkaSink
    assert groups == ["dps.sinks"]  # loaded once per kind, not on every lookup


def test_an_entry_point_clashing_with_a_builtin_is_refused(
    isolated: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Impostor:
        pass

    def fake_entry_points(*, group: str) -> list[_FakeEntryPoint]:
        return [_FakeEntryPoint("file", Impostor)] if group == "dps.destinations" else []

    registry._loaded.discard("destinations")
    monkeypatch.setattr(registry, "entry_points", fake_entry_points)

    with pytest.raises(ValueError, match="registered as 'file'"):
        registry.names("destinations")
