"""The plugin registry: every source, parser, transform, destination and backend registers here.

A plugin is one file that declares its configuration model and its class and registers itself
with one decorator line under the ``type`` name used in YAML::

    @register("destinations", "file")
    class FileDestination(Destination):
        Config = FileDestinationConfig

The code that builds a pipeline never names a plugin type: it asks the registry. Built-in plugins
are imported from their package folder on first use; third-party plugins register through the
Python entry-point group ``dps.<kind>`` (for example ``dps.destinations``).
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, TypeVar

T = TypeVar("T")

#: kind -> the package whose modules are the built-in plugins of that kind.
BUILTIN_PACKAGES: dict[str, str] = {
    "sources": "dps.alpha.sources",
    "parsers": "dps.alpha.parsers",
    "transforms": "dps.beta.transforms",
    "enrichment": "dps.beta.enrichment",
    "destinations": "dps.gamma.destinations",
    "queues": "dps.queues",
    "states": "dps.state",
}

_plugins: dict[str, dict[str, Any]] = {kind: {} for kind in BUILTIN_PACKAGES}
_loaded: set[str] = set()


class UnknownPluginError(LookupError):
    """No plugin of that kind is registered under that name."""


def register(kind: str, name: str) -> Callable[[T], T]:
    """Class decorator: register ``cls`` as the ``kind`` plugin called ``name``."""

    def decorate(cls: T) -> T:
        table = _plugins.setdefault(kind, {})
        existing = table.get(name)
        if existing is not None and existing is not cls:
            raise ValueError(
                f"Two {kind} plugins are registered as {name!r}: {existing} and {cls}."
            )
        table[name] = cls
        return cls

    return decorate


def _load(kind: str) -> None:
    if kind in _loaded:
        return
    _loaded.add(kind)
    package_name = BUILTIN_PACKAGES.get(kind)
    if package_name:
        package = importlib.import_module(package_name)
        for info in pkgutil.iter_modules(package.__path__):
            if not info.name.startswith("_") and info.name != "base":
                importlib.import_module(f"{package_name}.{info.name}")
    for ep in entry_points(group=f"dps.{kind}"):
        register(kind, ep.name)(ep.load())


def get(kind: str, name: str) -> Any:
    """The plugin class registered as ``name``; raises with the known names if there is none."""
    _load(kind)
    try:
        return _plugins[kind][name]
    except KeyError:
        known = sorted(_plugins.get(kind, {}))
        hint = difflib.get_close_matches(name, known, n=1)
        suggestion = f" Did you mean {hint[0]!r}?" if hint else ""
        raise UnknownPluginError(
            f"{name!r} is not a known {kind[:-1]} type; expected one of {', '.join(known)}."
            f"{suggestion}"
        ) from None


def names(kind: str) -> list[str]:
    """The registered names of a kind, sorted."""
    _load(kind)
    return sorted(_plugins.get(kind, {}))
