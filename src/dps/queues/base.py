"""The queue contract between stages.

Why the boundary is here: the modules never talk to each other, only to queues, so that a stage
can crash, restart or scale out without its neighbours noticing. Everything a stage needs from
a queue is in this class; a backend (``sqlite`` embedded, ``nats`` JetStream) implements it and
registers itself under the name used in ``pipeline.yaml`` (``transport.backend``).

The guarantees every backend gives (the shared test-suite in ``tests/integration/test_queues.py``
checks each of them on each backend):

- ``put`` is durable when it returns: the batch is on disk (fsync) or in the server's stream.
  A batch is written whole or not at all. A message id that is already in the queue is not
  added twice (idempotent put: a producer that retries after a crash does not duplicate).
- When the queue holds ``capacity`` messages, ``put`` waits up to ``timeout`` seconds for room,
  then raises :class:`~dps.core.errors.QueueFullError` (backpressure; nothing is dropped).
- ``lease`` hands out up to ``max_messages`` visible messages, hides them for
  ``visibility_timeout`` seconds and counts a delivery attempt on each. A message whose lease
  expires (its consumer died) becomes visible again.
- ``ack`` removes messages for good: an acked message is never delivered again.
- ``nack`` makes messages visible again after ``delay`` seconds. A message that has been
  delivered ``max_attempts`` times is not redelivered: it is handed to the ``dead_letter`` sink
  (the stage's DLQ) and then removed. The sink is called before removal, so a crash in between
  redelivers rather than loses.
- ``depth`` counts messages not yet acked (visible or leased).

A backend may pack the records of a queue opened with ``QueueSpec.pack`` into fewer server
messages; its records then share their message's fate (``nats``: ``docs/queues.md``, *Frames*).

Queues are used from one thread at a time per instance; each process opens its own instance.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from pydantic import BaseModel, ValidationError

from dps.core import registry
from dps.core.errors import ConfigError, ConfigIssue


class Message(msgspec.Struct, frozen=True, gc=False):
    """One queued message: its id (the record id), its bytes, and how often it was delivered.

    A msgspec struct rather than a frozen dataclass: a lease builds one per message, and this
    one is built in C (about 80 ns, against 430 for the dataclass's ``__init__``). It holds only
    text, bytes and a number, so the garbage collector need not track it (``gc=False``).
    """

    msg_id: str
    body: bytes
    attempts: int = 1


@dataclass(slots=True)
class Lease:
    """The messages handed out by one ``lease`` call; pass it back to ``ack``/``nack``.

    ``handle`` is the backend's own bookkeeping (row ids, server message objects); consumers do
    not look at it.
    """

    messages: list[Message]
    handle: Any = None

    def __len__(self) -> int:
        return len(self.messages)

    def __bool__(self) -> bool:
        return bool(self.messages)


#: Called with the messages that exhausted their attempts and the reason, before they are removed.
DeadLetterSink = Callable[[Sequence[Message], str], None]


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """What a stage asks of one queue. The backend's own settings come from ``pipeline.yaml``."""

    name: str
    capacity: int = 100_000
    visibility_timeout: float = 30.0
    max_attempts: int = 5
    dead_letter: DeadLetterSink | None = None
    consumer: str = field(default="workers")
    #: Let the backend pack the records of a put into few server messages (frames) whose
    #: records share their fate (see ``docs/queues.md``, *Frames*); the stage queues do.
    pack: bool = False


class Queue(abc.ABC):
    """A durable, bounded, at-least-once queue of messages (see the module docstring)."""

    spec: QueueSpec

    @abc.abstractmethod
    def put(self, messages: Sequence[tuple[str, bytes]], timeout: float | None = None) -> None:
        """Append ``(msg_id, body)`` pairs durably, waiting for room up to ``timeout`` seconds.

        ``timeout=None`` waits as long as it takes. Raises ``QueueFullError`` when the time is up,
        ``TransientError`` when the backend cannot be reached.
        """

    @abc.abstractmethod
    def lease(self, max_messages: int, wait: float = 0.0) -> Lease:
        """Take up to ``max_messages`` visible messages, waiting up to ``wait`` s for the first."""

    @abc.abstractmethod
    def ack(self, lease: Lease, msg_ids: Sequence[str] | None = None) -> None:
        """Remove the leased messages (all of them, or those in ``msg_ids``) for good."""

    @abc.abstractmethod
    def nack(
        self, lease: Lease, msg_ids: Sequence[str] | None = None, *, reason: str, delay: float = 0.0
    ) -> list[Message]:
        """Redeliver the leased messages after ``delay`` s; dead-letter those out of attempts.

        Returns the messages that were dead-lettered.
        """

    @abc.abstractmethod
    def depth(self) -> int:
        """Messages in the queue that are not acked yet (visible and leased)."""

    def close(self) -> None:  # noqa: B027 - optional for backends with nothing to release
        """Release connections and files."""

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class QueueBackend(abc.ABC):
    """A queue backend plugin: built from ``pipeline.yaml``'s ``transport`` section."""

    @abc.abstractmethod
    def __init__(self, settings: dict[str, Any], data_dir: Path) -> None: ...

    @abc.abstractmethod
    def open(self, spec: QueueSpec) -> Queue:
        """Open (creating if needed) the queue named ``spec.name``."""

    def describe(self) -> dict[str, Any]:
        """What operators should know about this backend (durability settings, endpoints)."""
        return {}


_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_Settings = TypeVar("_Settings", bound=BaseModel)


def check_queue_name(name: str) -> str:
    """Return ``name`` if it is usable as a file name and a NATS stream name, else raise."""
    if not name or len(name) > 64 or not set(name) <= _NAME_CHARS:
        raise ValueError(
            f"Queue name {name!r} is not valid; expected 1 to 64 letters, digits, '_' or '-'."
        )
    return name


def backend_settings(model: type[_Settings], settings: dict[str, Any]) -> _Settings:
    """A backend's settings from ``pipeline.yaml``'s ``transport:``; errors name the key."""
    try:
        return model.model_validate(settings)
    except ValidationError as exc:
        raise ConfigError(
            ConfigIssue(
                file="pipeline.yaml",
                key="transport." + ".".join(str(part) for part in err["loc"]),
                message=f"{err['msg']} (got {err.get('input')!r}); the queues are not opened.",
            )
            for err in exc.errors()
        ) from None


def open_queue(backend: str, settings: dict[str, Any], data_dir: Path, spec: QueueSpec) -> Queue:
    """Open a queue on the named backend (``sqlite`` or ``nats``)."""
    backend_cls = registry.get("queues", backend)
    instance: QueueBackend = backend_cls(settings, data_dir)
    return instance.open(spec)
