"""Progressive delivery end to end on loopback: real model servers (local deployer),
the real gateway, the registry (MLflow on SQLite) and the governance store.

A client sends valid requests at a constant rate through the gateway the whole time.
A full rollout walks shadow → 5 → 25 → 50 → (approval) → 100 → promotion; then three
faulty challengers (killed mid-canary, frozen so that every call times out, and a model
whose scores are skewed) are each rolled back by the controller. The client never sees a
failed request, every transition is in the audit trail, and the champion alias moves
only on the promotion.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from ops.run_summary import read_summary
from pipelines.features import read_split
from pipelines.spec_operations import Rollout
from tests import releases
from tests.datasets import json_records
from tests.german_credit import german_credit_features, trained
from tests.support import (
    environ,
    free_port,
    predict_request,
    prepare_stores,
    registry_stack,
    serving_process,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]
SPEC_PATH = ROOT / "specs" / "german_credit.yaml"
MODEL = "german_credit"
POLICY = Rollout(
    shadow={"duration": "2s", "min_requests": 10},
    canary_steps=[5, 25, 50, 100],
    bake_time="1s",
    approval_before_full=True,
    guardrails={
        "max_error_rate": 0.01,
        "max_p99_latency_ms": 1000,
        "max_score_psi": 0.2,
        "max_disagreement_rate": 0.05,
        "max_approval_rate_change": 0.5,
    },
)
pytestmark = pytest.mark.slow


class Client(threading.Thread):
    """Valid requests at a constant rate through the gateway; every answer kept."""

    def __init__(self, base: str, rows: list[dict], token: str, rate: float = 40.0) -> None:
        super().__init__(daemon=True)
        self.base, self.rows, self.period, self.token = base, rows, 1.0 / rate, token
        self.codes: list[int] = []
        self.routes: list[str] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        rng = random.Random(5)
        next_at = time.monotonic()
        while not self.stop_event.is_set():
            row = rng.choice(self.rows)
            entity = f"customer-{rng.randrange(100_000)}"
            req = predict_request(self.base, MODEL, row, self.token, entity)
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    self.codes.append(resp.status)
                    self.routes.append(resp.headers.get("X-Govml-Route", ""))
            except urllib.error.HTTPError as err:
                self.codes.append(err.code)
            except OSError:
                self.codes.append(0)
            next_at += self.period
            # the pace of a constant-rate client (the behaviour under test), not a wait
            time.sleep(max(0.0, next_at - time.monotonic()))


def _register(settings, booster, run: str) -> str:  # noqa: ANN001
    return releases.register_booster(settings, booster, MODEL, "rollout", run_name=run)


def _release(settings, spec, version: str, run: str) -> str:  # noqa: ANN001
    """Approve (four eyes), deploy with the local deployer, record it: the endpoint URL."""
    from registry.mlflow_registry import artifact_sha256_of

    url = settings.governance_url
    sha = artifact_sha256_of(settings.mlflow_tracking_uri, MODEL, version)
    state = releases.approve(url, spec, version, sha, run)
    endpoint = releases.deploy_locally(settings, state, sha, SPEC_PATH)
    releases.record_deployed(url, state, {"endpoint": endpoint})
    return endpoint


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    from ops import stack
    from registry.mlflow_registry import set_alias
    from serving.control import routes as control_routes

    root = tmp_path_factory.mktemp("rollout")
    env, settings = registry_stack(root)
    env.update(stack.airflow_env(settings))  # the rollout DAG runs with dag.test()
    env["GOVML_ROLLOUT_POKE_SECONDS"] = "0.5"
    from serving.token_files import write_records
    from serving.token_records import generate_token

    # the bank's client holds a gateway token; each deployment has its own tokens, which
    # the gateway uses to call it (the deployer makes them; ops-admin is added later)
    token, record = generate_token("core-banking", ["predict", "explain"])
    write_records(root / "gateway-tokens.json", [record])
    settings.mlflow_artifacts.mkdir(parents=True)
    releases.grant_approvers(settings.governance_url)
    good = german_credit_features(root, 40)
    skewed = good.model_copy(
        update={"training": good.training.model_copy(update={"params": {"scale_pos_weight": 25.0}})}
    )
    boosters = {
        "good": trained(good, root, root / "good"),
        "skewed": trained(skewed, root, root / "skewed"),
    }
    test = read_split(good, root / "features", "test")
    frame = test[list(boosters["good"].feature_name())]
    rows = json_records(frame)
    gateway_port = free_port()
    env["GOVML_GATEWAY_URL"] = f"http://127.0.0.1:{gateway_port}"
    spec = good.model_copy(update={"rollout": POLICY})
    spec_path = root / "german_credit.yaml"  # the rollout DAG reads the policy from its spec
    raw = yaml.safe_load(SPEC_PATH.read_text())
    raw["rollout"] = POLICY.model_dump(mode="json", exclude_none=True)
    spec_path.write_text(yaml.safe_dump(raw))
    with environ(env):
        try:
            prepare_stores(env, settings)
            champion = _register(settings, boosters["good"], "run-1")
            _release(settings, spec, champion, "run-1")
            set_alias(settings.mlflow_tracking_uri, MODEL, "champion", champion)
            routes = control_routes.gateway_dir(settings) / "routes.json"
            routes.parent.mkdir(parents=True, exist_ok=True)
            from serving.gateway_routes import write_routes

            first = control_routes.endpoint_of(settings, MODEL, champion)
            write_routes(routes, {"models": {MODEL: {"champion": first}}})
            log = root / "gateway.log"
            base = f"http://127.0.0.1:{gateway_port}"
            with serving_process(
                ["-m", "serving.gateway", "--routes", str(routes),
                 "--tokens", str(root / "gateway-tokens.json"),
                 "--port", str(gateway_port), "--upstream_timeout_s", "0.5",
                 "--shadow_log", str(control_routes.gateway_dir(settings) / "shadow.jsonl")],
                log,
                f"{base}/healthz",
                timeout=60,
            ):  # fmt: skip
                yield SimpleNamespace(
                    settings=settings, spec=spec, boosters=boosters, rows=rows, base=base,
                    champion=champion, root=root, gateway_log=log, env=env,
                    spec_path=spec_path, token=token,
                )  # fmt: skip
        finally:
            releases.stop_deployments(settings)


def _approve_when_asked(world: SimpleNamespace, limit_s: float = 240) -> None:
    """The model-risk reviewer's go for 100 %, as soon as the rollout asks for it."""
    from ops.rollout import act
    from serving.control.routes import controller

    def asked() -> bool:
        state = controller(world.settings, world.spec).load()
        return state is not None and state.phase == "approval"

    wait_until(asked, limit_s, "the rollout to ask for approval of 100 %", interval=0.2)
    act(world.settings, world.spec, "approve", actor="alice")


