"""Compliance monitoring: fairness over time, reason coverage, model card, approvals."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.errors import DataValidationError
from pipelines.reasons import reason_codes
from pipelines.spec import load_spec
from registry.approvals import ApprovalState
from registry.model_card import card_context
from validation.compliance import (
    approvals_validity,
    decline_reason_coverage,
    fairness_over_time,
    model_card_completeness,
    top_adverse_factors,
)
from validation.group_fairness import FAIRNESS_METRICS, MIN_GROUP_ROWS, assess_groups, group_labels

START = pd.Timestamp("2024-03-01", tz="UTC")
DAY = pd.Timedelta(days=1)
ROOT = Path(__file__).resolve().parents[2]
SELECTION = ("demographic_parity_ratio", "demographic_parity_difference")


def decisions(n: int = 6000, *, days: int = 3, seed: int = 3) -> pd.DataFrame:
    """Credit decisions with a group effect; '65+' is small, so some windows drop it."""
    rng = np.random.default_rng(seed)
    ts = START + pd.to_timedelta(np.sort(rng.uniform(0, days * 86400, n)), unit="s")
    band = rng.choice(["18-25", "26-40", "41-65", "65+"], n, p=[0.25, 0.4, 0.3, 0.05])
    band = np.where(rng.random(n) < 0.03, None, band)  # missing context
    shift = pd.Series(band).map({"18-25": 0.08, "26-40": 0.0, "41-65": -0.03}).fillna(0.02)
    y = (rng.random(n) < 0.1).astype(np.float64)
    score = np.clip(0.2 + 0.3 * y + shift.to_numpy() + rng.normal(0, 0.15, n), 0, 1)
    decision = np.where(score >= 0.35, "decline", "approve").astype(object)
    decision[rng.random(n) < 0.01] = None  # not decided (referred)
    arrival = ts + pd.to_timedelta(rng.uniform(1, 20, n), unit="D")
    return pd.DataFrame(
        {
            "timestamp": ts,
            "score": score,
            "decision": decision,
            "customer_age_band": band,
            "age": rng.integers(18, 80, n),
            "label": y,
            "label_time": arrival,
        }
    )


def reference(rows: pd.DataFrame, groups: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """validation.fairness on one frame, its small groups left out as the stage does."""
    sizes = pd.Series(groups).value_counts()
    keep = np.isin(groups, sizes.index[sizes >= MIN_GROUP_ROWS].to_numpy())
    adverse = (rows["decision"] == "decline").to_numpy().astype(np.int64)
    metrics = assess_groups(
        y[keep].astype(np.int64), adverse[keep], groups[keep], 0, np.random.default_rng(0)
    )["metrics"]
    return {k: math.nan if v["value"] is None else v["value"] for k, v in metrics.items()}


def test_fairness_over_time_equals_validation_fairness_on_each_window() -> None:
    obs = decisions()
    as_of = START + 12 * DAY  # about half the labels are in
    table = fairness_over_time(
        obs, attribute="customer_age_band", window="1D", adverse="decline", as_of=as_of
    )
    groups = group_labels(obs["customer_age_band"])
    assert len(table) == 3 and (table["attribute"] == "customer_age_band").all()
    checked_small_group = False
    for row in table.itertuples():
        window = (obs["timestamp"] >= row.window_start) & (obs["timestamp"] < row.window_end)
        decided = window & obs["decision"].notna()
        labelled = decided & (obs["label_time"] <= as_of)
        assert row.n == decided.sum() and row.n_labelled == labelled.sum()
        assert 0 < row.n_labelled < row.n
        everyone = reference(obs[decided], groups[decided], np.zeros(decided.sum()))
        known = reference(obs[labelled], groups[labelled], obs.loc[labelled, "label"].to_numpy())
        for name in FAIRNESS_METRICS:
            expected = everyone[name] if name in SELECTION else known[name]
            assert getattr(row, name) == pytest.approx(expected, rel=1e-12, nan_ok=True), name
        sizes = pd.Series(groups[labelled]).value_counts()
        checked_small_group |= bool((sizes < MIN_GROUP_ROWS).any())
        assert row.groups_labelled == (sizes >= MIN_GROUP_ROWS).sum()
    assert checked_small_group  # the exclusion of small groups was exercised
    assert table["demographic_parity_difference"].gt(0.05).all()  # the built-in disparity


def test_label_metrics_wait_for_labels_and_numeric_attributes_are_binned() -> None:
    obs = decisions(n=3000, days=2)
    early = fairness_over_time(
        obs, attribute="age", adverse="decline", as_of=START + 2 * DAY, min_rows=100
    )
    assert early["n_labelled"].lt(100).all()
    assert early[["equalized_odds_difference", "false_positive_rate_difference"]].isna().all().all()
    assert early["demographic_parity_ratio"].notna().all()
    assert (early["groups"] == 5).all()  # quantile bins over the whole frame, as the stage
    later = fairness_over_time(obs, attribute="age", adverse="decline")  # every label in
    assert later["equalized_odds_difference"].notna().all()
    pd.testing.assert_series_equal(
        early["demographic_parity_ratio"], later["demographic_parity_ratio"]
    )


def test_fairness_over_time_rejects_bad_input() -> None:
    obs = decisions(n=500, days=1)
    with pytest.raises(DataValidationError, match="'declined'"):
        fairness_over_time(obs, attribute="customer_age_band", adverse="declined")
    with pytest.raises(DataValidationError, match="'gender'"):
        fairness_over_time(obs, attribute="gender", adverse="decline")
    with pytest.raises(DataValidationError, match="'fortnightly'"):
        fairness_over_time(obs, attribute="age", adverse="decline", window="fortnightly")


FEATURES = ["income", "utilisation", "delinquencies", "zip_density"]
LABELS = {
    "income": "Income insufficient for the amount requested",
    "utilisation": "Proportion of balances to credit limits too high",
    "delinquencies": "Recent delinquency on accounts",
    "zip_density": "  ",  # a blank label is no label
}


def test_decline_reason_coverage_on_a_hand_made_matrix() -> None:
    contributions = np.array(
        [
            [0.5, 0.2, -0.1, 0.0, -2.0],  # income, utilisation: complete
            [0.1, 0.0, 0.3, 0.4, -2.0],  # zip_density first: incomplete
            [-0.2, -0.1, -0.3, -0.1, -2.0],  # nothing raised the score: no reasons
            [0.9, 0.8, 0.7, 0.6, -2.0],  # zip_density is only the fourth factor
            [0.3, 0.3, 0.3, 0.3, -2.0],  # ties by name: delinquencies, income, utilisation
            [0.0, 0.0, 0.0, 5.0, -2.0],  # approved: not an adverse decision
        ]
    )
    adverse = np.array([True, True, True, True, True, False])
    three = decline_reason_coverage(contributions, FEATURES, LABELS, adverse, top_k=3)
    assert three == {
        "adverse": 5,
        "complete": 3,
        "incomplete": 1,
        "without_factors": 1,
        "share_complete": 0.6,
        "top_k": 3,
        "unlabelled_features": [{"feature": "zip_density", "decisions": 1}],
    }
    four = decline_reason_coverage(contributions, FEATURES, LABELS, adverse, top_k=4)
    assert (four["complete"], four["incomplete"]) == (1, 3)
    assert four["unlabelled_features"] == [{"feature": "zip_density", "decisions": 3}]
    labelled = {**LABELS, "zip_density": "Too many recent applications nearby"}
    full = decline_reason_coverage(contributions[:, :4], FEATURES, labelled, adverse, top_k=4)
    assert full["complete"] == 4 and full["unlabelled_features"] == []
    none = decline_reason_coverage(contributions, FEATURES, LABELS, np.zeros(6, dtype=bool))
    assert none["adverse"] == 0 and none["share_complete"] is None
    with pytest.raises(DataValidationError, match="adverse_mask"):
        decline_reason_coverage(contributions, FEATURES, LABELS, np.ones(5, dtype=bool))
    with pytest.raises(DataValidationError, match="contributions"):
        decline_reason_coverage(contributions[:, :3], FEATURES, LABELS, adverse)


def test_top_adverse_factors_choose_what_reason_codes_chooses() -> None:
    rng = np.random.default_rng(11)
    names = ["b", "e", "a", "d", "c", "f"]
    values = np.round(rng.normal(size=(400, 6)), 1)  # many ties
    values[rng.random(values.shape) < 0.05] = np.nan
    by_name = np.argsort(np.asarray(names, dtype=object), kind="stable")
    for k in (1, 3, 6, 8):
        top = top_adverse_factors(values[:, by_name], len(names), k)
        expected = reason_codes(values, names, {}, k)
        got = [[names[by_name[j]] for j in row if j >= 0] for row in top]
        assert got == [[r.feature for r in reasons] for reasons in expected]


def _write(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))


def test_model_card_completeness_on_the_real_card_context(tmp_path: Path) -> None:
    spec = load_spec(ROOT / "specs" / "fraud.yaml")
    empty = model_card_completeness(card_context(spec, tmp_path, "run-1", None))
    assert empty["missing"] == [
        "fingerprint.source", "fingerprint.sha256", "features", "metrics", "business",
        "fairness_attributes", "top_features", "gates.checks", "code_version",
    ]  # fmt: skip
    assert empty["present"] == 3 and empty["share"] == pytest.approx(3 / 12)

    _write(
        tmp_path / "ingest" / "fingerprint.json",
        {"source": "s3://lake/tx", "sha256": "ab" * 32, "rows": 9},
    )
    _write(tmp_path / "features" / "features.json", {"names": ["amount", "channel"]})
    _write(
        tmp_path / "evaluate" / "metrics.json",
        {"candidate": {"roc_auc": 0.93}, "business": {"candidate": {"alert_rate": 0.004}}},
    )
    _write(tmp_path / "fairness" / "fairness.json", {"gate_metrics": {"region": {"x": 0.9}}})
    _write(tmp_path / "explain" / "shap_importance.json", {"mean_abs_shap": {"amount": 0.4}})
    _write(tmp_path / "gates" / "gates.json", {"checks": [{"name": "roc_auc", "status": "pass"}]})
    _write(
        tmp_path / "lineage" / "lineage.json",
        {"entries": [{"kind": "code", "details": {"version": "9f1c2e"}}]},
    )
    full = model_card_completeness(card_context(spec, tmp_path, "run-1", "4"))
    assert full == {"required": 12, "present": 12, "share": 1.0, "missing": []}
    custom = model_card_completeness({"a": {"b": [None, ""]}, "c": 0}, ["a.b", "c", "d"])
    assert custom["missing"] == ["a.b", "d"]


def _state(request_id: int, status: str, **times: str | None) -> ApprovalState:
    return ApprovalState(
        id=request_id, model_name="fraud", model_version=str(request_id),
        artifact_sha256="0" * 64, run_id=f"run-{request_id}", dag_id=None, triggered_by="ci",
        author="alice", approver_roles=["model_risk"], required_approvers=1, risk_reasons=[],
        status=status, requested_at="2024-03-01T00:00:00+00:00",
        respond_by=times.get("respond_by") or "2024-03-02T00:00:00+00:00",
        valid_until=times.get("valid_until"), consumed_at=times.get("consumed_at"), decisions=[],
    )  # fmt: skip


def test_approvals_validity_counts_valid_expired_and_used() -> None:
    now = dt.datetime(2024, 3, 5, 12, 0, tzinfo=dt.UTC)
    records = [
        _state(1, "approved", valid_until="2024-03-07T12:00:00+00:00"),
        _state(2, "approved", valid_until="2024-03-05T14:00:00+00:00").to_dict(),
        _state(3, "approved", valid_until="2024-03-05T11:59:59+00:00"),  # lapsed unused
        _state(4, "approved", valid_until="2024-03-06T00:00:00", consumed_at="2024-03-05T09:00"),
        _state(5, "pending", respond_by="2024-03-05T08:00:00+00:00"),  # past its deadline
        _state(6, "pending", respond_by="2024-03-06T08:00:00+00:00"),
        _state(7, "rejected"),
        {"id": 8, "status": "approved", "valid_until": "2024-03-05T13:00:00"},  # naive: UTC
    ]
    report = approvals_validity(records, now)
    assert report == {
        "total": 8,
        "valid": 3,
        "expired": 1,
        "used": 1,
        "overdue": 1,
        "by_status": {"approved": 5, "pending": 2, "rejected": 1},
        "earliest_expiry": "2024-03-05T13:00:00+00:00",
        "earliest_expiry_request": 8,
    }
    assert approvals_validity([], now)["earliest_expiry"] is None
    with pytest.raises(DataValidationError, match="valid_until"):
        approvals_validity([{"status": "approved", "valid_until": "soon"}], now)
