"""Specs and generated data for the stage tests: the repository's specs, smaller
training settings, and typed ingest data from the generators."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.data.credit import CreditConfig, generate_credit
from pipelines.data.fraud import generate_fraud, write_fraud
from pipelines.data.fraud_config import FraudConfig
from pipelines.spec import ColumnType, ModelSpec, load_spec, parse_spec
from pipelines.spec_features import AggregateFeature

REPO = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------- model specs
# Typed ingest data from the generators and smaller training settings, for the stage tests.
# 30,000 fraud rows: the fraud model needs ~30-45 frauds in each of validation and test to
# learn (at 10,000 its test AUC falls below chance); credit learns from 10,000.
FRAUD_ROWS = 30_000
FRAUD_SEED = 7  # this seed puts ~30-45 frauds in each of validation and test
FRAUD_RATE = 0.01
CREDIT_ROWS = 10_000


def spec_of(name: str) -> ModelSpec:
    return load_spec(REPO / "specs" / f"{name}.yaml")


def with_training(spec: ModelSpec, **training: Any) -> ModelSpec:
    """The spec with some ``training`` settings replaced (e.g. fewer boosting rounds)."""
    return spec.model_copy(update={"training": spec.training.model_copy(update=training)})


def raw_fraud_file(folder: Path, cfg: FraudConfig, chunk_rows: int = 1_000_000) -> Path:
    """The fraud generator's data for ``cfg`` written as a raw source into ``folder`` (in
    row groups of ``chunk_rows``, with its manifest): the Parquet file."""
    return folder / f"{write_fraud(cfg, folder, chunk_rows).name}.parquet"


def local_and_dask(
    folder: Path, run_local: Callable[[Path], object], run_dask: Callable[[Path], object]
) -> tuple[Path, Path]:
    """The backend tests' comparison: ``run_local`` writing into ``folder/local`` and
    ``run_dask`` into ``folder/dask``; the two folders."""
    local, dask = folder / "local", folder / "dask"
    run_local(local)
    run_dask(dask)
    return local, dask


def json_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """``frame``'s rows as a client sends them in JSON: plain values, ``None`` for missing."""
    import json

    values = frame.astype(object).where(frame.notna(), None)
    return json.loads(json.dumps(values.to_dict("records"), default=lambda o: o.item()))


def typed_frame(spec: ModelSpec, frame: pd.DataFrame) -> pd.DataFrame:
    """The columns of ``spec.data.columns`` typed like ingest's ``data.parquet``."""
    out: dict[str, Any] = {}
    for name, col in spec.data.columns.items():
        s = frame[name]
        if col.type == ColumnType.CATEGORY:
            values = s.astype(object)
            out[name] = pd.Categorical(
                values.where(values.notna(), None), categories=col.categories
            )
        elif col.type == ColumnType.INT:
            out[name] = s.astype("int64")
        elif col.type == ColumnType.FLOAT:
            out[name] = s.astype("float64")
        elif col.type == ColumnType.DATETIME:
            out[name] = s.astype("datetime64[ns]")
        elif col.type == ColumnType.BOOL:
            out[name] = s.astype(bool)
        else:
            out[name] = s.astype(object)
    return pd.DataFrame(out)


def write_ingest(spec: ModelSpec, frame: pd.DataFrame, folder: Path) -> Path:
    """Write ``frame`` as an ingest ``data.parquet`` (typed per spec) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "data.parquet"
    typed_frame(spec, frame).to_parquet(path, index=False)
    return path


def fraud_data(folder: Path, n_rows: int = FRAUD_ROWS, seed: int = FRAUD_SEED) -> Path:
    cfg = FraudConfig(n_rows=n_rows, seed=seed, fraud_rate=FRAUD_RATE)
    return write_ingest(spec_of("fraud"), generate_fraud(cfg), folder)


def credit_data(folder: Path, n_rows: int = CREDIT_ROWS, seed: int = 11) -> Path:
    cfg = CreditConfig(n_rows=n_rows, seed=seed)
    return write_ingest(spec_of("credit"), generate_credit(cfg), folder)


def small_spec(columns: dict[str, dict[str, Any]]) -> ModelSpec:
    """A tiny credit spec over ``small.csv``: ``columns`` (with ``id``, the target ``label``
    and the one feature ``flag``), at least 3 rows, a stratified split."""
    return parse_spec(
        {
            "name": "small",
            "use_case": "credit",
            "owner": "tests",
            "data": {
                "source": {"kind": "file", "path": "small.csv"},
                "id_column": "id",
                "entity_column": "id",
                "target": "label",
                "split": {"method": "stratified"},
                "min_rows": 3,
                "columns": columns,
            },
            "features": {"raw": ["flag"]},
            "gates": {"metrics": [{"metric": "roc_auc", "min": 0.5}]},
            "approval": {"roles": ["model_risk"]},
        }
    )


def small_booster(frame: pd.DataFrame, y: pd.Series, rounds: int, folder: Path) -> Any:
    """A small deterministic LightGBM booster of ``frame`` and ``y``, saved as
    ``folder/model.txt``."""
    import lightgbm as lgb

    booster = lgb.train(
        {"objective": "binary", "verbose": -1, "seed": 1, "num_threads": 1},
        lgb.Dataset(frame, y),
        num_boost_round=rounds,
    )
    booster.save_model(str(folder / "model.txt"))
    return booster


# ----------------------------------------------------------------------------- window edges
def window_edge_events() -> pd.DataFrame:
    """Six events: card 1 three times at t0 (ties), once 1 s later and once exactly one
    10-minute window after t0; card 2 once at t0."""
    t0 = pd.Timestamp("2026-01-01 12:00:00")
    return pd.DataFrame(
        {
            "transaction_id": [1, 2, 3, 4, 5, 6],
            "card": [1, 1, 1, 1, 1, 2],
            "t": [t0, t0, t0, t0 + pd.Timedelta("1s"), t0 + pd.Timedelta("10m"), t0],
            "amount": [10.0, 20.0, 30.0, 40.0, 50.0, 99.0],
        }
    )


def window_edge_aggregates(*aggs: str) -> list[AggregateFeature]:
    """10-minute aggregates of card over :func:`window_edge_events`, each named by its
    first letter (``count`` -> ``n``, ``sum`` -> ``s``, ``max`` -> ``m``, ``nunique`` -> ``u``)."""
    names = {"count": "n", "sum": "s", "max": "m", "nunique": "u"}
    return [
        AggregateFeature(
            name=names[agg],
            entity="card",
            window="10m",
            agg=agg,
            column=None if agg == "count" else "amount",
        )
        for agg in aggs
    ]
