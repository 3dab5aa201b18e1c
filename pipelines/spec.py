"""The model spec: one YAML file per model, validated once at the edge.

A spec names the data source and its column contract, the target, the features
(raw columns and windowed aggregates), protected attributes (stored beside the
data, never features), personal-data fields, segments, metric and fairness
gates, drift thresholds, the rollout policy, an optional A/B test design, approver
roles and the schedule.

``load_spec(path)`` returns a :class:`ModelSpec` or raises :class:`SpecError`
with one message naming the file, each bad field and what is wrong with it.
"""

from __future__ import annotations

import hashlib
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pipelines.errors import SpecError

_NAME = r"^[a-z][a-z0-9_]*$"
_CRON_PRESETS = {"@once", "@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@nightly"}
_CRON_FIELD = re.compile(r"^[\d*/,\-A-Za-z?]+$")
_DURATION = re.compile(r"^(\d+)(s|m|h|d)$")
_DURATION_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_seconds(value: str) -> int:
    """``30m``, ``24h``, ``7d`` as seconds."""
    match = _DURATION.match(value)
    if match is None:
        raise ValueError(f"{value!r} must look like 30s, 30m, 24h, 7d")
    return int(match.group(1)) * _DURATION_SECONDS[match.group(2)]


class _Strict(BaseModel):
    """Base for every spec section: unknown fields are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class ColumnType(StrEnum):
    FLOAT = "float"
    INT = "int"
    BOOL = "bool"
    CATEGORY = "category"
    STRING = "string"
    DATETIME = "datetime"


class MissingPolicy(StrEnum):
    FORBID = "forbid"  # a null is a data error (ingest and serving reject it)
    ALLOW = "allow"  # passed to the model as missing (LightGBM handles NaN)
    IMPUTE = "impute"  # replaced by the training median / most frequent value


class Column(_Strict):
    """One column of the data contract."""

    type: ColumnType
    description: str = ""
    min: float | None = None
    max: float | None = None
    categories: list[str] | None = None
    missing: MissingPolicy = MissingPolicy.FORBID
    unique: bool = False
    personal_data: bool = False

    @model_validator(mode="after")
    def _check(self) -> Column:
        numeric = self.type in (ColumnType.FLOAT, ColumnType.INT)
        if (self.min is not None or self.max is not None) and not numeric:
            raise ValueError(f"min/max only apply to float or int columns, not {self.type}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        if self.type == ColumnType.CATEGORY:
            if not self.categories:
                raise ValueError("a category column needs a non-empty 'categories' list")
            if len(set(self.categories)) != len(self.categories):
                raise ValueError("'categories' has duplicates")
        elif self.categories is not None:
            raise ValueError("'categories' only applies to category columns")
        return self


class SourceKind(StrEnum):
    GENERATED = "generated"
    FILE = "file"
    PACKAGE = "package"


class DataSource(_Strict):
    """Where the training data comes from."""

    kind: SourceKind
    generator: Literal["fraud", "credit"] | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    path: str | None = None
    format: Literal["parquet", "csv"] = "parquet"
    dataset: Literal["german_credit"] | None = None

    @model_validator(mode="after")
    def _check(self) -> DataSource:
        if self.kind == SourceKind.GENERATED and self.generator is None:
            raise ValueError("kind 'generated' needs 'generator' (fraud or credit)")
        if self.kind == SourceKind.FILE and not self.path:
            raise ValueError("kind 'file' needs 'path'")
        if self.kind == SourceKind.PACKAGE and self.dataset is None:
            raise ValueError("kind 'package' needs 'dataset' (german_credit)")
        return self


class SplitMethod(StrEnum):
    TIME = "time"  # out-of-time: train < validation < test in time
    STRATIFIED = "stratified"  # random, stratified on the target


class Split(_Strict):
    method: SplitMethod
    validation_fraction: float = Field(0.15, gt=0, lt=0.5)
    test_fraction: float = Field(0.15, gt=0, lt=0.5)


class Data(_Strict):
    source: DataSource
    id_column: str
    entity_column: str
    time_column: str | None = None
    target: str
    label_time_column: str | None = None
    split: Split
    columns: dict[str, Column]
    min_rows: int = Field(100, ge=1)

    @model_validator(mode="after")
    def _time_split(self) -> Data:
        if self.split.method == SplitMethod.TIME and self.time_column is None:
            raise ValueError("split.method 'time' needs data.time_column")
        return self

    @field_validator("columns")
    @classmethod
    def _column_names(cls, value: dict[str, Column]) -> dict[str, Column]:
        for name in value:
            if not re.match(_NAME, name):
                raise ValueError(f"column name {name!r} must match {_NAME}")
        return value


class Aggregation(StrEnum):
    COUNT = "count"
    SUM = "sum"
    MEAN = "mean"
    MAX = "max"
    STD = "std"
    NUNIQUE = "nunique"


class AggregateFeature(_Strict):
    """A point-in-time windowed aggregate over an entity's past events."""

    name: Annotated[str, Field(pattern=_NAME)]
    entity: str
    window: str
    agg: Aggregation
    column: str | None = None
    where: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @field_validator("window")
    @classmethod
    def _window(cls, value: str) -> str:
        if not _DURATION.match(value):
            raise ValueError(f"window {value!r} must look like 30m, 1h, 7d")
        return value

    @model_validator(mode="after")
    def _check(self) -> AggregateFeature:
        if self.agg != Aggregation.COUNT and self.column is None:
            raise ValueError(f"aggregation {self.agg.value!r} needs 'column'")
        return self

    @property
    def window_seconds(self) -> int:
        return duration_seconds(self.window)


