"""The destination contract, and the four error classes every destination maps its failures to.

A destination type is one file declaring ``Config``: the pydantic model of the type-specific
sections of a destination file (``connection:`` and ``format:``), and its class registered with
``@register("destinations", "<destination_type>")``. Gamma builds one instance per destination
file and calls, from that destination's own delivery thread (never two calls at once):

- ``open()`` once (connect, create tables when asked), ``close()`` at the end;
- ``deliver(records)`` with a batch of at most ``delivery.batch_size`` records. It returns only
  when the batch is acknowledged by the destination (committed, fsynced, 2xx), and returns the
  records it refused one by one as ``(record, TerminalError)`` pairs — those go to the DLQ, the
  rest count as delivered. A :class:`RecordError` says which class (``permanent``: the
  destination refuses this record's data; ``poison``: the record cannot even be rendered for the
  destination). It raises :class:`DeliveryError` when the batch as a whole failed, with the class
  of the failure:

  - ``retryable`` (connection refused or lost, timeout, HTTP 408/5xx, SQLSTATE 08*, 40001,
    40P01, 57P*): retry with exponential backoff and jitter; counts toward the breaker.
  - ``throttle`` (HTTP 429, 503 with Retry-After, SQLSTATE 53300): wait (Retry-After) and
    retry; does not count toward the breaker.
  - ``permanent`` (HTTP 4xx, SQLSTATE 22*, 23*, 42*): the batch is split to find the records at
    fault; those go to the DLQ, the rest are delivered.
  - ``poison`` (a record that cannot be rendered, or is larger than the destination takes):
    the record goes to the DLQ.

  Any other exception escaping ``deliver`` is treated as ``retryable`` once and then as
  ``permanent`` for the batch (so it is split and a single bad record cannot block the spool).
- Delivery must be idempotent on ``record_id``: the same record delivered twice (a retry, a
  replay, a redelivered queue message) leaves one row, one line, one message.

``deliver`` must not keep references to the records after it returns.
"""

from __future__ import annotations

import abc
import socket
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Final, Literal

from pydantic import BaseModel

from dps.core.errors import TerminalError, TransientError
from dps.core.record import Record

#: The error classes (see the module docstring).
ErrorClass = Literal["retryable", "throttle", "permanent", "poison"]
ERROR_CLASSES: Final[tuple[ErrorClass, ...]] = ("retryable", "throttle", "permanent", "poison")
#: Classes that a later attempt may fix: DLQ entries of these are ``retry_eligible``.
RETRY_ELIGIBLE: Final = frozenset({"retryable", "throttle", "transient"})


