"""Synthetic fraud generator: schema, determinism, scenarios, seasonality, drift knobs."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipelines.data.fraud import COLUMNS, FRAUD_CATEGORIES, generate_fraud, write_fraud
from pipelines.data.fraud_config import (
    AGE_BANDS,
    CHANNELS,
    MCCS,
    REGIONS,
    SEGMENTS,
    FraudConfig,
)
from pipelines.data.manifest import verify_manifest
from pipelines.errors import DataValidationError

N_ROWS = 100_000
SEED = 11
DAY = pd.Timedelta(days=1)

EXPECTED_DTYPES = {
    "transaction_id": "int64",
    "tx_time": "datetime64[ns]",
    "customer_id": "int64",
    "card_id": "int64",
    "terminal_id": "int64",
    "mcc": "category",
    "merchant_segment": "category",
    "channel": "category",
    "amount": "float64",
    "distance_from_home_km": "float64",
    "region": "category",
    "customer_tenure_days": "int32",
    "customer_age_band": "category",
    "is_fraud": "int8",
    "fraud_scenario": "category",
    "chargeback_time": "datetime64[ns]",
}


@pytest.fixture(scope="module")
def base() -> pd.DataFrame:
    return generate_fraud(FraudConfig(n_rows=N_ROWS, seed=SEED))


@pytest.fixture(scope="module")
def with_new_pattern() -> pd.DataFrame:
    return generate_fraud(FraudConfig(n_rows=N_ROWS, seed=SEED, new_fraud_pattern=True))


def _scenario(df: pd.DataFrame, name: str) -> pd.DataFrame:
    return df[df["fraud_scenario"] == name]


# ----------------------------------------------------------------------------- schema


def test_columns_and_dtypes_are_exact(base: pd.DataFrame) -> None:
    assert tuple(base.columns) == COLUMNS
    assert {c: str(t) for c, t in base.dtypes.items()} == EXPECTED_DTYPES
    assert len(base) == N_ROWS


def test_categories_are_fixed_lists(base: pd.DataFrame) -> None:
    assert {c for c, t in EXPECTED_DTYPES.items() if t == "category"} == set(FRAUD_CATEGORIES)
    for col, cats in FRAUD_CATEGORIES.items():
        assert tuple(base[col].cat.categories) == cats, col
    assert set(CHANNELS) == {"card_present", "online"}
    assert set(REGIONS) == {"north", "south", "east", "west", "central"}
    assert set(AGE_BANDS) == {"18-25", "26-35", "36-50", "51-65", "65+"}
    assert all(len(m) == 4 and m.isdigit() for m in MCCS)
    assert {"5411", "5541", "5812", "5732", "4511", "7995", "5999", "6051"} <= set(MCCS)
    observed = set(base["mcc"].unique())
    assert observed <= set(MCCS) - {"6012"}  # 6012 is the BNPL code
    assert len(observed) >= len(MCCS) - 3
    # bnpl is a category but never a value without the knob
    assert "bnpl" in SEGMENTS
    assert (base["merchant_segment"] == "bnpl").sum() == 0


def test_ids_time_order_and_value_ranges(base: pd.DataFrame) -> None:
    assert base["transaction_id"].is_unique
    assert base["transaction_id"].is_monotonic_increasing
    assert base["tx_time"].is_monotonic_increasing
    start = pd.Timestamp("2026-01-01")
    assert base["tx_time"].min() >= start
    assert base["tx_time"].max() < start + 30 * DAY
    assert (base["amount"] > 0).all()
    assert base["amount"].max() <= 25_000
    cents = base["amount"] * 100
    assert np.allclose(cents, cents.round(), atol=1e-6)
    assert (base["distance_from_home_km"] >= 0).all()
    assert base.notna().drop(columns="chargeback_time").all().all()
    assert set(base["is_fraud"].unique()) == {0, 1}
    assert ((base["is_fraud"] == 1) == (base["fraud_scenario"] != "none")).all()


def test_customer_attributes_are_consistent(base: pd.DataFrame) -> None:
    per_customer = base.groupby("customer_id")
    assert (per_customer["region"].nunique() == 1).all()
    assert (per_customer["customer_age_band"].nunique() == 1).all()
    cards = per_customer["card_id"].nunique()
    assert cards.between(1, 3).all()
    assert (cards > 1).any()
    assert (base.groupby("card_id")["customer_id"].nunique() == 1).all()
    # tenure grows with time, by whole days
    first = base.groupby("customer_id")[["tx_time", "customer_tenure_days"]].agg(["first", "last"])
    days = (first[("tx_time", "last")] - first[("tx_time", "first")]).dt.days
    grew = first[("customer_tenure_days", "last")] - first[("customer_tenure_days", "first")]
    assert (grew >= 0).all()
    assert (grew - days).abs().max() <= 1


def test_card_present_is_near_home_and_online_is_near_zero(base: pd.DataFrame) -> None:
    legit = base[base["is_fraud"] == 0]
    card_present = legit.loc[legit["channel"] == "card_present", "distance_from_home_km"]
    online = legit.loc[legit["channel"] == "online", "distance_from_home_km"]
    assert card_present.median() < 25
    assert online.median() == 0.0
    assert 0.15 < (legit["channel"] == "online").mean() < 0.5


# ----------------------------------------------------------------------------- determinism


def test_same_config_gives_identical_file_and_other_seed_differs(tmp_path: Path) -> None:
    cfg = FraudConfig(n_rows=20_000, seed=5)
    first = write_fraud(cfg, tmp_path / "a", chunk_rows=4_000)
    second = write_fraud(cfg, tmp_path / "b", chunk_rows=4_000)
    other = write_fraud(dataclasses.replace(cfg, seed=6), tmp_path / "c", chunk_rows=4_000)
    assert first.sha256 == second.sha256
    assert first.sha256 != other.sha256
    assert (tmp_path / "a" / "fraud_transactions.manifest.json").read_bytes() == (
        tmp_path / "b" / "fraud_transactions.manifest.json"
    ).read_bytes()


def test_written_file_matches_generate_and_is_chunked(tmp_path: Path) -> None:
    cfg = FraudConfig(n_rows=20_000, seed=5, new_merchant_segment=True)
    manifest = write_fraud(cfg, tmp_path, chunk_rows=3_000)
    path = tmp_path / manifest.path
    meta = pq.ParquetFile(path).metadata
    assert meta.num_row_groups == 7  # 6 x 3000 + 2000
    assert meta.row_group(0).num_rows == 3_000
    assert manifest.rows == 20_000
    assert manifest.params["chunk_rows"] == 3_000
    assert FraudConfig.from_params(manifest.params) == cfg
    verify_manifest(tmp_path / "fraud_transactions.manifest.json")
    pd.testing.assert_frame_equal(pd.read_parquet(path), generate_fraud(cfg))


def test_rows_do_not_depend_on_chunk_size(tmp_path: Path) -> None:
    cfg = FraudConfig(n_rows=10_000, seed=3)
    small = write_fraud(cfg, tmp_path / "s", chunk_rows=1_000)
    large = write_fraud(cfg, tmp_path / "l", chunk_rows=50_000)
    assert small.sha256 != large.sha256  # different row groups ...
    pd.testing.assert_frame_equal(  # ... same rows
        pd.read_parquet(tmp_path / "s" / small.path), pd.read_parquet(tmp_path / "l" / large.path)
    )


def test_seed_changes_rows() -> None:
    a = generate_fraud(FraudConfig(n_rows=5_000, seed=1))
    b = generate_fraud(FraudConfig(n_rows=5_000, seed=2))
    assert not a["amount"].equals(b["amount"])


# ----------------------------------------------------------------------------- fraud


@pytest.mark.parametrize("rate", [0.001, 0.002, 0.005, 0.01])
def test_fraud_rate_lands_on_target(rate: float) -> None:
    df = generate_fraud(FraudConfig(n_rows=20_000, seed=2, fraud_rate=rate))
    observed = df["is_fraud"].mean()
    assert 0.001 <= observed <= 0.01
    assert observed == pytest.approx(rate, abs=1 / 20_000)


def test_every_scenario_is_present(base: pd.DataFrame, with_new_pattern: pd.DataFrame) -> None:
    counts = base["fraud_scenario"].value_counts()
    for name in ("card_testing", "account_takeover", "compromised_terminal"):
        assert counts[name] >= 0.2 * base["is_fraud"].sum(), name
    assert counts["new_pattern"] == 0
    assert (with_new_pattern["fraud_scenario"] == "new_pattern").sum() > 0


def test_card_testing_is_bursts_of_small_online_amounts(base: pd.DataFrame) -> None:
    ct = _scenario(base, "card_testing")
    assert (ct["amount"] < 5).all()
    assert (ct["channel"] == "online").all()
    per_card = ct.groupby("card_id").agg(
        n=("amount", "size"),
        span=("tx_time", lambda t: t.max() - t.min()),
        terminals=("terminal_id", "nunique"),
    )
    assert per_card["n"].median() >= 8
    assert (per_card["span"] < pd.Timedelta(hours=1)).mean() >= 0.9
    assert per_card["span"].median() < pd.Timedelta(minutes=30)
    assert (per_card["terminals"] <= 2).mean() >= 0.9
    legit_small = (base.loc[base["is_fraud"] == 0, "amount"] < 5).mean()
    assert legit_small < 0.05


def test_account_takeover_is_larger_and_far_from_home(base: pd.DataFrame) -> None:
    ato = _scenario(base, "account_takeover")
    legit = base[base["is_fraud"] == 0]
    assert ato["amount"].median() > 2.5 * legit["amount"].median()
    assert ato["distance_from_home_km"].median() > 100
    assert legit["distance_from_home_km"].median() < 20
    assert (ato["channel"] == "online").mean() > 0.5
    spans = ato.groupby("card_id")["tx_time"].agg(lambda t: t.max() - t.min())
    assert (spans <= pd.Timedelta(days=4)).mean() >= 0.9


def test_compromised_terminal_fraud_is_concentrated(base: pd.DataFrame) -> None:
    ctf = _scenario(base, "compromised_terminal")
    assert (ctf["channel"] == "card_present").all()
    per_terminal = ctf.groupby("terminal_id").agg(
        n=("amount", "size"),
        cards=("card_id", "nunique"),
        first=("tx_time", "min"),
        last=("tx_time", "max"),
    )
    # few terminals carry all of it, each within a window of at most 10 days
    assert len(per_terminal) <= max(3, len(ctf) // 10)
    assert ((per_terminal["last"] - per_terminal["first"]) <= pd.Timedelta(days=10)).all()
    assert (per_terminal["cards"] >= 2).all()
    # within the window, that terminal's fraud share is far above the overall fraud rate
    overall = base["is_fraud"].mean()
    for terminal, row in per_terminal.iterrows():
        window = base[
            (base["terminal_id"] == terminal) & base["tx_time"].between(row["first"], row["last"])
        ]
        assert window["is_fraud"].mean() >= 25 * overall
    # compromised-terminal fraud is at the customers' usual, nearby terminals
    assert ctf["distance_from_home_km"].median() < 50


def test_new_pattern_is_night_high_value_crypto(with_new_pattern: pd.DataFrame) -> None:
    new = _scenario(with_new_pattern, "new_pattern")
    assert (new["mcc"] == "6051").all()
    assert (new["channel"] == "online").all()
    assert (new["tx_time"].dt.hour < 6).all()
    assert (new["amount"] >= 500).all()
    legit = with_new_pattern[with_new_pattern["is_fraud"] == 0]
    assert new["distance_from_home_km"].median() <= legit["distance_from_home_km"].median()
    assert 0.001 <= with_new_pattern["is_fraud"].mean() <= 0.01


def test_chargebacks_only_for_fraud_and_after_the_transaction(base: pd.DataFrame) -> None:
    fraud = base[base["is_fraud"] == 1]
    legit = base[base["is_fraud"] == 0]
    assert legit["chargeback_time"].isna().all()
    assert fraud["chargeback_time"].notna().all()
    delay = fraud["chargeback_time"] - fraud["tx_time"]
    assert (delay >= DAY).all()
    assert (delay <= 90 * DAY).all()
    assert pd.Timedelta(days=5) < delay.median() < pd.Timedelta(days=20)


# ----------------------------------------------------------------------------- seasonality


def test_daily_and_weekly_seasonality(base: pd.DataFrame) -> None:
    hour = base["tx_time"].dt.hour
    night = hour.between(0, 5).mean() / 6
    day = hour.between(10, 19).mean() / 10
    assert night < day / 3
    per_day = base.groupby(base["tx_time"].dt.normalize()).size()
    by_dow = per_day.groupby(per_day.index.dayofweek).mean()
    assert by_dow[6] < by_dow[[0, 1, 2, 3]].mean()  # Sunday quieter than Mon-Thu
    assert by_dow[4] > by_dow[[0, 1, 2, 3]].mean()  # Friday busier
    fri_sat = base["tx_time"].dt.dayofweek.isin([4, 5])
    evening = hour.between(18, 22)
    share_fri_sat = evening[fri_sat].mean()
    share_other = evening[~fri_sat].mean()
    assert share_fri_sat > share_other


# ----------------------------------------------------------------------------- drift knobs


def test_amount_shift_raises_legit_amounts(base: pd.DataFrame) -> None:
    shifted = generate_fraud(FraudConfig(n_rows=N_ROWS, seed=SEED, amount_shift=0.2))
    before = base.loc[base["is_fraud"] == 0, "amount"].mean()
    after = shifted.loc[shifted["is_fraud"] == 0, "amount"].mean()
    assert after / before == pytest.approx(1.2, rel=0.01)
    # only the amounts move
    pd.testing.assert_series_equal(shifted["terminal_id"], base["terminal_id"])


def test_new_merchant_segment_introduces_bnpl(base: pd.DataFrame) -> None:
    drifted = generate_fraud(FraudConfig(n_rows=N_ROWS, seed=SEED, new_merchant_segment=True))
    bnpl = drifted[drifted["merchant_segment"] == "bnpl"]
    assert 0.01 < len(bnpl) / len(drifted) < 0.2
    assert set(bnpl["mcc"].unique()) == {"6012"}
    assert not (base["mcc"] == "6012").any()
    assert (bnpl["channel"] == "online").all()
    others = drifted.loc[drifted["merchant_segment"] != "bnpl", "amount"].median()
    assert bnpl["amount"].median() > 2 * others


def test_new_fraud_pattern_changes_only_fraud_mix(
    base: pd.DataFrame, with_new_pattern: pd.DataFrame
) -> None:
    assert (base["fraud_scenario"] == "new_pattern").sum() == 0
    assert (with_new_pattern["fraud_scenario"] == "new_pattern").sum() >= 20
    assert with_new_pattern["is_fraud"].sum() == base["is_fraud"].sum()


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n_rows", 10),
        ("n_rows", 1.5),
        ("seed", -1),
        ("start", "2026-13-01"),
        ("start", "01/01/2026"),
        ("days", 0),
        ("n_customers", 10),
        ("n_terminals", 5),
        ("fraud_rate", 0.05),
        ("fraud_rate", 0.0005),
        ("amount_shift", -2.0),
        ("amount_shift", float("nan")),
        ("new_fraud_pattern", "yes"),
        ("new_merchant_segment", 1),
    ],
)
def test_invalid_config_names_the_field(field: str, value: Any) -> None:
    kwargs: dict[str, Any] = {"n_rows": 10_000, field: value}
    with pytest.raises(DataValidationError, match=field):
        FraudConfig(**kwargs)


def test_defaults_scale_with_rows() -> None:
    small = FraudConfig(n_rows=1_000)
    large = FraudConfig(n_rows=10_000_000)
    assert small.n_customers == 200 and small.n_terminals == 200
    assert large.n_customers == 200_000 and large.n_terminals == 100_000
    assert FraudConfig(n_rows=1_000, n_customers=500).n_customers == 500


def test_invalid_chunk_rows(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match="chunk_rows"):
        write_fraud(FraudConfig(n_rows=1_000), tmp_path, chunk_rows=0)
