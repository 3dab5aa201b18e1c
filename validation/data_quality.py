"""Data validation with Great Expectations (GX Core 1.x), generated from the spec.

``validate_data(spec, data, out_dir, reference_profile=None, now=None, max_age=None)``
is the lifecycle stage after ingest (see ``docs/lifecycle.md``). It builds one
:class:`great_expectations.ExpectationSuite` from the spec (and, when given, from the
profile of the last approved training data), runs it through a
:class:`great_expectations.Checkpoint` whose :class:`UpdateDataDocsAction` renders
the Data Docs into ``out_dir/data_docs/``, and writes ``validation.json``,
``profile.json`` and ``result.json``.

The checks (``blocking`` ones fail the stage, the others are warnings):

=========================================  ======================================  ========
check                                      GX expectation                          blocking
=========================================  ======================================  ========
columns are the spec's, in spec order      ExpectTableColumnsToMatchOrderedList    yes
at least ``data.min_rows`` rows            ExpectTableRowCountToBeBetween          yes
column dtype per spec type                 ExpectColumnTypeToBe                    yes
no nulls (``missing: forbid`` columns)     ExpectColumnValuesToNotBeNull           yes
spec ``min``/``max``                       ExpectColumnValuesToBeBetween           yes
spec ``categories``                        ExpectColumnValuesToBeInSet             yes
``unique: true`` columns and the id column ExpectColumnValuesToBeUnique            yes
label rate (mean of the target)            ExpectColumnMeanToBeBetween             yes
freshness (only with ``max_age``)          ExpectColumnMaxToBeBetween              yes
*with a reference profile:*
rows within 0.5x..2x of the reference      ExpectTableRowCountToBeBetween          yes
latest time >= the reference's latest - 2d ExpectColumnMaxToBeBetween              yes
median within the reference's [p01, p99]   ExpectColumnMedianToBeBetween           no
=========================================  ======================================  ========

Contract interpretations and bounds (module constants):

* The type check expects ``int64`` for int columns, or ``Int64`` when the column is
  the nullable type (ingest writes it when there are nulls; the not-null check then
  decides), ``bool``/``boolean`` likewise, ``float64``, ``category``,
  ``datetime64[ns]``, and ``object`` (or ``string``) for string columns.
* Label rate without a reference: a sanity bound ``0 < rate < 0.5``. With a
  reference rate ``p``: ``p ± max(LABEL_RATE_RELATIVE_TOLERANCE * p,
  LABEL_RATE_STANDARD_ERRORS * sqrt(p (1 - p) / n))`` with ``n`` the current rows,
  clipped to [0, 1]. The relative term (40 %) catches a halved rate on any large data
  set; the standard-error term keeps small samples of rare labels (fraud) from
  failing on noise alone.
* Row count with a reference: ``ceil(0.5 * rows_ref) .. floor(2 * rows_ref)``.
* Recency with a reference: the latest time must be at least the reference's latest
  minus ``REFERENCE_MAX_TIME_TOLERANCE`` (2 days): new training data must not be
  older than the approved data, but two samples of the same period (different seeds)
  end a few hours apart.
* Freshness is skipped unless ``max_age`` is given: then the latest
  ``data.time_column`` value must be ``>= now - max_age`` (``now`` defaults to the
  current UTC time; pass it, e.g. the Airflow logical date, for reproducible output).
  The generated data sets have fixed dates (2025-2026), so a wall-clock freshness
  bound is an operational choice, not a default.
* The drift-lite median check runs on the numeric raw features and segment columns
  and only warns: drift is the monitoring stage's job.
* ``profile.json``: ``rows``, ``label_rate``, ``max_time`` (ISO text), ``target``,
  ``time_column``, ``spec``, ``data_sha256`` and per column ``type``, ``dtype``,
  ``nulls`` plus ``min``/``max``/``mean``/``p01``/``p50``/``p99`` (numbers),
  ``frequencies`` (categories, every spec category with its count), ``min``/``max``
  (datetimes), ``mean`` (bool) or ``distinct`` (strings). :func:`load_profile` reads
  it back as a reference and refuses a profile of another spec.

Idempotence: every call uses a fresh in-memory (ephemeral) GX context, so no
validation results accumulate; the Data Docs are built in a temporary folder that
then replaces ``out_dir/data_docs``. ``validation.json`` and ``profile.json`` carry
no run ids or timestamps (the Data Docs HTML does, as GX renders the run time). The
Data Docs are a static site (relative links, local ``static/`` assets); GX's
templates still load Bootstrap/jQuery styling from public CDNs, without which the
pages render unstyled but complete.

GX is imported lazily (importing it takes seconds), so importing this module stays
cheap, e.g. while Airflow parses DAG files.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from pipelines.artifacts import write_json
from pipelines.data.manifest import sha256_file
from pipelines.errors import DataValidationError
from pipelines.spec import ColumnType, MissingPolicy, ModelSpec

log = logging.getLogger(__name__)

VALIDATION_FILE = "validation.json"
PROFILE_FILE = "profile.json"
RESULT_FILE = "result.json"
DATA_DOCS_DIR = "data_docs"
PROFILE_FORMAT = 1

ROW_COUNT_MIN_RATIO = 0.5
ROW_COUNT_MAX_RATIO = 2.0
LABEL_RATE_RELATIVE_TOLERANCE = 0.4
LABEL_RATE_STANDARD_ERRORS = 3.0
REFERENCE_MAX_TIME_TOLERANCE = timedelta(days=2)
LABEL_RATE_SANITY_MIN = 0.0  # exclusive
LABEL_RATE_SANITY_MAX = 0.5  # exclusive
PROFILE_QUANTILES: dict[str, float] = {"p01": 0.01, "p50": 0.5, "p99": 0.99}
MAX_EXAMPLES = 5  # unexpected values quoted per failed check (message and validation.json)

SITE_NAME = "local_site"
_RESULT_KEYS = (
    "observed_value",
    "element_count",
    "missing_count",
    "unexpected_count",
    "unexpected_percent",
)


def _quiet_gx_logs() -> None:
    """GX logs hundreds of INFO lines on import; keep its loggers at WARNING unless set."""
    for name in ("great_expectations", "great_expectations._docs_decorators"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)


_quiet_gx_logs()


@dataclass(frozen=True)
class DataValidationResult:
    """Outcome of ``validate_data`` (also written to ``result.json``)."""

    spec: str
    data: str
    data_sha256: str
    suite: str
    passed: bool
    rows: int
    label_rate: float | None
    expectations: int
    failed: list[str]
    warnings: list[str]
    validation: str
    profile: str
    data_docs: str
    reference_profile: str | None = None
    checks: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "checks": dict(self.checks),
            "data": self.data,
            "data_docs": self.data_docs,
            "data_sha256": self.data_sha256,
            "expectations": self.expectations,
            "failed": list(self.failed),
            "label_rate": self.label_rate,
            "passed": self.passed,
            "profile": self.profile,
            "reference_profile": self.reference_profile,
            "rows": self.rows,
            "spec": self.spec,
            "suite": self.suite,
            "validation": self.validation,
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True)
class Check:
    """One expectation of the suite with our bookkeeping."""

    key: str
    expectation: Any  # a great_expectations Expectation
    description: str
    blocking: bool


# ----------------------------------------------------------------------------- JSON helpers


def jsonable(value: Any) -> Any:
    """Plain JSON types: numpy scalars unwrapped, NaN/NaT to None, datetimes as ISO text."""
    if value is None or isinstance(value, bool | str):
        return value
    if value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, int):
        return value
    if isinstance(value, float | Decimal):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, pd.Timestamp | datetime | date):
        return value.isoformat()
    if isinstance(value, np.datetime64):
        return jsonable(pd.Timestamp(value))
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, set | frozenset):
        return sorted((jsonable(v) for v in value), key=str)
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return str(value)


def _fmt(value: Any) -> str:
    """Short human text for a bound or an observed value."""
    if isinstance(value, float | np.floating):
        f = float(value)
        if f.is_integer() and abs(f) < 1e15:
            return str(int(f))
        return f"{f:.6g}"
    if isinstance(value, pd.Timestamp | datetime):
        return pd.Timestamp(value).isoformat()
    return str(value)


# ----------------------------------------------------------------------------- profile


def numeric_stats(values: pd.Series) -> dict[str, float | None]:
    numbers = pd.to_numeric(values, errors="coerce").astype("float64").to_numpy()
    numbers = numbers[np.isfinite(numbers)]
    keys = ["min", "max", "mean", *PROFILE_QUANTILES]
    if numbers.size == 0:
        return dict.fromkeys(keys)
    stats: dict[str, float | None] = {
        "min": float(numbers.min()),
        "max": float(numbers.max()),
        "mean": float(numbers.mean()),
    }
    qs = np.quantile(numbers, list(PROFILE_QUANTILES.values()))
    stats.update({k: float(q) for k, q in zip(PROFILE_QUANTILES, qs, strict=True)})
    return stats


def _label_rate(spec: ModelSpec, frame: pd.DataFrame) -> float | None:
    target = spec.data.target
    if target not in frame:
        return None
    values = pd.to_numeric(frame[target], errors="coerce").astype("float64").dropna()
    return float(values.mean()) if len(values) else None


def _max_time(spec: ModelSpec, frame: pd.DataFrame) -> str | None:
    time_col = spec.data.time_column
    if time_col is None or time_col not in frame:
        return None
    if not pd.api.types.is_datetime64_any_dtype(frame[time_col].dtype):
        return None
    latest = frame[time_col].max()
    return None if pd.isna(latest) else pd.Timestamp(latest).isoformat()


def build_profile(spec: ModelSpec, frame: pd.DataFrame, data_sha256: str) -> dict[str, Any]:
    """The profile of one data set (``profile.json``; a future reference profile)."""
    columns: dict[str, Any] = {}
    for name, col in spec.data.columns.items():
        if name not in frame:
            continue
        series = frame[name]
        entry: dict[str, Any] = {
            "dtype": str(series.dtype),
            "nulls": int(series.isna().sum()),
            "type": col.type.value,
        }
        if col.type in (ColumnType.FLOAT, ColumnType.INT):
            entry.update(numeric_stats(series))
        elif col.type == ColumnType.BOOL:
            entry["mean"] = numeric_stats(series.astype("float64"))["mean"]
        elif col.type == ColumnType.CATEGORY:
            counts = series.value_counts(dropna=True, sort=False)
            entry["frequencies"] = {str(k): int(v) for k, v in counts.items()}
        elif col.type == ColumnType.DATETIME and pd.api.types.is_datetime64_any_dtype(series):
            lo, hi = series.min(), series.max()
            entry["min"] = None if pd.isna(lo) else pd.Timestamp(lo).isoformat()
            entry["max"] = None if pd.isna(hi) else pd.Timestamp(hi).isoformat()
        elif col.type == ColumnType.STRING:
            entry["distinct"] = int(series.nunique(dropna=True))
        columns[name] = entry
    return jsonable(
        {
            "columns": columns,
            "data_sha256": data_sha256,
            "format": PROFILE_FORMAT,
            "label_rate": _label_rate(spec, frame),
            "max_time": _max_time(spec, frame),
            "rows": len(frame),
            "spec": spec.name,
            "target": spec.data.target,
            "time_column": spec.data.time_column,
        }
    )


def load_profile(path: Path, spec: ModelSpec | None = None) -> dict[str, Any]:
    """Read a ``profile.json`` written by ``validate_data``; DataValidationError if unusable."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataValidationError(f"{path}: reference profile not found") from exc
    except (OSError, ValueError) as exc:
        raise DataValidationError(f"{path}: reference profile is not readable JSON: {exc}") from exc
    problems: list[str] = []
    if not isinstance(data, dict):
        raise DataValidationError(f"{path}: reference profile must be a JSON object")
    rows = data.get("rows")
    if not isinstance(rows, int) or isinstance(rows, bool) or rows < 1:
        problems.append("'rows' must be a positive integer")
    rate = data.get("label_rate")
    if rate is not None and (not isinstance(rate, int | float) or not 0 <= rate <= 1):
        problems.append("'label_rate' must be null or a number in [0, 1]")
    max_time = data.get("max_time")
    if max_time is not None:
        try:
            pd.Timestamp(max_time)
        except (TypeError, ValueError):
            problems.append(f"'max_time' is not a timestamp: {max_time!r}")
    if not isinstance(data.get("columns", {}), dict):
        problems.append("'columns' must be an object")
    if spec is not None and data.get("spec") not in (None, spec.name):
        problems.append(f"profile is for spec {data.get('spec')!r}, not {spec.name!r}")
    if problems:
        raise DataValidationError(f"{path}: invalid reference profile: " + "; ".join(problems))
    return data


