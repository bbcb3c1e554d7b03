"""Quality scoring (the manual's B.3 ``quality_scoring`` format).

Built so far: the completeness dimension (``1 - penalty_per_missing`` for each missing required
field, floored at 0). The score is the weighted mean of the dimensions that are computed and
enabled, with the weights renormalised over them; the other dimensions (consistency,
conformance, timeliness) are not computed yet and are left out of both the score and the record's
``quality.dimensions`` rather than reported as a made-up value.
"""

from __future__ import annotations

from dps.config.models import QualityScoringConfig
from dps.core.record import Quality, Record, get_path

COMPUTED_DIMENSIONS = ("completeness",)


class QualityScorer:
    """Scores records against one scoring configuration."""

    def __init__(self, config: QualityScoringConfig | None) -> None:
        self.config = config
        if config is None:
            self.required: list[str] = []
            self.penalty = 0.2
            self.dimensions: tuple[str, ...] = COMPUTED_DIMENSIONS
            self.weights = {"completeness": 1.0}
            return
        completeness = config.rules.completeness
        self.required = list(completeness.required_fields)
        self.penalty = completeness.penalty_per_missing
        active = set(config.active_dimensions)
        self.dimensions = tuple(d for d in COMPUTED_DIMENSIONS if d in active)
        weights: dict[str, float] = {str(k): v for k, v in config.weights.items()}
        total = sum(weights.get(d, 0.0) for d in self.dimensions)
        # Computed dimensions that carry no weight do not count: with none left the score is
        # 1.0, as when none is computed (a zero weight must not make every record score 0).
        self.weights = {d: weights.get(d, 0.0) / total for d in self.dimensions} if total else {}

    def score(self, record: Record) -> Quality:
        dims: dict[str, float] = {}
        if "completeness" in self.dimensions:
            missing = sum(1 for f in self.required if get_path(record.payload, f) in (None, ""))
            dims["completeness"] = max(0.0, 1.0 - self.penalty * missing)
        score = sum(self.weights[d] * v for d, v in dims.items()) if self.weights else 1.0
        return Quality(score=round(score, 6), dimensions=dims)
