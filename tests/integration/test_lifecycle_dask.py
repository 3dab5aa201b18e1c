"""The fraud lifecycle DAG with the Dask backend (``GOVML_COMPUTE_BACKEND=dask``): the
features and training tasks run on a LocalCluster of 2 worker processes, the run
registers a governed candidate, and its feature tables equal the local backend's; an
unreachable scheduler (set in the spec) fails the features task with one clear message."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipelines.features import SPLITS, build_features, read_split
from pipelines.spec import load_spec
from tests.integration.test_lifecycle_dag import ROOT, Lifecycle, _summary

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lifecycle]:
    life = Lifecycle(tmp_path_factory.mktemp("lifecycle-dask") / "var")
    life.env["GOVML_COMPUTE_BACKEND"] = "dask"
    life.prepare()
    yield life


def test_fraud_lifecycle_on_the_dask_backend(lifecycle: Lifecycle, tmp_path: Path) -> None:
    code, output, run_dir = lifecycle.run("fraud", n_rows=40000, seed=3, fraud_rate=0.01)
    summary = _summary(output)
    assert code == 0 and summary["state"] == "success", output[-4000:]
    assert set(summary["tasks"].values()) == {"success"}

    features = json.loads((run_dir / "features" / "result.json").read_text())
    training = json.loads((run_dir / "train" / "training.json").read_text())
    assert features["backend"] == "dask"
    assert training["backend"] == "dask" and training["dask_workers"] == 2
    assert len(lifecycle.versions("fraud")) == 1

    spec = load_spec(ROOT / "specs" / "fraud.yaml")
    local = build_features(spec, run_dir / "ingest" / "data.parquet", tmp_path / "local")
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
    assert summary["tasks"]["features"] == "failed"
    assert summary["tasks"]["register"] != "success"
    assert "Dask scheduler tcp://127.0.0.1:9: not reachable" in output
