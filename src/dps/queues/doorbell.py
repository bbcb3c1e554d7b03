"""Wake-ups for the embedded queue: a producer rings the consumers waiting on a queue file.

Without them a consumer that finds its queue empty polls it (5 ms doubling to 20 ms), and at a
steady trickle each hop adds that wait to every record's latency: at 5,000 records/s offered,
polling was a third of the pipeline's median latency and two fifths of its P99.

How: a consumer that waits binds a Unix datagram socket in Linux's abstract namespace (no file
to clean up: the name goes when the process does) and records its name in the queue file's
``waiters`` table. A producer reads that table inside its put transaction and, once the
transaction has committed, sends each waiter one byte. The consumer drains its socket before it
looks at the queue and then waits on the socket, so a ring that comes between the look and the
wait ends the wait at once. The poll stays underneath with the same steps, for what nobody
rings for: a lease that expires, a delayed nack coming due, a producer of an older version.

A ring is a hint, never a promise: a full socket buffer (the consumer has rings it has not read
yet) or a lost datagram costs at most one poll step. A name nobody answers to (its process is
gone) is reported back to the queue, which deletes it from ``waiters``.

Linux only (abstract sockets); elsewhere :func:`open_doorbell` returns None and consumers poll.
"""

from __future__ import annotations

import os
import select
import socket
import sys
import uuid
from collections.abc import Iterable

#: Bytes read per ``recv`` while draining; a ring is one byte.
_DRAIN = 64

#: Whether doorbells exist here (abstract Unix sockets are Linux's).
AVAILABLE = sys.platform.startswith("linux")


def _datagram_socket() -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    sock.setblocking(False)
    return sock


def _address(name: str) -> str:
    """A doorbell's address in the abstract namespace (a leading NUL, no file)."""
    return "\0" + name


class Doorbell:
    """A waiting consumer's socket; ``name`` is what producers send to."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self._sock = sock
        self.name = name

    def drain(self) -> None:
        """Forget the rings received so far (call before looking at the queue)."""
        try:
            while self._sock.recv(_DRAIN):
                pass
        except OSError:  # none left (EAGAIN), or closed meanwhile by the queue's close
            pass

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for a ring; True when one came.

        A doorbell closed meanwhile (its queue is being closed) returns at once: the caller's
        next look at the queue then meets the closed queue.
        """
        try:
            readable, _, _ = select.select([self._sock], [], [], max(timeout, 0.0))
        except (OSError, ValueError):  # closed before or while waiting (its fd is -1)
            return False
        return bool(readable)

    def close(self) -> None:
        self._sock.close()


def open_doorbell() -> Doorbell | None:
    """A new doorbell for this process, or None where abstract sockets are not available."""
    if not AVAILABLE:
        return None
    name = f"dps-queue-{os.getpid()}-{uuid.uuid4().hex[:16]}"
    sock = _datagram_socket()
    try:
        sock.bind(_address(name))
    except OSError:
        sock.close()
        return None
    return Doorbell(sock, name)


class Ringer:
    """The producer's side: one unbound datagram socket that rings any number of waiters."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None

    def ring(self, names: Iterable[str]) -> list[str]:
        """Send one byte to each waiter; return the names nobody answers to any more."""
        gone: list[str] = []
        for name in names:
            if self._sock is None:
                self._sock = _datagram_socket()
            try:
                self._sock.sendto(b"\x01", _address(name))
            except (ConnectionRefusedError, FileNotFoundError):
                gone.append(name)  # no socket of that name: its process has ended
            except OSError:
                pass  # its buffer is full (rings not read yet) or a passing error: a hint only
        return gone

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
