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

from pipelines import backends as b
from pipelines.backends import BACKEND_KEYS, open_backend
from pipelines.data.fraud_config import FraudConfig
from pipelines.errors import GateFailedError
from pipelines.spec import Compute, ModelSpec, load_spec
from tests.datasets import local_and_dask, raw_fraud_file

pytest.importorskip("distributed")

ROOT = Path(__file__).resolve().parents[2]
ROWS = 8_000
STAGES = ("ingest", "validate_data", "features", "train", "evaluate", "fairness", "explain")
RUN_TIME = re.compile(r"\d{8}T\d{6}\.\d+Z")


def _run_chain(spec: ModelSpec, raw: Path, run_dir: Path, compute: Compute) -> None:
    from pipelines.evaluation import EvaluateInputs
    from pipelines.features import FeaturesInputs
    from pipelines.ingest import IngestInputs
    from pipelines.stages import evaluate, explain, features, ingest, train, validate_data
    from pipelines.stages.fairness import assess_fairness
    from pipelines.stages.gates import check_gates
    from pipelines.training import TrainInputs
    from validation.data_quality import ValidateInputs
    from validation.explain import ExplainInputs
    from validation.fairness import FairnessInputs
    from validation.gates import GateInputs

    d = {name: run_dir / name for name in (*STAGES, "gates")}
    data = d["ingest"] / "data.parquet"
    with open_backend(compute) as backend:
        ingest.write_ingest(
            spec, d["ingest"], backend.run(b.INGEST, spec, IngestInputs(raw, d["ingest"]))
        )
        checked = backend.run(b.VALIDATE_DATA, spec, ValidateInputs(data, d["validate_data"]))
        validate_data.write_validation(spec, d["validate_data"], checked)
        tables = backend.run(b.FEATURES, spec, FeaturesInputs(data, d["features"]))
        features.write_features(spec, tables)
        train.write_training(
            spec, d["train"], backend.run(b.TRAIN, spec, TrainInputs(d["features"]))
        )
        scored = backend.run(b.EVALUATE, spec, EvaluateInputs(d["features"], d["train"]))
        evaluate.write_evaluation(spec, d["evaluate"], scored)
        assess_fairness(spec, FairnessInputs(d["features"], d["evaluate"]), d["fairness"])
        found = backend.run(
            b.EXPLAIN, spec, ExplainInputs(d["features"], d["train"], d["evaluate"])
        )
        explain.write_explanation(spec, d["explain"], found)
    # a small model may fail a gate: the files are written all the same
    with contextlib.suppress(GateFailedError):
        gate_inputs = GateInputs(d["evaluate"], d["fairness"], d["explain"])
        check_gates(spec, gate_inputs, d["gates"])


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
    raw = raw_fraud_file(folder / "raw", FraudConfig(n_rows=ROWS, seed=11, days=5, fraud_rate=0.01))
    dask = Compute(backend="dask", workers=2, partition_rows=1_500)
    return local_and_dask(
        folder,
        lambda out: _run_chain(spec, raw, out, Compute(backend="local")),
        lambda out: _run_chain(spec, raw, out, dask),
    )


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
