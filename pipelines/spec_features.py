"""The spec's ``features`` section: windowed aggregates per entity (offline and online) and
the segments that drift, fairness and monitoring group by."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from pipelines.spec_base import NAME_PATTERN, StrictModel, duration_field, duration_seconds


class Aggregation(StrEnum):
    COUNT = "count"
    SUM = "sum"
    MEAN = "mean"
    MAX = "max"
    STD = "std"
    NUNIQUE = "nunique"


class AggregateFeature(StrictModel):
    """A point-in-time windowed aggregate over an entity's past events."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    entity: str
    window: str
    agg: Aggregation
    column: str | None = None
    where: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @field_validator("window")
    @classmethod
    def _window(cls, value: str) -> str:
        return duration_field(value, "window")

    @model_validator(mode="after")
    def _check(self) -> AggregateFeature:
        if self.agg != Aggregation.COUNT and self.column is None:
            raise ValueError(f"aggregation {self.agg.value!r} needs 'column'")
        return self

    @property
    def window_seconds(self) -> int:
        return duration_seconds(self.window)


class OnlineFeatures(StrictModel):
    """How the online path (``serving.transformer``) keeps the aggregates' state.

    ``allowed_lateness``: an event may arrive this long after a later event of the same
    entity and still get exact features (the state keeps each window this much
    longer); an event later than that is refused. See ``pipelines.features_online``.
    """

    allowed_lateness: str = "1h"

    @field_validator("allowed_lateness")
    @classmethod
    def _lateness(cls, value: str) -> str:
        return duration_field(value, "allowed_lateness", "0s, 5m, 1h")

    @property
    def allowed_lateness_seconds(self) -> int:
        return duration_seconds(self.allowed_lateness)


class Features(StrictModel):
    raw: list[str] = Field(min_length=1)
    aggregates: list[AggregateFeature] = Field(default_factory=list)
    online: OnlineFeatures = Field(default_factory=OnlineFeatures)

    @property
    def names(self) -> list[str]:
        return list(self.raw) + [a.name for a in self.aggregates]


class Segment(StrictModel):
    """A slice monitored and gated on its own (drift, fairness, performance)."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
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