# ----------------------------------------------------------------------------- suite


def _expected_dtype(col_type: ColumnType, dtype: Any) -> str:
    if col_type == ColumnType.FLOAT:
        return "float64"
    if col_type == ColumnType.INT:
        return "Int64" if isinstance(dtype, pd.Int64Dtype) else "int64"
    if col_type == ColumnType.BOOL:
        return "boolean" if isinstance(dtype, pd.BooleanDtype) else "bool"
    if col_type == ColumnType.CATEGORY:
        return "category"
    if col_type == ColumnType.DATETIME:
        return "datetime64[ns]"
    return "string" if isinstance(dtype, pd.StringDtype) else "object"


def _bounds_text(lo: Any, hi: Any) -> str:
    if lo is not None and hi is not None:
        return f"between {_fmt(lo)} and {_fmt(hi)}"
    if lo is not None:
        return f"at least {_fmt(lo)}"
    return f"at most {_fmt(hi)}"


def _label_rate_bounds(
    reference: Mapping[str, Any] | None, rows: int
) -> tuple[float, float, bool, str]:
    """(min, max, strict, how) for the target mean."""
    ref_rate = None if reference is None else reference.get("label_rate")
    if ref_rate is None:
        return (
            LABEL_RATE_SANITY_MIN,
            LABEL_RATE_SANITY_MAX,
            True,
            f"strictly between {_fmt(LABEL_RATE_SANITY_MIN)} and {_fmt(LABEL_RATE_SANITY_MAX)}",
        )
    p = float(ref_rate)
    se = math.sqrt(p * (1.0 - p) / max(rows, 1))
    half = max(LABEL_RATE_RELATIVE_TOLERANCE * p, LABEL_RATE_STANDARD_ERRORS * se)
    lo, hi = max(0.0, p - half), min(1.0, p + half)
    how = (
        f"between {_fmt(lo)} and {_fmt(hi)} (reference {_fmt(p)} "
        f"± max({_fmt(LABEL_RATE_RELATIVE_TOLERANCE * 100)}%, "
        f"{_fmt(LABEL_RATE_STANDARD_ERRORS)} standard errors))"
    )
    return lo, hi, False, how


