"""The local deployer: a supervised KServe model server per version, on loopback.

It serves the booster's exact scores once ready, to holders of the deployment's own
token only; a killed server is restarted by its supervisor; stopping leaves no process;
an artifact whose SHA-256 is not the release's is refused (the deployment fails with
the server's reason and nothing keeps running).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.errors import DeploymentError
from serving.control.deployers import Release
from serving.control.deployers.local import LocalDeployer, _alive
from serving.token_files import read_token
from tests.datasets import small_booster
from tests.support import SERVING_PY, wait_until

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame, np.ndarray, str]:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"amount": rng.lognormal(3, 1, 1500), "hour": rng.integers(0, 24, 1500)})
    y = ((frame["amount"] > 40) & (frame["hour"] < 6)).astype(int)
    folder = tmp_path_factory.mktemp("model")
    booster = small_booster(frame, y, 15, folder)
    digest = hashlib.sha256((folder / "model.txt").read_bytes()).hexdigest()
    rows = frame.head(10)
    return folder, rows, booster.predict(rows), digest


def _predict(url: str, rows: pd.DataFrame, token: str) -> list[float]:
    body = json.dumps({"instances": rows.to_dict(orient="records")}).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    req = urllib.request.Request(f"{url}/v1/models/fraud:predict", data=body, headers=headers)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())["predictions"]


def test_deploy_serves_restarts_after_a_crash_and_stops_cleanly(model, tmp_path: Path) -> None:  # noqa: ANN001
    folder, rows, expected, digest = model
    deployer = LocalDeployer(tmp_path / "serving", SERVING_PY, env=dict(os.environ))
    release = Release("fraud", "4", str(folder), digest)
    endpoint = deployer.deploy(release)
    try:
        token_file = Path(endpoint.details["token_file"])
        assert token_file == tmp_path / "serving" / "fraud-v4" / "service.token"
        for path in (token_file, token_file.with_name("tokens.json")):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
        token = read_token(token_file)
        assert endpoint.url.startswith("http://127.0.0.1:")
        assert _predict(endpoint.url, rows, token) == expected.tolist()
        with pytest.raises(urllib.error.HTTPError) as refused:
            _predict(endpoint.url, rows, "gml_not-the-token")
        assert refused.value.code == 401
        # deploying the same release again finds it running: no second server, same token
        again = deployer.deploy(release)
        assert again.url == endpoint.url and read_token(token_file) == token
        status = deployer.status(release.name)
        first_pid = status["server_pid"]
        os.kill(first_pid, signal.SIGKILL)  # the server dies

        def restarted() -> bool:
            status = deployer.status(release.name)
            return (
                status["restarts"] >= 1
                and status["server_pid"] not in (None, first_pid)
                and _predict(endpoint.url, rows, token) == expected.tolist()
            )

        wait_until(restarted, 90, "the supervisor to restart the killed server", interval=0.5)
        status = deployer.status(release.name)
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


def test_a_running_server_without_tokens_is_replaced_never_reused(model, tmp_path: Path) -> None:  # noqa: ANN001
    """A server left running from before tokens were enforced (its supervisor's command
    has no --tokens) is restarted by the next deploy of the same release, not reused."""
    folder, rows, expected, digest = model
    deployer = LocalDeployer(tmp_path / "serving", SERVING_PY, env=dict(os.environ))
    release = Release("fraud", "6", str(folder), digest)
    first = deployer.deploy(release)
    try:
        state_file = tmp_path / "serving" / "fraud-v6" / "supervisor.json"
        state = json.loads(state_file.read_text())
        old_pid = state["supervisor_pid"]
        at = state["command"].index("--tokens")
        state["command"] = state["command"][:at] + state["command"][at + 2 :]  # as if open
        state_file.write_text(json.dumps(state))
        again = deployer.deploy(release)
        assert deployer.status(release.name)["supervisor_pid"] != old_pid
        assert not _alive(old_pid)
        token = read_token(again.details["token_file"])
        assert _predict(again.url, rows, token) == expected.tolist()
        assert first.details["token_file"] == again.details["token_file"]
    finally:
        deployer.stop(release.name)
