"""Attack 2 of issue 21: the MLflow registry took anonymous writes, and a ``champion`` set
on an unapproved version took the approved model offline at the next ``make up``.

A real MLflow server with the basic-auth app (``ops.stack.up(only=["mlflow"])``, free
port, tmp folder), its permission store on SQLite and on PostgreSQL:

- anonymous set-alias, register-version, artifact PUT and delete-version each get 401
  and change nothing (aliases, versions, the model file on disk);
- a reviewer (an Airflow user) reads, and gets 403 on each write; a model the reviewer
  created is no longer theirs to write after the next start;
- the ``govml`` service account writes; each alias move is an ``alias_moved`` event;
- the MLflow admin (outside govml) sets ``champion`` on an unapproved version, moves it,
  or replaces an approved artifact: ``govml registry check`` names the drift (exit 6),
  records one ``registry_drift`` event and sends one alert, however often it runs; and
  ``make up``'s serving (``ops.endpoints.serve_models`` with the real local deployer and
  model server) keeps serving the approved version.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import requests

from ops import endpoints, stack
from pipelines.config import Settings, load_settings
from pipelines.spec import load_spec
from tests.releases import approve, grant_approvers, log_lightgbm, record_deployed
from tests.support import free_port, stack_env

ROOT = Path(__file__).resolve().parents[2]
MODEL = "toy_locked"
pytestmark = pytest.mark.slow

NOT_AUTHENTICATED = (
    "You are not authenticated. Please see "
    "https://www.mlflow.org/docs/latest/auth/index.html#authenticating-to-mlflow "
    "on how to authenticate."
)


@dataclass
class Locked:
    settings: Settings
    env: dict[str, str]
    admin: tuple[str, str]
    reviewer: tuple[str, str]
    model_dir: str  # v1's model folder in the artifact store (mlflow-artifacts path)
    v2_source: str
    v2_run: str
    rows: pd.DataFrame
    alerts: list[dict[str, Any]]


# --------------------------------------------------------------------------- helpers
def _booster(seed: int) -> lgb.Booster:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"amount": rng.lognormal(3, 1, 600), "hour": rng.integers(0, 24, 600)})
    y = ((frame["amount"] > 25 + seed) & (frame["hour"] < 8)).astype(int)
    params = {"objective": "binary", "verbose": -1, "seed": seed, "num_threads": 1}
    return lgb.train(params, lgb.Dataset(frame, y), num_boost_round=6 + seed)


def _register(settings: Settings, seed: int) -> Any:
    """A version registered by the service account (the client logs in from its file)."""
    import mlflow

    from registry.mlflow_registry import registered_models

    uri = settings.mlflow_tracking_uri
    registered_models(uri)  # any registry call logs the process in as `govml`
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    mlflow.set_experiment("locked")
    with mlflow.start_run():
        info = log_lightgbm(_booster(seed))
    return mlflow.register_model(info.model_uri, MODEL)


def _approve_and_release(settings: Settings, version: str) -> None:
    """Approved by two people and released by the deploy step (alias challenger, audited)."""
    from registry.mlflow_registry import CHALLENGER, artifact_sha256_of, set_alias

    spec = load_spec(ROOT / "specs" / "fraud.yaml").model_copy(update={"name": MODEL})
    sha = artifact_sha256_of(settings.mlflow_tracking_uri, MODEL, version)
    state = approve(settings.governance_url, spec, version, sha)
    set_alias(settings.mlflow_tracking_uri, MODEL, CHALLENGER, version, reason="released")
    record_deployed(settings.governance_url, state, {"alias": CHALLENGER})


def _rest(locked: Locked, method: str, path: str, auth: Any = None, **kw: Any) -> tuple[int, str]:
    resp = requests.request(method, locked.settings.mlflow_url + path, auth=auth, timeout=60, **kw)
    return resp.status_code, resp.text


def _state(locked: Locked) -> dict[str, Any]:
    """Aliases, versions and v1's model file as they are (read as the admin, and from disk)."""
    code, body = _rest(
        locked, "GET", "/api/2.0/mlflow/registered-models/get", locked.admin,
        params={"name": MODEL},
    )  # fmt: skip
    assert code == 200, body
    model = json.loads(body)["registered_model"]
    code, body = _rest(
        locked, "GET", "/api/2.0/mlflow/model-versions/search", locked.admin,
        params={"filter": f"name='{MODEL}'"},
    )  # fmt: skip
    assert code == 200, body
    on_disk = locked.settings.mlflow_artifacts / locked.model_dir / "model.lgb"
    return {
        "aliases": {a["alias"]: a["version"] for a in model.get("aliases", [])},
        "versions": sorted(v["version"] for v in json.loads(body)["model_versions"]),
        "model.lgb": hashlib.sha256(on_disk.read_bytes()).hexdigest(),
    }