def _naive_utc(moment: datetime) -> datetime:
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


def build_checks(
    spec: ModelSpec,
    frame: pd.DataFrame,
    reference: Mapping[str, Any] | None = None,
    now: datetime | None = None,
    max_age: timedelta | None = None,
    rows: int | None = None,
) -> list[Check]:
    """The suite's expectations, in a fixed order (table, columns, label, time, reference).

    ``frame`` gives the columns and dtypes; ``rows`` (default ``len(frame)``) the row count
    the label-rate bound uses (the Dask backend passes one partition and the total).
    """
    import great_expectations as gx

    expect = gx.expectations
    checks: list[Check] = []

    def add(key: str, factory: Any, description: str, blocking: bool = True, **kwargs: Any) -> None:
        meta = {"blocking": blocking, "check": key}
        expectation = factory(**kwargs, description=description, meta=meta)
        checks.append(Check(key, expectation, description, blocking))

    spec_columns = list(spec.data.columns)
    add(
        "table.columns",
        expect.ExpectTableColumnsToMatchOrderedList,
        "table: the spec's columns in spec order",
        column_list=spec_columns,
    )
    add(
        "table.min_rows",
        expect.ExpectTableRowCountToBeBetween,
        f"table: at least {spec.data.min_rows} rows (data.min_rows)",
        min_value=spec.data.min_rows,
    )
    data = spec.data
    for name, col in data.columns.items():
        if name not in frame:
            continue
        dtype_name = _expected_dtype(col.type, frame[name].dtype)
        add(
            f"{name}.type",
            expect.ExpectColumnTypeToBe,
            f"{name}: dtype {dtype_name}",
            column=name,
            type_=dtype_name,
        )
        if col.missing == MissingPolicy.FORBID:
            add(
                f"{name}.not_null",
                expect.ExpectColumnValuesToNotBeNull,
                f"{name}: no nulls",
                column=name,
            )
        if col.min is not None or col.max is not None:
            add(
                f"{name}.range",
                expect.ExpectColumnValuesToBeBetween,
                f"{name}: values {_bounds_text(col.min, col.max)}",
                column=name,
                min_value=col.min,
                max_value=col.max,
            )
        if col.categories is not None:
            add(
                f"{name}.categories",
                expect.ExpectColumnValuesToBeInSet,
                f"{name}: values in the spec's {len(col.categories)} categories",
                column=name,
                value_set=list(col.categories),
            )
        if col.unique or name == data.id_column:
            add(
                f"{name}.unique",
                expect.ExpectColumnValuesToBeUnique,
                f"{name}: unique values" + (" (id column)" if name == data.id_column else ""),
                column=name,
            )

    rows = len(frame) if rows is None else rows
    if data.target in frame:
        lo, hi, strict, how = _label_rate_bounds(reference, rows)
        add(
            "label_rate",
            expect.ExpectColumnMeanToBeBetween,
            f"{data.target}: label rate {how}",
            column=data.target,
            min_value=lo,
            max_value=hi,
            strict_min=strict,
            strict_max=strict,
        )

    time_col = data.time_column
    has_time = time_col is not None and time_col in frame
    if has_time and max_age is not None:
        moment = _naive_utc(now or datetime.now(UTC))
        oldest = moment - max_age
        add(
            "freshness",
            expect.ExpectColumnMaxToBeBetween,
            f"{time_col}: latest time at or after {_fmt(oldest)} (now - {max_age})",
            column=time_col,
            min_value=oldest,
        )

    if reference is None:
        return checks
    ref_rows = int(reference["rows"])
    lo_rows = math.ceil(ROW_COUNT_MIN_RATIO * ref_rows)
    hi_rows = math.floor(ROW_COUNT_MAX_RATIO * ref_rows)
    add(
        "reference.rows",
        expect.ExpectTableRowCountToBeBetween,
        f"table: rows between {lo_rows} and {hi_rows} ({_fmt(ROW_COUNT_MIN_RATIO)}x-"
        f"{_fmt(ROW_COUNT_MAX_RATIO)}x the reference's {ref_rows})",
        min_value=lo_rows,
        max_value=hi_rows,
    )
    ref_time = reference.get("max_time")
    if has_time and ref_time is not None:
        ref_latest = pd.Timestamp(ref_time).to_pydatetime()
        bound = ref_latest - REFERENCE_MAX_TIME_TOLERANCE
        add(
            "reference.max_time",
            expect.ExpectColumnMaxToBeBetween,
            f"{time_col}: latest time at or after {_fmt(bound)} (the reference's latest, "
            f"{_fmt(ref_latest)}, minus {REFERENCE_MAX_TIME_TOLERANCE.days} days)",
            column=time_col,
            min_value=bound,
        )
    ref_columns = reference.get("columns") or {}
    drift_columns = set(spec.features.raw) | {seg.column for seg in spec.segments}
    for name, col in data.columns.items():
        numeric = col.type in (ColumnType.FLOAT, ColumnType.INT)
        if not numeric or name not in drift_columns or name not in frame:
            continue
        ref_col = ref_columns.get(name) or {}
        p01, p99 = ref_col.get("p01"), ref_col.get("p99")
        if not isinstance(p01, int | float) or not isinstance(p99, int | float):
            continue
        add(
            f"reference.{name}.median",
            expect.ExpectColumnMedianToBeBetween,
            f"{name}: median between the reference's p01 and p99 ({_fmt(p01)}..{_fmt(p99)})",
            blocking=False,
            column=name,
            min_value=float(p01),
            max_value=float(p99),
        )
    return checks


