"""The destination contract.

A destination type is one file declaring ``Config``: the pydantic model of the type-specific
sections of a destination file (``connection:`` and ``format:``), and its class registered with
``@register("destinations", "<destination_type>")``. Gamma builds one instance per destination
file and calls, from one worker thread:

- ``open()`` once (connect, create tables when asked), ``close()`` at the end;
- ``deliver(records)`` with a batch of at most ``delivery.batch_size`` records. It returns only
  when the batch is acknowledged by the destination (committed, fsynced, 2xx), and returns the
  records it refused one by one as ``(record, TerminalError)`` pairs — those go to the DLQ, the
  rest count as delivered. It raises :class:`~dps.core.errors.TransientError` when the whole
  batch may succeed later (connection lost, timeout, 5xx, 429): Gamma retries with backoff.
- Delivery must be idempotent on ``record_id``: the same record delivered twice (a retry, a
  replay, a redelivered queue message) leaves one row, one line, one message.

``deliver`` must not keep references to the records after it returns.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import BaseModel

from dps.core.errors import TerminalError
from dps.core.record import Record

Rejected = list[tuple[Record, TerminalError]]


class Destination(abc.ABC):
    """Where records end up (see the module docstring)."""

    Config: ClassVar[type[BaseModel]]

    def __init__(self, destination_id: str, spec: Any) -> None:
        self.destination_id = destination_id
        self.spec = spec

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
