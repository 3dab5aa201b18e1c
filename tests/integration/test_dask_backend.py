"""The Dask backend against the local one, on a LocalCluster of 2 worker processes.

Features and input checks must be exactly equal (partitions cut in the middle of entity
histories), batch scores exactly equal, distributed training within the documented
ROC-AUC tolerance; a bad or unreachable scheduler gives one clear error.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from pipelines.backends import resolve_compute
from pipelines.config import load_settings
from pipelines.data.fraud_config import FraudConfig
from pipelines.errors import ConfigError, DataValidationError, SpecError
from pipelines.features import SPLITS, FeaturesInputs, compute_aggregates, read_features_json
from pipelines.features import read_split as read_split_local
from pipelines.spec import Compute, ModelSpec, load_spec, parse_spec
from pipelines.spec_features import AggregateFeature
from pipelines.stages.features import build_features, write_features
from pipelines.stages.ingest import ingest
from pipelines.stages.train import train, write_training
from pipelines.training import TrainInputs, load_model, score
from tests.datasets import local_and_dask, raw_fraud_file, spec_of, with_training

dask_backend = pytest.importorskip("pipelines.backends.dask_core")
dask_training = pytest.importorskip("pipelines.backends.dask_training")
Cluster = dask_backend.Cluster

ROOT = Path(__file__).resolve().parents[2]
ROWS = 24_000
PARTITION_ROWS = 2_500  # ~10 partitions: every card's history spans several of them


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return with_training(spec_of("fraud"), num_boost_round=120)


@pytest.fixture(scope="module")
def data(spec: ModelSpec, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("dask-data")
    cfg = FraudConfig(n_rows=ROWS, seed=3, days=6, fraud_rate=0.01)
    ingest(spec, raw_fraud_file(folder / "raw", cfg, chunk_rows=5_000), folder / "ingest")
    return folder / "ingest" / "data.parquet"


def _features_dask(spec: ModelSpec, data: Path, out: Path, cluster: object) -> None:
    """The Dask feature tables and the stage's record of them (:func:`write_features`)."""
    tables = dask_backend.build_features_dask(spec, FeaturesInputs(data, out), cluster)
    write_features(spec, tables)