# ----------------------------------------------------------------------------- running GX


def gx_context(docs_dir: Path | None) -> Any:
    """A fresh in-memory GX context whose only Data Docs site is ``docs_dir`` (if any)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
        data_docs_sites={}
        if docs_dir is None
        else {
            SITE_NAME: {
                "class_name": "SiteBuilder",
                "show_how_to_buttons": False,
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(docs_dir),
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            }
        },
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def release_gx_context() -> None:
    """Drop GX's global reference to the last context (and the data it saw)."""
    try:
        from great_expectations.data_context.data_context.context_factory import (
            project_manager,
        )

        project_manager.set_project(None)
    except Exception:  # noqa: BLE001 (best effort: only frees memory sooner)
        log.debug("could not release the GX context", exc_info=True)


def run_suite(
    suite_name: str, frame: pd.DataFrame, checks: list[Check], docs_dir: Path | None
) -> Any:
    """Run the checks through a Checkpoint that updates the Data Docs (unless ``docs_dir``
    is None); the suite result."""
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction

    context = gx_context(docs_dir)
    try:
        batch_definition = (
            context.data_sources.add_pandas(name="ingested")
            .add_dataframe_asset(name="data")
            .add_batch_definition_whole_dataframe(name="whole_table")
        )
        # all expectations at once: add_expectation re-serialises the suite every time
        suite = context.suites.add(
            gx.ExpectationSuite(name=suite_name, expectations=[c.expectation for c in checks])
        )
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(
                name=f"{suite_name}_validation", data=batch_definition, suite=suite
            )
        )
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=f"{suite_name}_checkpoint",
                validation_definitions=[definition],
                actions=[]
                if docs_dir is None
                else [UpdateDataDocsAction(name="update_data_docs", site_names=[SITE_NAME])],
                result_format={"result_format": "SUMMARY", "partial_unexpected_count": 20},
            )
        )
        outcome = checkpoint.run(batch_parameters={"dataframe": frame})
        return next(iter(outcome.run_results.values()))
    finally:
        release_gx_context()


