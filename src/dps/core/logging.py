"""JSON logs in the manual's format, one object per line.

Every process calls ``configure_logging(module)`` once; code then logs through
``get_logger(component)``::

    log = get_logger("source_adapter")
    log.info("Successfully connected to source.", source_id="api_source_1", latency_ms=45)

which prints (on one line)::

    {"timestamp": "2024-01-15T10:30:45.123Z", "level": "INFO", "module": "alpha",
     "component": "source_adapter", "message": "Successfully connected to source.",
     "correlation_id": null, "source_id": "api_source_1", "details": {"latency_ms": 45}}

Why not structlog: the manual fixes eight fields and nothing else, and the standard library already
routes third-party loggers (uvicorn, httpx) through the same handler. A formatter of forty lines on
top of ``logging`` does the whole job without a second logging pipeline to configure.

Records from plain ``logging`` calls are formatted too: ``extra={"component": ..., "correlation_id":
..., "source_id": ...}`` fill the top-level fields and any other ``extra`` key goes to ``details``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any, Final, TextIO

import msgspec

__all__ = ["ComponentLogger", "JsonFormatter", "configure_logging", "get_logger"]

#: Attributes every ``LogRecord`` has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS: Final = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}

#: Top-level fields that may come from ``extra=``; they never go to ``details``.
_TOP_LEVEL: Final = frozenset({"component", "correlation_id", "source_id", "details"})

#: Loggers whose last name part would be a misleading component ("error" on INFO lines).
_COMPONENT_ALIASES: Final = {"uvicorn": "admin_server", "uvicorn.error": "admin_server"}

#: Chatty third-party loggers: httpx logs every request at INFO, uvicorn its start-up banner.
_QUIET_LOGGERS: Final = ("httpx", "httpcore", "uvicorn", "uvicorn.error", "uvicorn.access")

_HANDLER_MARK: Final = "_dps_json_handler"

_encoder = msgspec.json.Encoder(enc_hook=str)


class JsonFormatter(logging.Formatter):
    """Formats a ``LogRecord`` as one JSON object with exactly the manual's eight fields."""

    def __init__(self, module: str) -> None:
        super().__init__()
        self.module = module
        # The seconds part of the timestamp changes at most once a second; caching it as one
        # tuple (read and replaced atomically) keeps strftime off the per-line path.
        self._second: tuple[int, str] = (-1, "")
        self._components: dict[str, str] = dict(_COMPONENT_ALIASES)

    def _timestamp(self, created: float, msecs: float) -> str:
        second = int(created)
        cached = self._second
        if cached[0] != second:
            cached = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
            self._second = cached
        return f"{cached[1]}.{int(msecs):03d}Z"

    def _component(self, logger_name: str) -> str:
        component = self._components.get(logger_name)
        if component is None:
            component = logger_name.rsplit(".", 1)[-1] or "root"
            self._components[logger_name] = component
        return component

    def format(self, record: logging.LogRecord) -> str:
        attrs = record.__dict__
        details = attrs.get("details")
        if isinstance(details, dict):
            details = dict(details) if record.exc_info or record.stack_info else details
        else:
            # A plain ``logging`` call: its extra keys become the details.
            details = {
                key: value
                for key, value in attrs.items()
                if key not in _STANDARD_ATTRS and key not in _TOP_LEVEL
            }
        if record.exc_info:
            details["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            details["stack"] = self.formatStack(record.stack_info)
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # bad %-args must not lose the line
            message = f"{record.msg} {record.args!r}"
        entry = {
            "timestamp": self._timestamp(record.created, record.msecs),
            "level": record.levelname,
            "module": self.module,
            "component": attrs.get("component") or self._component(record.name),
            "message": message,
            "correlation_id": attrs.get("correlation_id"),
            "source_id": attrs.get("source_id"),
            "details": details,
        }
        try:
            return _encoder.encode(entry).decode()
        except (TypeError, ValueError, OverflowError):
            # msgspec refuses some dict keys (tuples, objects); the slow path never refuses.
            return json.dumps(entry, default=str, ensure_ascii=False)


class ComponentLogger:
    """A logger for one component whose methods take the log's data as keyword fields.

    ``correlation_id=`` and ``source_id=`` become the top-level fields of the line; every other
    keyword goes to ``details``. Fields given to ``bind`` are added to every line.
    """

    __slots__ = ("_bound", "_component", "_logger")

    def __init__(
        self, logger: logging.Logger, component: str, bound: Mapping[str, Any] | None = None
    ) -> None:
        self._logger = logger
        self._component = component
        self._bound: dict[str, Any] = dict(bound or {})

    @property
    def component(self) -> str:
        """The ``component`` field of this logger's lines."""
        return self._component

    def bind(self, **fields: Any) -> ComponentLogger:
        """A logger that adds ``fields`` to every line (e.g. ``source_id=``)."""
        return ComponentLogger(self._logger, self._component, {**self._bound, **fields})

    def is_enabled_for(self, level: int) -> bool:
        """Whether a line at ``level`` would be emitted; check it before costly fields."""
        return self._logger.isEnabledFor(level)

    def _log(
        self,
        level: int,
        message: str,
        fields: dict[str, Any],
        exc_info: bool | BaseException = False,
    ) -> None:
        # Checked first so that a disabled level costs one call and no dict work.
        if not self._logger.isEnabledFor(level):
            return
        if self._bound:
            fields = {**self._bound, **fields}
        correlation_id = fields.pop("correlation_id", None)
        source_id = fields.pop("source_id", None)
        self._logger.log(
            level,
            message,
            exc_info=exc_info,
            stacklevel=3,
            extra={
                "component": self._component,
                "correlation_id": correlation_id,
                "source_id": source_id,
                "details": fields,
            },
        )

    def debug(self, message: str, **fields: Any) -> None:
        """Log a DEBUG line; ``message`` is a sentence, data goes in ``fields``."""
        self._log(logging.DEBUG, message, fields)

    def info(self, message: str, **fields: Any) -> None:
        """Log an INFO line; ``message`` is a sentence, data goes in ``fields``."""
        self._log(logging.INFO, message, fields)

    def warning(
        self, message: str, *, exc_info: bool | BaseException = False, **fields: Any
    ) -> None:
        """Log a WARNING line, with the traceback when ``exc_info`` is set."""
        self._log(logging.WARNING, message, fields, exc_info)

    def error(self, message: str, *, exc_info: bool | BaseException = False, **fields: Any) -> None:
        """Log an ERROR line, with the traceback when ``exc_info`` is set."""
        self._log(logging.ERROR, message, fields, exc_info)

    def critical(
        self, message: str, *, exc_info: bool | BaseException = False, **fields: Any
    ) -> None:
        """Log a CRITICAL line, with the traceback when ``exc_info`` is set."""
        self._log(logging.CRITICAL, message, fields, exc_info)

    def exception(self, message: str, **fields: Any) -> None:
        """Log an ERROR line with the traceback of the exception being handled."""
        self._log(logging.ERROR, message, fields, True)


def get_logger(component: str) -> ComponentLogger:
    """The logger of ``component`` (``source_adapter``, ``delivery``, ...).

    A dotted name (``alpha.source_adapter``) is allowed; the ``component`` field is its last part.
    """
    name = component if component.startswith("dps.") else f"dps.{component}"
    return ComponentLogger(logging.getLogger(name), component.rsplit(".", 1)[-1])


def configure_logging(module: str, level: str = "INFO", stream: TextIO | None = None) -> None:
    """Send every log line of this process to ``stream`` (stderr) as JSON for ``module``.

    Replaces the handler a previous call installed, so calling it again (tests, a reload that
    changes the level) does not duplicate lines. Raises ``ValueError`` for an unknown level.
    """
    level_name = level.upper()
    if level_name == "WARN":
        level_name = "WARNING"
    numeric = logging.getLevelNamesMapping().get(level_name)
    if numeric is None:
        raise ValueError(
            f"Log level {level!r} is not valid; expected one of DEBUG, INFO, WARNING, ERROR, "
            "CRITICAL."
        )
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_MARK, False):
            root.removeHandler(handler)
            handler.close()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    setattr(handler, _HANDLER_MARK, True)
    handler.setFormatter(JsonFormatter(module))
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in _QUIET_LOGGERS:
        # At DEBUG the operator asked for everything; otherwise keep their per-request noise out.
        logging.getLogger(name).setLevel(numeric if numeric <= logging.DEBUG else logging.WARNING)
    logging.captureWarnings(True)
