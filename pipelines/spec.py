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
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pipelines.errors import SpecError
from pipelines.files import read_text
from pipelines.spec_abtest import AB_AMOUNT_FEATURE, AB_METRIC_USE_CASES, AbMetric, AbTest
from pipelines.spec_base import (
    NAME_PATTERN,
    StrictModel,
    check_schedule,
)
from pipelines.spec_features import Features, Segment
from pipelines.spec_gates import Gates
from pipelines.spec_operations import Approval, Drift, Monitoring, Rollout


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


class Column(StrictModel):
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


class DataSource(StrictModel):
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


class Split(StrictModel):
    method: SplitMethod
    validation_fraction: float = Field(0.15, gt=0, lt=0.5)
    test_fraction: float = Field(0.15, gt=0, lt=0.5)


class Data(StrictModel):
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
            if not re.match(NAME_PATTERN, name):
                raise ValueError(f"column name {name!r} must match {NAME_PATTERN}")
        return value


def _unknown(cols: dict[str, Column], column: str, where: str) -> list[str]:
    return [] if column in cols else [f"{where}: {column!r} is not a column in data.columns"]


def _data_problems(spec: ModelSpec) -> list[str]:
    """The data section's columns: they exist and have the types their role needs."""
    data, cols = spec.data, spec.data.columns
    errors: list[str] = []
    for field in ("id_column", "entity_column", "time_column", "target"):
        if getattr(data, field) is not None:
            errors += _unknown(cols, getattr(data, field), f"data.{field}")
    if data.label_time_column:
        errors += _unknown(cols, data.label_time_column, "data.label_time_column")
    time_col = cols.get(data.time_column or "")
    if time_col is not None and time_col.type != ColumnType.DATETIME:
        errors.append(f"data.time_column: {data.time_column!r} must be a datetime column")
    target = cols.get(data.target)
    if target is not None and target.type not in (ColumnType.INT, ColumnType.BOOL):
        errors.append(f"data.target: {data.target!r} must be an int (0/1) or bool column")
    return errors


def _raw_feature_problems(spec: ModelSpec) -> list[str]:
    """Raw features: known columns, never protected, the target, its label time or the id;
    feature names unique."""
    data, protected = spec.data, set(spec.protected_attributes)
    errors: list[str] = []
    for i, name in enumerate(spec.features.raw):
        where = f"features.raw[{i}]"
        if name in protected:
            errors.append(f"{where}: {name!r} is a protected attribute and may never be a feature")
        errors += _unknown(data.columns, name, where)
        if name in (data.target, data.label_time_column):
            errors.append(f"{where}: {name!r} is the target or its label time (leakage)")
        if name == data.id_column:
            errors.append(f"{where}: {name!r} is the row id and can't be a feature")
    names = spec.features.names
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        errors.append(f"features: duplicate feature names {dupes}")
    return errors


def _aggregate_problems(spec: ModelSpec) -> list[str]:
    """Windowed aggregates: known columns, never fed by a protected attribute."""
    cols, protected = spec.data.columns, set(spec.protected_attributes)
    errors: list[str] = []
    for i, agg in enumerate(spec.features.aggregates):
        where = f"features.aggregates[{i}] ({agg.name})"
        errors += _unknown(cols, agg.entity, f"{where}.entity")
        if agg.column is not None:
            errors += _unknown(cols, agg.column, f"{where}.column")
            if agg.column in protected:
                errors.append(
                    f"{where}.column: {agg.column!r} is a protected attribute "
                    "and may never feed a feature"
                )
        for key in agg.where:
            errors += _unknown(cols, key, f"{where}.where")
    return errors


def _reference_problems(spec: ModelSpec) -> list[str]:
    """Protected attributes, segments, fairness gates and reason codes name what exists."""
    cols, protected = spec.data.columns, set(spec.protected_attributes)
    errors: list[str] = []
    for i, name in enumerate(spec.protected_attributes):
        errors += _unknown(cols, name, f"protected_attributes[{i}]")
    for i, seg in enumerate(spec.segments):
        errors += _unknown(cols, seg.column, f"segments[{i}].column")
    for i, gate in enumerate(spec.gates.fairness):
        if gate.attribute not in protected:
            errors.append(
                f"gates.fairness[{i}].attribute: {gate.attribute!r} is not listed in "
                "protected_attributes"
            )
    if spec.features.aggregates and spec.data.time_column is None:
        errors.append("features.aggregates: windowed aggregates need data.time_column")
    for code in spec.reason_codes:
        if code not in spec.features.names:
            errors.append(f"reason_codes: {code!r} is not a feature")
    return errors


def _abtest_segment_problems(spec: ModelSpec, raw: set[str]) -> list[str]:
    """The abtest section's segments: segments of the spec, over raw features."""
    assert spec.abtest is not None
    ab = spec.abtest
    errors: list[str] = []
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
    return errors


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
    errors += _abtest_segment_problems(spec, raw)
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


class Training(StrictModel):
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


class Compute(StrictModel):
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


class ModelSpec(StrictModel):
    """A whole model spec (one YAML file)."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
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
        errors = [
            *_data_problems(self),
            *_raw_feature_problems(self),
            *_aggregate_problems(self),
            *_reference_problems(self),
            *_abtest_problems(self),
        ]
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
    text = read_text(path, SpecError, "spec file not found", "cannot read spec file")
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