def _writes(locked: Locked) -> list[tuple[str, str, str, dict[str, Any]]]:
    """The four writes of the attack: (what, method, path, request kwargs)."""
    return [
        (
            "set alias",
            "POST",
            "/api/2.0/mlflow/registered-models/alias",
            {"json": {"name": MODEL, "alias": "champion", "version": "2"}},
        ),
        (
            "register version",
            "POST",
            "/api/2.0/mlflow/model-versions/create",
            {"json": {"name": MODEL, "source": locked.v2_source, "run_id": locked.v2_run}},
        ),
        (
            "artifact PUT",
            "PUT",
            f"/api/2.0/mlflow-artifacts/artifacts/{locked.model_dir}/model.lgb",
            {"data": b"tree\nnot the approved model\n"},
        ),
        (
            "delete version",
            "DELETE",
            "/api/2.0/mlflow/model-versions/delete",
            {"json": {"name": MODEL, "version": "1"}},
        ),
    ]


def _events(locked: Locked, kind: str) -> list[Any]:
    from registry.audit import events

    return events(locked.settings.governance_url, model_name=MODEL, kinds=[kind])


def _check(locked: Locked) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(ROOT / ".venv" / "bin" / "govml"), "registry", "check"],
        cwd=ROOT, env=locked.env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


class _Webhook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]]

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return


# --------------------------------------------------------------------------- the stack
@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def locked(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Locked]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from registry.mlflow_auth import admin_file

    var = tmp_path_factory.mktemp(f"locked-{request.param}") / "var"
    extra: dict[str, str] = {}
    pg_name = None
    if request.param == "postgresql":
        admin_url = request.getfixturevalue("pg_admin_url")
        pg_name = f"govml_test_{uuid.uuid4().hex[:10]}"
        extra["GOVML_MLFLOW_AUTH_DB_URL"] = (
            make_url(admin_url).set(database=pg_name).render_as_string(hide_password=False)
        )
    received: list[dict[str, Any]] = []
    handler = type("Hook", (_Webhook,), {"received": received})
    hook = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    extra["GOVML_ALERT_WEBHOOK"] = f"http://127.0.0.1:{hook.server_address[1]}/alerts"
    env = stack_env(var, **extra)
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    settings = load_settings(env)
    try:
        stack.up(settings, only=["mlflow"])
        admin_data = json.loads(admin_file(settings.var_dir).read_text())
        reviewer = ("reviewer", stack.airflow_passwords(settings)["reviewer"])
        v1 = _register(settings, 1)
        v2 = _register(settings, 2)
        grant_approvers(settings.governance_url)
        _approve_and_release(settings, str(v1.version))
        from registry.mlflow_registry import serving_uri

        folder = serving_uri(settings.mlflow_tracking_uri, MODEL, str(v1.version))
        yield Locked(
            settings=settings,
            env=env,
            admin=(admin_data["username"], admin_data["password"]),
            reviewer=reviewer,
            model_dir=str(Path(folder).relative_to(settings.mlflow_artifacts)),
            v2_source=v2.source,
            v2_run=v2.run_id,
            rows=pd.DataFrame({"amount": [5.0, 80.0, 300.0], "hour": [3, 4, 15]}),
            alerts=received,
        )
    finally:
        stack.down(settings)
        hook.shutdown()
        os.environ.clear()
        os.environ.update(saved)
        if pg_name is not None:
            from registry.store import dispose_engines

            dispose_engines()
            engine = create_engine(
                request.getfixturevalue("pg_admin_url"), isolation_level="AUTOCOMMIT"
            )
            with engine.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)'))
            engine.dispose()


# --------------------------------------------------------------------------- the attack
def test_the_permission_store_holds_the_accounts_where_the_setting_says(locked: Locked) -> None:
    from sqlalchemy import create_engine, text

    from registry.databases import normalise_url

    settings = locked.settings
    engine = create_engine(normalise_url(settings.mlflow_auth_db_url))
    with engine.connect() as conn:
        users = dict(conn.execute(text("SELECT username, is_admin FROM users")).all())
    engine.dispose()
    people = {user for user, _ in settings.airflow_users}
    assert users == {"govml-admin": True, "govml": False} | dict.fromkeys(people, False)
    on_sqlite = settings.mlflow_auth_db_url.startswith("sqlite")
    assert (settings.var_dir / "mlflow" / "auth" / "basic_auth.db").exists() == on_sqlite
    for name in ("admin.json", "service.json", "basic_auth.ini"):
        assert (settings.var_dir / "mlflow" / "auth" / name).stat().st_mode & 0o777 == 0o600


