"""Ingest, data validation, evaluation and SHAP on the Dask backend against the local stages,
on a LocalCluster of 2 worker processes and partitions that cut the data in many places.

Ingest and validation must give the same values and outcomes (and the same error text);
evaluation and SHAP the same metrics and contributions (see the module docs for the
tolerances, which are exact here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pipelines.data.fraud_config import FraudConfig
from pipelines.errors import DataValidationError
from pipelines.ingest import IngestInputs
from pipelines.spec import ModelSpec
from pipelines.stages.ingest import ingest, write_ingest

dask_backend = pytest.importorskip("pipelines.backends.dask_core")
from pipelines.backends.dask_core import Cluster  # noqa: E402
from pipelines.backends.dask_ingest import ingest_dask  # noqa: E402
from tests.datasets import local_and_dask, raw_fraud_file, spec_of, with_training  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ROWS = 12_000
PARTITION_ROWS = 1_700


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return with_training(spec_of("fraud"), num_boost_round=60)


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = FraudConfig(n_rows=ROWS, seed=5, days=5, fraud_rate=0.01)
    return raw_fraud_file(tmp_path_factory.mktemp("dask-stages") / "raw", cfg, chunk_rows=4_000)


def _ingest_dask(spec: ModelSpec, source: Path, out: Path, cluster: Cluster) -> Any:
    """The Dask ingest and the stage's record of it (:func:`write_ingest`)."""
    return write_ingest(spec, out, ingest_dask(spec, IngestInputs(source, out), cluster))


@pytest.fixture(scope="module")
def ingested(
    spec: ModelSpec, raw: Path, dask_client: object, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    return local_and_dask(
        tmp_path_factory.mktemp("dask-ingested"),
        lambda out: ingest(spec, raw, out),
        lambda out: _ingest_dask(spec, raw, out, Cluster(dask_client, PARTITION_ROWS)),
    )


# ----------------------------------------------------------------------------- ingest


def test_ingest_equals_local(ingested: tuple[Path, Path]) -> None:
    local, dist = ingested
    pd.testing.assert_frame_equal(
        pd.read_parquet(dist / "data.parquet"),
        pd.read_parquet(local / "data.parquet"),
        check_exact=True,
    )
    assert json.loads((dist / "fingerprint.json").read_text()) == json.loads(
        (local / "fingerprint.json").read_text()
    )
    res_local = json.loads((local / "result.json").read_text())
    res_dask = json.loads((dist / "result.json").read_text())
    assert res_dask["backend"] == "dask" and res_dask["partitions"] == 8
    for key in set(res_local) - {"data", "data_sha256", "fingerprint"}:
        assert res_dask[key] == res_local[key], key


def _broken_source(raw: Path, tmp_path: Path) -> Path:
    """Bad values spread over several partitions, nulls in an int column, an extra
    category and an extra column."""
    frame = pd.read_parquet(raw)
    frame["amount"] = frame["amount"].astype(str)
    for i, bad in ((10, "lots"), (3_000, "n/a"), (5_000, "abc"), (9_000, "lots"), (11_000, "x")):
        frame.loc[i, "amount"] = bad
    frame["customer_tenure_days"] = frame["customer_tenure_days"].astype(str)
    frame.loc[2_000, "customer_tenure_days"] = "1.5"  # non-integer in one partition ...
    frame.loc[8_000, "customer_tenure_days"] = "many"  # ... unparseable in another
    frame["note"] = "extra"
    path = tmp_path / "broken.parquet"
    frame.to_parquet(path, row_group_size=2_500)
    return path


def test_ingest_bad_input_gives_the_local_error(
    spec: ModelSpec, raw: Path, dask_client: object, tmp_path: Path
) -> None:
    source = _broken_source(raw, tmp_path)
    with pytest.raises(DataValidationError) as local_error:
        ingest(spec, source, tmp_path / "local")
    with pytest.raises(DataValidationError) as dask_error:
        _ingest_dask(spec, source, tmp_path / "dask", Cluster(dask_client, PARTITION_ROWS))
    assert str(dask_error.value) == str(local_error.value)
    assert "'amount' (float): 4 value(s)" in str(dask_error.value)


def test_ingest_nulls_extra_categories_and_folders(
    spec: ModelSpec, raw: Path, dask_client: object, tmp_path: Path
) -> None:
    frame = pd.read_parquet(raw)
    frame["customer_tenure_days"] = frame["customer_tenure_days"].astype("Int64")
    frame.loc[7_777, "customer_tenure_days"] = pd.NA  # Int64 only because of one partition
    frame["region"] = frame["region"].astype(str)
    frame.loc[[100, 9_100], "region"] = ["mars", "atlantis"]  # extras seen in two partitions
    frame["note"] = "extra"
    folder = tmp_path / "src"
    folder.mkdir()
    frame.iloc[:5_000].to_parquet(folder / "a.parquet", row_group_size=1_000)
    frame.iloc[5_000:].to_parquet(folder / "b.parquet", row_group_size=1_000)
    single = tmp_path / "single.parquet"
    frame.to_parquet(single)
    local = ingest(spec, single, tmp_path / "local")
    dist = _ingest_dask(spec, folder, tmp_path / "dask", Cluster(dask_client, PARTITION_ROWS))
    pd.testing.assert_frame_equal(
        pd.read_parquet(dist.data), pd.read_parquet(local.data), check_exact=True
    )
    assert dist.extra_categories == local.extra_categories == {"region": ["atlantis", "mars"]}
    assert dist.dtypes == local.dtypes and dist.dtypes["customer_tenure_days"] == "Int64"
    assert dist.nulls == local.nulls and dist.extra_columns == ["note"]
    again = _ingest_dask(spec, folder, tmp_path / "again", Cluster(dask_client, PARTITION_ROWS))
    assert (again.sha256, again.data_sha256) == (dist.sha256, dist.data_sha256)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataValidationError, match="holds no Parquet files"):
        _ingest_dask(spec, tmp_path / "empty", tmp_path / "x", Cluster(dask_client, 100))


