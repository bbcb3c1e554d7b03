"""The error classes of the system.

Every failure is classified, so that the code that catches it knows what happens next:

- ``TerminalError``: this record can never succeed as it is; it goes to the stage's DLQ with the
  reason. Retrying would only repeat the failure.
- ``TransientError``: the operation may succeed later (a connection refused, a timeout, a full
  queue); it is retried with backoff and counts toward a destination's circuit breaker.
- ``ConfigError``: a configuration value is wrong; it names the file, the key path, the bad value
  and what was expected. A running module refuses the new configuration and keeps its last good one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


class DpsError(Exception):
    """Base of every error the system raises on purpose."""


class TerminalError(DpsError):
    """A record-level failure that retrying cannot fix; the record goes to the DLQ.

    ``reason`` is a short machine-readable code (``parse_error``, ``missing_field``,
    ``no_route``, ...); the message is for humans.
    """

    def __init__(self, reason: str, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.field = field


class TransientError(DpsError):
    """A failure that may go away: retry with backoff, count toward the circuit breaker."""


class QueueFullError(TransientError):
    """A queue is at its configured capacity: the producer must wait (backpressure)."""


class SecretError(DpsError):
    """A secret reference (``env:``, ``file:``, ``vault:``) could not be resolved when used."""


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in one configuration file.

    Rendered as ``file:line: key.path: message`` so that editors and terminals can jump to it.
    """

    file: str
    key: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        key = f" {self.key}:" if self.key else ""
        return f"{where}:{key} {self.message}"


class ConfigError(DpsError):
    """One or more configuration problems; ``issues`` lists each with its file, key and line."""

    def __init__(self, issues: Iterable[ConfigIssue] | str) -> None:
        if isinstance(issues, str):
            issues = [ConfigIssue(file="", key="", message=issues)]
        self.issues: Sequence[ConfigIssue] = list(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))
