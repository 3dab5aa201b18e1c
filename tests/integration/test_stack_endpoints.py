"""`make up` serves each model's approved champion (or, without one, its latest approved
deployment) with the real local deployer and model server; an unapproved champion is
never served; `make status` lists the servers and `make down` stops them.

The registry (MLflow, SQLite store) and the governance store are real; the versions are
small LightGBM boosters, approved and released through registry.approvals/governance.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from ops import endpoints, stack
from pipelines.config import Settings
from pipelines.spec import load_spec
from serving.control.deployers.local import _alive
from tests.releases import approve, grant_approvers, record_deployed, register_booster
from tests.support import environ, free_port, registry_stack

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@dataclass
class Registry:
    settings: Settings
    rows: pd.DataFrame
    expected: dict[tuple[str, str], list[float]]  # (model, version) -> scores of `rows`


def _booster(seed: int) -> tuple[lgb.Booster, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"amount": rng.lognormal(3, 1, 800), "hour": rng.integers(0, 24, 800)})
    y = ((frame["amount"] > 30 + seed) & (frame["hour"] < 7)).astype(int)
    booster = lgb.train(
        {"objective": "binary", "verbose": -1, "seed": seed, "num_threads": 1},
        lgb.Dataset(frame, y),
        num_boost_round=8 + seed,
    )
    return booster, frame


def _register(settings: Settings, name: str, seed: int) -> tuple[str, lgb.Booster]:
    booster, _ = _booster(seed)
    return register_booster(settings, booster, name, "endpoints"), booster


def _approve_and_release(
    settings: Settings, name: str, version: str, run_id: str, endpoint: str | None = None
) -> None:
    from registry.mlflow_registry import artifact_sha256_of

    spec = load_spec(ROOT / "specs" / "fraud.yaml").model_copy(update={"name": name})
    sha = artifact_sha256_of(settings.mlflow_tracking_uri, name, version)
    state = approve(settings.governance_url, spec, version, sha, run_id)
    record_deployed(settings.governance_url, state, {"endpoint": endpoint} if endpoint else None)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    from registry.mlflow_registry import set_alias

    env, settings = registry_stack(tmp_path_factory.mktemp("endpoints"))
    settings.mlflow_artifacts.mkdir(parents=True)
    # the stores of this test in os.environ: the deployer passes it to the servers
    with environ(env):
        try:
            grant_approvers(settings.governance_url)
            expected: dict[tuple[str, str], list[float]] = {}
            _, rows = _booster(0)
            rows = rows.head(6)
            # toy_champ: v1 champion, v2 released later (a challenger, recorded at an address
            # nothing answers at any more): the champion is served
            for seed in (1, 2):
                version, booster = _register(settings, "toy_champ", seed)
                gone = f"http://127.0.0.1:{free_port()}" if seed == 2 else None
                _approve_and_release(settings, "toy_champ", version, f"run-{seed}", gone)
                expected["toy_champ", version] = booster.predict(rows).tolist()
            set_alias(settings.mlflow_tracking_uri, "toy_champ", "champion", "1", reason="promoted")
            # toy_new: released, no champion yet: its latest deployment is served
            version, booster = _register(settings, "toy_new", 3)
            _approve_and_release(settings, "toy_new", version, "run-3")
            expected["toy_new", version] = booster.predict(rows).tolist()
            # toy_rogue: someone set the champion alias by hand (MLflow directly, outside
            # govml) on an unapproved version
            _register(settings, "toy_rogue", 4)
            MlflowClient(settings.mlflow_tracking_uri).set_registered_model_alias(
                "toy_rogue", "champion", "1"
            )
            # toy_idle: registered, never approved nor deployed: nothing to say
            _register(settings, "toy_idle", 5)
            yield Registry(settings, rows, expected)
        finally:
            endpoints.stop_models(settings)


def _predict(url: str, model: str, rows: pd.DataFrame, token: str) -> dict:
    body = json.dumps({"instances": rows.to_dict(orient="records")}).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    req = urllib.request.Request(f"{url}/v1/models/{model}:predict", data=body, headers=headers)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def test_up_serves_approved_champions_status_lists_them_down_stops_them(
    registry: Registry,
) -> None:
    from registry.approvals import list_requests
    from registry.audit import events
    from registry.governance import deployments
    from registry.reconcile import recorded_endpoint

    settings = registry.settings
    served = {s.model_name: s for s in endpoints.serve_models(settings)}
    assert set(served) == {"toy_champ", "toy_new", "toy_rogue"}  # toy_idle: not deployed

    champ = served["toy_champ"]
    assert (champ.version, champ.alias) == ("1", "champion")
    assert champ.note == f"toy_champ v1 (champion) serving at {champ.url}"
    new = served["toy_new"]
    assert (new.version, new.alias) == ("1", "challenger")
    assert new.note.startswith("toy_new has no champion yet: serving its most recently")
    rogue = served["toy_rogue"]
    assert rogue.url is None
    assert rogue.note == "toy_rogue: NOT served: no approved version to serve"
    assert rogue.details == (
        "REGISTRY DRIFT: toy_rogue: alias champion is on v1, which has no recorded approval",
    )
    (drift,) = events(settings.governance_url, model_name="toy_rogue", kinds=["registry_drift"])
    assert drift.payload["alias"] == "champion" and drift.model_version == "1"
    # the endpoints recorded are the live ones: v1's (the deploy row had none) is recorded,
    # v2's dead address is cleared
    (gone,) = [
        r["details"]["endpoint"] for r in deployments(settings.governance_url, "toy_champ", "2")
    ]
    assert champ.details == (
        f"endpoint of toy_champ v1 recorded as {champ.url}",
        f"endpoint of toy_champ v2 cleared: {gone} does not answer; not served by make up",
    )
    assert recorded_endpoint(settings.governance_url, "toy_champ", "1") == {
        "url": champ.url,
        "transformer": None,
    }
    assert recorded_endpoint(settings.governance_url, "toy_champ", "2") == {
        "url": None,
        "transformer": None,
    }

    from ops.deploy import service_token

    for item in (champ, new):
        token = service_token(settings, item.model_name, str(item.version))  # the deployment's
        answer = _predict(str(item.url), item.model_name, registry.rows, token)
        assert answer["predictions"] == registry.expected[item.model_name, str(item.version)]
        (request,) = [
            r
            for r in list_requests(settings.governance_url, item.model_name, "approved")
            if r.model_version == item.version
        ]
        assert answer["model_sha256"] == request.artifact_sha256  # the approved file

    rows = {r.name: r for r in stack.status(settings)}
    for name, item in (("toy-champ-v1", champ), ("toy-new-v1", new)):
        row = rows[stack.MODEL_PREFIX + name]
        assert row.running and row.healthy and row.url == item.url
        assert f"POST /v1/models/{item.model_name}:predict" in row.detail
    assert not any("rogue" in name for name in rows)
    pids = [r.pid for r in rows.values() if r.name.startswith(stack.MODEL_PREFIX)]
    assert len(pids) == 2 and all(_alive(pid) for pid in pids)

    # serving again finds them running: the same endpoints, no second server, nothing
    # new in the audit trail (no endpoint change, the same drift)
    seq = events(settings.governance_url)[-1].seq
    again = {s.model_name: s for s in endpoints.serve_models(settings)}
    assert again["toy_champ"].url == champ.url and again["toy_new"].url == new.url
    assert again["toy_champ"].details == ()
    assert events(settings.governance_url)[-1].seq == seq

    assert stack.down(settings) >= 2  # no Airflow/MLflow here: just the model servers
    assert not any(_alive(pid) for pid in pids)
    assert not [r for r in stack.status(settings) if r.name.startswith(stack.MODEL_PREFIX)]


def test_after_down_and_up_the_recorded_endpoint_is_the_live_one(registry: Registry) -> None:
    """Attack 11 (endpoints): after `make down` / `make up` the servers answer at new
    ports; the recorded endpoint follows (``endpoint_reconciled``), so nothing routes to
    a dead address."""
    from registry.audit import events
    from registry.reconcile import recorded_endpoint

    settings = registry.settings
    before = recorded_endpoint(settings.governance_url, "toy_champ", "1")
    assert before is not None and before["url"]
    stack.down(settings)  # `make down` (the test above did too): no model server runs
    assert endpoints.running(settings) == []
    served = {s.model_name: s for s in endpoints.serve_models(settings)}
    try:
        champ = served["toy_champ"]
        assert champ.url and champ.url != before["url"]
        assert champ.details == (f"endpoint of toy_champ v1 recorded as {champ.url}",)
        assert recorded_endpoint(settings.governance_url, "toy_champ", "1")["url"] == champ.url
        moved = events(
            settings.governance_url,
            model_name="toy_champ",
            model_version="1",
            kinds=["endpoint_reconciled"],
        )[-1]
        assert moved.actor == "govml-stack"
        assert (moved.payload["from_url"], moved.payload["to_url"]) == (before["url"], champ.url)
        with urllib.request.urlopen(f"{champ.url}/v2/health/ready", timeout=10) as resp:
            assert resp.status == 200  # the recorded address answers
    finally:
        endpoints.stop_models(settings)


def test_nothing_deployable_is_one_note(tmp_path: Path) -> None:
    _, settings = registry_stack(tmp_path)
    (note,) = endpoints.serve_models(settings)
    assert note.url is None and note.note == "no approved, deployed model version to serve"
