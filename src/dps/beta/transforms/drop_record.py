"""``drop_record``: drop the records the rule matches (test traffic, heartbeats, ...).

A dropped record is not delivered; it is written to the Beta DLQ with the reason
``dropped_by_rule`` and the rule's id, so every record is still accounted for.
"""

from __future__ import annotations

from pydantic import Field

from dps.beta.transforms.base import DROP, Transform
from dps.core.model import StrictModel
from dps.core.record import Record
from dps.core.registry import register


class DropRecordConfig(StrictModel):
    """``transform.config`` of ``drop_record``."""

    reason: str = Field(default="", description="Why such records are dropped (shown in the DLQ).")


@register("transforms", "drop_record")
class DropRecord(Transform):
    """Always drops; the rule's ``match`` selects what."""

    Config = DropRecordConfig
    config: DropRecordConfig

    def apply(self, record: Record) -> str | None:
        return DROP