def _exception_message(result: Any) -> str | None:
    info = result.exception_info or {}
    if "raised_exception" in info:
        return info.get("exception_message") if info.get("raised_exception") else None
    for value in info.values():
        if isinstance(value, Mapping) and value.get("raised_exception"):
            return str(value.get("exception_message"))
    return None


def check_record(check: Check, result: Any) -> dict[str, Any]:
    config = result.expectation_config
    kwargs = {k: v for k, v in dict(config.kwargs).items() if k != "batch_id"}
    raw = dict(result.result or {})
    observed = {k: raw[k] for k in _RESULT_KEYS if k in raw}
    if "partial_unexpected_counts" in raw and check.key.endswith((".categories", ".range")):
        observed["unexpected_examples"] = [
            {"value": item.get("value"), "count": item.get("count")}
            for item in raw["partial_unexpected_counts"][:MAX_EXAMPLES]
        ]
    elif "partial_unexpected_list" in raw and check.key.endswith(".unique"):
        seen = list(dict.fromkeys(jsonable(v) for v in raw["partial_unexpected_list"]))
        observed["unexpected_examples"] = [{"value": v} for v in seen[:MAX_EXAMPLES]]
    error = _exception_message(result)
    return jsonable(
        {
            "blocking": check.blocking,
            "check": check.key,
            "column": kwargs.get("column"),
            "description": check.description,
            "error": error,
            "kwargs": kwargs,
            "observed": observed,
            "success": bool(result.success) and error is None,
            "type": config.type,
        }
    )


