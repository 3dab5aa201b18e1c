"""The lifecycle DAG end to end with ``dag.test()`` (real Airflow metadata DB, real
MLflow registry, real governance store), on small generated data for both specs and
on the real German Credit data; and the failure paths: broken data stops at
validation, injected bias stops at the fairness gate, a weaker model stops at the
champion comparison; none of them registers a model version."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest

from ops import stack
from ops.run_summary import read_summary
from pipelines.config import Settings, load_settings
from pipelines.runs import safe_run_id
from pipelines.spec import load_spec
from tests.support import prepare_stores, stack_env, wait_until

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


class Lifecycle:
    """An isolated embedded stack for DAG runs: Airflow DB, MLflow store, governance DB."""

    def __init__(self, var_dir: Path) -> None:
        self.env = stack_env(var_dir)
        self.settings: Settings = load_settings(self.env)
        self.tracking_uri = f"sqlite:///{var_dir / 'mlflow' / 'mlflow.db'}"
        self.env.update(stack.airflow_env(self.settings))
        self.env["MLFLOW_TRACKING_URI"] = self.tracking_uri
        self.env["GOVML_GOVERNANCE_URL"] = self.settings.governance_url
        self._clock = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)

    def prepare(self) -> None:
        prepare_stores(self.env, self.settings)

    def run(
        self, spec: str, spec_path: Path | None = None, dag: str = "lifecycle", **conf: Any
    ) -> tuple[int, str, Path]:
        """Run the spec's DAG; (exit code, output, run folder)."""
        self._clock += dt.timedelta(hours=1)
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "dags.govml_airflow.run_dag",
                str(spec_path or ROOT / "specs" / f"{spec}.yaml"),
                "--conf",
                json.dumps(conf),
                "--run-after",
                self._clock.isoformat(),
                "--dag",
                dag,
            ],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=900,
        )
        run_dir = self.settings.runs_dir / spec / safe_run_id(f"manual__{self._clock.isoformat()}")
        return result.returncode, result.stdout + result.stderr, run_dir

    def client(self):  # noqa: ANN201
        import mlflow
        from mlflow import MlflowClient

        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)  # models:/ URIs resolve through it
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def versions(self, name: str) -> list:
        from mlflow.exceptions import MlflowException

        try:
            return list(self.client().search_model_versions(f"name = '{name}'"))
        except MlflowException:
            return []


def _summary(output: str) -> dict[str, Any]:
    summary = read_summary(output)
    if summary is None:
        raise AssertionError("no run summary in the output:\n" + output[-4000:])
    return summary


# The first run of each spec, made by the test named here (the spec's Lifecycle.run
# arguments after it).
FIRST_RUNS = {
    "fraud": ("test_fraud_lifecycle_on_generated_transactions", {"n_rows": 40000, "seed": 3,
                                                                 "fraud_rate": 0.01}),
    "german_credit": ("test_german_credit_lifecycle_on_real_data", {}),
}  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def first_runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SimpleNamespace]:
    """The fraud and the German Credit lifecycles (:data:`FIRST_RUNS`, those whose test
    is selected) in a stack of their own (``life``), run one after the other in the
    background (``runs``: their futures, by spec) while the credit tests run in the
    foreground: they share nothing with them. (Its stores are prepared here, in the
    foreground: preparing changes ``os.environ``.)"""
    mine = [item for item in request.session.items if item.module is request.module]
    tests = {item.originalname for item in mine}
    selected = [spec for spec, (test, _) in FIRST_RUNS.items() if test in tests]
    life = Lifecycle(tmp_path_factory.mktemp("lifecycle-first-runs") / "var")
    if selected:
        life.prepare()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="first-runs") as pool:
        runs = {spec: pool.submit(life.run, spec, **FIRST_RUNS[spec][1]) for spec in selected}
        yield SimpleNamespace(life=life, runs=runs)


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lifecycle]:
    life = Lifecycle(tmp_path_factory.mktemp("lifecycle") / "var")
    life.prepare()
    yield life


@pytest.fixture(scope="module")
def credit_run(lifecycle: Lifecycle) -> tuple[int, str, Path]:
    return lifecycle.run("credit", n_rows=8000, seed=5)