class OnlineFeatures(_Strict):
    """How the online path (``serving.transformer``) keeps the aggregates' state.

    ``allowed_lateness``: an event may arrive this long after a later event of the same
    entity and still get exact features (the state keeps each window this much
    longer); an event later than that is refused. See ``pipelines.features_online``.
    """

    allowed_lateness: str = "1h"

    @field_validator("allowed_lateness")
    @classmethod
    def _lateness(cls, value: str) -> str:
        if not _DURATION.match(value):
            raise ValueError(f"allowed_lateness {value!r} must look like 0s, 5m, 1h")
        return value

    @property
    def allowed_lateness_seconds(self) -> int:
        return duration_seconds(self.allowed_lateness)


class Features(_Strict):
    raw: list[str] = Field(min_length=1)
    aggregates: list[AggregateFeature] = Field(default_factory=list)
    online: OnlineFeatures = Field(default_factory=OnlineFeatures)

    @property
    def names(self) -> list[str]:
        return list(self.raw) + [a.name for a in self.aggregates]


class Segment(_Strict):
    """A slice monitored and gated on its own (drift, fairness, performance)."""

    name: Annotated[str, Field(pattern=_NAME)]
    column: str
    bins: list[float] | None = None

    @field_validator("bins")
    @classmethod
    def _bins(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and (
            len(value) < 2 or any(b <= a for a, b in zip(value, value[1:], strict=False))
        ):
            raise ValueError("bins must be at least two strictly increasing edges")
        return value


class Metric(StrEnum):
    ROC_AUC = "roc_auc"
    PR_AUC = "pr_auc"
    RECALL_AT_FPR = "recall_at_fpr"
    PRECISION_AT_RECALL = "precision_at_recall"
    BRIER = "brier"
    KS = "ks"
    LOG_LOSS = "log_loss"


class MetricGate(_Strict):
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


class FairnessGate(_Strict):
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


class Gates(_Strict):
    metrics: list[MetricGate] = Field(min_length=1)
    fairness: list[FairnessGate] = Field(default_factory=list)
    decision_threshold: float = Field(0.5, gt=0, lt=1)


class Drift(_Strict):
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


def check_schedule(value: str) -> str:
    """A cron expression with 5 fields, an Airflow preset, or ``none``."""
    if value in _CRON_PRESETS or value == "none":
        return value
    parts = value.split()
    if len(parts) != 5 or not all(_CRON_FIELD.match(p) for p in parts):
        raise ValueError(
            f"{value!r} is neither a cron expression with 5 fields nor one of "
            f"{', '.join(sorted(_CRON_PRESETS))}, none"
        )
    return value


def _check_duration(value: str) -> str:
    if not _DURATION.match(value):
        raise ValueError(f"{value!r} is not a duration like 30m, 1h or 7d")
    return value


# fields of pipelines.market.MarketConfig and MarketWatchConfig (tests keep them in step)
MARKET_PARAMS = (
    "periods", "freq", "start", "seed", "shock_at", "vol_multiplier", "drift_change",
    "spread_jump_bp", "rate_change_bp", "annual_drift", "annual_volatility",
)  # fmt: skip
MARKET_WATCH_FIELDS = (
    "indicators", "transforms", "reference_periods", "k", "h", "volatility_ratio",
    "h_volatility",
)  # fmt: skip


class MarketWatch(_Strict):
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


class Monitoring(_Strict):
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
        return _check_duration(value)

    @property
    def lookback_seconds(self) -> int:
        return duration_seconds(self.lookback)

    @property
    def window_seconds(self) -> int:
        return duration_seconds(self.window)


class Guardrails(_Strict):
    max_error_rate: float = Field(0.01, ge=0, le=1)
    max_p99_latency_ms: float = Field(50.0, gt=0)
    max_score_psi: float = Field(0.2, gt=0)
    max_disagreement_rate: float = Field(0.05, ge=0, le=1)
    max_calibration_error: float | None = Field(None, gt=0, le=1)
    max_approval_rate_change: float | None = Field(None, gt=0, le=1)
    max_alert_rate_change: float | None = Field(None, gt=0)
    min_fraud_amount_caught_ratio: float | None = Field(None, gt=0)


class Shadow(_Strict):
    duration: str = "1h"
    min_requests: int = Field(1000, ge=1)

    @field_validator("duration")
    @classmethod
    def _duration(cls, value: str) -> str:
        if not _DURATION.match(value):
            raise ValueError(f"duration {value!r} must look like 30m, 1h, 7d")
        return value


class Rollout(_Strict):
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
        if not _DURATION.match(value):
            raise ValueError(f"bake_time {value!r} must look like 30m, 1h, 7d")
        return value


class Approval(_Strict):
    roles: list[str] = Field(min_length=1)
    min_approvers: int = Field(1, ge=1, le=5)
    high_risk_approvers: int = Field(2, ge=1, le=5)
    expires_after: str = "72h"
    timeout: str = "24h"

    @field_validator("expires_after", "timeout")
    @classmethod
    def _duration(cls, value: str) -> str:
        if not _DURATION.match(value):
            raise ValueError(f"{value!r} must look like 30m, 24h, 7d")
        return value

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


class AbGuardrail(_Strict):
    """A metric the treatment may not make worse by more than ``max_worsening``
    (absolute, in the metric's units) with significance; breaching it stops the test."""

    metric: AbMetric
    max_worsening: float = Field(ge=0)


class ExposureCap(_Strict):
    """How many entities may see the treatment: in total, and newly per UTC day. Once a
    cap is reached, new entities are served by the champion outside the test; entities
    already in the test keep their arm."""

    max_entities: int | None = Field(None, ge=1)
    max_new_entities_per_day: int | None = Field(None, ge=1)


class SequentialDesign(_Strict):
    method: Literal["group_sequential", "msprt"] = "group_sequential"
    spending: Literal["obrien_fleming", "pocock"] = "obrien_fleming"


class AbTest(_Strict):
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
        if not _DURATION.match(value) or duration_seconds(value) < 86400:
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


def _abtest_problems(spec: ModelSpec) -> list[str]:
    """Cross-checks of the abtest section against the rest of the spec."""
    ab = spec.abtest
    if ab is None:
        return []
    errors: list[str] = []
    raw = set(spec.features.raw)
    numeric = (ColumnType.FLOAT, ColumnType.INT)

    def fits(metric: AbMetric, where: str) -> None:
        if spec.use_case not in AB_METRIC_USE_CASES[metric]:
            errors.append(
                f"{where}: {metric.value!r} does not apply to a {spec.use_case} model "
                f"(it applies to {', '.join(sorted(AB_METRIC_USE_CASES[metric]))})"
            )

    fits(ab.primary_metric, "abtest.primary_metric")
    for i, guard in enumerate(ab.guardrails):
        fits(guard.metric, f"abtest.guardrails[{i}].metric")
    segments = {s.name: s for s in spec.segments}
    for i, name in enumerate(ab.segments):
        seg = segments.get(name)
        if seg is None:
            errors.append(
                f"abtest.segments[{i}]: {name!r} is not a segment of the spec "
                f"(segments: {', '.join(segments) or 'none'})"
            )
        elif seg.column not in raw:
            errors.append(
                f"abtest.segments[{i}]: segment {name!r} uses column {seg.column!r}, which is "
                "not a raw feature: requests do not carry it, so the test cannot be split by it"
            )
    for key, value in (("cuped_covariate", ab.cuped_covariate), ("amount_feature",
                       ab.amount_feature)):  # fmt: skip
        if value is None:
            continue
        column = spec.data.columns.get(value)
        if value not in raw or column is None or column.type not in numeric:
            errors.append(f"abtest.{key}: {value!r} must be a numeric raw feature")
    uses_loss = AbMetric.LOSS_AMOUNT in [ab.primary_metric, *(g.metric for g in ab.guardrails)]
    if uses_loss and ab.amount_feature is None:
        default = AB_AMOUNT_FEATURE[spec.use_case]
        if default not in raw:
            errors.append(
                f"abtest: loss_amount needs the amount at stake: set abtest.amount_feature "
                f"(the default {default!r} is not a raw feature)"
            )
    return errors


class Training(_Strict):
    seed: int = 42
    params: dict[str, float | int | str | bool] = Field(default_factory=dict)
    num_boost_round: int = Field(500, ge=1)
    early_stopping_rounds: int = Field(50, ge=1)
    imbalance: Literal["none", "scale_pos_weight", "is_unbalance"] = "scale_pos_weight"
    tuning_trials: int = Field(0, ge=0)
    #: seeded negative downsampling of the training and validation splits: every
    #: positive and this share of the negatives are kept (chosen by a hash of the id
    #: column and ``seed``: the same rows on every backend and in every run), each kept
    #: negative weighted 1/rate; 1 (the default) keeps every row. The test split, which
    #: evaluation and the gates use, is never sampled.
    negative_sample_rate: float = Field(1.0, gt=0, le=1)


class Compute(_Strict):
    """Where the heavy stages run: ``local`` (pandas, in the task) or ``dask``.

    With ``dask`` the feature, training and batch-scoring stages run on the
    ``dask.distributed`` cluster at ``scheduler`` (``tcp://host:8786``), or on a
    ``LocalCluster`` of ``workers`` processes when no scheduler is given. The input is
    read in partitions of about ``partition_rows`` rows (see ``pipelines/backends/dask_core.py``).
    ``GOVML_COMPUTE_BACKEND`` and ``GOVML_DASK_SCHEDULER`` override the spec.
    """

    backend: Literal["local", "dask"] = "local"
    scheduler: str | None = None
    workers: int = Field(2, ge=1, le=256)
    threads_per_worker: int = Field(1, ge=1, le=64)
    partition_rows: int = Field(1_000_000, ge=1000)
    memory_limit: str | None = None  # per LocalCluster worker, e.g. "4GiB"
    connect_timeout: float = Field(30.0, gt=0, le=600)  # seconds to reach the scheduler

    @field_validator("scheduler")
    @classmethod
    def _scheduler(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not re.match(r"^(tcp|tls|inproc|ws|wss)://[^\s/:]+(:\d+)?/?$", value):
            raise ValueError(
                f"{value!r} is not a Dask scheduler address (like tcp://scheduler:8786)"
            )
        return value


class ModelSpec(_Strict):
    """A whole model spec (one YAML file)."""

    name: Annotated[str, Field(pattern=_NAME)]
    description: str = ""
    use_case: Literal["fraud", "credit"]
    owner: str
    schedule: str = "@daily"
    data: Data
    features: Features
    protected_attributes: list[str] = Field(default_factory=list)
    segments: list[Segment] = Field(default_factory=list)
    gates: Gates
    drift: Drift = Drift()
    rollout: Rollout = Rollout()
    abtest: AbTest | None = None
    monitoring: Monitoring = Monitoring()
    approval: Approval
    training: Training = Training()
    compute: Compute = Compute()
    reason_codes: dict[str, str] = Field(default_factory=dict)

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        return check_schedule(value)

    @model_validator(mode="after")
    def _cross_checks(self) -> ModelSpec:
        errors: list[str] = []
        cols = self.data.columns
        protected = set(self.protected_attributes)

        def need(column: str, where: str) -> None:
            if column not in cols:
                errors.append(f"{where}: {column!r} is not a column in data.columns")

        for field in ("id_column", "entity_column", "time_column", "target"):
            if getattr(self.data, field) is not None:
                need(getattr(self.data, field), f"data.{field}")
        if self.data.label_time_column:
            need(self.data.label_time_column, "data.label_time_column")
        time_col = cols.get(self.data.time_column or "")
        if time_col is not None and time_col.type != ColumnType.DATETIME:
            errors.append(f"data.time_column: {self.data.time_column!r} must be a datetime column")
        target = cols.get(self.data.target)
        if target is not None and target.type not in (ColumnType.INT, ColumnType.BOOL):
            errors.append(f"data.target: {self.data.target!r} must be an int (0/1) or bool column")

        for i, name in enumerate(self.features.raw):
            where = f"features.raw[{i}]"
            if name in protected:
                errors.append(
                    f"{where}: {name!r} is a protected attribute and may never be a feature"
                )
            need(name, where)
            if name in (self.data.target, self.data.label_time_column):
                errors.append(f"{where}: {name!r} is the target or its label time (leakage)")
            if name == self.data.id_column:
                errors.append(f"{where}: {name!r} is the row id and can't be a feature")
        names = self.features.names
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            errors.append(f"features: duplicate feature names {dupes}")
        for i, agg in enumerate(self.features.aggregates):
            where = f"features.aggregates[{i}] ({agg.name})"
            need(agg.entity, f"{where}.entity")
            if agg.column is not None:
                need(agg.column, f"{where}.column")
                if agg.column in protected:
                    errors.append(
                        f"{where}.column: {agg.column!r} is a protected attribute "
                        "and may never feed a feature"
                    )
            for key in agg.where:
                need(key, f"{where}.where")
        for i, name in enumerate(self.protected_attributes):
            need(name, f"protected_attributes[{i}]")
        for i, seg in enumerate(self.segments):
            need(seg.column, f"segments[{i}].column")
        for i, gate in enumerate(self.gates.fairness):
            if gate.attribute not in protected:
                errors.append(
                    f"gates.fairness[{i}].attribute: {gate.attribute!r} is not listed in "
                    "protected_attributes"
                )
        if self.features.aggregates and self.data.time_column is None:
            errors.append("features.aggregates: windowed aggregates need data.time_column")
        for code in self.reason_codes:
            if code not in names:
                errors.append(f"reason_codes: {code!r} is not a feature")
        errors.extend(_abtest_problems(self))
        if errors:
            raise ValueError("; ".join(errors))
        return self

    @property
    def personal_data_columns(self) -> list[str]:
        return [name for name, col in self.data.columns.items() if col.personal_data]

    @property
    def raw_columns(self) -> dict[str, Column]:
        return dict(self.data.columns)


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def format_validation_error(source: str, exc: ValidationError) -> str:
    """Turn pydantic's error list into one line: ``file: field: problem; ...``."""
    problems = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not str(p).startswith("function-after"))
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if err["type"] == "extra_forbidden":
            msg = "unknown field (not part of the spec format)"
        elif err["type"] == "missing":
            msg = "required field is missing"
        elif err["type"] in ("enum", "literal_error"):
            msg = f"{msg}, got {err.get('input')!r}"
        problems.append(f"{_location(loc)}: {msg}" if loc else msg)
    return f"{source}: " + "; ".join(problems)


def parse_spec(data: Any, source: str = "<spec>") -> ModelSpec:
    """Validate an already-parsed YAML/JSON mapping."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a spec must be a mapping at the top level")
    try:
        return ModelSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(format_validation_error(source, exc)) from None


def load_spec(path: str | Path) -> ModelSpec:
    """Read and validate one spec file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: spec file not found") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot read spec file ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"{path}: not valid YAML{where}: {problem}") from None
    return parse_spec(data, str(path))


def spec_hash(path: str | Path) -> str:
    """SHA-256 of the spec file's bytes (recorded in lineage)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def discover_specs(specs_dir: str | Path) -> dict[str, Path]:
    """Every ``*.yaml`` spec in a folder, by model name (file stem)."""
    return {p.stem: p for p in sorted(Path(specs_dir).glob("*.yaml"))}