def _failure_text(record: Mapping[str, Any]) -> str:
    observed = record["observed"]
    if record["error"]:
        return f"{record['description']} (error: {record['error']})"
    if "unexpected_count" in observed:
        detail = f"{observed['unexpected_count']} unexpected"
        examples = [repr(e["value"]) for e in observed.get("unexpected_examples", [])]
        if examples:
            detail += ", e.g. " + ", ".join(examples[:3])
        return f"{record['description']} ({detail})"
    if "observed_value" in observed:
        return f"{record['description']} (observed {_fmt(observed['observed_value'])})"
    return record["description"]


def replace_dir(new: Path, target: Path) -> None:
    old = target.with_name(f".{target.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        target.rename(old)
    new.rename(target)
    if old.exists():
        shutil.rmtree(old)


def _read_data(data: Path) -> pd.DataFrame:
    if not data.is_file():
        raise DataValidationError(f"{data}: data file not found")
    try:
        return pd.read_parquet(data)
    except (OSError, pa.ArrowException, ValueError) as exc:
        raise DataValidationError(f"{data}: not a readable Parquet file: {exc}") from exc


# ----------------------------------------------------------------------------- stage


def validate_data(
    spec: ModelSpec,
    data: Path,
    out_dir: Path,
    reference_profile: Path | None = None,
    now: datetime | None = None,
    max_age: timedelta | None = None,
) -> DataValidationResult:
    """Validate ingested data against the spec (and a reference profile); write the folder.

    Writes ``data_docs/`` (GX Data Docs, ``data_docs/index.html``), ``validation.json``,
    ``profile.json`` and ``result.json`` into ``out_dir``, then raises
    DataValidationError listing every failed blocking check if there is any.
    """
    data = Path(data)
    out_dir = Path(out_dir)
    frame = _read_data(data)
    reference = None if reference_profile is None else load_profile(reference_profile, spec)
    data_sha256 = sha256_file(data)
    suite_name = f"{spec.name}_data_quality"
    checks = build_checks(spec, frame, reference, now=now, max_age=max_age)

    out_dir.mkdir(parents=True, exist_ok=True)
    docs_tmp = out_dir / f".{DATA_DOCS_DIR}.tmp"
    if docs_tmp.exists():
        shutil.rmtree(docs_tmp)
    try:
        suite_result = run_suite(suite_name, frame, checks, docs_tmp)
        if not (docs_tmp / "index.html").is_file():
            raise DataValidationError(f"{out_dir}: GX did not build the Data Docs index.html")
        replace_dir(docs_tmp, out_dir / DATA_DOCS_DIR)
    finally:
        if docs_tmp.exists():
            shutil.rmtree(docs_tmp)

    by_key = {}
    for result in suite_result.results:
        key = (result.expectation_config.meta or {}).get("check")
        by_key[key] = result
    missing = [check.key for check in checks if check.key not in by_key]
    if missing:  # GX returns one result per expectation; anything else is a bug
        raise RuntimeError(f"GX returned no result for check(s) {', '.join(missing)}")
    records = [check_record(check, by_key[check.key]) for check in checks]
    profile = build_profile(spec, frame, data_sha256)
    return write_outcome(
        spec, data, out_dir, data_sha256, suite_name, records, profile, reference_profile
    )


def write_outcome(
    spec: ModelSpec,
    data: Path,
    out_dir: Path,
    data_sha256: str,
    suite_name: str,
    records: list[dict[str, Any]],
    profile: dict[str, Any],
    reference_profile: Path | None,
    backend: str | None = None,
) -> DataValidationResult:
    """Write ``validation.json``, ``profile.json`` and ``result.json`` from the check
    records; raise DataValidationError listing every failed blocking check.

    ``backend`` (the Dask backend passes ``"dask"``) is recorded in ``result.json``."""
    failed = [_failure_text(r) for r in records if not r["success"] and r["blocking"]]
    warnings = [_failure_text(r) for r in records if not r["success"] and not r["blocking"]]
    rows = int(profile["rows"])

    validation = {
        "data": str(data),
        "data_sha256": data_sha256,
        "expectations": records,
        "reference_profile": None if reference_profile is None else str(reference_profile),
        "rows": rows,
        "spec": spec.name,
        "statistics": {
            "evaluated": len(records),
            "failed_blocking": len(failed),
            "successful": sum(1 for r in records if r["success"]),
            "warnings": len(warnings),
        },
        "success": not failed,
        "suite": suite_name,
    }
    validation_path = out_dir / VALIDATION_FILE
    profile_path = out_dir / PROFILE_FILE
    write_json(validation_path, validation)
    write_json(profile_path, profile)
    outcome = DataValidationResult(
        spec=spec.name,
        data=str(data),
        data_sha256=data_sha256,
        suite=suite_name,
        passed=not failed,
        rows=rows,
        label_rate=profile["label_rate"],
        expectations=len(records),
        failed=failed,
        warnings=warnings,
        validation=str(validation_path),
        profile=str(profile_path),
        data_docs=str(out_dir / DATA_DOCS_DIR / "index.html"),
        reference_profile=None if reference_profile is None else str(reference_profile),
        checks=validation["statistics"],
    )
    write_json(
        out_dir / RESULT_FILE,
        outcome.to_dict() if backend is None else {**outcome.to_dict(), "backend": backend},
    )
    for text in warnings:
        log.warning("%s: data check warning: %s", data, text)
    if failed:
        n = len(failed)
        raise DataValidationError(
            f"{n} data check{'s' if n > 1 else ''} failed for {data}: " + "; ".join(failed)
        )
    log.info(
        "validated %s: %d expectations passed (%d warnings); Data Docs %s",
        data,
        len(records) - len(warnings),
        len(warnings),
        outcome.data_docs,
    )
    return outcome
