"""Gates: declarative metric / relative / fairness thresholds, warn margins, proxy flags."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.errors import GateFailedError
from pipelines.spec import ModelSpec, parse_spec
from pipelines.stages.gates import check_gates
from validation.gates import GateInputs, GateReport

ROOT = Path(__file__).resolve().parents[2]
MLFLOW_TAG_KEY = re.compile(r"^[/\w.\- :]*$")  # what MLflow accepts in a tag key


def _metrics(roc_auc: float = 0.93, **extra: Any) -> dict[str, Any]:
    block = {
        "roc_auc": roc_auc,
        "pr_auc": 0.41,
        "ks": 0.71,
        "brier": 0.002,
        "log_loss": 0.01,
        "recall_at_fpr": {"0.01": 0.62},
        "precision_at_recall": {"0.5": 0.3},
        "positive_rate": 0.004,
        "rows": 30000,
        "positives": 60,
    }
    block.update(extra)
    return block


def _fairness(dpr: float = 0.95, flagged: bool = False) -> dict[str, Any]:
    return {
        "favourable_outcome": "approved",
        "attributes": {},
        "intersections": {},
        "proxy_check": [
            {
                "feature": "postcode_risk_index",
                "attribute": "race_ethnicity",
                "score": 0.93 if flagged else 0.52,
                "threshold": 0.7,
                "flagged": flagged,
                "group": "group_b",
                "macro_auc": 0.64,
            },
            {
                "feature": "income",
                "attribute": "sex",
                "score": 0.51,
                "threshold": 0.7,
                "flagged": False,
            },
        ],
        "gate_metrics": {
            "race_ethnicity": {"demographic_parity_ratio": dpr, "equalized_odds_difference": 0.03},
            "sex": {"demographic_parity_ratio": 0.97, "equalized_odds_difference": 0.02},
            "age_band": {"demographic_parity_ratio": 0.9, "equalized_odds_difference": 0.04},
        },
    }


def make_spec(
    metric_gates: list[dict[str, Any]], fairness_gates: list[dict[str, Any]]
) -> ModelSpec:
    data = yaml.safe_load((ROOT / "specs" / "credit.yaml").read_text())
    data = copy.deepcopy(data)
    data["gates"]["metrics"] = metric_gates
    data["gates"]["fairness"] = fairness_gates
    return parse_spec(data, "test-spec")


DEFAULT_METRIC_GATES = [
    {"metric": "roc_auc", "min": 0.85, "warn_margin": 0.02},
    {"metric": "recall_at_fpr", "at": 0.01, "min": 0.5, "warn_margin": 0.05},
    {"metric": "brier", "max": 0.12},
    {"metric": "roc_auc", "relative_to": "baseline", "min": 0.0},
    {"metric": "roc_auc", "relative_to": "champion", "min": -0.005},
]
DEFAULT_FAIRNESS_GATES = [
    {"metric": "demographic_parity_ratio", "attribute": "race_ethnicity", "min": 0.8},
    {"metric": "equalized_odds_difference", "attribute": "age_band", "max": 0.1},
]


def write_inputs(
    root: Path,
    candidate: dict[str, Any],
    baseline: dict[str, Any] | None = None,
    champion: dict[str, Any] | None = None,
    fairness: dict[str, Any] | None = None,
) -> tuple[GateInputs, Path]:
    dirs = [root / n for n in ("evaluate", "fairness", "explain", "gates")]
    for d in dirs[:3]:
        d.mkdir(parents=True, exist_ok=True)
    metrics = {
        "threshold": 0.5,
        "candidate": candidate,
        "baseline": baseline if baseline is not None else _metrics(roc_auc=0.80),
        "champion": champion,
    }
    (dirs[0] / "metrics.json").write_text(json.dumps(metrics))
    (dirs[1] / "fairness.json").write_text(json.dumps(fairness or _fairness()))
    shap_importance = {
        "mean_abs_shap": {"income": 0.3},
        "ranking": ["income"],
        "stability": {"champion_spearman": None, "top10_overlap": None},
        "rows_explained": 10,
    }
    (dirs[2] / "shap_importance.json").write_text(json.dumps(shap_importance))
    return GateInputs(dirs[0], dirs[1], dirs[2]), dirs[3]


def _by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in report["checks"]}


def test_all_pass_without_champion_skips_the_champion_gate(tmp_path: Path) -> None:
    spec = make_spec(DEFAULT_METRIC_GATES, DEFAULT_FAIRNESS_GATES)
    dirs = write_inputs(tmp_path, _metrics())
    report = check_gates(spec, *dirs)
    assert isinstance(report, GateReport)
    assert report.passed and not report.high_risk
    written = json.loads((dirs[1] / "gates.json").read_text())
    assert set(written) == {"passed", "high_risk", "checks"}
    assert written == report.gates_json()
    checks = _by_name(written)
    assert checks["roc_auc vs champion"]["status"] == "skipped"
    assert "no champion" in checks["roc_auc vs champion"]["message"]
    assert checks["roc_auc"] | {} == {
        "name": "roc_auc",
        "kind": "metric",
        "metric": "roc_auc",
        "attribute": None,
        "value": 0.93,
        "threshold": 0.85,
        "op": ">=",
        "status": "pass",
        "message": "roc_auc 0.93 >= min 0.85",
    }
    assert checks["recall_at_fpr:0.01"]["value"] == 0.62
    assert checks["brier"]["op"] == "<=" and checks["brier"]["status"] == "pass"
    relative = checks["roc_auc vs baseline"]
    assert relative["kind"] == "relative"
    assert relative["value"] == pytest.approx(0.13)
    fair = checks["demographic_parity_ratio:race_ethnicity"]
    assert (fair["kind"], fair["attribute"], fair["status"]) == (
        "fairness",
        "race_ethnicity",
        "pass",
    )
    assert checks["proxy"]["status"] == "pass" and checks["proxy"]["kind"] == "proxy"
    assert all(MLFLOW_TAG_KEY.match(c["name"]) for c in written["checks"])
    result = json.loads((dirs[1] / "result.json").read_text())
    assert result["stage"] == "gates" and result["passed"] is True
    assert result["counts"] == {"pass": 7, "warn": 0, "fail": 0, "skipped": 1}
    assert result["explain"]["rows_explained"] == 10


def test_every_failure_is_listed_at_once_and_files_are_written_first(tmp_path: Path) -> None:
    spec = make_spec(DEFAULT_METRIC_GATES, DEFAULT_FAIRNESS_GATES)
    weak = _metrics(roc_auc=0.81, brier=0.2, recall_at_fpr={"0.01": 0.45})
    dirs = write_inputs(
        tmp_path,
        weak,
        baseline=_metrics(roc_auc=0.83),
        champion=_metrics(roc_auc=0.831),
        fairness=_fairness(dpr=0.64),
    )
    with pytest.raises(GateFailedError) as info:
        check_gates(spec, *dirs)
    failures = info.value.failures
    assert failures == [
        "roc_auc 0.81 < min 0.85",
        "recall_at_fpr@0.01 0.45 < min 0.5",
        "brier 0.2 > max 0.12",
        "roc_auc vs baseline -0.02 < min 0 (candidate 0.81, baseline 0.83)",
        "roc_auc vs champion -0.021 < min -0.005 (candidate 0.81, champion 0.831)",
        "demographic_parity_ratio[race_ethnicity] 0.64 < min 0.8",
    ]
    assert "6 gate(s) failed" in str(info.value)
    written = json.loads((dirs[1] / "gates.json").read_text())
    assert written["passed"] is False
    assert [c["message"] for c in written["checks"] if c["status"] == "fail"] == failures
    result = json.loads((dirs[1] / "result.json").read_text())
    assert result["failures"] == failures


def test_champion_relative_gate_fails_for_a_weaker_candidate(tmp_path: Path) -> None:
    spec = make_spec([{"metric": "roc_auc", "relative_to": "champion", "min": -0.005}], [])
    dirs = write_inputs(tmp_path / "weak", _metrics(0.90), champion=_metrics(0.92))
    with pytest.raises(GateFailedError, match="roc_auc vs champion -0.02 < min -0.005"):
        check_gates(spec, *dirs)
    dirs = write_inputs(tmp_path / "close", _metrics(0.918), champion=_metrics(0.92))
    report = check_gates(spec, *dirs)
    (check,) = [c for c in report.checks if c.kind == "relative"]
    assert check.status == "pass" and check.value == pytest.approx(-0.002)


def test_warn_margin_marks_high_risk(tmp_path: Path) -> None:
    spec = make_spec(
        [
            {"metric": "roc_auc", "min": 0.85, "warn_margin": 0.02},
            {"metric": "brier", "max": 0.12, "warn_margin": 0.01},
        ],
        [
            {
                "metric": "demographic_parity_ratio",
                "attribute": "race_ethnicity",
                "min": 0.8,
                "warn_margin": 0.05,
            }
        ],
    )
    dirs = write_inputs(tmp_path, _metrics(roc_auc=0.86, brier=0.115), fairness=_fairness(0.83))
    report = check_gates(spec, *dirs)
    assert report.passed and report.high_risk
    statuses = {c.name: c.status for c in report.checks}
    assert statuses == {
        "roc_auc": "warn",
        "brier": "warn",
        "demographic_parity_ratio:race_ethnicity": "warn",
        "proxy": "pass",
    }
    messages = {c.name: c.message for c in report.checks}
    assert messages["roc_auc"] == "roc_auc 0.86 >= min 0.85 (within warn margin 0.02)"
    written = json.loads((dirs[1] / "gates.json").read_text())
    assert written["high_risk"] is True and written["passed"] is True
    # exactly at min + margin is outside the margin: a plain pass
    dirs = write_inputs(tmp_path / "edge", _metrics(roc_auc=0.875, brier=0.05))
    edge = check_gates(spec, *dirs)
    assert {c.name: c.status for c in edge.checks}["roc_auc"] == "pass"


def test_flagged_proxy_is_a_warning_not_a_failure(tmp_path: Path) -> None:
    spec = make_spec([{"metric": "roc_auc", "min": 0.85}], [])
    dirs = write_inputs(tmp_path, _metrics(), fairness=_fairness(flagged=True))
    report = check_gates(spec, *dirs)
    assert report.passed and report.high_risk
    (proxy,) = [c for c in report.checks if c.kind == "proxy"]
    assert proxy.name == "proxy:postcode_risk_index:race_ethnicity"
    assert (proxy.status, proxy.attribute, proxy.value, proxy.threshold, proxy.op) == (
        "warn",
        "race_ethnicity",
        0.93,
        0.7,
        "<=",
    )
    assert "postcode_risk_index predicts race_ethnicity" in proxy.message
    assert report.warnings == [proxy.message]


def test_missing_metric_is_a_clear_failure_naming_it(tmp_path: Path) -> None:
    spec = make_spec(
        [
            {"metric": "pr_auc", "min": 0.3},
            {"metric": "recall_at_fpr", "at": 0.05, "min": 0.5},
            {"metric": "roc_auc", "relative_to": "champion", "min": -0.005},
        ],
        [{"metric": "false_positive_rate_difference", "attribute": "sex", "max": 0.02}],
    )
    candidate = _metrics()
    del candidate["pr_auc"]
    champion = _metrics()
    del champion["roc_auc"]
    dirs = write_inputs(tmp_path, candidate, champion=champion)
    with pytest.raises(GateFailedError) as info:
        check_gates(spec, *dirs)
    failures = info.value.failures
    assert len(failures) == 4
    assert failures[0] == "pr_auc cannot be checked: candidate pr_auc is missing from metrics.json"
    assert "recall_at_fpr@0.05" in failures[1] and "'0.05'" in failures[1]
    assert "['0.01']" in failures[1]  # what metrics.json does have
    assert "champion roc_auc is missing from metrics.json" in failures[2]
    assert "'false_positive_rate_difference'" in failures[3] and "'sex'" in failures[3]
    assert not isinstance(info.value, KeyError)


def test_missing_input_files_fail_closed(tmp_path: Path) -> None:
    spec = make_spec([{"metric": "roc_auc", "min": 0.85}], DEFAULT_FAIRNESS_GATES[:1])
    empty = GateInputs(*(tmp_path / n for n in ("evaluate", "fairness", "explain")))
    with pytest.raises(GateFailedError) as info:
        check_gates(spec, empty, tmp_path / "gates")
    assert len(info.value.failures) == 2
    assert all("not found" in f for f in info.value.failures)
    assert "metrics.json not found" in info.value.failures[0]
    assert "fairness.json not found" in info.value.failures[1]
    assert json.loads((tmp_path / "gates" / "gates.json").read_text())["passed"] is False


def test_at_key_matches_numerically_and_rerun_is_identical(tmp_path: Path) -> None:
    spec = make_spec([{"metric": "precision_at_recall", "at": 0.5, "min": 0.2}], [])
    dirs = write_inputs(tmp_path, _metrics(precision_at_recall={"0.50": 0.3}))
    first = check_gates(spec, *dirs)
    assert first.checks[0].value == 0.3
    content = (dirs[1] / "gates.json").read_bytes()
    assert check_gates(spec, *dirs) == first
    assert (dirs[1] / "gates.json").read_bytes() == content
