"""The live observations a rollout step reads: prediction logs, gateway counters, the
shadow log and the label feed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from pipelines.rollout import check_guardrails
from pipelines.spec_operations import Guardrails
from serving.control import rollout_windows as windows
from serving.prediction_log import PredictionLog
from serving.prediction_log_files import LogOptions
from tests.support import free_port


def _log(folder: Path, n: int, score: float, start: int = 0) -> PredictionLog:
    log = PredictionLog(folder, "jsonl", LogOptions(poll_seconds=0.01, batch_rows=1))
    for i in range(start, start + n):
        log.log(
            {"request_id": f"r{i}", "score": score, "latency_ms": 2.0 + i % 3,
             "features": {"amount": 10.0 * (i + 1)}, "decision": "pass"}
        )  # fmt: skip
    return log


def test_log_rows_reads_complete_files_and_the_file_being_written(tmp_path: Path) -> None:
    since = time.time() - 1
    done = _log(tmp_path, 5, 0.1)
    assert done.close()
    live = _log(tmp_path, 4, 0.2, start=5)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(windows.log_rows(tmp_path, since)) < 9:
        time.sleep(0.05)
    rows = windows.log_rows(tmp_path, since)
    assert sorted(r["request_id"] for r in rows) == [f"r{i}" for i in range(9)]
    assert windows.log_rows(tmp_path, time.time() + 60) == []  # nothing after the window began
    assert windows.log_rows(tmp_path / "missing", since) == []
    live.close()


def test_gateway_counters_give_the_challengers_failures() -> None:
    text = "\n".join(
        [
            "# TYPE govml_gateway_requests_total counter",
            'govml_gateway_requests_total{code="200",model="fraud",route="champion"} 90.0',
            'govml_gateway_requests_total{code="200",model="fraud",route="challenger"} 8.0',
            'govml_gateway_requests_total{code="400",model="fraud",route="challenger"} 1.0',
            'govml_gateway_requests_total{code="200",model="fraud",route="failover"} 3.0',
            'govml_gateway_requests_total{code="200",model="credit",route="challenger"} 50.0',
        ]
    )
    now = windows.gateway_counts(text, "fraud")
    assert now == {"champion:200": 90, "challenger:200": 8, "challenger:400": 1, "failover:200": 3}
    assert windows.challenger_errors(now, {"challenger:200": 2.0}) == (10, 3)


def test_shadow_pairs_since_the_step_began(tmp_path: Path) -> None:
    path = tmp_path / "shadow.jsonl"
    records = [
        {"time": 10, "shadow_outcome": "ok", "primary_scores": [0.1], "shadow_scores": [0.2],
         "shadow_ms": 3.0},
        {"time": 20, "shadow_outcome": "ok", "primary_scores": [0.3, 0.4],
         "shadow_scores": [0.3, 0.5], "shadow_ms": 4.0},
        {"time": 21, "shadow_outcome": "timeout", "primary_scores": [0.3], "shadow_scores": None},
    ]  # fmt: skip
    path.write_text("\n".join(json.dumps(r) for r in records) + "\nnot json\n")
    primary, shadow, copies, failed, latencies = windows.shadow_pairs(path, since=15)
    assert primary.tolist() == [0.3, 0.4] and shadow.tolist() == [0.3, 0.5]
    assert (copies, failed, latencies.tolist()) == (2, 1, [4.0])


def test_late_labels_join_by_request_id_and_feed_the_label_guardrails(tmp_path: Path) -> None:
    labels_dir = tmp_path / "labels"
    labels_dir.mkdir()
    rows = [
        {"request_id": f"r{i}", "score": 0.95 if i % 10 == 0 else 0.01, "latency_ms": 1.0,
         "features": {"amount": 100.0}}
        for i in range(200)
    ]  # fmt: skip
    blind = [{**r, "score": 0.01} for r in rows]
    (labels_dir / "chargebacks-1.jsonl").write_text(
        "\n".join(
            json.dumps({"request_id": f"r{i}", "label": int(i % 10 == 0)}) for i in range(0, 200, 2)
        )  # fmt: skip
    )
    labels = windows.read_labels(labels_dir)
    assert len(labels) == 100
    champion = windows.window_of(rows, labels=labels)
    challenger = windows.window_of(blind, labels=labels)
    assert int(np.sum(~np.isnan(challenger.labels))) == 100  # half the rows labelled so far
    guardrails = Guardrails(min_fraud_amount_caught_ratio=0.9, max_score_psi=100)
    trips = {t.guardrail for t in check_guardrails(guardrails, 0.5, champion, challenger)}
    assert "fraud_amount_caught_ratio" in trips
    (labels_dir / "broken.jsonl").write_text('{"request_id": "x"}\n')
    with pytest.raises(ValueError, match="broken.jsonl"):
        windows.read_labels(labels_dir)


def test_an_endpoint_nothing_listens_on_fails_its_ready_probe() -> None:
    dead = {"url": f"http://127.0.0.1:{free_port()}", "version": "3"}
    assert windows.endpoint_problem("fraud", dead, timeout=1.0) == "connection refused"
    assert windows.endpoint_problem("fraud", {"version": "3"}) == "no URL recorded"


def test_log_rows_leave_out_explanations(tmp_path: Path) -> None:
    since = time.time() - 1
    log = PredictionLog(tmp_path, "jsonl", LogOptions(poll_seconds=0.01, batch_rows=1))
    log.log({"request_id": "r1", "score": 0.9, "latency_ms": 2.0, "decision": "flag"})
    log.log(
        {"request_id": "r1", "score": 0.9, "latency_ms": 9.0, "decision": "flag",
         "verb": "explain", "reasons": ["amount high"]}
    )  # fmt: skip
    assert log.close()
    rows = windows.log_rows(tmp_path, since)
    assert [(r["request_id"], r["latency_ms"]) for r in rows] == [("r1", 2.0)]