def _champion(world: SimpleNamespace) -> str:
    from registry.mlflow_registry import version_by_alias

    return str(version_by_alias(world.settings.mlflow_tracking_uri, MODEL, "champion").version)


def _drive(world: SimpleNamespace, until: set[str], limit_s: float = 60) -> list[str]:
    """Evaluate every half second until one of ``until``; the events' kinds."""
    from ops.rollout import evaluate

    kinds = []
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        # the controller's tick: its windows need traffic between evaluations (a deadline
        # bounds the loop; each evaluation is the behaviour under test)
        time.sleep(0.5)
        event = evaluate(world.settings, world.spec)
        kinds.append(event.kind)
        if event.kind in until:
            return kinds
    raise AssertionError(f"no {until} within {limit_s} s: {kinds}")


def _audit_kinds(world: SimpleNamespace, version: str) -> list[tuple[str, str | None]]:
    from registry.audit import events

    return [
        (e.kind, (e.payload or {}).get("rollout_event"))
        for e in events(world.settings.governance_url, model_name=MODEL, model_version=version)
    ]


def test_a_full_rollout_then_three_faulty_challengers_rolled_back(world: SimpleNamespace) -> None:
    from ops.rollout import start

    client = Client(world.base, world.rows, world.token)
    client.start()
    try:
        # 1. a healthy challenger goes all the way, driven by the rollout DAG (dag.test)
        v2 = _register(world.settings, world.boosters["good"], "run-2")
        _release(world.settings, world.spec, v2, "run-2")
        approver = threading.Thread(target=_approve_when_asked, args=(world,), daemon=True)
        approver.start()
        from ops.stack import airflow_passwords

        password = airflow_passwords(world.settings)["operator"]  # the trigger is proven
        result = subprocess.run(
            [sys.executable, "-m", "dags.govml_airflow.run_dag", str(world.spec_path),
             "--dag", "rollout",
             "--conf", json.dumps({"version": v2}), "--run-after", "2026-11-28T12:00:00+00:00",
             "--as", "operator"],
            env={**world.env, "GOVML_PASSWORD": password}, cwd=ROOT,
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        approver.join(5)
        output = result.stdout + result.stderr
        problems = [line for line in output.splitlines() if "Error" in line or "Exception" in line]
        assert result.returncode == 0, "\n".join(problems[-20:]) or output[-4000:]
        summary = read_summary(output)
        assert set(summary["tasks"].values()) == {"success"}, summary
        assert _champion(world) == v2
        steps = [k for k in _audit_kinds(world, v2) if k[1]]
        assert [k[1] for k in steps] == [
            "rollout_started", "rollout_step", "rollout_step", "rollout_step",
            "awaiting_approval", "rollout_step", "champion_promoted",
        ], steps  # fmt: skip
        from registry.audit import events

        started_by = [
            e.actor for e in events(world.settings.governance_url, model_version=v2)
            if (e.payload or {}).get("rollout_event") == "rollout_started"
        ]  # fmt: skip
        assert started_by == ["operator"]  # the authenticated trigger, not the environment
        champion = v2

        # 2. three faulty challengers, each rolled back, the alias never moving
        faults = {}
        for fault in ("killed", "frozen", "errors", "skewed"):
            booster = world.boosters["skewed" if fault == "skewed" else "good"]
            version = _register(world.settings, booster, f"run-{fault}")
            _release(world.settings, world.spec, version, f"run-{fault}")
            start(world.settings, world.spec, version, actor="ops-anna")
            kinds = _drive(world, {"rollout_step", "rollout_rolled_back"})
            if fault != "skewed":  # the skewed model trips already in shadow
                assert kinds[-1] == "rollout_step", kinds
                seen = len(client.routes)
                wait_until(
                    lambda: "challenger" in client.routes[seen:],  # noqa: B023 (called now)
                    30,
                    "client traffic answered by the challenger on the 5 % step",
                )
                from serving.control.routes import endpoint_of

                server = world.settings.serving_dir / f"{MODEL.replace('_', '-')}-v{version}"
                state = json.loads((server / "supervisor.json").read_text())
                if fault == "killed":  # supervisor first, so that nothing restarts it
                    os.kill(state["supervisor_pid"], signal.SIGKILL)
                    os.kill(state["server_pid"], signal.SIGKILL)
                elif fault == "frozen":  # accepts connections, never answers
                    os.kill(state["server_pid"], signal.SIGSTOP)
                else:  # its model unloaded: every call answers "model does not exist"
                    from serving.token_files import add_client

                    url = endpoint_of(world.settings, MODEL, version)["url"]
                    admin = add_client(server / "tokens.json", "ops-admin", ["admin"])
                    req = urllib.request.Request(
                        f"{url}/v2/repository/models/{MODEL}/unload", data=b"", method="POST",
                        headers={"Authorization": f"Bearer {admin}"},
                    )  # fmt: skip

                    def unloaded() -> bool:
                        try:
                            return urllib.request.urlopen(req, timeout=10).status == 200  # noqa: B023
                        except urllib.error.HTTPError as err:
                            assert err.code == 401, err.code  # until it re-reads its tokens
                            return False

                    wait_until(unloaded, 5, "the server to take the new admin token and unload")
                assert endpoint_of(world.settings, MODEL, version)
                injected = time.monotonic()
                kinds += _drive(world, {"rollout_rolled_back"}, limit_s=15)
                assert time.monotonic() - injected < 15  # rolled back within seconds
            else:
                assert kinds[-1] == "rollout_rolled_back", kinds
            faults[fault] = _audit_kinds(world, version)
            assert _champion(world) == champion
            if fault == "frozen":
                os.kill(state["server_pid"], signal.SIGCONT)
        sent = len(client.codes)
        wait_until(
            lambda: len(client.codes) >= sent + 40, 30, "40 client requests after the last fault"
        )
    finally:
        client.stop_event.set()
        client.join(30)
    failed = [c for c in client.codes if c != 200]
    assert len(client.codes) > 300 and failed == [], (len(client.codes), failed[:10])
    assert "failover" in client.routes  # the killed and frozen challengers were covered for
    for fault, kinds in faults.items():
        rolled = [k for k in kinds if k[0] == "rolled_back"]
        assert rolled, (fault, kinds)
    from registry.audit_verify import verify_chain

    assert verify_chain(world.settings.governance_url).ok