class DeliveryError(TransientError):
    """A batch failed as a whole; ``error_class`` decides what happens next.

    ``retry_after`` (seconds) is the destination's own hint (HTTP ``Retry-After``).
    A ``DeliveryError`` is a :class:`TransientError` so that code that only knows the
    two-way split still retries it; Gamma reads the class.
    """

    def __init__(
        self,
        message: str,
        error_class: ErrorClass = "retryable",
        *,
        retry_after: float | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.error_class: ErrorClass = error_class
        self.retry_after = retry_after
        self.reason = (
            reason
            or {
                "retryable": "destination_unavailable",
                "throttle": "destination_throttled",
                "permanent": "destination_rejected",
                "poison": "poison_record",
            }[error_class]
        )


class RecordError(TerminalError):
    """One record refused: ``permanent`` (the destination rejects it) or ``poison``."""

    def __init__(
        self, reason: str, message: str, error_class: ErrorClass = "permanent", **kw: Any
    ) -> None:
        super().__init__(reason, message, **kw)
        self.error_class: ErrorClass = error_class


Rejected = list[tuple[Record, TerminalError]]


def record_error_class(error: TerminalError) -> ErrorClass:
    """The class of a per-record refusal (``permanent`` unless it says otherwise)."""
    return error.error_class if isinstance(error, RecordError) else "permanent"


def classify_http_status(status: int, retry_after: str | None = None) -> ErrorClass:
    """HTTP: 429 throttles, 408/5xx are retryable (503 with Retry-After throttles), 4xx permanent.

    413 (payload too large) and 422 are permanent: the split isolates the record at fault.
    """
    if status == 429 or (status == 503 and retry_after):
        return "throttle"
    if status == 408 or status >= 500:
        return "retryable"
    if 400 <= status < 500:
        return "permanent"
    return "retryable"  # 1xx/3xx where 2xx was expected: a misbehaving proxy, try again


def parse_retry_after(value: str | None, default: float | None = None) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date), capped at 5 minutes."""
    if not value:
        return default
    value = value.strip()
    try:
        return min(300.0, max(0.0, float(value)))
    except ValueError:
        pass
    import time
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return default
    return min(300.0, max(0.0, when - time.time()))


#: SQLSTATE classes (first two characters) and codes, per PostgreSQL's appendix A.
_SQLSTATE_THROTTLE: Final = frozenset({"53300", "53400"})  # too many connections, config limit
_SQLSTATE_RETRYABLE_CLASSES: Final = frozenset({"08", "53", "57", "58", "40", "55", "HV", "XX"})
_SQLSTATE_RETRYABLE: Final = frozenset({"40001", "40P01", "55P03", "57014"})
_SQLSTATE_PERMANENT_CLASSES: Final = frozenset({"22", "23", "42", "44", "2F", "P0", "0A", "21"})


def classify_sqlstate(sqlstate: str | None) -> ErrorClass:
    """PostgreSQL (and SQLite, mapped by the caller) SQLSTATE to an error class.

    Data and constraint errors (22, 23), syntax/undefined objects (42) are ``permanent``: the
    batch is split so the rows at fault go to the DLQ. Connection (08), resources (53),
    operator intervention such as a server shutting down (57), serialization failures and
    deadlocks (40) are ``retryable``; too many connections is ``throttle``.
    Unknown codes are ``retryable``: a wrong guess costs a retry, not a record.
    """
    if not sqlstate:
        return "retryable"
    if sqlstate in _SQLSTATE_THROTTLE:
        return "throttle"
    if sqlstate in _SQLSTATE_RETRYABLE:
        return "retryable"
    klass = sqlstate[:2]
    if klass in _SQLSTATE_PERMANENT_CLASSES:
        return "permanent"
    if klass in _SQLSTATE_RETRYABLE_CLASSES:
        return "retryable"
    return "retryable"


def classify_exception(exc: BaseException) -> ErrorClass:
    """Network-level failures: timeouts, refused and reset connections are ``retryable``."""
    if isinstance(exc, DeliveryError):
        return exc.error_class
    if isinstance(exc, RecordError):
        return exc.error_class
    if isinstance(exc, TimeoutError | ConnectionError | socket.gaierror | TransientError):
        return "retryable"
    if isinstance(exc, OSError):
        return "retryable"
    if isinstance(exc, TerminalError):
        return "permanent"
    return "retryable"


def render_record(record: Record, envelope: bool) -> dict[str, Any]:
    """The JSON object sent for a record without an output format: its envelope or payload."""
    if envelope:
        return {
            "record_id": record.record_id,
            "source_id": record.source_id,
            "correlation_id": record.correlation_id,
            "event_time": record.event_time,
            "quality_score": record.quality.score if record.quality else None,
            "payload": record.payload,
        }
    return {**record.payload, "record_id": record.record_id}


class Destination(abc.ABC):
    """Where records end up (see the module docstring)."""

    Config: ClassVar[type[BaseModel]]

    def __init__(self, destination_id: str, spec: Any) -> None:
        self.destination_id = destination_id
        self.spec = spec
        #: The delivery call timeout (``delivery.timeout_ms``), set by Gamma before ``open``.
        self.timeout_s: float = 30.0
        #: The destination's output format (``output_format``), set by Gamma before ``open``.
        self.output: Callable[[Record], dict[str, Any]] | None = None

    def document(self, record: Record, envelope: bool = True) -> dict[str, Any]:
        """The object to send for ``record``: its output format's, else envelope or payload."""
        if self.output is not None:
            return self.output(record)
        return render_record(record, envelope)

    def open(self) -> None:  # noqa: B027 - optional
        """Connect and prepare (create the table or file when configured to)."""

    @abc.abstractmethod
    def deliver(self, records: Sequence[Record]) -> Rejected:
        """Deliver a batch idempotently; return the records refused one by one."""

    def test(self) -> dict[str, Any]:
        """Connect and report (``/admin/destinations/<id>/test``)."""
        return {"ok": True}

    def close(self) -> None:  # noqa: B027 - optional
        """Release connections and files."""


__all__ = [
    "ERROR_CLASSES",
    "RETRY_ELIGIBLE",
    "DeliveryError",
    "Destination",
    "ErrorClass",
    "RecordError",
    "Rejected",
    "classify_exception",
    "classify_http_status",
    "classify_sqlstate",
    "parse_retry_after",
    "record_error_class",
    "render_record",
]
