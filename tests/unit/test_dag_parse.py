"""The DAG folder parses with zero import errors, one lifecycle DAG per spec and one
A/B test DAG per spec with an ``abtest`` section, without touching a database, the
network or heavy libraries (all made impossible or checked in the parsing process)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.stages import LIFECYCLE

ROOT = Path(__file__).resolve().parents[2]

PARSE = r"""
import json, socket, sys, time

def refuse(*args, **kwargs):
    raise RuntimeError("network access at DAG parse time")

socket.socket.connect = refuse
socket.create_connection = refuse


from airflow.dag_processing.dagbag import DagBag

started = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1], safe_mode=False)
elapsed = time.perf_counter() - started
dags = {
    dag_id: {
        "tasks": sorted(dag.task_ids),
        "schedule": str(dag.schedule),
        "catchup": dag.catchup,
        "params": sorted(dag.params.keys()),
    }
    for dag_id, dag in bag.dags.items()
}
heavy = sorted(m for m in ("pandas", "lightgbm", "mlflow", "great_expectations", "shap",
                           "fairlearn", "sklearn") if m in sys.modules)
print(json.dumps({"errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": dags,
                  "heavy": heavy, "seconds": elapsed}))
"""


def _parse(dag_folder: Path, specs_dir: Path, tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "GOVML_"))}
    env.update(
        AIRFLOW_HOME=str(tmp_path / "airflow"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        # a database that cannot exist: any connection attempt fails
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="sqlite:////nonexistent/dir/airflow.db",
        GOVML_SPECS_DIR=str(specs_dir),
        GOVML_VAR_DIR=str(tmp_path / "var"),
    )
    result = subprocess.run(
        [sys.executable, "-c", PARSE, str(dag_folder)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def parsed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One isolated parse of the DAG folder over the repository's specs plus
    ``sme_credit`` (a copy of credit without an ``abtest`` section)."""
    tmp_path = tmp_path_factory.mktemp("dag-parse")
    specs = tmp_path / "specs"
    shutil.copytree(ROOT / "specs", specs)
    data = yaml.safe_load((ROOT / "specs" / "credit.yaml").read_text())
    data["name"] = "sme_credit"
    del data["abtest"]  # no abtest section: no A/B DAG
    (specs / "sme_credit.yaml").write_text(yaml.safe_dump(data))
    return _parse(ROOT / "dags", specs, tmp_path)


def test_dag_folder_parses_one_dag_per_spec(parsed: dict) -> None:
    assert parsed["errors"] == {}
    assert {"fraud_lifecycle", "credit_lifecycle", "german_credit_lifecycle"} <= set(parsed["dags"])
    fraud = parsed["dags"]["fraud_lifecycle"]
    for row in LIFECYCLE:  # one task per row of the stage table
        assert row.task_id in fraud["tasks"], row.task_id
    assert fraud["catchup"] is False
    assert "0 2 * * *" in fraud["schedule"]
    assert {"data_path", "n_rows", "seed", "tuning_trials"} <= set(fraud["params"])
    rollout = parsed["dags"]["fraud_rollout"]  # the spec's policy: 5, 25, 50, a go, 100
    assert rollout["tasks"] == sorted(
        ["start", "shadow", "canary_5", "canary_25", "canary_50", "await_go", "canary_100"]
    )
    assert rollout["params"] == ["version"]
    # the lifecycle runs on its cron OR the retrain asset; its first task records why
    assert "govml://models/fraud/retrain" in fraud["schedule"] and "trigger" in fraud["tasks"]
    assert "reason" in fraud["params"]
    monitoring = parsed["dags"]["fraud_monitoring"]
    assert monitoring["tasks"] == ["monitor", "needs_retrain", "publish_retrain"]
    assert "0 * * * *" in monitoring["schedule"]  # hourly by default
    # heavy libraries are imported inside tasks, never at parse time
    assert parsed["heavy"] == []


def test_a_new_spec_file_adds_a_dag_without_code(tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    specs.mkdir()
    shutil.copy(ROOT / "specs" / "credit.yaml", specs / "credit.yaml")
    data = yaml.safe_load((ROOT / "specs" / "credit.yaml").read_text())
    data["name"] = "sme_credit"
    data["schedule"] = "@weekly"
    (specs / "sme_credit.yaml").write_text(yaml.safe_dump(data))
    # and a broken spec does not hide the others
    (specs / "broken.yaml").write_text("name: broken\n")
    parsed = _parse(ROOT / "dags", specs, tmp_path)
    assert parsed["errors"] == {}
    assert set(parsed["dags"]) == {
        "credit_lifecycle", "sme_credit_lifecycle", "credit_rollout", "sme_credit_rollout",
        "credit_abtest", "sme_credit_abtest", "credit_monitoring", "sme_credit_monitoring",
    }  # fmt: skip


def test_one_daily_abtest_dag_per_spec_with_an_abtest_section(parsed: dict) -> None:
    assert parsed["errors"] == {}
    abtests = {d for d in parsed["dags"] if d.endswith("_abtest")}
    assert abtests == {"fraud_abtest", "credit_abtest"}
    for dag_id in abtests:
        dag = parsed["dags"][dag_id]
        assert dag["tasks"] == ["analyse", "running"]
        assert dag["schedule"] == "@daily" and dag["catchup"] is False
    assert parsed["heavy"] == []
