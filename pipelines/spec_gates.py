"""The spec's ``gates`` section: the metric and fairness thresholds a candidate must pass."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field, model_validator

from pipelines.spec_base import StrictModel


class Metric(StrEnum):
    ROC_AUC = "roc_auc"
    PR_AUC = "pr_auc"
    RECALL_AT_FPR = "recall_at_fpr"
    PRECISION_AT_RECALL = "precision_at_recall"
    BRIER = "brier"
    KS = "ks"
    LOG_LOSS = "log_loss"


class MetricGate(StrictModel):
    """A metric threshold; exactly one of min/max. ``at`` parameterises @FPR metrics.

    With ``relative_to`` the threshold applies to the difference candidate minus
    reference (the baseline trained beside it, or the current champion scored on the
    same test data): ``{metric: roc_auc, relative_to: champion, min: -0.005}`` means
    "no more than 0.005 below the champion". Without a champion the check is skipped
    and recorded as such.
    """

    metric: Metric
    min: float | None = None
    max: float | None = None
    at: float | None = Field(None, gt=0, lt=1)
    relative_to: Literal["baseline", "champion"] | None = None
    warn_margin: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> MetricGate:
        if (self.min is None) == (self.max is None):
            raise ValueError("give exactly one of 'min' or 'max'")
        if self.metric in (Metric.RECALL_AT_FPR, Metric.PRECISION_AT_RECALL) and self.at is None:
            raise ValueError(f"metric {self.metric.value!r} needs 'at' (for example 0.01)")
        return self


class FairnessMetric(StrEnum):
    DEMOGRAPHIC_PARITY_RATIO = "demographic_parity_ratio"
    DEMOGRAPHIC_PARITY_DIFFERENCE = "demographic_parity_difference"
    EQUALIZED_ODDS_DIFFERENCE = "equalized_odds_difference"
    EQUALIZED_ODDS_RATIO = "equalized_odds_ratio"
    FALSE_POSITIVE_RATE_DIFFERENCE = "false_positive_rate_difference"


class FairnessGate(StrictModel):
    metric: FairnessMetric
    attribute: str
    min: float | None = None
    max: float | None = None
    warn_margin: float = Field(0.05, ge=0)

    @model_validator(mode="after")
    def _check(self) -> FairnessGate:
        if (self.min is None) == (self.max is None):
            raise ValueError("give exactly one of 'min' or 'max'")
        return self


class Gates(StrictModel):
    metrics: list[MetricGate] = Field(min_length=1)
    fairness: list[FairnessGate] = Field(default_factory=list)
    decision_threshold: float = Field(0.5, gt=0, lt=1)
