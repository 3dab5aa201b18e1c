"""The German Credit model trained by the real pipeline stages, and a model server for
it (python -m serving, .venv-serving) on loopback with its spec, bearer tokens and a
prediction log: shared by tests/integration/test_model_server_strict.py and the serving
tests in tests/security/ (the model is trained once a session: the ``german_credit_model``
fixture of tests/conftest.py)."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.datasets import json_records, spec_of, with_training, write_ingest
from tests.support import (
    GERMAN_CREDIT,
    REPO,
    free_port,
    start_model_server,
    stop_model_server,
    wait_model_ready,
)


def german_credit_features(root: Path, rounds: int, data: Any = None) -> Any:
    """The German Credit spec trained in ``rounds`` boosting rounds (none stopped early),
    its data (the real data set unless ``data`` is given) ingested in ``root/ingest`` and
    its features built in ``root/features`` by the real stages: the spec."""
    from pipelines.data.german_credit import load_german_credit
    from pipelines.stages.features import build_features

    spec = with_training(
        spec_of(GERMAN_CREDIT), num_boost_round=rounds, early_stopping_rounds=rounds
    )
    source = load_german_credit() if data is None else data
    build_features(spec, write_ingest(spec, source, root / "ingest"), root / "features")
    return spec


def trained(spec: Any, root: Path, out: Path) -> Any:
    """``spec``'s model trained by the real training stage on the features in
    ``root/features`` (:func:`german_credit_features`), written to ``out``: the booster."""
    from pipelines.stages.train import train
    from pipelines.training import load_model

    train(spec, root / "features", out)
    return load_model(out / "model.txt")


def train_german_credit(root: Path) -> Any:
    """The German Credit model trained by the real pipeline stages (features, training),
    60 rounds: ``spec``, ``booster``, ``test`` (the test split), ``rows`` (its model
    features as JSON records), ``model_dir``, ``sha256``."""
    import hashlib
    from types import SimpleNamespace

    from pipelines.features import read_split

    spec = german_credit_features(root, 60)
    booster = trained(spec, root, root / "train")
    test = read_split(spec, root / "features", "test")
    rows = json_records(test[list(booster.feature_name())])
    digest = hashlib.sha256((root / "train" / "model.txt").read_bytes()).hexdigest()
    return SimpleNamespace(
        spec=spec, booster=booster, test=test, rows=rows, model_dir=root / "train", sha256=digest
    )


def complete_rows(trained: Any) -> dict[str, list]:
    """``names`` (the model's features, in its order) and ``rows``: the rows of
    ``trained`` (:func:`train_german_credit`) without a missing value."""
    return {
        "names": list(trained.booster.feature_name()),
        "rows": [r for r in trained.rows if all(v is not None for v in r.values())],
    }


@dataclass(frozen=True)
class ServedModel:
    """A model server of :func:`served_german_credit`: its base URL and process, the two
    clients' tokens, its prediction log folder, its output, environment and version."""

    base: str
    proc: subprocess.Popen
    token: str
    explain_token: str
    log_dir: Path
    server_log: Path
    env: dict[str, str]
    version: str


@contextlib.contextmanager
def served_german_credit(
    root: Path, trained: Any, *, version: str = "7", max_body_bytes: int = 200_000
) -> Iterator[ServedModel]:
    """A ready model server for ``trained`` (:func:`train_german_credit`) on a free
    loopback port while the context is open: strict input (the spec), the approved
    SHA-256, version ``version``, a JSONL prediction log in ``root/predictions`` and two
    clients, ``core-banking`` (scope predict: ``token``) and ``dashboards`` (scope
    explain: ``explain_token``), their records in ``root/tokens.json``. Stopped (SIGTERM:
    it completes its prediction log) when the context closes."""
    import os

    from serving.token_files import write_records
    from serving.token_records import generate_token

    predict_token, predict_record = generate_token("core-banking", ["predict"])
    explain_token, explain_record = generate_token("dashboards", ["explain"])
    tokens = root / "tokens.json"
    write_records(tokens, [predict_record, explain_record])
    port = free_port()
    env = dict(os.environ) | {"GOVML_PREDICTION_LOG_KEY": "k" * 32}
    log = root / "server.log"
    proc = start_model_server(
        env,
        log,
        "--model_name", GERMAN_CREDIT,
        "--model_uri", str(trained.model_dir),
        "--expected_sha256", trained.sha256,
        "--spec", str(REPO / "specs" / f"{GERMAN_CREDIT}.yaml"),
        "--model_version", version,
        "--prediction_log", str(root / "predictions"),
        "--prediction_log_format", "jsonl",
        "--tokens", str(tokens),
        "--max_body_bytes", str(max_body_bytes),
        "--http_port", str(port),
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        wait_model_ready(base, GERMAN_CREDIT, proc, log)
        yield ServedModel(
            base, proc, predict_token, explain_token, root / "predictions", log, env, version
        )
    finally:
        stop_model_server(proc)