# ----------------------------------------------------------------------------- validation


def _validate_both(
    spec: ModelSpec, data: Path, dask_client: object, out: Path, **kwargs: object
) -> tuple[dict, dict, str | None, str | None]:
    from pipelines.backends.dask_validation import validate_data_dask
    from pipelines.stages.validate_data import validate_data, write_validation
    from validation.data_quality import ValidateInputs

    def dask(out: Path) -> object:
        inputs = ValidateInputs(data, out, **kwargs)  # type: ignore[arg-type]
        return write_validation(
            spec, out, validate_data_dask(spec, inputs, Cluster(dask_client, PARTITION_ROWS))
        )

    errors: list[str | None] = []
    for name, run in (
        ("local", lambda o: validate_data(spec, data, o, **kwargs)),
        ("dask", dask),
    ):
        try:
            run(out / name)
            errors.append(None)
        except DataValidationError as exc:
            errors.append(str(exc))
    files = {}
    for name in ("local", "dask"):
        files[name] = {
            f: json.loads((out / name / f).read_text())
            for f in ("validation.json", "profile.json", "result.json")
        }
        assert (out / name / "data_docs" / "index.html").is_file()
    return files["local"], files["dask"], errors[0], errors[1]


def _assert_same_outcome(local: dict, dist: dict) -> None:
    assert dist["validation.json"] == local["validation.json"]
    assert dist["profile.json"] == local["profile.json"]
    res_local, res_dask = local["result.json"], dist["result.json"]
    for key in set(res_local) - {"validation", "profile", "data_docs"}:
        assert res_dask[key] == res_local[key], key


def test_validation_clean_data_equals_local(
    spec: ModelSpec, ingested: tuple[Path, Path], dask_client: object, tmp_path: Path
) -> None:
    data = ingested[0] / "data.parquet"
    local, dist, err_local, err_dask = _validate_both(spec, data, dask_client, tmp_path)
    assert err_local is None and err_dask is None
    assert local["validation.json"]["success"] is True
    _assert_same_outcome(local, dist)


def test_validation_planted_problems_equal_local(
    spec: ModelSpec, ingested: tuple[Path, Path], dask_client: object, tmp_path: Path
) -> None:
    from datetime import datetime, timedelta

    frame = pd.read_parquet(ingested[0] / "data.parquet")
    frame.loc[[5, 4_000, 11_500], "amount"] = [-3.0, 60_000.0, -3.0]  # range, 3 partitions
    frame.loc[[200, 9_000], "transaction_id"] = frame.loc[[7_000, 10], "transaction_id"].to_numpy()
    frame["customer_tenure_days"] = frame["customer_tenure_days"].astype("Int64")
    frame.loc[[1, 6_000], "customer_tenure_days"] = pd.NA  # nulls in a forbid column
    frame["region"] = frame["region"].cat.add_categories(["mars"])
    frame.loc[[3_500, 3_501, 10_200], "region"] = "mars"  # outside the spec's categories
    bad = tmp_path / "bad.parquet"
    frame.to_parquet(bad, row_group_size=3_000)
    local, dist, err_local, err_dask = _validate_both(
        spec, bad, dask_client, tmp_path / "v",
        now=datetime(2030, 1, 1), max_age=timedelta(days=3),
    )  # fmt: skip
    assert err_local is not None and err_dask == err_local
    failed = {r["check"] for r in local["validation.json"]["expectations"] if not r["success"]}
    assert failed >= {
        "amount.range",
        "transaction_id.unique",
        "customer_tenure_days.not_null",
        "region.categories",
        "freshness",
    }
    _assert_same_outcome(local, dist)

    # the clean data against this profile as the reference (median and recency checks)
    reference = tmp_path / "v" / "local" / "profile.json"
    local, dist, err_local, err_dask = _validate_both(
        spec, ingested[0] / "data.parquet", dask_client, tmp_path / "r", reference_profile=reference
    )
    assert err_dask == err_local
    assert any(r["check"].endswith(".median") for r in local["validation.json"]["expectations"])
    _assert_same_outcome(local, dist)


