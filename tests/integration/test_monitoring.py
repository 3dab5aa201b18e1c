"""Drift → Asset → retrain, end to end with ``dag.test()`` on a real embedded stack.

A fraud champion is trained on 30 days of generated transactions; the next 30 days
(amounts up 100 % for customers in the north region, and a new fraud pattern) are
replayed as its production traffic: prediction log, delayed chargeback labels,
context feed. The monitoring DAG then finds the drift in that segment, records and
sends the alert, writes and logs its report, and publishes the retrain Asset event
with the reason; the lifecycle DAG (which Airflow now has queued on that asset)
retrains, records why, and compares the new candidate with the champion on the
recent labelled window before anything can be registered.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pandas as pd
import pytest
import yaml

from tests.integration.test_lifecycle_dag import ROOT, Lifecycle, _summary
from tests.support import http_server

pytestmark = pytest.mark.slow


class _Hook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def webhook() -> Iterator[str]:
    with http_server(_Hook) as base:
        yield base + "/alerts"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, webhook: str) -> dict[str, Any]:
    from ops.traffic import replay_traffic
    from pipelines.data.fraud import generate_fraud
    from pipelines.data.fraud_config import FraudConfig
    from pipelines.spec import load_spec
    from registry.mlflow_registry import set_alias

    tmp = tmp_path_factory.mktemp("monitoring")
    life = Lifecycle(tmp / "var")
    life.env["GOVML_ALERT_WEBHOOK"] = webhook
    life.prepare()
    data = yaml.safe_load((ROOT / "specs" / "fraud.yaml").read_text())
    data["monitoring"] = {"lookback": "30d", "min_labels": 100}
    spec_path = tmp / "specs" / "fraud.yaml"
    spec_path.parent.mkdir()
    spec_path.write_text(yaml.safe_dump(data))
    life.env["GOVML_SPECS_DIR"] = str(spec_path.parent)
    spec = load_spec(spec_path)

    frame = generate_fraud(
        FraudConfig(
            n_rows=80_000, days=60, seed=3, fraud_rate=0.01, new_fraud_pattern=True,
            amount_shift=1.0, amount_shift_region="north", drift_from_day=30,
        )
    )  # fmt: skip
    cut = frame["tx_time"].min().normalize() + pd.Timedelta(days=30)
    history = tmp / "history.parquet"
    frame[frame["tx_time"] < cut].to_parquet(history)
    code, output, run_dir = life.run("fraud", spec_path=spec_path, data_path=str(history))
    assert code == 0, output[-4000:]
    version = str(life.versions("fraud")[0].version)
    set_alias(life.tracking_uri, "fraud", "champion", version)
    replay = replay_traffic(
        spec, frame[frame["tx_time"] >= cut], run_dir / "train" / "model.txt", version,
        life.settings, end=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5),
        history=frame[frame["tx_time"] < cut],
    )  # fmt: skip
    return {
        "life": life, "spec_path": spec_path, "version": version, "replay": replay,
        "frame": frame, "run_dir": run_dir, "tmp": tmp,
    }  # fmt: skip


@pytest.fixture(scope="module")
def monitored(world: dict[str, Any]) -> dict[str, Any]:
    life = world["life"]
    code, output, _ = life.run("fraud", spec_path=world["spec_path"], dag="monitoring")
    return {"code": code, "output": output}


def _airflow_db(life: Lifecycle) -> sqlite3.Connection:
    url = life.settings.airflow_db_url
    assert url.startswith("sqlite:///"), url
    return sqlite3.connect(url.removeprefix("sqlite:///"))


def test_monitoring_dag_finds_the_segment_drift_and_publishes_a_retrain_event(
    world: dict[str, Any], monitored: dict[str, Any]
) -> None:
    summary = _summary(monitored["output"])
    assert monitored["code"] == 0 and summary["state"] == "success", monitored["output"][-4000:]
    assert summary["tasks"] == {
        "monitor": "success", "needs_retrain": "success", "publish_retrain": "success"
    }  # fmt: skip
    with _airflow_db(world["life"]) as db:
        events = db.execute(
            "SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id "
            "WHERE a.uri = 'govml://models/fraud/retrain'"
        ).fetchall()
        queued = db.execute(
            "SELECT q.target_dag_id FROM asset_dag_run_queue q JOIN asset a ON a.id = q.asset_id "
            "WHERE a.uri = 'govml://models/fraud/retrain'"
        ).fetchall()
    assert len(events) == 1
    extra = json.loads(events[0][0])
    assert "in region=north" in extra["reason"]
    assert extra["source"] == "fraud_monitoring" and extra["model_version"] == world["version"]
    assert queued == [("fraud_lifecycle",)]  # the scheduler's next loop starts the retrain


def test_the_report_alerts_and_mlflow_run_name_the_drift(
    world: dict[str, Any], monitored: dict[str, Any]
) -> None:
    from registry.audit import events
    from registry.audit_verify import verify_chain

    life = world["life"]
    reports = sorted((life.settings.var_dir / "monitoring" / "fraud").glob("*/report.json"))
    assert len(reports) == 1
    report = json.loads(reports[0].read_text())
    assert report["version"] == world["version"] and report["retrain"] is True
    drift = report["drift"]
    assert "amount" not in drift["drifted_features"]  # not in the whole population
    assert "amount" in drift["segment_only_drift"]["region=north"]
    for region in ("south", "east", "west", "central"):
        assert "amount" not in drift["drifted_segments"].get(f"region={region}", [])
    # the new fraud pattern, never in training: the champion misses it, which shows as
    # decay once the chargebacks are in
    assert report["live"]["decay"] == "yes"
    assert (reports[0].parent / "report.html").read_text().count("data:image/png") >= 4
    live = report["live"]  # labels known so far, joined by request id
    assert live["n_labelled"] > 1000 and 0.5 < live["roc_auc"] <= 1
    # the protected attribute came from the context feed: fairness on live decisions
    assert "customer_age_band" in report["fairness"]
    kinds = [e.kind for e in events(life.settings.governance_url, model_name="fraud")]
    assert "drift_alarm" in kinds
    assert verify_chain(life.settings.governance_url).ok
    assert any(a["kind"] == "drift" and "region=north" in a["message"] for a in _Hook.received)
    client = life.client()
    experiment = client.get_experiment_by_name("fraud_monitoring")
    runs = client.search_runs([experiment.experiment_id])
    assert runs[0].data.tags["govml.model_version"] == world["version"]
    assert runs[0].data.metrics["max_psi"] >= 0.25
    tags = client.get_model_version("fraud", world["version"]).tags
    assert tags["govml.monitoring.status"] == "alarm"
    recent = pd.read_parquet(
        life.settings.var_dir / "monitoring" / "fraud" / "recent_labelled.parquet"
    )
    assert len(recent) == live["n_labelled"] and set(recent["is_fraud"]) == {0, 1}


def test_the_retrain_records_why_and_meets_the_champion_on_the_recent_window(
    world: dict[str, Any], monitored: dict[str, Any]
) -> None:
    from registry.audit import events

    life = world["life"]
    with _airflow_db(life) as db:
        (extra,) = db.execute("SELECT extra FROM asset_event").fetchone()
    reason = json.loads(extra)["reason"]
    recent_data = world["tmp"] / "recent.parquet"
    world["frame"].to_parquet(recent_data)
    code, output, run_dir = life.run(
        "fraud", spec_path=world["spec_path"], data_path=str(recent_data), reason=reason,
    )  # fmt: skip
    assert "evaluate" in _summary(output)["tasks"], output[-4000:]
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    window = metrics["recent_window"]
    assert window["rows"] > 1000 and window["positives"] > 10
    assert window["candidate"]["roc_auc"] and window["champion"]["roc_auc"]
    gates = json.loads((run_dir / "gates" / "gates.json").read_text())
    names = [c["name"] for c in gates["checks"]]
    assert "roc_auc vs champion (recent window)" in names
    triggered = [
        e for e in events(life.settings.governance_url, model_name="fraud")
        if e.kind == "retrain_triggered"
    ]  # fmt: skip
    assert triggered[-1].payload["reason"] == reason
    assert triggered[-1].payload["trigger"] == "manual"
