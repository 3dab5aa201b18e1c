"""Registration's bulk path records what MLflow would record from the whole data: a
split's dataset (schema, profile, digest, source) from a few representative rows, and
the input example with the whole split's dtypes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from registry.mlflow_run import split_dataset
from tests.datasets import spec_of


def _write(frame: pd.DataFrame, path: Path, row_group_size: int | None = None) -> None:
    table = pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None)
    pq.write_table(table, path, row_group_size=row_group_size)


def _frame(rows: int, target: str) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    late = rows - 3  # missing values only far past the first rows
    amount = rng.gamma(2.0, 40.0, rows)
    amount[late] = np.nan
    tenure = pd.array(rng.integers(0, 900, rows), dtype="float64")
    tenure[late + 1] = np.nan  # an integer column with a gap: float in pandas
    channel = pd.Categorical(rng.choice(["pos", "online", "atm"], rows))
    channel[late] = np.nan
    note = pd.Series(rng.choice(["a", "b"], rows), dtype=object)
    note[late + 2] = None
    seen = pd.Series(pd.date_range("2026-01-01", periods=rows, freq="min"))
    seen[late] = pd.NaT
    return pd.DataFrame(
        {
            "transaction_id": np.arange(rows, dtype="int64"),
            target: rng.integers(0, 2, rows),
            "amount": amount,
            "customer_tenure_days": tenure,
            "channel": channel,
            "note": note,
            "seen": seen,
            "always": rng.random(rows),
        }
    )


@pytest.mark.parametrize("row_group_size", [None, 97])
def test_a_split_is_recorded_as_mlflow_records_the_whole_frame(
    tmp_path: Path, row_group_size: int | None
) -> None:
    import mlflow

    spec = spec_of("fraud")
    features = tmp_path / "features"
    features.mkdir()
    frame = _frame(1_000, spec.data.target)
    _write(frame, features / "test.parquet", row_group_size)
    digest = "f" * 64
    recorded = {"sha256": {"test": digest}}

    dataset, head = split_dataset(spec, tmp_path, recorded, "test")

    whole = pd.read_parquet(features / "test.parquet")
    expected = mlflow.data.from_pandas(
        whole,
        source=str(features / "test.parquet"),
        name="fraud-test",
        targets=spec.data.target,
        digest=digest[:36],
    )
    assert dataset.to_dict() == expected.to_dict()
    assert expected.to_dict()["schema"].count('"required": false') == 5  # the gaps counted
    assert len(dataset.df) < len(whole)  # a few rows, not the split
    pd.testing.assert_frame_equal(head, whole.head(5))


def test_a_split_without_a_recorded_digest_is_read_whole(tmp_path: Path) -> None:
    import mlflow

    spec = spec_of("fraud")
    (tmp_path / "features").mkdir()
    path = tmp_path / "features" / "train.parquet"
    _write(_frame(200, spec.data.target), path)

    dataset, head = split_dataset(spec, tmp_path, {}, "train")

    whole = pd.read_parquet(path)
    expected = mlflow.data.from_pandas(
        whole, source=str(path), name="fraud-train", targets=spec.data.target
    )
    assert dataset.to_dict() == expected.to_dict()
    assert len(dataset.df) == len(whole)
    pd.testing.assert_frame_equal(head, whole.head(5))