@pytest.fixture(scope="module")
def feature_dirs(
    spec: ModelSpec, data: Path, dask_client: object, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    return local_and_dask(
        tmp_path_factory.mktemp("dask-features"),
        lambda out: build_features(spec, data, out),
        lambda out: _features_dask(spec, data, out, Cluster(dask_client, PARTITION_ROWS)),
    )


def test_stages_shuffle_on_the_workers_and_leave_no_temp_files(
    spec: ModelSpec, data: Path, dask_client: object, tmp_path: Path
) -> None:
    import tempfile

    import dask

    def partd() -> set[Path]:
        return set(Path(tempfile.gettempdir()).glob("*.partd"))

    before = partd()
    with dask_backend.on_cluster(dask_client):  # type: ignore[arg-type]
        assert dask.config.get("dataframe.shuffle.method") == "tasks"
    _features_dask(spec, data, tmp_path / "features", Cluster(dask_client, PARTITION_ROWS))
    assert partd() == before  # Dask's disk shuffle would leave its partd folders here


def test_partitions_cut_entity_histories(spec: ModelSpec, data: Path) -> None:
    frame = pd.read_parquet(data, columns=["card_id", "customer_id", "terminal_id"])
    part = np.arange(len(frame)) // PARTITION_ROWS
    for entity in ("card_id", "customer_id", "terminal_id"):
        spans = pd.Series(part).groupby(frame[entity].to_numpy()).nunique()
        assert (spans > 1).mean() > 0.5, entity  # most histories cross a partition cut


def test_feature_tables_equal_local_exactly(
    spec: ModelSpec, feature_dirs: tuple[Path, Path]
) -> None:
    local, dist = feature_dirs
    for split in SPLITS:
        expected = read_split_local(spec, local, split)
        got = read_split_local(spec, dist, split)
        assert len(expected) > 0
        pd.testing.assert_frame_equal(got, expected, check_exact=True)
    meta_local, meta_dask = read_features_json(local), read_features_json(dist)
    for key in ("features", "categorical", "passthrough", "rows", "label_rate", "split"):
        assert meta_dask[key] == meta_local[key], key
    assert meta_dask["backend"] == "dask"


def test_every_aggregate_kind_exact_on_uneven_partitions(
    spec: ModelSpec, data: Path, dask_client: object
) -> None:
    import dask

    aggs = [
        AggregateFeature(name="c_std_2h", entity="card_id", window="2h", agg="std",
                         column="amount"),
        AggregateFeature(name="c_sum_1d", entity="card_id", window="1d", agg="sum",
                         column="amount"),
        AggregateFeature(name="t_max_3h", entity="terminal_id", window="3h", agg="max",
                         column="amount"),
        AggregateFeature(name="cu_terms_1d", entity="customer_id", window="1d",
                         agg="nunique", column="terminal_id"),
        AggregateFeature(name="cu_online_mean_2d", entity="customer_id", window="2d",
                         agg="mean", column="amount", where={"channel": "online"}),
        AggregateFeature(name="m_count_10m", entity="merchant_segment", window="10m",
                         agg="count"),
    ]  # fmt: skip
    frame = pd.read_parquet(data)
    from pipelines.features import retype_categories

    expected = compute_aggregates(aggs, retype_categories(frame, spec), "tx_time")
    with dask.config.set(scheduler=dask_client):
        ddf = dask_backend.read_partitioned(data, spec, 997)
        got = dask_backend.aggregates_dask(ddf, aggs, "tx_time").compute()
    got = got[[a.name for a in aggs]]
    got.index = got.index.rename(None)
    pd.testing.assert_frame_equal(got, expected, check_exact=True, check_index_type=False)
    assert expected["c_std_2h"].notna().sum() > 100  # the windows are not all empty


def test_input_checks_match_local(
    spec: ModelSpec, data: Path, dask_client: object, tmp_path: Path
) -> None:
    frame = pd.read_parquet(data)
    frame.loc[5, "transaction_id"] = frame.loc[6, "transaction_id"]
    broken = tmp_path / "dupes.parquet"
    frame.to_parquet(broken)
    with pytest.raises(DataValidationError, match="duplicates") as local_error:
        build_features(spec, broken, tmp_path / "local")
    with pytest.raises(DataValidationError, match="duplicates") as dask_error:
        _features_dask(spec, broken, tmp_path / "dask", Cluster(dask_client, 3000))
    assert str(dask_error.value) == str(local_error.value)


def test_batch_scores_equal_local_exactly(
    spec: ModelSpec, feature_dirs: tuple[Path, Path], dask_client: object, tmp_path: Path
) -> None:
    local, _ = feature_dirs
    trained = train(spec, local, tmp_path / "train")
    test_path = local / "test.parquet"
    out = dask_backend.batch_score(
        spec, trained.model_path, test_path, tmp_path / "scores.parquet", dask_client, 700
    )
    scores = pd.read_parquet(out["scores"])
    test = read_split_local(spec, local, "test")
    expected = score(load_model(trained.model_path), test)
    assert out["rows"] == len(test)
    np.testing.assert_array_equal(scores["transaction_id"].to_numpy(), test["transaction_id"])
    np.testing.assert_array_equal(scores["score"].to_numpy(), expected)


def test_distributed_training_within_auc_tolerance(
    spec: ModelSpec, feature_dirs: tuple[Path, Path], dask_client: object, tmp_path: Path
) -> None:
    local, dist = feature_dirs
    local_model = train(spec, local, tmp_path / "local")
    dask_model = write_training(
        spec,
        tmp_path / "dask",
        dask_training.train_dask(spec, TrainInputs(dist), Cluster(dask_client, 3000)),
    )
    test = read_split_local(spec, local, "test")
    y = test["is_fraud"].to_numpy()
    auc_local = roc_auc_score(y, score(load_model(local_model.model_path), test))
    auc_dask = roc_auc_score(y, score(load_model(dask_model.model_path), test))
    assert auc_local > 0.8 and auc_dask > 0.8
    assert abs(auc_dask - auc_local) <= dask_training.AUC_TOLERANCE, (auc_local, auc_dask)
    for name in ("model.txt", "baseline.joblib", "training.json", "result.json"):
        assert (tmp_path / "dask" / name).is_file()
    assert 1 <= dask_model.best_iteration <= 120
    assert dask_model.params["scale_pos_weight"] == local_model.params["scale_pos_weight"]


def test_negative_sampling_keeps_the_local_rows(
    spec: ModelSpec, feature_dirs: tuple[Path, Path], dask_client: object, tmp_path: Path
) -> None:
    local, dist = feature_dirs
    sampled = spec.model_copy(
        update={"training": spec.training.model_copy(update={"negative_sample_rate": 0.3})}
    )
    local_model = train(sampled, local, tmp_path / "local")
    dask_model = write_training(
        sampled,
        tmp_path / "dask",
        dask_training.train_dask(sampled, TrainInputs(dist), Cluster(dask_client, 3000)),
    )
    local_meta = json.loads((tmp_path / "local" / "training.json").read_text())
    dask_meta = json.loads((tmp_path / "dask" / "training.json").read_text())
    assert dask_meta["negative_sampling"] == local_meta["negative_sampling"]
    assert dask_model.train_rows == local_model.train_rows < 0.4 * ROWS
    assert dask_meta["scale_pos_weight"] == local_meta["scale_pos_weight"]
    test = read_split_local(spec, local, "test")
    y = test["is_fraud"].to_numpy()
    auc_local = roc_auc_score(y, score(load_model(local_model.model_path), test))
    auc_dask = roc_auc_score(y, score(load_model(dask_model.model_path), test))
    assert abs(auc_dask - auc_local) <= dask_training.AUC_TOLERANCE, (auc_local, auc_dask)


def test_tuning_is_refused_on_dask(
    spec: ModelSpec, feature_dirs: tuple[Path, Path], dask_client: object, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="tuning_trials=3"):
        dask_training.train_dask(spec, TrainInputs(feature_dirs[1], 3), Cluster(dask_client, 3000))


def test_unreachable_scheduler_is_one_clear_error() -> None:
    compute = Compute(backend="dask", scheduler="tcp://127.0.0.1:9")
    with (
        pytest.raises(ConfigError, match=r"tcp://127\.0\.0\.1:9: not reachable"),
        dask_backend.dask_client(compute, timeout=2),
    ):
        pass


def test_compute_section_and_overrides(spec: ModelSpec) -> None:
    assert spec.compute.backend == "local"
    settings = load_settings({"GOVML_DASK_SCHEDULER": "tcp://dask-scheduler:8786"})
    resolved = resolve_compute(spec, settings)
    assert (resolved.backend, resolved.scheduler) == ("dask", "tcp://dask-scheduler:8786")
    assert resolve_compute(spec, load_settings({"GOVML_COMPUTE_BACKEND": "dask"})).backend == (
        "dask"
    )
    with pytest.raises(ConfigError, match="not a Dask scheduler address"):
        resolve_compute(spec, load_settings({"GOVML_DASK_SCHEDULER": "scheduler:8786"}))
    raw = spec.model_dump(mode="json")
    raw["compute"] = {"backend": "dask", "scheduler": "http://x"}
    with pytest.raises(SpecError, match=r"compute\.scheduler"):
        parse_spec(raw, "fraud.yaml")
    raw["compute"] = {"backend": "spark"}
    with pytest.raises(SpecError, match=r"compute\.backend"):
        parse_spec(raw, "fraud.yaml")


def test_stratified_split_equal_local_exactly(dask_client: object, tmp_path: Path) -> None:
    from pipelines.data.credit import CreditConfig, write_credit

    credit = load_spec(ROOT / "specs" / "credit.yaml")
    manifest = write_credit(CreditConfig(n_rows=6_000, seed=5), tmp_path / "raw")
    ingest(credit, tmp_path / "raw" / f"{manifest.name}.parquet", tmp_path / "ingest")
    data = tmp_path / "ingest" / "data.parquet"
    build_features(credit, data, tmp_path / "local")
    _features_dask(credit, data, tmp_path / "dask", Cluster(dask_client, 1_100))
    for split in SPLITS:
        pd.testing.assert_frame_equal(
            read_split_local(credit, tmp_path / "dask", split),
            read_split_local(credit, tmp_path / "local", split),
            check_exact=True,
        )
    assert (
        read_features_json(tmp_path / "dask")["rows"]
        == read_features_json(tmp_path / "local")["rows"]
    )
