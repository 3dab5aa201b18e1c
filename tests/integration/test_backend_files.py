"""The local and Dask backends write the same files with the same keys.

The whole automated chain (ingest, validate_data, features, train, evaluate, fairness,
explain, gates) runs once per backend on a small generated data set; per stage, both
runs must write the same file list, the same keys in every JSON file (apart from the
keys a backend adds about itself, :data:`pipelines.backends.BACKEND_KEYS`) and the same
columns in every Parquet file. Values are compared by the Dask tests beside this one.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines.backends import BACKEND_KEYS, open_backend
from pipelines.data.fraud import write_fraud
from pipelines.data.fraud_config import FraudConfig
from pipelines.errors import GateFailedError
from pipelines.spec import Compute, ModelSpec, load_spec

pytest.importorskip("distributed")

ROOT = Path(__file__).resolve().parents[2]
ROWS = 8_000
STAGES = ("ingest", "validate_data", "features", "train", "evaluate", "fairness", "explain")
RUN_TIME = re.compile(r"\d{8}T\d{6}\.\d+Z")


def _run_chain(spec: ModelSpec, raw: Path, run_dir: Path, compute: Compute) -> None:
    from pipelines.stages.evaluate import write_evaluation
    from pipelines.stages.fairness import assess_fairness
    from pipelines.stages.gates import check_gates
    from pipelines.stages.train import write_training

    d = {name: run_dir / name for name in (*STAGES, "gates")}
    with open_backend(compute) as backend:
        backend.ingest(spec, raw, d["ingest"])
        data = d["ingest"] / "data.parquet"
        backend.validate_data(spec, data, d["validate_data"])
        backend.build_features(spec, data, d["features"])
        write_training(spec, d["train"], backend.train(spec, d["features"]))
        write_evaluation(spec, d["evaluate"], backend.evaluate(spec, d["features"], d["train"]))
        assess_fairness(spec, d["features"], d["evaluate"], d["fairness"])
        backend.explain(spec, d["features"], d["train"], d["evaluate"], d["explain"])
    # a small model may fail a gate: the files are written all the same
    with contextlib.suppress(GateFailedError):
        check_gates(spec, d["evaluate"], d["fairness"], d["explain"], d["gates"])


def _files(folder: Path) -> list[str]:
    return sorted(
        RUN_TIME.sub("<time>", str(p.relative_to(folder))) for p in folder.rglob("*") if p.is_file()
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = load_spec(ROOT / "specs" / "fraud.yaml")
    spec = base.model_copy(
        update={
            "training": base.training.model_copy(update={"num_boost_round": 40}),
            "data": base.data.model_copy(update={"min_rows": 1_000}),
        }
    )
    folder = tmp_path_factory.mktemp("backend-files")
    manifest = write_fraud(
        FraudConfig(n_rows=ROWS, seed=11, days=5, fraud_rate=0.01), folder / "raw"
    )
    raw = folder / "raw" / f"{manifest.name}.parquet"
    _run_chain(spec, raw, folder / "local", Compute(backend="local"))
    _run_chain(spec, raw, folder / "dask", Compute(backend="dask", workers=2, partition_rows=1_500))
    return folder / "local", folder / "dask"


@pytest.mark.parametrize("stage", [*STAGES, "gates"])
def test_same_files_and_keys(runs: tuple[Path, Path], stage: str) -> None:
    local, dist = runs[0] / stage, runs[1] / stage
    files = _files(local)
    assert files, f"{stage}: the local run wrote nothing"
    assert _files(dist) == files
    for name in files:
        if "<time>" in name:
            continue
        if name.endswith(".json"):
            keys_local = set(json.loads((local / name).read_text()))
            keys_dask = set(json.loads((dist / name).read_text()))
            assert not keys_local & BACKEND_KEYS, (stage, name)
            assert keys_dask - BACKEND_KEYS == keys_local, (stage, name)
        elif name.endswith(".parquet"):
            cols_local = pq.ParquetFile(local / name).schema_arrow.names
            assert pq.ParquetFile(dist / name).schema_arrow.names == cols_local, (stage, name)


def test_dask_marks_its_results(runs: tuple[Path, Path]) -> None:
    for stage in ("ingest", "validate_data", "features", "train", "evaluate", "explain"):
        assert json.loads((runs[1] / stage / "result.json").read_text())["backend"] == "dask"
