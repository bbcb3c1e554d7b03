"""What every configuration model shares: the YAML keys it accepts and the errors it raises.

:class:`ConfigModel` adds to :class:`~dps.core.model.StrictModel` the few hooks that let the
loader turn pydantic's errors into messages that name the right key and suggest the right
spelling; :func:`config_error` is how a validator reports a problem at a key below the one it
validates (a condition inside ``match``, ``state.dsn`` from the ``state`` section).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

from pydantic import model_validator
from pydantic_core import PydanticCustomError
from pydantic_core.core_schema import ValidatorFunctionWrapHandler

from dps.core import registry
from dps.core.model import StrictModel

#: The error type of :func:`config_error`; its context holds ``message`` and ``at``.
CONFIG_ERROR = "dps_config"


class ConfigModel(StrictModel):
    """A configuration model: strict, documented, and able to name its YAML keys."""

    #: YAML keys accepted besides the fields (a destination's ``connection`` and ``format``).
    yaml_extra_keys: ClassVar[tuple[str, ...]] = ()
    #: Fields that are not YAML keys: set by the loader, or built from other keys.
    yaml_hidden_fields: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def yaml_keys(cls) -> list[str]:
        """The keys a YAML mapping for this model may hold, in declaration order."""
        keys = [
            info.alias or name
            for name, info in cls.model_fields.items()
            if name not in cls.yaml_hidden_fields
        ]
        return keys + list(cls.yaml_extra_keys)

    @classmethod
    def specialize(cls, data: Any) -> type[ConfigModel]:
        """The model that validates ``data``: a plugin-specific subclass where there is one."""
        return cls


class SpecializedModel(ConfigModel):
    """A model validated by a subclass that :meth:`specialize` picks from the data.

    A source's ``connection`` depends on its ``source_type``: validating a ``SourceConfig``
    returns a ``SourceConfig[RestApiConnection]`` whose ``connection`` field has the plugin's
    model as its type, so errors inside it carry their own key. This works through
    ``model_validate``, nested validation and the constructor alike.
    """

    def __init__(self, /, **data: Any) -> None:
        target = type(self).specialize(type(self).prepare(data))
        if target is not type(self):
            # The constructor validates into ``self``; give it the specialized class first
            # (same layout: the subclass only narrows field types).
            object.__setattr__(self, "__class__", target)
        super().__init__(**data)

    @classmethod
    def prepare(cls, data: Any) -> Any:
        """Reshape the input before it is validated (a destination's ``connection``/``format``)."""
        return data

    @model_validator(mode="wrap")
    @classmethod
    def _dispatch(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        data = cls.prepare(data)
        target = cls.specialize(data)
        if target is not cls:
            return target.model_validate(data)
        return handler(data)


def config_error(message: str, at: str = "") -> PydanticCustomError:
    """A validation error whose message is final; ``at`` is a key path below the current one."""
    return PydanticCustomError(CONFIG_ERROR, "{message}", {"message": message, "at": at})


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """The closest choice to ``word`` (case-insensitive), or ``None`` when none is close."""
    by_lower = {choice.lower(): choice for choice in choices}
    if word.lower() in by_lower:
        return by_lower[word.lower()]
    hits = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[hits[0]] if hits else None


def one_of(choices: Sequence[str]) -> str:
    return ", ".join(choices)


def plugin_name(kind: str, value: Any) -> str:
    """Check that ``value`` names a registered plugin of ``kind``; suggest the closest name."""
    noun = kind.removesuffix("s")
    known = registry.names(kind)
    if isinstance(value, str) and value in known:
        return value
    shown = f'"{value}"' if isinstance(value, str) else repr(value)
    hint = did_you_mean(value, known) if isinstance(value, str) else None
    suggestion = f' Did you mean "{hint}"?' if hint else ""
    raise config_error(
        f"{shown} is not a known {noun} type; expected one of {one_of(known)}.{suggestion}"
    )
