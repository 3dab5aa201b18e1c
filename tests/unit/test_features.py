"""Feature stage: point-in-time aggregates without leakage, splits, feature tables.

The helpers (typed ingest data from the generators, smaller training settings) live in
``tests/support.py``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipelines.artifacts import sha256_file
from pipelines.data.credit import CreditConfig, generate_credit
from pipelines.data.fraud import generate_fraud
from pipelines.data.fraud_config import FraudConfig
from pipelines.data.german_credit import load_german_credit
from pipelines.errors import DataValidationError
from pipelines.features import compute_aggregates, passthrough_columns, read_split
from pipelines.spec import ModelSpec
from pipelines.spec_features import AggregateFeature
from pipelines.stages.features import build_features
from tests.datasets import (
    CREDIT_ROWS,
    FRAUD_ROWS,
    spec_of,
    typed_frame,
    window_edge_aggregates,
    window_edge_events,
    write_ingest,
)

ROOT = Path(__file__).resolve().parents[2]


def brute_force(agg: AggregateFeature, frame: pd.DataFrame, time_column: str) -> np.ndarray:
    """Reference: a plain loop over rows, window (t - w, t), same entity, where filter."""
    times = frame[time_column].to_numpy().astype("int64")
    window = agg.window_seconds * 1_000_000_000
    entity = frame[agg.entity].to_numpy()
    values = frame[agg.column].to_numpy() if agg.column else None
    keep = np.ones(len(frame), dtype=bool)
    for column, value in agg.where.items():
        keep &= (frame[column].astype(str) == str(value)).to_numpy()
    if agg.column:
        keep &= frame[agg.column].notna().to_numpy()
    out = np.empty(len(frame))
    for i in range(len(frame)):
        sel = keep & (entity == entity[i]) & (times < times[i]) & (times > times[i] - window)
        vals = values[sel] if values is not None else None
        n = int(sel.sum())
        if agg.agg == "count":
            out[i] = n
        elif agg.agg == "sum":
            out[i] = float(np.sum(vals)) if n else 0.0
        elif agg.agg == "mean":
            out[i] = float(np.sum(vals)) / n if n else np.nan
        elif agg.agg == "max":
            out[i] = float(np.max(vals)) if n else np.nan
        elif agg.agg == "std":
            out[i] = float(np.std(vals, ddof=1)) if n > 1 else np.nan
        else:
            out[i] = float(len(set(vals.tolist())))
    return out


def _events(n: int, seed: int, integer_amounts: bool) -> pd.DataFrame:
    """Few entities, times on a 1-minute grid (many same-timestamp rows), some nulls."""
    rng = np.random.default_rng(seed)
    minutes = np.sort(rng.integers(0, 600, n))
    amount = rng.integers(1, 500, n).astype(float)
    if not integer_amounts:
        amount = np.round(rng.lognormal(3.5, 1.2, n), 2)
    frame = pd.DataFrame(
        {
            "card": rng.integers(0, 5, n),
            "t": pd.Timestamp("2026-01-01") + pd.to_timedelta(minutes, unit="m"),
            "amount": amount,
            "channel": pd.Categorical(rng.choice(["card_present", "online"], n)),
            "terminal": rng.integers(0, 6, n),
        }
    )
    frame.loc[rng.random(n) < 0.05, "amount"] = np.nan
    frame.loc[rng.random(n) < 0.05, "terminal"] = np.nan
    return frame


def _all_aggregates() -> list[AggregateFeature]:
    out = []
    for window in ("10m", "1h", "3h"):
        for where in ({}, {"channel": "online"}):
            for agg in ("count", "sum", "mean", "max", "std", "nunique"):
                column = {"count": None, "nunique": "terminal"}.get(agg, "amount")
                suffix = "_online" if where else ""
                out.append(
                    AggregateFeature(
                        name=f"{agg}_{window}{suffix}",
                        entity="card",
                        window=window,
                        agg=agg,
                        column=column,
                        where=where,
                    )
                )
    return out


# ----------------------------------------------------------------------------- aggregates


def test_vectorised_aggregates_equal_a_brute_force_loop_exactly() -> None:
    frame = _events(400, seed=1, integer_amounts=True)  # integer sums are exact in float64
    assert frame.duplicated(["card", "t"]).sum() > 20  # same-timestamp rows are exercised
    aggs = _all_aggregates()
    got = compute_aggregates(aggs, frame, "t")
    assert list(got.columns) == [a.name for a in aggs]
    for agg in aggs:
        expected = brute_force(agg, frame, "t")
        actual = got[agg.name].to_numpy()
        assert actual.dtype == np.float64
        if agg.agg == "std":  # sum of squares vs. two-pass: equal up to rounding
            np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-9, err_msg=agg.name)
        else:
            np.testing.assert_array_equal(actual, expected, err_msg=agg.name)


def test_aggregates_on_real_valued_amounts_match_within_rounding() -> None:
    frame = _events(300, seed=2, integer_amounts=False)
    aggs = _all_aggregates()
    got = compute_aggregates(aggs, frame, "t")
    for agg in aggs:
        expected = brute_force(agg, frame, "t")
        np.testing.assert_allclose(got[agg.name], expected, rtol=1e-9, atol=1e-9, err_msg=agg.name)


def test_same_timestamp_rows_do_not_see_each_other_and_the_window_is_open() -> None:
    frame = window_edge_events()
    aggs = window_edge_aggregates("count", "sum", "max", "nunique")
    got = compute_aggregates(aggs, frame, "t")
    # three rows at t0: none sees the others; the row 1 s later sees all three;
    # the row exactly 10 minutes later sees only the t0 + 1 s row (t0 has left the window)
    assert got["n"].tolist() == [0, 0, 0, 3, 1, 0]
    assert got["s"].tolist() == [0, 0, 0, 60, 40, 0]
    assert got["m"].tolist()[3:5] == [30, 40] and np.isnan(got["m"].iloc[0])
    assert got["u"].tolist() == [0, 0, 0, 3, 1, 0]


def test_a_late_event_does_not_change_earlier_rows() -> None:
    spec = spec_of("fraud")
    frame = typed_frame(spec, generate_fraud(FraudConfig(n_rows=5_000, seed=3)))
    cutoff = frame["tx_time"].quantile(0.6)
    before = compute_aggregates(spec.features.aggregates, frame, "tx_time")

    # later events for the same cards/customers/terminals, and edits to later rows
    late = frame[frame["tx_time"] > cutoff].copy()
    late["tx_time"] = late["tx_time"] + pd.Timedelta("1h")
    late["transaction_id"] += 10_000_000
    changed = frame.copy()
    changed.loc[changed["tx_time"] > cutoff, "amount"] *= 7.0
    bigger = pd.concat([late, changed], ignore_index=True)  # unsorted on purpose
    after = compute_aggregates(spec.features.aggregates, bigger, "tx_time")

    early = (frame["tx_time"] <= cutoff).to_numpy()
    pos = np.flatnonzero(early) + len(late)  # where the original early rows sit in `bigger`
    pd.testing.assert_frame_equal(
        after.iloc[pos].reset_index(drop=True), before[early].reset_index(drop=True)
    )


# ----------------------------------------------------------------------------- build_features


# fraud_features, credit_features: tests/unit/conftest.py


def test_feature_tables_follow_the_contract(fraud_features: tuple[ModelSpec, Path]) -> None:
    spec, folder = fraud_features
    meta = json.loads((folder / "features.json").read_text())
    assert set(meta) == {
        "features",
        "categorical",
        "passthrough",
        "rows",
        "label_rate",
        "split",
        "sha256",
    }
    assert meta["features"] == spec.features.names
    assert meta["categorical"] == ["channel", "merchant_segment", "mcc"]
    assert meta["passthrough"] == ["customer_age_band", "region", "chargeback_time"]
    assert sum(meta["rows"].values()) == FRAUD_ROWS
    expected_columns = [
        "transaction_id",
        "tx_time",
        "is_fraud",
        *spec.features.names,
        "customer_age_band",
        "region",
        "chargeback_time",
    ]
    for split in ("train", "validation", "test"):
        path = folder / f"{split}.parquet"
        assert meta["sha256"][split] == sha256_file(path)
        assert pq.read_schema(path).names == expected_columns
        frame = read_split(spec, folder, split)
        assert len(frame) == meta["rows"][split]
        assert frame["is_fraud"].mean() == pytest.approx(meta["label_rate"][split])
        for agg in spec.features.aggregates:
            assert frame[agg.name].dtype == np.float64
        assert frame["amount"].dtype == np.float64
        assert frame["customer_tenure_days"].dtype == np.int64
        assert list(frame["mcc"].cat.categories) == spec.data.columns["mcc"].categories
        ordered = frame.sort_values(["tx_time", "transaction_id"], kind="mergesort")
        assert ordered.index.tolist() == list(range(len(frame)))  # sorted by time, then id
    assert json.loads((folder / "result.json").read_text())["rows"] == meta["rows"]


def test_time_split_is_out_of_time(fraud_features: tuple[ModelSpec, Path]) -> None:
    spec, folder = fraud_features
    train, val, test = (read_split(spec, folder, s) for s in ("train", "validation", "test"))
    assert train["tx_time"].max() <= val["tx_time"].min()
    assert val["tx_time"].max() <= test["tx_time"].min()
    assert len(test) == pytest.approx(0.15 * FRAUD_ROWS, abs=1)
    assert len(val) == pytest.approx(0.15 * FRAUD_ROWS, abs=1)
    bounds = json.loads((folder / "features.json").read_text())["split"]
    assert bounds["method"] == "time"
    assert bounds["boundaries"]["train_end"] == train["tx_time"].max().isoformat()
    assert bounds["boundaries"]["test_start"] == test["tx_time"].min().isoformat()
    ids = pd.concat([train, val, test])["transaction_id"]
    assert ids.is_unique and len(ids) == FRAUD_ROWS


def test_protected_attributes_are_passthrough_never_features(
    fraud_features: tuple[ModelSpec, Path], credit_features: tuple[ModelSpec, Path]
) -> None:
    for spec, folder in (fraud_features, credit_features):
        meta = json.loads((folder / "features.json").read_text())
        test = read_split(spec, folder, "test")
        for attribute in spec.protected_attributes:
            assert attribute not in meta["features"]
            assert attribute in meta["passthrough"]
            assert attribute in test.columns
    credit_spec = credit_features[0]
    assert passthrough_columns(credit_spec) == [
        "age_band",
        "sex",
        "race_ethnicity",
        "region",  # a segment column that is not a feature
        "label_time",
    ]


def test_stratified_split_keeps_label_rates(credit_features: tuple[ModelSpec, Path]) -> None:
    spec, folder = credit_features
    parts = {s: read_split(spec, folder, s) for s in ("train", "validation", "test")}
    overall = pd.concat(parts.values())["default_12m"].mean()
    for name, part in parts.items():
        assert abs(part["default_12m"].mean() - overall) < 0.005, name
        assert part["application_id"].is_monotonic_increasing
    assert len(parts["test"]) == pytest.approx(0.2 * CREDIT_ROWS, abs=1)
    assert len(parts["validation"]) == pytest.approx(0.15 * CREDIT_ROWS, abs=1)
    ids = pd.concat(parts.values())["application_id"]
    assert ids.is_unique and len(ids) == CREDIT_ROWS
    meta = json.loads((folder / "features.json").read_text())
    assert meta["split"] == {"method": "stratified", "boundaries": {}}


def test_build_features_is_idempotent_and_deterministic(
    credit_features: tuple[ModelSpec, Path], tmp_path: Path
) -> None:
    spec, shared = credit_features
    folder = tmp_path / "features"  # the shared tables are read-only: rerun on a copy
    shutil.copytree(shared, folder)
    names = ["train.parquet", "validation.parquet", "test.parquet", "features.json"]
    first = {n: sha256_file(folder / n) for n in names}
    data = shared.parent / "ingest" / "data.parquet"
    build_features(spec, data, folder)  # rerun in place
    assert {n: sha256_file(folder / n) for n in names} == first
    build_features(spec, data, tmp_path / "again")  # and into another folder
    assert {n: sha256_file(tmp_path / "again" / n) for n in names} == first
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temp files left


def test_german_credit_features(tmp_path: Path) -> None:
    spec = spec_of("german_credit")
    data = write_ingest(spec, load_german_credit(), tmp_path / "ingest")
    result = build_features(spec, data, tmp_path / "features")
    assert result.rows == {"train": 600, "validation": 200, "test": 200}
    assert result.passthrough == [
        "age_years",
        "age_band",
        "sex",
        "personal_status_sex",
        "foreign_worker",
    ]
    test = read_split(spec, tmp_path / "features", "test")
    assert list(test.columns[:2]) == ["application_id", "default"]  # no time column
    assert set(result.features).isdisjoint(spec.protected_attributes)


def test_missing_columns_are_reported(tmp_path: Path) -> None:
    spec = spec_of("credit")
    frame = typed_frame(spec, generate_credit(CreditConfig(n_rows=500, seed=1)))
    path = tmp_path / "data.parquet"
    frame.drop(columns=["income", "sex"]).to_parquet(path, index=False)
    with pytest.raises(DataValidationError, match=r"missing column\(s\) \['income', 'sex'\]"):
        build_features(spec, path, tmp_path / "features")