# ----------------------------------------------------------------------------- evaluate, explain


@pytest.fixture(scope="module")
def trained(
    spec: ModelSpec, ingested: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    from pipelines.stages.features import build_features
    from pipelines.stages.train import train

    folder = tmp_path_factory.mktemp("dask-trained")
    build_features(spec, ingested[0] / "data.parquet", folder / "features")
    train(spec, folder / "features", folder / "train")
    return folder / "features", folder / "train"


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_evaluate_and_explain_equal_local(
    spec: ModelSpec, trained: tuple[Path, Path], dask_client: object, tmp_path: Path
) -> None:
    from pipelines.backends.dask_evaluation import evaluate_dask, explain_dask
    from pipelines.evaluation import EvaluateInputs
    from pipelines.stages.evaluate import evaluate, write_evaluation
    from pipelines.stages.explain import explain, write_explanation
    from validation.explain import ExplainInputs

    features, train_dir = trained
    # a low threshold, so that rows are flagged and get reason codes
    spec = spec.model_copy(
        update={"gates": spec.gates.model_copy(update={"decision_threshold": 0.05})}
    )
    champion = train_dir / "model.txt"  # the candidate as its own champion: every path runs
    local = evaluate(spec, features, train_dir, tmp_path / "eval-local", champion_model=champion)
    dist = write_evaluation(
        spec,
        tmp_path / "eval-dask",
        evaluate_dask(
            spec, EvaluateInputs(features, train_dir, champion), Cluster(dask_client, 700)
        ),
    )
    assert local.rows > 1_000 and local.positives > 0
    assert _json(dist.metrics_path) == _json(local.metrics_path)
    pd.testing.assert_frame_equal(
        pd.read_parquet(dist.scores_path), pd.read_parquet(local.scores_path), check_exact=True
    )
    for name in ("roc.png", "pr.png", "calibration.png"):
        assert (tmp_path / "eval-dask" / name).read_bytes() == (
            tmp_path / "eval-local" / name
        ).read_bytes()

    kwargs = {"champion_model": champion, "max_rows": 500}
    ex_local = explain(
        spec, features, train_dir, tmp_path / "eval-local", tmp_path / "ex-local", **kwargs
    )
    inputs = ExplainInputs(features, train_dir, tmp_path / "eval-dask", champion, 500)
    found = explain_dask(spec, inputs, Cluster(dask_client, 700))
    ex_dask = write_explanation(spec, tmp_path / "ex-dask", found)
    assert ex_dask.to_dict() | {"out_dir": ""} == ex_local.to_dict() | {"out_dir": ""}
    assert ex_local.reason_rows > 0 and ex_local.rows_explained == 500
    assert _json(tmp_path / "ex-dask" / "shap_importance.json") == _json(
        tmp_path / "ex-local" / "shap_importance.json"
    )
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "ex-dask" / "reason_codes.parquet"),
        pd.read_parquet(tmp_path / "ex-local" / "reason_codes.parquet"),
        check_exact=True,
    )
    assert (tmp_path / "ex-dask" / "shap_summary.png").read_bytes() == (
        tmp_path / "ex-local" / "shap_summary.png"
    ).read_bytes()


def test_ingest_structural_errors_equal_local(
    spec: ModelSpec, raw: Path, dask_client: object, tmp_path: Path
) -> None:
    frame = pd.read_parquet(raw).drop(columns=["amount"])
    frame["channel"] = frame["channel"].astype(str)
    frame["is_fraud"] = frame["is_fraud"].astype(float)
    frame.loc[[50, 6_000], "is_fraud"] = [0.5, 2.25]  # fractions in an int column
    missing = tmp_path / "missing.parquet"
    frame.to_parquet(missing, row_group_size=3_000)
    for source, expected in (
        (missing, "missing column(s) 'amount'; column 'is_fraud' (int): 2 non-integer"),
        (tmp_path / "absent.parquet", "data file not found"),
    ):
        with pytest.raises(DataValidationError) as local_error:
            ingest(spec, source, tmp_path / "local")
        with pytest.raises(DataValidationError) as dask_error:
            _ingest_dask(spec, source, tmp_path / "dask", Cluster(dask_client, PARTITION_ROWS))
        assert str(dask_error.value) == str(local_error.value)
        assert expected in str(dask_error.value)
