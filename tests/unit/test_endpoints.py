"""`make up` serves a version the way its deploy step did: the feature transformer of a
spec with aggregates comes back with the same store (and, for the in-process store,
the same warm-up history; without that file the version is not served, and the report
says why)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from ops.endpoints import _features_of_last_deploy
from pipelines.errors import GovMLError


def _deployed(root: Path, name: str, **release: object) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "release.json").write_text(json.dumps({"model_name": "fraud", **release}))


def test_the_last_deploy_gives_the_transformer_back(tmp_path: Path) -> None:
    history = tmp_path / "data.parquet"
    history.write_bytes(b"PAR1")
    deployer = SimpleNamespace(state_root=tmp_path)
    _deployed(tmp_path, "fraud-v3", feature_store="memory", history=str(history))
    _deployed(tmp_path, "fraud-v4", feature_store="redis://127.0.0.1:6379/0", history=None)
    _deployed(tmp_path, "fraud-v5", feature_store="memory", history=str(tmp_path / "gone"))
    _deployed(tmp_path, "credit-v1", feature_store=None, history=None)
    assert _features_of_last_deploy(deployer, "fraud", "3") == {
        "feature_store": "memory",
        "history": str(history),
    }
    assert _features_of_last_deploy(deployer, "fraud", "4")["feature_store"].startswith("redis")
    # the history is gone: no warm state to serve from; said, not served half-way
    with pytest.raises(GovMLError, match="gone: deploy the version again"):
        _features_of_last_deploy(deployer, "fraud", "5")
    assert _features_of_last_deploy(deployer, "credit", "1") == {}
    assert _features_of_last_deploy(deployer, "fraud", "9") == {}  # never deployed here
    assert _features_of_last_deploy(SimpleNamespace(), "fraud", "3") == {}  # Kubernetes
