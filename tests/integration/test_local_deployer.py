"""The local deployer: a supervised KServe model server per version, on loopback.

It serves the booster's exact scores once ready; a killed server is restarted by its
supervisor; stopping leaves no process; an artifact whose SHA-256 is not the release's
is refused (the deployment fails with the server's reason and nothing keeps running).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
import urllib.request
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from pipelines.errors import DeploymentError
from serving.deployers import Release
from serving.deployers.local import LocalDeployer, _alive

ROOT = Path(__file__).resolve().parents[2]
SERVING_PY = ROOT / ".venv-serving" / "bin" / "python"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame, np.ndarray, str]:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"amount": rng.lognormal(3, 1, 1500), "hour": rng.integers(0, 24, 1500)})
    y = ((frame["amount"] > 40) & (frame["hour"] < 6)).astype(int)
    booster = lgb.train(
        {"objective": "binary", "verbose": -1, "seed": 1, "num_threads": 1},
        lgb.Dataset(frame, y),
        num_boost_round=15,
    )
    folder = tmp_path_factory.mktemp("model")
    booster.save_model(str(folder / "model.txt"))
    digest = hashlib.sha256((folder / "model.txt").read_bytes()).hexdigest()
    rows = frame.head(10)
    return folder, rows, booster.predict(rows), digest


def _predict(url: str, rows: pd.DataFrame) -> list[float]:
    body = json.dumps({"instances": rows.to_dict(orient="records")}).encode()
    req = urllib.request.Request(
        f"{url}/v1/models/fraud:predict", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())["predictions"]


def test_deploy_serves_restarts_after_a_crash_and_stops_cleanly(model, tmp_path: Path) -> None:  # noqa: ANN001
    folder, rows, expected, digest = model
    deployer = LocalDeployer(tmp_path / "serving", SERVING_PY, env=dict(os.environ))
    release = Release("fraud", "4", str(folder), digest)
    endpoint = deployer.deploy(release)
    try:
        assert _predict(endpoint.url, rows) == expected.tolist()
        # deploying the same release again finds it running: no second server
        again = deployer.deploy(release)
        assert again.url == endpoint.url
        status = deployer.status(release.name)
        first_pid = status["server_pid"]
        os.kill(first_pid, signal.SIGKILL)  # the server dies
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            status = deployer.status(release.name)
            if status["restarts"] >= 1 and status["server_pid"] not in (None, first_pid):
                try:
                    if _predict(endpoint.url, rows) == expected.tolist():
                        break
                except OSError:
                    pass
            time.sleep(0.5)
        else:
            pytest.fail(f"server not restarted: {status}")
        assert status["running"] and status["restarts"] == 1
    finally:
        assert deployer.stop(release.name)
    status = deployer.status(release.name)
    assert not status["running"]
    assert not _alive(status["server_pid"])
    assert deployer.deployed() == ["fraud-v4"]


def test_an_artifact_that_is_not_the_approved_one_is_refused(model, tmp_path: Path) -> None:  # noqa: ANN001
    folder, _, _, digest = model
    deployer = LocalDeployer(tmp_path / "serving", SERVING_PY, env=dict(os.environ))
    release = Release("fraud", "5", str(folder), "0" * 64)
    with pytest.raises(DeploymentError, match="does not match the approved"):
        deployer.deploy(release)
    status = deployer.status(release.name)
    assert not status["running"]
    assert status["last_exit_code"] == 3
