"""The fraud lifecycle DAG with the Dask backend (``GOVML_COMPUTE_BACKEND=dask``): ingest,
data validation, features, training, evaluation and SHAP run on a LocalCluster of 2
worker processes (the data in 4 partitions), the run registers a governed candidate, and
every stage's outputs equal the local stage's on the same inputs (training: within its
tolerance, checked in the unit tests); an unreachable scheduler (set in the spec) fails
the first task that needs it (ingest) with one clear message."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipelines.features import SPLITS, read_split
from pipelines.spec import load_spec
from pipelines.stages.evaluate import evaluate
from pipelines.stages.explain import explain
from pipelines.stages.features import build_features
from pipelines.stages.ingest import ingest
from pipelines.stages.validate_data import validate_data
from tests.integration.test_lifecycle_dag import ROOT, Lifecycle, _summary

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lifecycle]:
    life = Lifecycle(tmp_path_factory.mktemp("lifecycle-dask") / "var")
    life.env["GOVML_COMPUTE_BACKEND"] = "dask"
    life.prepare()
    yield life


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_fraud_lifecycle_on_the_dask_backend(lifecycle: Lifecycle, tmp_path: Path) -> None:
    raw = yaml.safe_load((ROOT / "specs" / "fraud.yaml").read_text())
    raw["compute"] = {"partition_rows": 10_000}  # 4 partitions of the 40k transactions
    spec_path = tmp_path / "fraud.yaml"
    spec_path.write_text(yaml.safe_dump(raw))
    code, output, run_dir = lifecycle.run(
        "fraud", spec_path=spec_path, n_rows=40000, seed=3, fraud_rate=0.01
    )
    summary = _summary(output)
    assert code == 0 and summary["state"] == "success", output[-4000:]
    assert set(summary["tasks"].values()) == {"success"}

    features = _json(run_dir / "features" / "result.json")
    training = _json(run_dir / "train" / "training.json")
    assert _json(run_dir / "ingest" / "result.json")["partitions"] == 4
    for stage in ("ingest", "validate_data", "features", "evaluate", "explain"):
        assert _json(run_dir / stage / "result.json")["backend"] == "dask", stage
    assert training["backend"] == "dask" and training["dask_workers"] == 2
    assert len(lifecycle.versions("fraud")) == 1

    spec = load_spec(spec_path)
    data = run_dir / "ingest" / "data.parquet"
    local_ingest = ingest(spec, _json(run_dir / "ingest" / "fingerprint.json")["source"],
                          tmp_path / "ingest")  # fmt: skip
    pd.testing.assert_frame_equal(
        pd.read_parquet(data), pd.read_parquet(local_ingest.data), check_exact=True
    )
    validate_data(spec, data, tmp_path / "validate")
    for name in ("validation.json", "profile.json"):
        assert _json(run_dir / "validate_data" / name) == _json(tmp_path / "validate" / name)
    evaluated = evaluate(spec, run_dir / "features", run_dir / "train", tmp_path / "evaluate")
    assert _json(run_dir / "evaluate" / "metrics.json") == _json(evaluated.metrics_path)
    explain(spec, run_dir / "features", run_dir / "train", tmp_path / "evaluate",
            tmp_path / "explain")  # fmt: skip
    for name in ("shap_importance.json",):
        assert _json(run_dir / "explain" / name) == _json(tmp_path / "explain" / name)
    pd.testing.assert_frame_equal(
        pd.read_parquet(run_dir / "explain" / "reason_codes.parquet"),
        pd.read_parquet(tmp_path / "explain" / "reason_codes.parquet"),
    )

    local = build_features(spec, data, tmp_path / "local")
    assert features["rows"] == local.rows
    for split in SPLITS:
        pd.testing.assert_frame_equal(
            read_split(spec, run_dir / "features", split),
            read_split(spec, tmp_path / "local", split),
            check_exact=True,
        )


def test_unreachable_scheduler_fails_the_run_clearly(lifecycle: Lifecycle, tmp_path: Path) -> None:
    raw = yaml.safe_load((ROOT / "specs" / "fraud.yaml").read_text())
    raw["compute"] = {"backend": "dask", "scheduler": "tcp://127.0.0.1:9", "connect_timeout": 3}
    spec_path = tmp_path / "fraud.yaml"
    spec_path.write_text(yaml.safe_dump(raw))
    code, output, _ = lifecycle.run(
        "fraud", spec_path=spec_path, n_rows=20000, seed=4, fraud_rate=0.01
    )
    summary = _summary(output)
    assert code != 0
    assert summary["tasks"]["ingest"] == "failed"
    assert summary["tasks"]["register"] != "success"
    assert "Dask scheduler tcp://127.0.0.1:9: not reachable" in output
