"""Data validation (Great Expectations) on a Dask cluster, partition by partition.

``validate_data_dask(spec, inputs, cluster)`` runs the same suite as
:func:`validation.data_quality.check_data`, renders the same ``data_docs/`` and returns
the same records, from which the stage writes the same files (``validation.json``,
``profile.json``, ``result.json``), so the DAG's governance recording and the gates read
them unchanged. The outcomes (pass/fail of every
check) and the observed values are **exactly** the local ones:

* **row-level checks** (not null, range, category set) run through GX Core on every
  partition (a GX ``Checkpoint`` per partition, on the workers; the partition's frame is
  indexed by the global row number). Element, missing and unexpected counts are summed;
  the partial unexpected list is the partitions' lists in row order, cut at GX's 20, and
  GX's own ``_format_map_output`` turns the sums into the result (percentages, the
  ``partial_unexpected_counts`` the examples come from), as it does on the whole frame;
* **uniqueness** (``unique: true`` columns and the id column) is a distributed duplicate
  count: a ``value_counts`` split over the partitions (a shuffle, never one table of all
  values), the values seen more than once, then the rows holding them (GX counts every
  occurrence; examples are the first 20 in row order);
* **table and aggregate checks**: columns and dtypes (the same in every partition), the
  row count (sum), the label rate (the target's integer sum over its non-null count, the
  division pandas' mean does), the latest time (max of the partition maxima), and, with a
  reference profile, the median of the drift columns, re-checked against the same bounds;
* ``profile.json``: null counts, category frequencies, datetime bounds and distinct
  strings are combined from partition results; the numeric statistics (min, max, mean and
  the p01/p50/p99 quantiles, and the median check) need every value: they gather **one
  numeric column at a time** on the client (8 bytes a row: 400 MB at 50M rows) and call
  the local function, so they are bit-identical.

The Data Docs are rendered by GX from the combined suite result.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.backends.dask_ingest import Piece, map_pieces, plan_pieces, read_piece
from pipelines.backends.dask_profile import (
    gather_column,
    merged_profile,
    partial_profile,
    read_column,
)
from pipelines.data.manifest import sha256_file
from pipelines.errors import DataValidationError
from pipelines.spec import ModelSpec

if TYPE_CHECKING:
    from distributed import Client

    from pipelines.backends.dask_core import Cluster
    from validation.data_quality import CheckedData, ValidateInputs

log = logging.getLogger(__name__)

PARTIAL_UNEXPECTED = 20  # GX's partial_unexpected_count in validation.data_quality
_MAP_SUFFIXES = (".not_null", ".range", ".categories")
_GX_LOCK = threading.Lock()  # GX keeps its current context in a process-wide global


def _frame(piece: Piece) -> pd.DataFrame:
    frame = read_piece(piece).to_pandas()
    frame.index = pd.RangeIndex(piece[1], piece[2])
    return frame


# ----------------------------------------------------------------------------- workers


def validate_piece(
    piece: Piece,
    spec: ModelSpec,
    reference: dict[str, Any] | None,
    now: datetime | None,
    max_age: timedelta | None,
    rows: int,
) -> dict[str, Any]:
    """The GX suite on one partition (no Data Docs) and the partition's profile parts."""
    from validation.data_checks import build_checks
    from validation.data_quality import run_suite

    frame = _frame(piece)
    with _GX_LOCK:
        checks = build_checks(spec, frame, reference, now=now, max_age=max_age, rows=rows)
        suite = run_suite(f"{spec.name}_data_quality", frame, checks, None)
    results = {}
    for result in suite.results:
        key = (result.expectation_config.meta or {}).get("check")
        results[key] = {
            "success": bool(result.success),
            "result": dict(result.result or {}),
            "exception_info": result.exception_info,
        }
    return {"results": results, "profile": partial_profile(spec, frame)}


def _duplicate_rows(piece: Piece, column: str, values: np.ndarray) -> tuple[list[Any], list[int]]:
    series = read_column(piece, column)
    hit = series[series.isin(values)].head(PARTIAL_UNEXPECTED)
    return hit.tolist(), hit.index.tolist()


# ----------------------------------------------------------------------------- combine


def _format_map(
    success: bool, element: int, nonnull: int | None, unexpected: int, values: list, index: list
) -> dict[str, Any]:
    from great_expectations.expectations.expectation import _format_map_output
    from great_expectations.expectations.expectation_configuration import parse_result_format

    fmt = parse_result_format(
        {"result_format": "SUMMARY", "partial_unexpected_count": PARTIAL_UNEXPECTED}
    )
    return _format_map_output(
        result_format=fmt,
        success=success,
        element_count=element,
        nonnull_count=nonnull,
        unexpected_count=unexpected,
        unexpected_list=values,
        unexpected_index_list=index if index else None,
    )["result"]


