"""Ingest: structural contract, typed output, fingerprint, CSV, idempotence, clear errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest

from pipelines.data import CreditConfig, FraudConfig, generate_credit, generate_fraud
from pipelines.data.manifest import sha256_file
from pipelines.errors import DataValidationError
from pipelines.spec import ColumnType, ModelSpec, load_spec
from pipelines.stages.ingest import DATA_FILE, FINGERPRINT_FILE, RESULT_FILE, ingest
from tests.datasets import small_spec

EXPECTED_DTYPE = {
    ColumnType.FLOAT: "float64",
    ColumnType.INT: "int64",
    ColumnType.DATETIME: "datetime64[ns]",
    ColumnType.CATEGORY: "category",
    ColumnType.BOOL: "bool",
}


@pytest.fixture(scope="module")
def fraud_spec(root: Path) -> ModelSpec:
    return load_spec(root / "specs" / "fraud.yaml")


@pytest.fixture(scope="module")
def credit_spec(root: Path) -> ModelSpec:
    return load_spec(root / "specs" / "credit.yaml")


@pytest.fixture(scope="module")
def fraud_frame() -> pd.DataFrame:
    return generate_fraud(FraudConfig(n_rows=5_000, seed=3))


@pytest.fixture(scope="module")
def fraud_parquet(tmp_path_factory: pytest.TempPathFactory, fraud_frame: pd.DataFrame) -> Path:
    path = tmp_path_factory.mktemp("src") / "fraud.parquet"
    fraud_frame.to_parquet(path, index=False)
    return path


def _strings(frame: pd.DataFrame) -> pd.DataFrame:
    """Every category column as plain strings, so tests can write any value into it."""
    out = frame.copy()
    for name in out.columns:
        if isinstance(out[name].dtype, pd.CategoricalDtype):
            out[name] = out[name].astype(object)
    return out


def test_parquet_is_typed_per_spec(
    fraud_spec: ModelSpec, fraud_parquet: Path, tmp_path: Path
) -> None:
    result = ingest(fraud_spec, fraud_parquet, tmp_path)
    data = pd.read_parquet(tmp_path / DATA_FILE)

    assert list(data.columns) == list(fraud_spec.data.columns)
    assert len(data) == result.rows == 5_000
    for name, col in fraud_spec.data.columns.items():
        assert str(data[name].dtype) == EXPECTED_DTYPE[col.type], name
        if col.type == ColumnType.CATEGORY:
            assert list(data[name].cat.categories) == col.categories, name
    assert result.extra_columns == []
    assert result.extra_categories == {}
    assert result.format == "parquet"

    fingerprint = json.loads((tmp_path / FINGERPRINT_FILE).read_text())
    assert set(fingerprint) == {"source", "sha256", "rows", "schema"}
    assert fingerprint["sha256"] == sha256_file(fraud_parquet) == result.sha256
    assert fingerprint["rows"] == 5_000
    assert fingerprint["source"] == str(fraud_parquet.resolve())
    assert [c["name"] for c in fingerprint["schema"]] == list(fraud_spec.data.columns)

    written = (tmp_path / RESULT_FILE).read_text()
    assert json.loads(written) == result.to_dict()
    assert written == json.dumps(result.to_dict(), sort_keys=True, indent=2) + "\n"
    assert result.data_sha256 == sha256_file(tmp_path / DATA_FILE)


def test_csv_gives_the_same_data_as_parquet(
    fraud_spec: ModelSpec,
    fraud_frame: pd.DataFrame,
    fraud_parquet: Path,
    tmp_path: Path,
) -> None:
    csv = tmp_path / "fraud.csv"
    fraud_frame.to_csv(csv, index=False)
    from_csv = ingest(fraud_spec, csv, tmp_path / "csv")
    from_parquet = ingest(fraud_spec, fraud_parquet, tmp_path / "parquet")

    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "csv" / DATA_FILE),
        pd.read_parquet(tmp_path / "parquet" / DATA_FILE),
    )
    assert from_csv.format == "csv"
    assert from_csv.data_sha256 == from_parquet.data_sha256
    fingerprint = json.loads((tmp_path / "csv" / FINGERPRINT_FILE).read_text())
    assert {c["dtype"] for c in fingerprint["schema"]} == {"string"}


def test_rerun_is_byte_identical(
    fraud_spec: ModelSpec, fraud_parquet: Path, tmp_path: Path
) -> None:
    ingest(fraud_spec, fraud_parquet, tmp_path)
    first = {
        name: (tmp_path / name).read_bytes() for name in (DATA_FILE, FINGERPRINT_FILE, RESULT_FILE)
    }
    ingest(fraud_spec, fraud_parquet, tmp_path)
    second = {name: (tmp_path / name).read_bytes() for name in first}
    assert first == second
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(first)  # no temp files left


def test_strings_in_a_float_column_name_file_and_column(
    fraud_spec: ModelSpec, fraud_frame: pd.DataFrame, tmp_path: Path
) -> None:
    bad = _strings(fraud_frame)
    bad["amount"] = "lots"
    path = tmp_path / "strings.parquet"
    bad.to_parquet(path, index=False)
    with pytest.raises(DataValidationError) as info:
        ingest(fraud_spec, path, tmp_path / "out")
    message = str(info.value)
    assert str(path) in message
    assert "'amount'" in message and "not parseable as float" in message
    assert "'lots'" in message
    assert not (tmp_path / "out" / DATA_FILE).exists()


def test_every_structural_problem_is_listed_at_once(
    fraud_spec: ModelSpec, fraud_frame: pd.DataFrame, tmp_path: Path
) -> None:
    bad = _strings(fraud_frame).drop(columns=["region", "channel"])
    bad["tx_time"] = bad["tx_time"].astype(str)
    bad.loc[1, "tx_time"] = "yesterday"
    bad["customer_tenure_days"] = bad["customer_tenure_days"].astype(float)
    bad.loc[2, "customer_tenure_days"] = 2.5
    bad["amount"] = bad["amount"].astype(object)
    bad.loc[3, "amount"] = "12,50"
    path = tmp_path / "bad.csv"
    bad.to_csv(path, index=False)
    with pytest.raises(DataValidationError) as info:
        ingest(fraud_spec, path, tmp_path / "out")
    message = str(info.value)
    assert message.startswith(f"{path}: does not match spec 'fraud' (4 problems)")
    assert "missing column(s) 'channel', 'region'" in message
    assert "'tx_time' (datetime): 1 value(s) not parseable" in message and "'yesterday'" in message
    assert "'customer_tenure_days' (int): 1 non-integer value(s)" in message
    assert "'amount' (float): 1 value(s) not parseable as float" in message


def test_missing_column_is_an_error(
    fraud_spec: ModelSpec, fraud_frame: pd.DataFrame, tmp_path: Path
) -> None:
    path = tmp_path / "no_amount.parquet"
    fraud_frame.drop(columns=["amount"]).to_parquet(path, index=False)
    with pytest.raises(DataValidationError, match=r"missing column\(s\) 'amount'"):
        ingest(fraud_spec, path, tmp_path / "out")


def test_extra_columns_and_unknown_categories_are_kept_for_validation(
    fraud_spec: ModelSpec,
    fraud_frame: pd.DataFrame,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    frame = _strings(fraud_frame)
    frame["channel"] = frame["channel"].astype(object)
    frame.loc[[4, 9], "channel"] = ["telepathy", "carrier_pigeon"]
    frame["notes"] = "x"
    path = tmp_path / "extra.parquet"
    frame.to_parquet(path, index=False)
    with caplog.at_level(logging.WARNING, logger="pipelines.ingest"):
        result = ingest(fraud_spec, path, tmp_path / "out")
    assert result.extra_columns == ["notes"]
    assert "notes" in caplog.text
    assert result.extra_categories == {"channel": ["carrier_pigeon", "telepathy"]}
    data = pd.read_parquet(tmp_path / "out" / DATA_FILE)
    assert "notes" not in data.columns
    assert list(data["channel"].cat.categories) == [
        "card_present",
        "online",
        "carrier_pigeon",
        "telepathy",
    ]
    assert data.loc[4, "channel"] == "telepathy"


def test_nulls_are_kept_and_int_columns_become_nullable(
    fraud_spec: ModelSpec, fraud_frame: pd.DataFrame, tmp_path: Path
) -> None:
    frame = fraud_frame.copy()
    frame["customer_tenure_days"] = frame["customer_tenure_days"].astype("float64")
    frame.loc[7, "customer_tenure_days"] = None
    frame.loc[8, "amount"] = None
    path = tmp_path / "nulls.csv"
    frame.to_csv(path, index=False)
    result = ingest(fraud_spec, path, tmp_path / "out")
    data = pd.read_parquet(tmp_path / "out" / DATA_FILE)
    assert str(data["customer_tenure_days"].dtype) == "Int64"
    assert data["customer_tenure_days"].isna().sum() == 1
    assert data["amount"].isna().sum() == 1
    assert result.nulls["customer_tenure_days"] == 1
    assert result.dtypes["customer_tenure_days"] == "Int64"


def test_datetimes_are_naive_utc(credit_spec: ModelSpec, tmp_path: Path) -> None:
    frame = generate_credit(CreditConfig(n_rows=100, seed=1))
    text = frame.astype({"application_time": str, "label_time": str})
    text.loc[0, "application_time"] = "2026-03-01T12:00:00+02:00"
    path = tmp_path / "tz.csv"
    text.to_csv(path, index=False)
    ingest(credit_spec, path, tmp_path / "out")
    data = pd.read_parquet(tmp_path / "out" / DATA_FILE)
    assert str(data["application_time"].dtype) == "datetime64[ns]"
    assert data.loc[0, "application_time"] == pd.Timestamp("2026-03-01 10:00:00")
    assert data.loc[1, "application_time"] == frame.loc[1, "application_time"]


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("missing.parquet", None, "data file not found"),
        ("empty.csv", "", r"data file is empty \(0 bytes\)"),
        ("header_only.csv", "HEADER", "data file has no rows"),
        ("junk.parquet", "not parquet at all", "not a readable Parquet file"),
        ("data.json", "{}", "unsupported file type '.json'"),
    ],
)
def test_unreadable_sources_give_clear_errors(
    fraud_spec: ModelSpec, tmp_path: Path, name: str, content: str | None, expected: str
) -> None:
    path = tmp_path / name
    if content == "HEADER":
        content = ",".join(fraud_spec.data.columns) + "\n"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataValidationError, match=expected) as info:
        ingest(fraud_spec, path, tmp_path / "out")
    assert str(path) in str(info.value)


def test_empty_parquet_is_an_error(
    fraud_spec: ModelSpec, fraud_frame: pd.DataFrame, tmp_path: Path
) -> None:
    path = tmp_path / "none.parquet"
    fraud_frame.head(0).to_parquet(path, index=False)
    with pytest.raises(DataValidationError, match="has no rows"):
        ingest(fraud_spec, path, tmp_path / "out")


def bool_and_string_spec() -> ModelSpec:
    """A tiny spec with bool and string columns (the shipped specs have none)."""
    return small_spec(
        {
            "id": {"type": "int", "unique": True},
            "seen": {"type": "datetime"},
            "flag": {"type": "bool"},
            "note": {"type": "string", "missing": "allow"},
            "label": {"type": "int", "min": 0, "max": 1},
        }
    )


def test_bool_and_string_columns(tmp_path: Path) -> None:
    path = tmp_path / "small.csv"
    path.write_text(
        "id,seen,flag,note,label\n"
        "1,2026-01-01,yes,NA,0\n"
        "2,2026-01-02T10:00:00,False,,1\n"
        "3,2026-01-03,1, padded ,0\n"
    )
    result = ingest(bool_and_string_spec(), path, tmp_path / "out")
    data = pd.read_parquet(tmp_path / "out" / DATA_FILE)
    assert result.dtypes == {
        "id": "int64",
        "seen": "datetime64[ns]",
        "flag": "bool",
        "note": "object",
        "label": "int64",
    }
    assert data["flag"].tolist() == [True, False, True]
    assert data["note"].tolist()[0] == "NA"  # a value, not a null, in a string column
    assert data["note"].isna().tolist() == [False, True, False]
    assert data["note"].tolist()[2] == "padded"

    path.write_text("id,seen,flag,note,label\n1,2026-01-01,maybe,x,0\n2,2026-01-02,no,y,1.5\n")
    with pytest.raises(DataValidationError) as info:
        ingest(bool_and_string_spec(), path, tmp_path / "bad")
    message = str(info.value)
    assert "'flag' (bool): 1 value(s) not parseable as bool (e.g. 'maybe')" in message
    assert "'label' (int): 1 non-integer value(s) (e.g. '1.5')" in message
