"""The spec's operations sections: drift thresholds, monitoring, the market watch, guardrails,
shadow, rollout and approval (:class:`pipelines.spec.ModelSpec` holds them)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from pipelines.spec_base import (
    StrictModel,
    check_duration,
    check_schedule,
    duration_field,
    duration_seconds,
)


class Drift(StrictModel):
    psi_warn: float = Field(0.1, gt=0)
    psi_alarm: float = Field(0.25, gt=0)
    ks_pvalue: float = Field(0.01, gt=0, lt=1)
    chi2_pvalue: float = Field(0.01, gt=0, lt=1)
    js_distance: float = Field(0.1, gt=0, le=1)
    wasserstein: float | None = Field(None, gt=0)
    false_discovery_rate: float = Field(0.05, gt=0, lt=1)
    bins: int = Field(10, ge=2, le=100)
    min_segment_rows: int = Field(200, ge=1)

    @model_validator(mode="after")
    def _check(self) -> Drift:
        if self.psi_warn >= self.psi_alarm:
            raise ValueError("psi_warn must be below psi_alarm")
        return self


# fields of pipelines.market.MarketConfig and MarketWatchConfig (tests keep them in step)
MARKET_PARAMS = (
    "periods", "freq", "start", "seed", "shock_at", "vol_multiplier", "drift_change",
    "spread_jump_bp", "rate_change_bp", "annual_drift", "annual_volatility",
)  # fmt: skip
MARKET_WATCH_FIELDS = (
    "indicators", "transforms", "reference_periods", "k", "h", "volatility_ratio",
    "h_volatility",
)  # fmt: skip


class MarketWatch(StrictModel):
    """Early warning of market shifts: a monitored market indicator series.

    ``source: generated`` draws the series with :func:`pipelines.market.generate_market`
    from ``params`` (:class:`pipelines.market.MarketConfig` fields); a path reads a
    Parquet/CSV file with a ``time`` column and the indicators. ``watch`` holds
    :class:`pipelines.market.MarketWatchConfig` fields (thresholds). A change point
    raises an alert and, with ``market`` in ``retrain_on``, a retrain event.
    """

    source: str = "generated"
    params: dict[str, Any] = Field(default_factory=dict)
    watch: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> MarketWatch:
        # names only: the values are checked when the series is built (pipelines.market
        # needs pandas, which DAG parsing must not import)
        unknown = sorted(set(self.params) - set(MARKET_PARAMS))
        if self.source == "generated" and unknown:
            raise ValueError(f"params: unknown {unknown}; known: {list(MARKET_PARAMS)}")
        if self.source != "generated" and self.params:
            raise ValueError("params apply to source: generated only")
        unknown = sorted(set(self.watch) - set(MARKET_WATCH_FIELDS))
        if unknown:
            raise ValueError(f"watch: unknown {unknown}; known: {list(MARKET_WATCH_FIELDS)}")
        return self


class Monitoring(StrictModel):
    """The monitoring DAG: what it looks at, and when it alerts or asks for a retrain.

    Drift thresholds are in the ``drift`` section. Decay compares the live labelled
    window with the champion's own test metrics.
    """

    schedule: str = "@hourly"
    lookback: str = "7d"
    window: str = "1d"
    min_rows: int = Field(500, ge=1)
    min_labels: int = Field(200, ge=10)
    max_auc_drop: float = Field(0.05, gt=0, lt=1)
    max_recall_drop: float = Field(0.15, gt=0, lt=1)
    recall_fpr: float = Field(0.01, gt=0, lt=1)
    max_error_rate: float = Field(0.01, ge=0, le=1)
    max_p99_latency_ms: float = Field(50.0, gt=0)
    min_reason_coverage: float = Field(0.99, ge=0, le=1)
    max_fairness_difference: float | None = Field(None, gt=0, le=1)
    retrain_on: list[Literal["drift", "decay", "market"]] = Field(
        default_factory=lambda: ["drift", "decay", "market"]
    )
    market: MarketWatch | None = None

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        return check_schedule(value)

    @field_validator("lookback", "window")
    @classmethod
    def _durations(cls, value: str) -> str:
        return check_duration(value)

    @property
    def lookback_seconds(self) -> int:
        return duration_seconds(self.lookback)

    @property
    def window_seconds(self) -> int:
        return duration_seconds(self.window)


class Guardrails(StrictModel):
    max_error_rate: float = Field(0.01, ge=0, le=1)
    max_p99_latency_ms: float = Field(50.0, gt=0)
    max_score_psi: float = Field(0.2, gt=0)
    max_disagreement_rate: float = Field(0.05, ge=0, le=1)
    max_calibration_error: float | None = Field(None, gt=0, le=1)
    max_approval_rate_change: float | None = Field(None, gt=0, le=1)
    max_alert_rate_change: float | None = Field(None, gt=0)
    min_fraud_amount_caught_ratio: float | None = Field(None, gt=0)


class Shadow(StrictModel):
    duration: str = "1h"
    min_requests: int = Field(1000, ge=1)

    @field_validator("duration")
    @classmethod
    def _duration(cls, value: str) -> str:
        return duration_field(value, "duration")


class Rollout(StrictModel):
    shadow: Shadow = Shadow()
    canary_steps: list[int] = Field(default_factory=lambda: [5, 25, 50, 100])
    bake_time: str = "30m"
    guardrails: Guardrails = Guardrails()
    approval_before_full: bool = True

    @field_validator("canary_steps")
    @classmethod
    def _steps(cls, value: list[int]) -> list[int]:
        if not value or value[-1] != 100:
            raise ValueError("canary_steps must end at 100")
        if any(not 0 < s <= 100 for s in value):
            raise ValueError("each canary step is a percentage in 1..100")
        if any(b <= a for a, b in zip(value, value[1:], strict=False)):
            raise ValueError("canary_steps must increase")
        return value

    @field_validator("bake_time")
    @classmethod
    def _bake(cls, value: str) -> str:
        return duration_field(value, "bake_time")


class Approval(StrictModel):
    roles: list[str] = Field(min_length=1)
    min_approvers: int = Field(1, ge=1, le=5)
    high_risk_approvers: int = Field(2, ge=1, le=5)
    expires_after: str = "72h"
    timeout: str = "24h"

    @field_validator("expires_after", "timeout")
    @classmethod
    def _duration(cls, value: str) -> str:
        return duration_field(value, "", "30m, 24h, 7d")

    @model_validator(mode="after")
    def _counts(self) -> Approval:
        if self.high_risk_approvers < self.min_approvers:
            raise ValueError("high_risk_approvers must be at least min_approvers")
        return self

    @property
    def timeout_seconds(self) -> int:
        """How long a reviewer has to answer; no answer counts as a rejection."""
        return duration_seconds(self.timeout)

    @property
    def expires_after_seconds(self) -> int:
        """How long a granted approval stays valid for a deployment."""
        return duration_seconds(self.expires_after)
