"""Data validation with Great Expectations: spec checks, reference checks, outputs, docs."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from pipelines.data import (
    CreditConfig,
    FraudConfig,
    generate_credit,
    generate_fraud,
    load_german_credit,
)
from pipelines.errors import DataValidationError
from pipelines.spec import ModelSpec, load_spec
from pipelines.stages.ingest import DATA_FILE, ingest
from pipelines.stages.validate_data import (
    PROFILE_FILE,
    RESULT_FILE,
    VALIDATION_FILE,
    validate_data,
)
from tests.datasets import small_spec
from validation.data_profile import load_profile
from validation.data_quality import DATA_DOCS_DIR

JSON_FILES = (VALIDATION_FILE, PROFILE_FILE, RESULT_FILE)
Ingest = Callable[[str, pd.DataFrame], Path]


@pytest.fixture(scope="module")
def specs(root: Path) -> dict[str, ModelSpec]:
    names = ("fraud", "credit", "german_credit")
    return {name: load_spec(root / "specs" / f"{name}.yaml") for name in names}


@pytest.fixture(scope="module")
def frames() -> dict[str, pd.DataFrame]:
    return {
        # the fraud spec needs at least 10,000 rows (data.min_rows)
        "fraud": generate_fraud(FraudConfig(n_rows=10_000, seed=5)),
        "credit": generate_credit(CreditConfig(n_rows=3_000, seed=5)),
        "german_credit": load_german_credit(),
    }


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory, specs: dict[str, ModelSpec]) -> Ingest:
    """Write a frame as Parquet, ingest it with the spec, return the ingested data path."""
    counter = iter(range(1_000))

    def run(spec_name: str, frame: pd.DataFrame) -> Path:
        folder = tmp_path_factory.mktemp(f"{spec_name}_{next(counter)}")
        source = folder / "source.parquet"
        frame.to_parquet(source, index=False)
        ingest(specs[spec_name], source, folder / "ingest")
        return folder / "ingest" / DATA_FILE

    return run


@pytest.fixture(scope="module")
def good(ingested: Ingest, frames: dict[str, pd.DataFrame]) -> dict[str, Path]:
    return {name: ingested(name, frame) for name, frame in frames.items()}


@pytest.fixture(scope="module")
def credit_reference(
    tmp_path_factory: pytest.TempPathFactory, specs: dict[str, ModelSpec], good: dict[str, Path]
) -> Path:
    out = tmp_path_factory.mktemp("credit_reference")
    validate_data(specs["credit"], good["credit"], out)
    return out / PROFILE_FILE


@dataclass(frozen=True)
class CreditCase:
    """The credit spec, its generated frame, the ingest helper and the reference profile."""

    spec: ModelSpec
    frame: pd.DataFrame
    ingested: Ingest
    reference: Path


@pytest.fixture
def credit(
    specs: dict[str, ModelSpec],
    frames: dict[str, pd.DataFrame],
    ingested: Ingest,
    credit_reference: Path,
) -> CreditCase:
    return CreditCase(specs["credit"], frames["credit"], ingested, credit_reference)


Changed = Callable[[str, Callable[[pd.DataFrame], object]], tuple[ModelSpec, Path]]


@pytest.fixture
def changed(
    specs: dict[str, ModelSpec], frames: dict[str, pd.DataFrame], ingested: Ingest
) -> Changed:
    """Ingest a copy of a spec's generated frame after ``change`` edits it in place:
    the spec and the ingested data path."""

    def run(name: str, change: Callable[[pd.DataFrame], object]) -> tuple[ModelSpec, Path]:
        frame = frames[name].copy()
        change(frame)
        return specs[name], ingested(name, frame)

    return run


def _records(out_dir: Path) -> dict[str, dict]:
    validation = json.loads((out_dir / VALIDATION_FILE).read_text())
    return {record["check"]: record for record in validation["expectations"]}


@pytest.mark.parametrize("name", ["fraud", "credit", "german_credit"])
def test_good_generated_and_real_data_pass(
    name: str, specs: dict[str, ModelSpec], good: dict[str, Path], tmp_path: Path
) -> None:
    spec = specs[name]
    result = validate_data(spec, good[name], tmp_path)

    assert result.passed and result.failed == [] and result.warnings == []
    assert result.suite == f"{name}_data_quality"
    assert json.loads((tmp_path / RESULT_FILE).read_text()) == result.to_dict()
    records = _records(tmp_path)
    assert all(r["success"] for r in records.values())
    assert len(records) == result.expectations
    kinds = {r["type"] for r in records.values()}
    assert {
        "expect_table_columns_to_match_ordered_list",
        "expect_table_row_count_to_be_between",
        "expect_column_type_to_be",
        "expect_column_values_to_not_be_null",
        "expect_column_values_to_be_between",
        "expect_column_values_to_be_in_set",
        "expect_column_values_to_be_unique",
        "expect_column_mean_to_be_between",
    } <= kinds
    assert records[f"{spec.data.id_column}.unique"]["success"]
    # every spec column has a type check; forbid columns a not-null check
    for column, col in spec.data.columns.items():
        assert f"{column}.type" in records
        assert (f"{column}.not_null" in records) == (col.missing.value == "forbid")

    index = tmp_path / DATA_DOCS_DIR / "index.html"
    assert index.is_file()
    assert result.suite in index.read_text(encoding="utf-8")
    assert (tmp_path / DATA_DOCS_DIR / "expectations" / f"{result.suite}.html").is_file()

    profile = json.loads((tmp_path / PROFILE_FILE).read_text())
    frame = pd.read_parquet(good[name])
    assert profile["rows"] == len(frame) == result.rows
    assert profile["label_rate"] == pytest.approx(frame[spec.data.target].mean())
    assert set(profile["columns"]) == set(spec.data.columns)


def test_profile_contents(
    specs: dict[str, ModelSpec], good: dict[str, Path], tmp_path: Path
) -> None:
    validate_data(specs["fraud"], good["fraud"], tmp_path)
    profile = json.loads((tmp_path / PROFILE_FILE).read_text())
    frame = pd.read_parquet(good["fraud"])
    amount = profile["columns"]["amount"]
    assert amount["nulls"] == 0
    assert amount["min"] == frame["amount"].min() and amount["max"] == frame["amount"].max()
    assert amount["p50"] == pytest.approx(frame["amount"].median())
    assert amount["p01"] <= amount["p50"] <= amount["p99"]
    channel = profile["columns"]["channel"]["frequencies"]
    assert channel == frame["channel"].value_counts().to_dict()
    assert profile["columns"]["chargeback_time"]["nulls"] == frame["chargeback_time"].isna().sum()
    assert profile["max_time"] == frame["tx_time"].max().isoformat()
    assert profile["spec"] == "fraud" and profile["time_column"] == "tx_time"


def test_rerun_replaces_results_with_identical_json(
    specs: dict[str, ModelSpec], good: dict[str, Path], tmp_path: Path
) -> None:
    validate_data(specs["credit"], good["credit"], tmp_path)
    first = {name: (tmp_path / name).read_bytes() for name in JSON_FILES}
    validate_data(specs["credit"], good["credit"], tmp_path)
    assert {name: (tmp_path / name).read_bytes() for name in JSON_FILES} == first
    runs = list((tmp_path / DATA_DOCS_DIR / "validations").rglob("*.html"))
    assert len(runs) == 1  # the old validation result did not accumulate
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([DATA_DOCS_DIR, *JSON_FILES])


def test_broken_data_fails_listing_every_problem(changed: Changed, tmp_path: Path) -> None:
    def damage(bad: pd.DataFrame) -> None:
        bad.loc[[0, 1, 2], "amount"] = [-5.0, 60_000.0, 75_000.0]  # out of range
        bad.loc[3, "amount"] = None  # null in a forbid column
        bad["channel"] = bad["channel"].astype(object)
        bad.loc[[4, 5], "channel"] = "telepathy"  # unknown category
        bad.loc[10, "transaction_id"] = bad.loc[11, "transaction_id"]  # duplicate id

    spec, data = changed("fraud", damage)  # structurally fine: ingest accepts it

    with pytest.raises(DataValidationError) as info:
        validate_data(spec, data, tmp_path)
    message = str(info.value)
    assert message.startswith("4 data checks failed")
    assert "amount: values between 0.01 and 50000 (3 unexpected" in message
    assert "amount: no nulls (1 unexpected)" in message
    assert "channel: values in the spec's 2 categories (2 unexpected, e.g. 'telepathy')" in message
    assert "transaction_id: unique values (id column) (2 unexpected" in message

    # everything was written before raising
    result = json.loads((tmp_path / RESULT_FILE).read_text())
    assert result["passed"] is False and len(result["failed"]) == 4
    records = _records(tmp_path)
    failed = sorted(key for key, r in records.items() if not r["success"])
    assert failed == [
        "amount.not_null",
        "amount.range",
        "channel.categories",
        "transaction_id.unique",
    ]
    assert records["amount.range"]["observed"]["unexpected_count"] == 3
    assert records["channel.categories"]["observed"]["unexpected_examples"] == [
        {"count": 2, "value": "telepathy"}
    ]
    assert (tmp_path / DATA_DOCS_DIR / "index.html").is_file()
    assert (tmp_path / PROFILE_FILE).is_file()


def test_csv_source_validates(
    specs: dict[str, ModelSpec], frames: dict[str, pd.DataFrame], tmp_path: Path
) -> None:
    source = tmp_path / "german.csv"
    frames["german_credit"].to_csv(source, index=False)
    ingest(specs["german_credit"], source, tmp_path / "ingest")
    result = validate_data(specs["german_credit"], tmp_path / "ingest" / DATA_FILE, tmp_path / "v")
    assert result.passed and result.rows == 1_000


def test_profile_round_trips_as_reference(
    specs: dict[str, ModelSpec], good: dict[str, Path], credit_reference: Path, tmp_path: Path
) -> None:
    reference = load_profile(credit_reference, specs["credit"])
    assert reference["rows"] == 3_000
    result = validate_data(
        specs["credit"], good["credit"], tmp_path, reference_profile=credit_reference
    )
    assert result.passed and result.reference_profile == str(credit_reference)
    records = _records(tmp_path)
    assert {"reference.rows", "reference.max_time", "reference.income.median"} <= set(records)
    rate = records["label_rate"]["kwargs"]
    assert rate["min_value"] < reference["label_rate"] < rate["max_value"]


def test_half_the_label_rate_fails_against_the_reference(
    credit: CreditCase, tmp_path: Path
) -> None:
    frame = credit.frame.copy()
    positives = frame.index[frame["default_12m"] == 1]
    frame.loc[positives[::2], "default_12m"] = 0  # half the defaults
    data = credit.ingested("credit", frame)
    # without a reference only the sanity bound applies: passes
    validate_data(credit.spec, data, tmp_path / "plain")
    with pytest.raises(DataValidationError, match=r"1 data check failed .*default_12m: label rate"):
        validate_data(credit.spec, data, tmp_path / "ref", reference_profile=credit.reference)
    assert not _records(tmp_path / "ref")["label_rate"]["success"]


def test_a_tenth_of_the_rows_fails_against_the_reference(
    credit: CreditCase, tmp_path: Path
) -> None:
    data = credit.ingested("credit", credit.frame.iloc[::10].reset_index(drop=True))
    with pytest.raises(DataValidationError) as info:
        validate_data(credit.spec, data, tmp_path, reference_profile=credit.reference)
    message = str(info.value)
    assert (
        "table: rows between 1500 and 6000 (0.5x-2x the reference's 3000) (observed 300)" in message
    )
    assert "table: at least 2000 rows (data.min_rows) (observed 300)" in message
    records = _records(tmp_path)
    assert not records["reference.rows"]["success"]
    assert records["label_rate"]["success"]


def test_label_rate_sanity_bound_without_reference(changed: Changed, tmp_path: Path) -> None:
    def all_defaults(frame: pd.DataFrame) -> None:
        frame["default"] = 1

    spec, data = changed("german_credit", all_defaults)
    with pytest.raises(DataValidationError, match="default: label rate strictly between 0 and 0.5"):
        validate_data(spec, data, tmp_path)


def test_median_drift_warns_without_failing(credit: CreditCase, tmp_path: Path) -> None:
    frame = credit.frame.copy()
    frame["income"] = frame["income"] * 4  # still within the spec's range
    data = credit.ingested("credit", frame)
    result = validate_data(credit.spec, data, tmp_path, reference_profile=credit.reference)
    assert result.passed
    assert len(result.warnings) == 1 and result.warnings[0].startswith("income: median between")
    assert _records(tmp_path)["reference.income.median"]["blocking"] is False


def test_freshness_is_checked_only_with_max_age(
    specs: dict[str, ModelSpec], good: dict[str, Path], tmp_path: Path
) -> None:
    latest = pd.read_parquet(good["credit"])["application_time"].max().to_pydatetime()
    fresh = validate_data(
        specs["credit"],
        good["credit"],
        tmp_path / "fresh",
        now=latest + timedelta(days=1),
        max_age=timedelta(days=7),
    )
    assert fresh.passed and "freshness" in _records(tmp_path / "fresh")
    with pytest.raises(DataValidationError, match="application_time: latest time at or after"):
        validate_data(
            specs["credit"],
            good["credit"],
            tmp_path / "stale",
            now=latest + timedelta(days=30),
            max_age=timedelta(days=7),
        )
    validate_data(specs["credit"], good["credit"], tmp_path / "skip", now=datetime(2100, 1, 1))
    assert "freshness" not in _records(tmp_path / "skip")


def test_older_data_than_the_reference_fails(
    specs: dict[str, ModelSpec], ingested: Ingest, credit_reference: Path, tmp_path: Path
) -> None:
    # another sample of the same period ends a few hours apart: within the tolerance
    other = ingested("credit", generate_credit(CreditConfig(n_rows=3_000, seed=6)))
    result = validate_data(specs["credit"], other, tmp_path / "other", credit_reference)
    assert result.passed and result.warnings == []
    older = generate_credit(CreditConfig(n_rows=3_000, seed=5, start="2024-01-01"))
    data = ingested("credit", older)
    with pytest.raises(DataValidationError, match="the reference's latest, .* minus 2 days"):
        validate_data(specs["credit"], data, tmp_path, reference_profile=credit_reference)


def test_bad_inputs_give_clear_errors(
    specs: dict[str, ModelSpec], good: dict[str, Path], credit_reference: Path, tmp_path: Path
) -> None:
    with pytest.raises(DataValidationError, match="data file not found"):
        validate_data(specs["credit"], tmp_path / "nope.parquet", tmp_path / "out")
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    with pytest.raises(DataValidationError, match="reference profile is not readable JSON"):
        validate_data(specs["credit"], good["credit"], tmp_path / "out", reference_profile=junk)
    with pytest.raises(DataValidationError, match="profile is for spec 'credit', not 'fraud'"):
        validate_data(
            specs["fraud"], good["fraud"], tmp_path / "out", reference_profile=credit_reference
        )


def test_nulls_in_a_forbid_int_column_fail_validation_not_ingest(
    changed: Changed, tmp_path: Path
) -> None:
    def nulls(frame: pd.DataFrame) -> None:
        frame["inquiries_6m"] = frame["inquiries_6m"].astype("Int64")
        frame.loc[[1, 2], "inquiries_6m"] = pd.NA

    spec, data = changed("credit", nulls)
    assert str(pd.read_parquet(data)["inquiries_6m"].dtype) == "Int64"
    with pytest.raises(DataValidationError, match=r"^1 data check failed .*inquiries_6m: no nulls"):
        validate_data(spec, data, tmp_path)
    records = _records(tmp_path)
    assert records["inquiries_6m.type"]["success"]  # nullable Int64 is an int column
    assert records["inquiries_6m.range"]["success"]


def test_bool_and_string_columns_validate(tmp_path: Path) -> None:
    spec = small_spec(
        {
            "id": {"type": "int", "unique": True},
            "flag": {"type": "bool"},
            "note": {"type": "string", "missing": "allow"},
            "label": {"type": "bool"},
        }
    )
    source = tmp_path / "small.csv"
    source.write_text("id,flag,note,label\n1,yes,a,false\n2,no,,true\n3,true,c,false\n")
    ingest(spec, source, tmp_path / "ingest")
    result = validate_data(spec, tmp_path / "ingest" / DATA_FILE, tmp_path / "v")
    assert result.passed and result.label_rate == pytest.approx(1 / 3)
    records = _records(tmp_path / "v")
    assert records["flag.type"]["kwargs"]["type_"] == "bool"
    assert records["note.type"]["kwargs"]["type_"] == "object"
    profile = json.loads((tmp_path / "v" / PROFILE_FILE).read_text())
    assert profile["columns"]["note"] == {
        "distinct": 2,
        "dtype": "object",
        "nulls": 1,
        "type": "string",
    }
    assert profile["max_time"] is None
