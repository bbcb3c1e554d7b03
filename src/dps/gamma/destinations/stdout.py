"""``stdout``: print each record as one JSON line on standard output (for debugging).

Not idempotent across retries (a terminal cannot take a line back); use it to look at what
Gamma would deliver, not as a sink of record.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Literal

import msgspec
from pydantic import Field

from dps.core.model import StrictModel
from dps.core.record import Record
from dps.core.registry import register
from dps.gamma.destinations.base import DeliveryError, Destination, Rejected

_json = msgspec.json.Encoder()


class StdoutFormat(StrictModel):
    """``format:`` of a ``stdout`` destination."""

    type: Literal["jsonl"] = Field(default="jsonl", description="One JSON object per line.")
    envelope: bool = Field(default=True, description="Print the envelope; else the payload.")
    stream: Literal["stdout", "stderr"] = Field(default="stdout", description="Where to print.")


class StdoutDestinationConfig(StrictModel):
    """The type-specific sections of a ``stdout`` destination (no ``connection:``)."""

    format: StdoutFormat = Field(default_factory=StdoutFormat)


@register("destinations", "stdout")
class StdoutDestination(Destination):
    """Prints JSON lines; see the module docstring."""

    Config = StdoutDestinationConfig
    spec: StdoutDestinationConfig

    def deliver(self, records: Sequence[Record]) -> Rejected:
        out = sys.stdout if self.spec.format.stream == "stdout" else sys.stderr
        envelope = self.spec.format.envelope
        data = b"".join(_json.encode(self.document(r, envelope)) + b"\n" for r in records)
        try:
            out.buffer.write(data) if hasattr(out, "buffer") else out.write(data.decode())
            out.flush()
        except (OSError, ValueError) as exc:
            raise DeliveryError(f"Cannot write to {self.spec.format.stream}: {exc}") from exc
        return []
