"""The spec's ``abtest`` section: what an A/B test measures, its design and its stop rules
(:class:`pipelines.spec.ModelSpec` cross-checks it against the rest of the spec)."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field, field_validator, model_validator

from pipelines.spec_base import DURATION_PATTERN, StrictModel, duration_seconds


class AbMetric(StrEnum):
    """What an A/B test measures (definitions in :data:`pipelines.abtest.METRICS`)."""

    APPROVAL_RATE = "approval_rate"
    FRAUD_CAPTURE_RATE = "fraud_capture_rate"
    FALSE_POSITIVE_RATE = "false_positive_rate"
    DEFAULT_RATE = "default_rate"
    LOSS_AMOUNT = "loss_amount"


AB_METRIC_USE_CASES: dict[AbMetric, frozenset[str]] = {
    AbMetric.APPROVAL_RATE: frozenset({"credit"}),
    AbMetric.FRAUD_CAPTURE_RATE: frozenset({"fraud"}),
    AbMetric.FALSE_POSITIVE_RATE: frozenset({"fraud", "credit"}),
    AbMetric.DEFAULT_RATE: frozenset({"credit"}),
    AbMetric.LOSS_AMOUNT: frozenset({"fraud", "credit"}),
}
AB_AMOUNT_FEATURE = {"fraud": "amount", "credit": "loan_amount"}  # default amount at stake


class AbGuardrail(StrictModel):
    """A metric the treatment may not make worse by more than ``max_worsening``
    (absolute, in the metric's units) with significance; breaching it stops the test."""

    metric: AbMetric
    max_worsening: float = Field(ge=0)


class ExposureCap(StrictModel):
    """How many entities may see the treatment: in total, and newly per UTC day. Once a
    cap is reached, new entities are served by the champion outside the test; entities
    already in the test keep their arm."""

    max_entities: int | None = Field(None, ge=1)
    max_new_entities_per_day: int | None = Field(None, ge=1)


class SequentialDesign(StrictModel):
    method: Literal["group_sequential", "msprt"] = "group_sequential"
    spending: Literal["obrien_fleming", "pocock"] = "obrien_fleming"


class AbTest(StrictModel):
    """An A/B test of the challenger against the champion through the gateway."""

    hypothesis: str = Field(min_length=10)
    primary_metric: AbMetric
    minimum_detectable_effect: float = Field(gt=0)
    baseline: float | None = None  # the champion's expected value; else measured from its log
    baseline_sd: float | None = Field(None, gt=0)  # continuous metrics; else measured
    alpha: float = Field(0.05, gt=0, le=0.2)
    power: float = Field(0.8, ge=0.5, lt=1)
    split_percent: float = Field(50.0, gt=0, lt=100)
    exposure_cap: ExposureCap = ExposureCap()
    max_duration: str = "28d"
    sequential: SequentialDesign = SequentialDesign()
    guardrails: list[AbGuardrail] = Field(default_factory=list)
    guardrail_alpha: float = Field(0.05, gt=0, le=0.2)
    guardrail_spending: Literal["obrien_fleming", "pocock"] = "pocock"
    segments: list[str] = Field(default_factory=list)
    segment_correction: Literal["holm", "benjamini_hochberg"] = "holm"
    cuped_covariate: str | None = None
    amount_feature: str | None = None  # default: amount (fraud), loan_amount (credit)
    srm_pvalue: float = Field(0.001, gt=0, le=0.05)

    @field_validator("max_duration")
    @classmethod
    def _duration(cls, value: str) -> str:
        if not DURATION_PATTERN.match(value) or duration_seconds(value) < 86400:
            raise ValueError(f"max_duration {value!r} must be whole days or more, like 14d")
        return value

    @model_validator(mode="after")
    def _check(self) -> AbTest:
        proportion = self.primary_metric != AbMetric.LOSS_AMOUNT
        if proportion and self.minimum_detectable_effect >= 1:
            raise ValueError(
                f"minimum_detectable_effect {self.minimum_detectable_effect} is an absolute "
                f"change of the rate {self.primary_metric.value}: it must be below 1"
            )
        if proportion and self.baseline is not None and not 0 < self.baseline < 1:
            raise ValueError(f"baseline {self.baseline} must be a rate in (0, 1)")
        if not proportion and self.baseline is not None and self.baseline < 0:
            raise ValueError(f"baseline {self.baseline} must be >= 0 (a loss per case)")
        seen = [g.metric for g in self.guardrails]
        if self.primary_metric in seen:
            raise ValueError(
                f"guardrails: {self.primary_metric.value!r} is the primary metric; a guardrail "
                "watches another metric"
            )
        if len(set(seen)) != len(seen):
            raise ValueError("guardrails: each metric at most once")
        if len(set(self.segments)) != len(self.segments):
            raise ValueError("segments: each segment at most once")
        return self

    @property
    def max_days(self) -> int:
        return duration_seconds(self.max_duration) // 86400

    @property
    def treatment_share(self) -> float:
        return self.split_percent / 100.0