def test_credit_lifecycle_registers_a_governed_candidate(
    lifecycle: Lifecycle, credit_run: tuple[int, str, Path]
) -> None:
    code, output, run_dir = credit_run
    summary = _summary(output)
    assert code == 0 and summary["state"] == "success", output[-4000:]
    assert set(summary["tasks"].values()) == {"success"}
    for path in (
        "ingest/fingerprint.json",
        "validate_data/data_docs/index.html",
        "validate_data/profile.json",
        "lineage/lineage.json",
        "features/train.parquet",
        "train/model.txt",
        "train/baseline.joblib",
        "evaluate/metrics.json",
        "evaluate/calibration.png",
        "fairness/fairness.json",
        "explain/shap_summary.png",
        "explain/reason_codes.parquet",
        "gates/gates.json",
        "register/register.json",
    ):
        assert (run_dir / path).exists(), path

    versions = lifecycle.versions("credit")
    assert len(versions) == 1
    version = versions[0]
    client = lifecycle.client()
    assert client.get_model_version_by_alias("credit", "candidate").version == version.version
    tags = version.tags
    assert tags["gates.passed"] == "true"
    assert any(k.startswith("gate.") and v.startswith("pass") for k, v in tags.items())
    assert tags["govml.lifecycle_run_id"] == summary["run_id"]
    assert "# Model card: credit" in version.description
    # the artifact SHA-256 tag is the hash of the model file MLflow serves
    import mlflow.artifacts

    local = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/credit/{version.version}", tracking_uri=lifecycle.tracking_uri
        )
    )
    model_file = next(local.rglob("model.lgb"))
    assert hashlib.sha256(model_file.read_bytes()).hexdigest() == tags["artifact_sha256"]
    run = client.get_run(version.run_id)
    assert run.data.metrics["roc_auc"] > 0.7
    assert {i.dataset.name for i in run.inputs.dataset_inputs} >= {"credit-train", "credit-test"}
    artifacts = {a.path for a in client.list_artifacts(version.run_id, "model_card")}
    assert {"model_card/model_card.md", "model_card/model_card.html"} <= artifacts


def test_lineage_recorded_in_governance_store_and_openlineage(
    lifecycle: Lifecycle, credit_run: tuple[int, str, Path]
) -> None:
    from registry.lineage import lineage_for_run

    _, output, run_dir = credit_run
    run_id = _summary(output)["run_id"]
    kinds = {e.kind: e for e in lineage_for_run(lifecycle.settings.governance_url, run_id)}
    fingerprint = json.loads((run_dir / "ingest" / "fingerprint.json").read_text())
    assert kinds["dataset"].sha256 == fingerprint["sha256"]
    assert (
        kinds["spec"].sha256
        == hashlib.sha256((ROOT / "specs" / "credit.yaml").read_bytes()).hexdigest()
    )
    assert kinds["parameters"].details == {"n_rows": 8000, "seed": 5}
    events_file = stack.openlineage_file(lifecycle.settings)
    events = [json.loads(line) for line in events_file.read_text().splitlines() if line.strip()]
    jobs = {e["job"]["name"] for e in events if e.get("eventType") == "COMPLETE"}
    for task in ("ingest", "validate_data", "features", "train", "register"):
        assert f"credit_lifecycle.{task}" in jobs, sorted(jobs)


def test_register_is_idempotent(lifecycle: Lifecycle, credit_run: tuple[int, str, Path]) -> None:
    from registry.mlflow_registry import register

    _, output, run_dir = credit_run
    run_id = _summary(output)["run_id"]
    before = (run_dir / "register" / "register.json").read_text()
    result = register(
        load_spec(ROOT / "specs" / "credit.yaml"),
        run_dir,
        run_id,
        lifecycle.tracking_uri,
        run_dir / "register",
    )
    assert result.created is False
    assert len(lifecycle.versions("credit")) == 1
    assert (run_dir / "register" / "register.json").read_text() == before


def test_broken_data_stops_at_validation(lifecycle: Lifecycle, tmp_path: Path) -> None:
    from pipelines.data.credit import CreditConfig, generate_credit

    frame = generate_credit(CreditConfig(n_rows=3000, seed=9))
    frame["purpose"] = frame["purpose"].astype("object")
    frame.loc[frame.index[:50], "debt_to_income"] = 7.5  # outside the spec's range
    frame.loc[frame.index[50:80], "purpose"] = "holiday"  # not a category of the spec
    path = tmp_path / "broken.csv"
    frame.to_csv(path, index=False)
    versions_before = len(lifecycle.versions("credit"))
    code, output, run_dir = lifecycle.run("credit", data_path=str(path))
    assert code != 0
    summary = _summary(output)
    assert summary["tasks"]["validate_data"] == "failed"
    assert summary["tasks"]["register"] != "success"
    report = json.loads((run_dir / "validate_data" / "validation.json").read_text())
    assert report  # the failed expectations are kept
    assert "debt_to_income" in output and "purpose" in output
    assert len(lifecycle.versions("credit")) == versions_before


