"""The KServe model server, started from .venv-serving on loopback, scores exactly
like the booster it loads (protocol V1 and V2), answers bad input with 400 and an
unknown model with 404, and refuses a model file whose SHA-256 is not the approved one."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from serving.token_files import write_records
from serving.token_records import generate_token
from tests.datasets import small_booster
from tests.support import SERVING_PY, free_port, model_server_argv, wait_until

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
# the server answers bearer-token holders only: one client with scope predict
TOKEN, _RECORD = generate_token("core-banking", ["predict"])


def _post(url: str, body: object) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    req = urllib.request.Request(url, data=data, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(0)
    n = 2000
    frame = pd.DataFrame(
        {
            "amount": rng.lognormal(3, 1, n),
            "distance_km": rng.exponential(10, n),
            "channel": pd.Categorical(
                rng.choice(["card_present", "online"], n), categories=["card_present", "online"]
            ),
        }
    )
    y = ((frame["amount"] > 60) & (frame["channel"] == "online")).astype(int)
    folder = tmp_path_factory.mktemp("model")
    booster = small_booster(frame, y, 20, folder)
    write_records(folder.parent / f"{folder.name}-tokens.json", [_RECORD])
    rows = frame.head(25).reset_index(drop=True)
    expected = booster.predict(rows)
    return folder, rows, expected


def _start(
    folder: Path, port: int, *extra: str, env: dict[str, str] | None = None
) -> subprocess.Popen:
    tokens = folder.parent / f"{folder.name}-tokens.json"
    return subprocess.Popen(
        model_server_argv(
            "fraud", folder, port, "--enable_grpc", "false", "--tokens", str(tokens), *extra
        ),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


@pytest.fixture(scope="module")
def server(
    trained: tuple[Path, pd.DataFrame, np.ndarray], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    folder, _, _ = trained
    port = free_port()
    digest = hashlib.sha256((folder / "model.txt").read_bytes()).hexdigest()
    # batches on the compiled model (serving.compiled), built ahead as at deploy time
    cache = tmp_path_factory.mktemp("compiled")
    env = {**os.environ, "GOVML_COMPILED": "1", "GOVML_COMPILED_CACHE": str(cache)}
    warm = subprocess.run(
        [str(SERVING_PY), "-m", "serving.compiled", "warm", str(folder / "model.txt")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert warm.returncode == 0, warm.stderr[-2000:]
    proc = _start(folder, port, "--expected_sha256", digest, env=env)
    base = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            with urllib.request.urlopen(f"{base}/v1/models/fraud", timeout=1) as resp:
                return bool(json.loads(resp.read()).get("ready"))

        wait_until(ready, 60, "the model server to be ready", interval=0.3)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _assert_v1_scores_are_the_boosters(server: str, trained) -> None:  # noqa: ANN001
    _, rows, expected = trained
    instances = [{**r, "channel": str(r["channel"])} for r in rows.to_dict(orient="records")]
    code, body = _post(f"{server}/v1/models/fraud:predict", {"instances": instances})
    assert code == 200, body
    assert body["predictions"] == expected.tolist()


def test_v1_scores_match_the_booster_exactly(server: str, trained) -> None:  # noqa: ANN001
    _assert_v1_scores_are_the_boosters(server, trained)


def test_batches_run_on_the_compiled_model_bit_for_bit(server: str, trained) -> None:  # noqa: ANN001
    ready = 'govml_compiled_scorer_ready{model="fraud"} 1.0'

    def compiled() -> bool:
        with urllib.request.urlopen(f"{server}/metrics", timeout=5) as resp:
            return ready in resp.read().decode()

    # loaded from the warmed cache in well under a second
    wait_until(compiled, 60, "the compiled model to be ready (/metrics)", interval=0.2)
    _assert_v1_scores_are_the_boosters(server, trained)


def test_v2_infer_matches_too(server: str, trained) -> None:  # noqa: ANN001
    _, rows, expected = trained
    inputs = [
        {
            "name": "amount",
            "shape": [len(rows)],
            "datatype": "FP64",
            "data": rows["amount"].tolist(),
        },
        {
            "name": "distance_km",
            "shape": [len(rows)],
            "datatype": "FP64",
            "data": rows["distance_km"].tolist(),
        },
        {
            "name": "channel",
            "shape": [len(rows)],
            "datatype": "BYTES",
            "data": [str(c) for c in rows["channel"]],
        },
    ]
    code, body = _post(f"{server}/v2/models/fraud/infer", {"inputs": inputs})
    assert code == 200, body
    assert body["outputs"][0]["data"] == expected.tolist()


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"instances": [{"amount": 1.0, "channel": "online"}]}, "distance_km"),
        ({"instances": [{"amount": "lots", "distance_km": 1, "channel": "online"}]}, "amount"),
        ({"instances": [{"amount": 1, "distance_km": 1, "channel": "atm"}]}, "channel"),
        ({"instances": []}, "instances"),
        ({"rows": []}, "instances"),
        (b"{not json", ""),
    ],
)
def test_bad_input_is_400_never_500(server: str, body: object, needle: str) -> None:
    code, answer = _post(f"{server}/v1/models/fraud:predict", body)
    assert code == 400, answer
    assert needle in json.dumps(answer)


def test_unknown_model_is_404(server: str) -> None:
    code, _ = _post(f"{server}/v1/models/credit:predict", {"instances": [[1, 2, "online"]]})
    assert code == 404


def test_changed_artifact_is_refused(trained, tmp_path: Path) -> None:  # noqa: ANN001
    folder, _, _ = trained
    proc = _start(folder, free_port(), "--expected_sha256", "0" * 64)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "does not match the approved" in out