def _combine_map(
    parts: list[dict[str, Any]], unexpected: int | None = None, examples: tuple = ()
) -> tuple[bool, dict[str, Any]]:
    """Row-level results of the partitions as GX reports them for the whole frame."""
    element = sum(int(p["result"].get("element_count") or 0) for p in parts)
    with_missing = "missing_count" in parts[0]["result"]
    missing = sum(int(p["result"].get("missing_count") or 0) for p in parts)
    if unexpected is None:
        unexpected = sum(int(p["result"].get("unexpected_count") or 0) for p in parts)
        values = [v for p in parts for v in p["result"].get("partial_unexpected_list", [])]
        index = [v for p in parts for v in p["result"].get("partial_unexpected_index_list", [])]
    else:
        values, index = list(examples[0]), list(examples[1])
    nonnull = element - missing if with_missing else None
    if with_missing:  # map expectations: vacuous without non-null values
        success = element == 0 or nonnull == 0 or unexpected == 0
    else:  # not-null: vacuous without rows
        success = element == 0 or unexpected == 0
    raw = _format_map(
        success,
        element,
        nonnull,
        unexpected,
        values[:PARTIAL_UNEXPECTED],
        index[:PARTIAL_UNEXPECTED],
    )
    return success, raw


def _within(value: Any, kwargs: dict[str, Any]) -> bool:
    lo, hi = kwargs.get("min_value"), kwargs.get("max_value")
    if value is None:
        return False
    if isinstance(value, pd.Timestamp | datetime) or isinstance(lo, datetime):
        value = pd.Timestamp(value)
        lo = None if lo is None else pd.Timestamp(lo)
        hi = None if hi is None else pd.Timestamp(hi)
    if lo is not None and (value <= lo if kwargs.get("strict_min") else value < lo):
        return False
    return not (hi is not None and (value >= hi if kwargs.get("strict_max") else value > hi))


def _unique_counts(
    client: Client, pieces: list[Piece], column: str, meta: pd.Series
) -> tuple[int, tuple[list, list]]:
    """(rows holding a duplicated value, the first 20 such values and rows in row order)."""
    import dask.dataframe as dd

    from pipelines.backends.dask_core import on_cluster

    with on_cluster(client):
        series = dd.from_map(read_column, pieces, column=column, meta=meta.iloc[:0])
        counts = series.value_counts(split_out=max(len(pieces), 1))
        dups = counts[counts > 1].compute()
    unexpected = int(dups.sum())
    if not unexpected:
        return 0, ([], [])
    found = map_pieces(client, _duplicate_rows, pieces, column, dups.index.to_numpy())
    values = [v for vs, _ in found for v in vs][:PARTIAL_UNEXPECTED]
    index = [i for _, ix in found for i in ix][:PARTIAL_UNEXPECTED]
    return unexpected, (values, index)


@dataclass(frozen=True)
class _Scan:
    """The data's partitions on the cluster and what their checks found: the client, the
    pieces, the row count, every partition's partial profile, the columns gathered so far
    (filled as checks need them) and an empty frame of the data's columns."""

    client: Client
    pieces: list[Piece]
    rows: int
    partials: list[dict[str, Any]]
    gathered: dict[str, pd.Series]
    meta: pd.DataFrame


def _combine_check(
    check: Any, parts: list[dict[str, Any]], scan: _Scan
) -> tuple[bool, dict[str, Any], dict[str, Any]]:
    """(success, GX result dict, exception info) of one check over the whole data."""
    client, pieces, rows, partials = scan.client, scan.pieces, scan.rows, scan.partials
    gathered, meta = scan.gathered, scan.meta
    key = check.key
    kwargs = dict(check.expectation.configuration.kwargs)
    errors = [p["exception_info"] for p in parts if _raised(p["exception_info"])]
    if errors:
        return False, parts[0]["result"], errors[0]
    info = parts[0]["exception_info"]
    if key.endswith(_MAP_SUFFIXES):
        success, raw = _combine_map(parts)
        return success, raw, info
    if key.endswith(".unique"):
        column = kwargs["column"]
        unexpected, examples = _unique_counts(client, pieces, column, meta[column])
        success, raw = _combine_map(parts, unexpected, examples)
        return success, raw, info
    if key in ("table.min_rows", "reference.rows"):
        return _within(rows, kwargs), {"observed_value": rows}, info
    if key == "label_rate":
        total = sum(p["target"][0] for p in partials if "target" in p)
        count = sum(p["target"][1] for p in partials if "target" in p)
        mean = total / count if count else None
        return _within(mean, kwargs), {"observed_value": mean}, info
    if key in ("freshness", "reference.max_time"):
        observed = [p["result"].get("observed_value") for p in parts]
        observed = [v for v in observed if v is not None and not pd.isna(v)]
        latest = max(observed, key=pd.Timestamp) if observed else None
        return _within(latest, kwargs), {"observed_value": latest}, info
    if key.startswith("reference.") and key.endswith(".median"):
        column = kwargs["column"]
        if column not in gathered:
            gathered[column] = gather_column(client, pieces, column)
        median = gathered[column].median()
        median = None if pd.isna(median) else float(median)
        return _within(median, kwargs), {"observed_value": median}, info
    # columns and dtypes: the same in every partition; the first failing one if any
    failing = [p for p in parts if not p["success"]]
    chosen = failing[0] if failing else parts[0]
    return chosen["success"], chosen["result"], chosen["exception_info"]