def test_injected_bias_stops_at_the_fairness_gate(lifecycle: Lifecycle) -> None:
    versions_before = len(lifecycle.versions("credit"))
    code, output, run_dir = lifecycle.run("credit", n_rows=8000, seed=5, bias=0.8)
    assert code != 0
    summary = _summary(output)
    assert summary["tasks"]["gates"] == "failed"
    assert summary["tasks"]["register"] != "success"
    gates = json.loads((run_dir / "gates" / "gates.json").read_text())
    failed = [c for c in gates["checks"] if c["status"] == "fail"]
    assert any(c["kind"] == "fairness" and c["attribute"] == "race_ethnicity" for c in failed)
    assert "demographic_parity_ratio" in output
    assert len(lifecycle.versions("credit")) == versions_before


def test_weaker_model_stops_at_the_champion_comparison(
    lifecycle: Lifecycle, credit_run: tuple[int, str, Path], tmp_path: Path
) -> None:
    import yaml

    champion = lifecycle.versions("credit")[0]
    lifecycle.client().set_registered_model_alias("credit", "champion", champion.version)
    versions_before = len(lifecycle.versions("credit"))
    # A changed training configuration (two stumps) on the same data: a weaker model.
    data = yaml.safe_load((ROOT / "specs" / "credit.yaml").read_text())
    data["training"].update(num_boost_round=2, params={"num_leaves": 2, "learning_rate": 0.05})
    weak_spec = tmp_path / "credit.yaml"
    weak_spec.write_text(yaml.safe_dump(data))
    code, output, run_dir = lifecycle.run("credit", spec_path=weak_spec, n_rows=8000, seed=5)
    assert code != 0
    assert _summary(output)["tasks"]["gates"] == "failed", output[-5000:]
    gates = json.loads((run_dir / "gates" / "gates.json").read_text())
    relative = [c for c in gates["checks"] if c["kind"] == "relative" and "champion" in c["name"]]
    assert relative and relative[0]["status"] == "fail", relative
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    assert metrics["champion"]["roc_auc"] > metrics["candidate"]["roc_auc"]
    scores = pd.read_parquet(run_dir / "evaluate" / "scores.parquet")
    assert scores["champion_score"].notna().all()
    assert len(lifecycle.versions("credit")) == versions_before


def test_mlflow_ui_shows_model_card_and_gate_tags(
    lifecycle: Lifecycle,
    credit_run: tuple[int, str, Path],
    browser,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    """A reviewer opens the registered version in the MLflow UI (real server, real browser)."""
    import urllib.request

    from tests.support import free_port

    version = lifecycle.versions("credit")[0].version
    port = free_port()
    server = subprocess.Popen(
        [
            str(ROOT / ".venv" / "bin" / "mlflow"),
            "server",
            "--backend-store-uri",
            lifecycle.tracking_uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_until(
            lambda: (
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200
            ),
            120,
            f"the MLflow UI to answer on port {port}",
            interval=1,
        )
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{port}/#/models/credit/versions/{version}")
        page.get_by_text("Model card: credit").first.wait_for(timeout=60_000)
        page.get_by_text("gates.passed").first.wait_for(timeout=30_000)
        text = page.inner_text("body")
        assert "Intended use" in text and "Gates" in text
        assert "artifact_sha256" in text
        page.screenshot(path=str(tmp_path / "mlflow-model-version.png"), full_page=True)
        page.close()
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


# The first runs of fraud and German Credit (in the background since the module started)
# are awaited last: the credit runs above overlap them.
def test_fraud_lifecycle_on_generated_transactions(first_runs: SimpleNamespace) -> None:
    code, output, run_dir = first_runs.runs["fraud"].result()
    assert code == 0, output[-4000:]
    features = json.loads((run_dir / "features" / "features.json").read_text())
    assert "card_tx_count_1h" in features["features"]
    assert features["split"]["method"] == "time"
    assert len(first_runs.life.versions("fraud")) == 1


def test_german_credit_lifecycle_on_real_data(first_runs: SimpleNamespace) -> None:
    code, output, run_dir = first_runs.runs["german_credit"].result()
    assert code == 0, output[-4000:]
    assert json.loads((run_dir / "ingest" / "fingerprint.json").read_text())["rows"] == 1000
    assert len(first_runs.life.versions("german_credit")) == 1