def test_anonymous_writes_get_401_and_change_nothing(locked: Locked) -> None:
    before = _state(locked)
    assert before["aliases"] == {"challenger": "1"} and before["versions"] == ["1", "2"]
    for what, method, path, kw in _writes(locked):
        code, body = _rest(locked, method, path, **kw)
        assert (what, code, body) == (what, 401, NOT_AUTHENTICATED)
    assert _state(locked) == before
    # reads too; only the health check and the UI's static files are open
    code, _ = _rest(locked, "GET", "/api/2.0/mlflow/registered-models/get", params={"name": MODEL})
    assert code == 401
    assert _rest(locked, "GET", "/health")[0] == 200
    assert _rest(locked, "GET", "/static-files/index.html")[0] == 200


def test_a_reviewer_reads_and_gets_403_on_every_write(locked: Locked) -> None:
    before = _state(locked)
    code, body = _rest(
        locked, "GET", "/api/2.0/mlflow/registered-models/get", locked.reviewer,
        params={"name": MODEL},
    )  # fmt: skip
    assert code == 200 and json.loads(body)["registered_model"]["name"] == MODEL
    code, body = _rest(
        locked, "GET", "/model-versions/get-artifact", locked.reviewer,
        params={"name": MODEL, "version": "1", "path": "MLmodel"},
    )  # fmt: skip
    assert code == 200 and "lightgbm" in body
    for what, method, path, kw in _writes(locked):
        code, body = _rest(locked, method, path, locked.reviewer, **kw)
        assert (what, code, body) == (what, 403, "Permission denied")
    assert _state(locked) == before

    # MLflow lets any login create a model, and makes its creator its manager; at the
    # next start the reviewer is a reader again, there as everywhere
    new = f"{MODEL}_by_reviewer"
    create = {"json": {"name": new}}
    assert (
        _rest(
            locked, "POST", "/api/2.0/mlflow/registered-models/create", locked.reviewer, **create
        )[0]
        == 200
    )
    tag = {"json": {"name": new, "key": "owner", "value": "reviewer"}}
    assert (
        _rest(locked, "POST", "/api/2.0/mlflow/registered-models/set-tag", locked.reviewer, **tag)[
            0
        ]
        == 200
    )
    stack.provision_mlflow(locked.settings)
    code, body = _rest(
        locked, "POST", "/api/2.0/mlflow/registered-models/set-tag", locked.reviewer, **tag
    )
    assert (code, body) == (403, "Permission denied")
    assert (
        _rest(locked, "DELETE", "/api/2.0/mlflow/registered-models/delete", locked.admin, **create)[
            0
        ]
        == 200
    )


def test_the_service_account_writes_and_each_alias_move_is_audited(locked: Locked) -> None:
    from registry.mlflow_registry import CANDIDATE, artifact_sha256_of, set_alias, tag_version

    uri = locked.settings.mlflow_tracking_uri
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "govml"  # from the 0600 file
    tag_version(uri, MODEL, "2", {"gates.passed": "true"})
    assert set_alias(uri, MODEL, CANDIDATE, "2", reason="passed the gates") is True
    assert set_alias(uri, MODEL, CANDIDATE, "2", reason="again") is False  # no move, no event
    moved = [e for e in _events(locked, "alias_moved") if e.payload["alias"] == CANDIDATE]
    assert len(moved) == 1
    assert moved[0].model_version == "2" and moved[0].actor == "govml"
    assert moved[0].payload == {
        "alias": CANDIDATE,
        "from_version": None,
        "to_version": "2",
        "artifact_sha256": artifact_sha256_of(uri, MODEL, "2"),
        "reason": "passed the gates",
        "account": "govml",
    }
    assert _state(locked)["aliases"] == {"challenger": "1", "candidate": "2"}


