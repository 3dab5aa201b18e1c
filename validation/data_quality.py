"""Data validation with Great Expectations (GX Core 1.x), generated from the spec.

``check_data(spec, ValidateInputs(data, out_dir, reference_profile, now, max_age))`` is
the computation of the lifecycle stage after ingest (:mod:`pipelines.stages.validate_data`,
see ``docs/lifecycle.md``). It builds one :class:`great_expectations.ExpectationSuite`
from the spec (and, when given, from the profile of the last approved training data),
runs it through a :class:`great_expectations.Checkpoint` whose
:class:`UpdateDataDocsAction` renders the Data Docs into ``out_dir/data_docs/``, and
returns the check records and the data profile (:class:`CheckedData`), from which the
stage writes ``validation.json``, ``profile.json`` and ``result.json``.

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

import logging
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
import pyarrow as pa

from pipelines.data.manifest import sha256_file
from pipelines.errors import DataValidationError
from pipelines.formatting import short_number
from pipelines.spec import ModelSpec
from validation.data_checks import Check, build_checks
from validation.data_profile import build_profile, jsonable, load_profile

log = logging.getLogger(__name__)
T = TypeVar("T")

DATA_DOCS_DIR = "data_docs"

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
        return f"{record['description']} (observed {short_number(observed['observed_value'])})"
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


def build_data_docs(out_dir: Path, build: Callable[[Path], T]) -> T:
    """``build(folder)`` writes the Data Docs in a temporary folder, which then replaces
    ``out_dir/data_docs``; its value is returned."""
    out_dir.mkdir(parents=True, exist_ok=True)
    docs_tmp = out_dir / f".{DATA_DOCS_DIR}.tmp"
    if docs_tmp.exists():
        shutil.rmtree(docs_tmp)
    try:
        value = build(docs_tmp)
        if not (docs_tmp / "index.html").is_file():
            raise DataValidationError(f"{out_dir}: GX did not build the Data Docs index.html")
        replace_dir(docs_tmp, out_dir / DATA_DOCS_DIR)
    finally:
        if docs_tmp.exists():
            shutil.rmtree(docs_tmp)
    return value


def _read_data(data: Path) -> pd.DataFrame:
    if not data.is_file():
        raise DataValidationError(f"{data}: data file not found")
    try:
        return pd.read_parquet(data)
    except (OSError, pa.ArrowException, ValueError) as exc:
        raise DataValidationError(f"{data}: not a readable Parquet file: {exc}") from exc


# ----------------------------------------------------------------------------- stage


@dataclass(frozen=True)
class ValidateInputs:
    """The data checks' inputs: the ingested ``data.parquet``, the folder of the stage's
    files, the champion's data profile (drift reference, None: none), and the freshness
    bound ``max_age`` measured from ``now`` (None: skipped / the current UTC time)."""

    data: Path
    out_dir: Path
    reference_profile: Path | None = None
    now: datetime | None = None
    max_age: timedelta | None = None


def check_data(spec: ModelSpec, inputs: ValidateInputs) -> CheckedData:
    """The local data checks (:data:`pipelines.backends.VALIDATE_DATA`): the suite run
    through GX, whose Data Docs go to ``inputs.out_dir/data_docs/``, and the data profile;
    the stage writes the rest (:func:`pipelines.stages.validate_data.write_validation`)."""
    data, out_dir, reference_profile = inputs.data, inputs.out_dir, inputs.reference_profile
    frame = _read_data(data)
    reference = None if reference_profile is None else load_profile(reference_profile, spec)
    data_sha256 = sha256_file(data)
    suite_name = f"{spec.name}_data_quality"
    checks = build_checks(spec, frame, reference, now=inputs.now, max_age=inputs.max_age)

    suite_result = build_data_docs(out_dir, lambda docs: run_suite(suite_name, frame, checks, docs))

    by_key = {}
    for result in suite_result.results:
        key = (result.expectation_config.meta or {}).get("check")
        by_key[key] = result
    missing = [check.key for check in checks if check.key not in by_key]
    if missing:  # GX returns one result per expectation; anything else is a bug
        raise RuntimeError(f"GX returned no result for check(s) {', '.join(missing)}")
    records = [check_record(check, by_key[check.key]) for check in checks]
    profile = build_profile(spec, frame, data_sha256)
    return CheckedData(data, data_sha256, suite_name, records, profile, reference_profile)


@dataclass(frozen=True)
class CheckedData:
    """What the checks found on one data file, for the stage's files
    (:func:`pipelines.stages.validate_data.write_validation`): the check records and the
    data profile (``backend``: ``"dask"`` on the Dask backend, recorded in
    ``result.json``)."""

    data: Path
    data_sha256: str
    suite_name: str
    records: list[dict[str, Any]]
    profile: dict[str, Any]
    reference_profile: Path | None
    backend: str | None = None

    @property
    def failed(self) -> list[str]:
        """The failed blocking checks, as text."""
        return [_failure_text(r) for r in self.records if not r["success"] and r["blocking"]]

    @property
    def warnings(self) -> list[str]:
        """The failed checks that only warn, as text."""
        return [_failure_text(r) for r in self.records if not r["success"] and not r["blocking"]]
