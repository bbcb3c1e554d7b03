"""The base of every configuration model: unknown keys are errors, never silently ignored."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A pydantic model that forbids unknown keys (the loader adds a "did you mean")."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