def test_a_champion_set_outside_govml_is_drift_and_the_approved_version_stays_served(
    locked: Locked,
) -> None:
    from ops.deploy import service_token
    from registry.approvals import list_requests

    # the attack, by the one account that still can: MLflow's admin, outside govml
    body = {"json": {"name": MODEL, "alias": "champion", "version": "2"}}
    assert (
        _rest(locked, "POST", "/api/2.0/mlflow/registered-models/alias", locked.admin, **body)[0]
        == 200
    )

    drift = "toy_locked: alias champion is on v2, which has no recorded approval"
    for _ in range(2):  # a second check finds the same drift: no second event, no alert
        result = _check(locked)
        assert result.returncode == 6, result.stdout + result.stderr
        assert f"DRIFT {drift}\n" in result.stdout
        assert "      toy_locked: v1 stays served (the last approved version)\n" in result.stdout
        assert result.stderr.strip().splitlines()[-1] == (
            "error: registry drift: 1 finding(s) in toy_locked; recorded as registry_drift "
            "and alerted; the last approved versions stay served"
        )
    (event,) = _events(locked, "registry_drift")
    assert event.model_version == "2" and event.actor == "govml-registry-check"
    assert event.payload["message"] == drift
    assert (event.payload["alias"], event.payload["expected_version"]) == ("champion", None)
    (alert,) = locked.alerts
    assert alert["kind"] == "registry_drift" and alert["severity"] == "alarm"
    assert alert["message"] == f"{drift}; v1 stays served"

    # `make up`: the approved version is served, never the champion alias's
    served = {s.model_name: s for s in endpoints.serve_models(locked.settings)}[MODEL]
    assert (served.version, served.alias) == ("1", "challenger")
    assert served.note == (
        "toy_locked has no champion yet: serving its most recently deployed approved "
        f"version v1 (challenger) at {served.url}"
    )
    assert f"REGISTRY DRIFT: {drift}" in served.details
    answer = requests.post(
        f"{served.url}/v1/models/{MODEL}:predict",
        json={"instances": locked.rows.to_dict(orient="records")},
        headers={"Authorization": f"Bearer {service_token(locked.settings, MODEL, '1')}"},
        timeout=30,
    ).json()
    (request,) = list_requests(locked.settings.governance_url, MODEL)
    assert answer["model_sha256"] == request.artifact_sha256
    assert len(_events(locked, "registry_drift")) == 1 and len(locked.alerts) == 1

    # the admin takes the alias away again: the registry agrees with the chain
    delete = {"json": {"name": MODEL, "alias": "champion"}}
    assert (
        _rest(locked, "DELETE", "/api/2.0/mlflow/registered-models/alias", locked.admin, **delete)[
            0
        ]
        == 200
    )
    result = _check(locked)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok    toy_locked: candidate v2, challenger v1; serving v1 (challenger)" in result.stdout


def test_a_champion_moved_or_an_artifact_replaced_outside_govml_keeps_the_approved_one(
    locked: Locked,
) -> None:
    from registry.mlflow_registry import CHAMPION, set_alias
    from registry.reconcile import check_model

    url, uri = locked.settings.governance_url, locked.settings.mlflow_tracking_uri
    set_alias(uri, MODEL, CHAMPION, "1", reason="promoted after the canary")  # govml
    assert check_model(url, uri, MODEL).ok

    body = {"json": {"name": MODEL, "alias": "champion", "version": "2"}}
    assert (
        _rest(locked, "POST", "/api/2.0/mlflow/registered-models/alias", locked.admin, **body)[0]
        == 200
    )
    report = check_model(url, uri, MODEL)
    assert [d.message for d in report.drifts] == [
        "toy_locked: alias champion is on v2, but the audit chain last moved it to v1 "
        "(moved outside govml)"
    ]
    assert (report.serve.version, report.serve.alias, report.serve.source) == (
        "1",
        "champion",
        "chain",
    )
    served = {s.model_name: s for s in endpoints.serve_models(locked.settings)}[MODEL]
    assert served.note == f"toy_locked v1 (the last approved champion) serving at {served.url}"
    back = {"json": {"name": MODEL, "alias": "champion", "version": "1"}}
    assert (
        _rest(locked, "POST", "/api/2.0/mlflow/registered-models/alias", locked.admin, **back)[0]
        == 200
    )

    # the admin replaces the approved model file: detected, and never served
    path = f"/api/2.0/mlflow-artifacts/artifacts/{locked.model_dir}/model.lgb"
    original = (locked.settings.mlflow_artifacts / locked.model_dir / "model.lgb").read_bytes()
    assert (
        _rest(locked, "PUT", path, locked.admin, data=b"tree\nnot the approved model\n")[0] == 200
    )
    try:
        report = check_model(url, uri, MODEL)
        messages = [d.message for d in report.drifts]
        assert len(messages) == 2 and all("whose artifact changed" in m for m in messages)
        assert messages[0].startswith(
            "toy_locked: alias champion is on v1, whose artifact changed:"
        )
        assert report.serve is None
        assert report.problem is not None and "is not the approved one" in report.problem
    finally:
        assert _rest(locked, "PUT", path, locked.admin, data=original)[0] == 200
    assert check_model(url, uri, MODEL).ok


def test_registry_check_names_an_unknown_model_in_one_line(locked: Locked) -> None:
    result = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "govml"), "registry", "check", "no_such_model"],
        cwd=ROOT, env=locked.env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 6
    assert result.stderr.strip() == (
        "error: no registered model named 'no_such_model' (models: toy_locked)"
    )
