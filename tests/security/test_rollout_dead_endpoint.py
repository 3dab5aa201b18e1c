"""Attack 11 (its rollout half): after ``make down`` / ``make up`` the deployment records
still name endpoints at dead ports, and a rollout routed traffic to them.

Real components on loopback: the registry (MLflow on SQLite), the governance store with
its audit chain, the local deployer's real model server for the champion, the routes
file the gateway reads. A version whose recorded endpoint is a dead port is refused at
the start of a rollout and at a first promotion, and a challenger whose server stopped
in the middle of a rollout is refused when someone resumes it: each time one line
naming the endpoint and the probe's answer, a ``rollout_paused`` audit event, and not
one route to the dead port.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests import releases
from tests.german_credit import german_credit_features, trained
from tests.support import environ, free_port, prepare_stores, registry_stack

ROOT = Path(__file__).resolve().parents[2]
SPEC_PATH = ROOT / "specs" / "german_credit.yaml"
MODEL = "german_credit"
pytestmark = pytest.mark.slow


def _register(settings, booster) -> str:  # noqa: ANN001
    return releases.register_booster(settings, booster, MODEL, "dead-endpoints")


def _approve(settings, spec, version: str):  # noqa: ANN001, ANN202
    from registry.mlflow_registry import artifact_sha256_of

    sha = artifact_sha256_of(settings.mlflow_tracking_uri, MODEL, version)
    url = settings.governance_url
    return releases.approve(url, spec, version, sha, reason="reviewed", artifact_sha256=sha), sha


def _redeploy(settings, state, version: str, sha: str) -> str:  # noqa: ANN001
    """The version's real model server (local deployer), recorded as `make up` records a
    version it serves again (``endpoint_reconciled``); its URL."""
    from registry.reconcile import record_endpoint

    url = releases.deploy_locally(settings, state, sha, SPEC_PATH)
    record_endpoint(settings.governance_url, MODEL, version, url, reason="served again")
    return url


def _refusal(version: str, role: str, url: str) -> str:
    return (
        f"refused to route traffic to {MODEL} v{version} ({role}): its endpoint {url} "
        "does not answer its ready probe (connection refused)"
    )


def _refused_at_a_dead_endpoint(
    settings,
    state,
    role: str,
    route: Callable[[], object],  # noqa: ANN001
) -> tuple[str, str]:
    """A dead port recorded as the deployed endpoint of ``state``'s version (its server
    went with `make down`): ``route()`` (routing it as ``role``) is refused, naming it.
    The dead URL and the refusal."""
    from serving.control.rollout_controller import EndpointDown

    dead = f"http://127.0.0.1:{free_port()}"
    releases.record_deployed(settings.governance_url, state, {"endpoint": dead})
    with pytest.raises(EndpointDown) as refused:
        route()
    assert str(refused.value) == _refusal(state.model_version, role, dead)
    return dead, str(refused.value)


def _refusals(settings) -> list:  # noqa: ANN001
    from registry.audit import events

    return [
        e
        for e in events(settings.governance_url, model_name=MODEL, kinds=["rollout_paused"])
        if (e.payload or {}).get("rollout_event") == "endpoint_down"
    ]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    from pipelines.spec import load_spec

    root = tmp_path_factory.mktemp("dead-endpoints")
    env, settings = registry_stack(root)
    with environ(env):
        prepare_stores(env, settings)
        releases.grant_approvers(settings.governance_url)
        booster = trained(german_credit_features(root, 20), root, root / "m")
        spec = load_spec(SPEC_PATH)
        versions = {}
        for _ in range(2):
            version = _register(settings, booster)
            versions[version] = _approve(settings, spec, version)
        try:
            yield SimpleNamespace(settings=settings, spec=spec, versions=versions, env=env)
        finally:
            releases.stop_deployments(settings)


def test_a_dead_recorded_endpoint_is_never_routed_to(world: SimpleNamespace) -> None:
    from ops.rollout import act, promote_first, record, start
    from serving.control.rollout_controller import EndpointDown
    from serving.control.routes import controller, endpoint_of, gateway_dir

    settings, spec = world.settings, world.spec
    (v1, (state1, sha1)), (v2, (state2, sha2)) = sorted(world.versions.items())
    routes = gateway_dir(settings) / "routes.json"

    # 1. v1's recorded endpoint is a dead port (its server went with `make down`)
    dead1, _ = _refused_at_a_dead_endpoint(
        settings, state1, "champion", lambda: promote_first(settings, spec, v1, "ops-anna")
    )
    assert not routes.exists()

    # 2. redeployed for real, it becomes the first champion
    _redeploy(settings, state1, v1, sha1)
    assert promote_first(settings, spec, v1, "ops-anna").kind == "champion_promoted"
    before = routes.read_bytes()

    # 3. v2's recorded endpoint is dead: the rollout does not start
    dead2, refused = _refused_at_a_dead_endpoint(
        settings, state2, "challenger", lambda: start(settings, spec, v2, "ops-anna")
    )
    assert routes.read_bytes() == before  # no shadow, no canary towards the dead port
    assert controller(settings, spec).load() is None

    # 4. in the middle of a rollout v2's server stops: resuming is refused, routes stay
    url2 = _redeploy(settings, state2, v2, sha2)
    ctl = controller(settings, spec)
    champion = endpoint_of(settings, MODEL, v1)
    record(settings, ctl.start(champion, endpoint_of(settings, MODEL, v2), "ops-anna"))
    act(settings, spec, "pause", "ops-carl", "holiday freeze")
    from ops.deploy import deployer_for
    from serving.token_files import deployment_name

    deployer_for(settings).stop(deployment_name(MODEL, v2))
    shadowed = routes.read_bytes()
    with pytest.raises(EndpointDown, match=rf"^refused to route traffic to {MODEL} v{v2} "):
        act(settings, spec, "resume", "ops-carl")
    assert routes.read_bytes() == shadowed and ctl.load().phase == "paused"

    refusals = _refusals(settings)
    assert [(e.model_version, e.payload["refused"], e.payload["endpoint"]) for e in refusals] == [
        (v1, "first promotion", dead1),
        (v2, "start", dead2),
        (v2, "resume", url2),
    ]
    assert [e.actor for e in refusals] == ["ops-anna", "ops-anna", "ops-carl"]
    assert refusals[1].payload["reason"] == refused
    from registry.audit_verify import verify_chain

    assert verify_chain(settings.governance_url).ok


def test_the_cli_refuses_a_dead_challenger_in_one_line(world: SimpleNamespace) -> None:
    """`govml rollout start` as an authenticated operator: one line, exit 2."""
    import subprocess

    from ops.rollout import act
    from ops.stack import airflow_passwords
    from registry.audit import events
    from registry.reconcile import record_endpoint
    from serving.control.routes import controller, gateway_dir

    settings = world.settings
    v2 = max(world.versions, key=int)
    dead = f"http://127.0.0.1:{free_port()}"  # its server went with `make down`
    record_endpoint(settings.governance_url, MODEL, v2, dead, reason="recorded, now dead")
    if controller(settings, world.spec).load() is not None:  # the first test's rollout
        act(settings, world.spec, "rollback", "ops-carl", "clean slate")
    before = (gateway_dir(settings) / "routes.json").read_bytes()
    seq = events(settings.governance_url)[-1].seq
    password = airflow_passwords(settings)["operator"]
    result = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "govml"), "rollout", "start", MODEL, "--version", v2,
         "--as", "operator"],
        env={**world.env, "GOVML_PASSWORD": password}, cwd=ROOT, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr == f"error: {_refusal(v2, 'challenger', dead)}\n"
    assert (gateway_dir(settings) / "routes.json").read_bytes() == before
    new = [e for e in events(settings.governance_url) if e.seq > seq]
    assert [(e.kind, e.actor, e.payload.get("refused")) for e in new] == [
        ("rollout_paused", "operator", "start")
    ]
