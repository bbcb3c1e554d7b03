"""A circuit breaker per destination: CLOSED -> OPEN -> HALF_OPEN -> CLOSED (or OPEN again).

- CLOSED: batches flow. Each batch that still fails after its retries (class ``retryable``)
  is a failure; ``failure_threshold`` failures within ``window_s`` seconds open the breaker.
  ``throttle`` failures do not count (the destination is up and asked us to slow down), nor do
  ``permanent``/``poison`` ones (the data is at fault, not the destination).
- OPEN: nothing is sent; the destination's records wait in its spool. After ``cooldown_s`` the
  breaker lets one probe through (HALF_OPEN).
- HALF_OPEN: one batch at a time is a probe; ``success_threshold`` successes in a row close the
  breaker, a failure opens it again for another cool-down (doubled, up to ``max_cooldown_s``).

Written by hand: the libraries (pybreaker, circuitbreaker) wrap a call and raise when open; Gamma
needs to *ask* whether to lease from the spool at all, report the state and the transition
times on the admin API and in ``gamma_circuit_breaker_state``, and reset on an operator's
command, which is about forty lines here. The clock is injectable so tests need not sleep.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

CLOSED: Final = "CLOSED"
OPEN: Final = "OPEN"
HALF_OPEN: Final = "HALF_OPEN"
#: ``gamma_circuit_breaker_state`` values (alert ``gamma_circuit_breaker_open``: ``== 1``).
STATE_VALUES: Final = {CLOSED: 0, OPEN: 1, HALF_OPEN: 2}


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """Thresholds of one breaker (``circuit_breaker:`` of a destination file)."""

    failure_threshold: int = 5
    window_s: float = 60.0
    cooldown_s: float = 30.0
    max_cooldown_s: float = 300.0
    success_threshold: int = 1


class CircuitBreaker:
    """One destination's breaker (see the module docstring). Thread-safe."""

    def __init__(
        self,
        name: str,
        settings: BreakerSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, str], None] | None = None,
    ) -> None:
        self.name = name
        self.settings = settings or BreakerSettings()
        self._clock = clock
        self._on_change = on_change
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures: deque[float] = deque()
        self._opened_at: float | None = None
        self._cooldown = self.settings.cooldown_s
        self._probe_successes = 0
        self._probing = False
        self.last_error: str | None = None
        self.last_change: float = time.time()
        self.opened_count = 0

    @property
    def state(self) -> str:
        with self._lock:
            self._tick()
            return self._state

    def _set(self, state: str) -> None:
        if state == self._state:
            return
        old, self._state = self._state, state
        self.last_change = time.time()
        if state == OPEN:
            self._opened_at = self._clock()
            self.opened_count += 1
        if self._on_change is not None:
            self._on_change(old, state)

    def _tick(self) -> None:
        if (
            self._state == OPEN
            and self._opened_at is not None
            and self._clock() - self._opened_at >= self._cooldown
        ):
            self._probe_successes = 0
            self._probing = False
            self._set(HALF_OPEN)

    def allow(self) -> bool:
        """May a batch be sent now? In HALF_OPEN one probe at a time is allowed."""
        with self._lock:
            self._tick()
            if self._state == CLOSED:
                return True
            if self._state == HALF_OPEN and not self._probing:
                self._probing = True
                return True
            return False

    def record_success(self) -> None:
        with self._lock:
            self._probing = False
            if self._state == HALF_OPEN:
                self._probe_successes += 1
                if self._probe_successes >= self.settings.success_threshold:
                    self._failures.clear()
                    self._cooldown = self.settings.cooldown_s
                    self._set(CLOSED)
            elif self._state == CLOSED:
                self._failures.clear()

    def record_failure(self, error: str = "") -> None:
        with self._lock:
            self._probing = False
            self.last_error = error or self.last_error
            now = self._clock()
            if self._state == HALF_OPEN:
                self._cooldown = min(self._cooldown * 2, self.settings.max_cooldown_s)
                self._set(OPEN)
                return
            if self._state == OPEN:
                return
            self._failures.append(now)
            while self._failures and now - self._failures[0] > self.settings.window_s:
                self._failures.popleft()
            if len(self._failures) >= self.settings.failure_threshold:
                self._set(OPEN)

    def release_probe(self) -> None:
        """A probe slot taken by :meth:`allow` that sent nothing (the spool was empty)."""
        with self._lock:
            self._probing = False

    def reset(self) -> None:
        """Close the breaker now (``POST /admin/circuit-breakers/<id>/reset``)."""
        with self._lock:
            self._failures.clear()
            self._cooldown = self.settings.cooldown_s
            self._probing = False
            self._set(CLOSED)

    def retry_in(self) -> float:
        """Seconds until an OPEN breaker lets a probe through (0 when not OPEN)."""
        with self._lock:
            if self._state != OPEN or self._opened_at is None:
                return 0.0
            return max(0.0, self._cooldown - (self._clock() - self._opened_at))

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            self._tick()
            now = self._clock()
            recent = [t for t in self._failures if now - t <= self.settings.window_s]
            return {
                "state": self._state,
                "value": STATE_VALUES[self._state],
                "failures_in_window": len(recent),
                "failure_threshold": self.settings.failure_threshold,
                "window_seconds": self.settings.window_s,
                "cooldown_seconds": self._cooldown,
                "retry_in_seconds": (
                    round(max(0.0, self._cooldown - (now - self._opened_at)), 3)
                    if self._state == OPEN and self._opened_at is not None
                    else 0.0
                ),
                "opened_count": self.opened_count,
                "last_error": self.last_error,
                "last_change": self.last_change,
            }


__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "STATE_VALUES", "BreakerSettings", "CircuitBreaker"]