def _raised(info: Any) -> bool:
    if not info:
        return False
    if "raised_exception" in info:
        return bool(info.get("raised_exception"))
    return any(isinstance(v, dict) and v.get("raised_exception") for v in info.values())


# ----------------------------------------------------------------------------- docs


def render_data_docs(suite_name: str, checks: list[Any], combined: list[Any], docs: Path) -> None:
    """The GX Data Docs of the combined suite result, rendered by GX into ``docs``."""
    import great_expectations as gx
    from great_expectations.core import ExpectationSuiteValidationResult
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    from validation.data_quality import SITE_NAME, gx_context, release_gx_context

    context = gx_context(docs)
    try:
        suite = context.suites.add(
            gx.ExpectationSuite(name=suite_name, expectations=[c.expectation for c in checks])
        )
        successful = sum(1 for r in combined if r.success)
        suite_result = ExpectationSuiteValidationResult(
            success=all(r.success for r in combined),
            results=combined,
            suite_name=suite.name,
            statistics={
                "evaluated_expectations": len(combined),
                "successful_expectations": successful,
                "unsuccessful_expectations": len(combined) - successful,
                "success_percent": 100.0 * successful / len(combined) if combined else None,
            },
            meta={"active_batch_definition": {"datasource_name": "ingested",
                                              "data_asset_name": "data"}},
        )  # fmt: skip
        suite_id = ExpectationSuiteIdentifier(name=suite.name)
        # no run name, as the local checkpoint: the same Data Docs paths on both backends
        run_id = RunIdentifier(run_name=None, run_time=datetime.now(UTC))
        result_id = ValidationResultIdentifier(
            expectation_suite_identifier=suite_id,
            run_id=run_id,
            batch_identifier="ingested-data",
        )
        suite_result.meta["run_id"] = run_id
        context.validation_results_store.set(result_id, suite_result)
        context.build_data_docs(site_names=[SITE_NAME], resource_identifiers=[result_id, suite_id])
    finally:
        release_gx_context()


# ----------------------------------------------------------------------------- stage


def _combined_result(check: Any, outcomes: list[dict[str, Any]], scan: _Scan) -> Any:
    """One check's result over every partition, as GX's own result."""
    from great_expectations.core import ExpectationValidationResult

    parts = [o["results"][check.key] for o in outcomes]
    success, raw, info = _combine_check(check, parts, scan)
    return ExpectationValidationResult(
        success=success,
        expectation_config=check.expectation.configuration,
        result=raw,
        exception_info=info,
    )


def _plan(data: Path, partition_rows: int) -> tuple[list[Piece], int, pd.DataFrame]:
    """The data file's pieces, its rows and an empty frame of its columns."""
    if not data.is_file():
        raise DataValidationError(f"{data}: data file not found")
    try:
        pieces, rows, _ = plan_pieces([data], partition_rows)
        meta = pq.ParquetFile(data).schema_arrow.empty_table().to_pandas()
    except (OSError, pa.ArrowException, ValueError) as exc:
        raise DataValidationError(f"{data}: not a readable Parquet file: {exc}") from exc
    return pieces, rows, meta


def validate_data_dask(spec: ModelSpec, inputs: ValidateInputs, cluster: Cluster) -> CheckedData:
    """:func:`validation.data_quality.check_data` on the cluster (module doc)."""
    from validation.data_checks import build_checks
    from validation.data_profile import load_profile
    from validation.data_quality import CheckedData, build_data_docs, check_record

    data, out_dir, client = inputs.data, inputs.out_dir, cluster.client
    reference_profile, now, max_age = inputs.reference_profile, inputs.now, inputs.max_age
    pieces, rows, meta = _plan(data, cluster.partition_rows)
    if not pieces:  # no rows: the local stage reports it through its checks
        from validation.data_quality import check_data

        return check_data(spec, inputs)
    reference = None if reference_profile is None else load_profile(reference_profile, spec)
    if max_age is not None and now is None:
        now = datetime.now(UTC)  # once, for every partition
    data_sha256 = sha256_file(data)
    suite_name = f"{spec.name}_data_quality"
    log.info("validating %s on dask: %d rows in %d partitions", data, rows, len(pieces))

    outcomes = map_pieces(client, validate_piece, pieces, spec, reference, now, max_age, rows)
    scan = _Scan(client, pieces, rows, [o["profile"] for o in outcomes], {}, meta)
    first = _frame((pieces[0][0], 0, min(rows, 1)))
    checks = build_checks(spec, first, reference, now=now, max_age=max_age, rows=rows)
    combined = [_combined_result(check, outcomes, scan) for check in checks]
    records = [check_record(check, result) for check, result in zip(checks, combined, strict=True)]

    build_data_docs(out_dir, lambda tmp: render_data_docs(suite_name, checks, combined, tmp))

    profile = merged_profile(spec, scan.partials, client, pieces, data_sha256, scan.gathered)
    return CheckedData(data, data_sha256, suite_name, records, profile, reference_profile, "dask")
