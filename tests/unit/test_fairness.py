"""Fairness stage: fairlearn group metrics, bootstrap intervals, intersections, proxy check."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from pipelines.data.credit import CreditConfig, generate_credit
from pipelines.errors import DataValidationError
from pipelines.spec import ModelSpec, load_spec
from pipelines.stages.fairness import assess_fairness
from validation.fairness import (
    ALL_FEATURES,
    MIN_INTERSECTION_GROUP_ROWS,
    PROXY_AUC_THRESHOLD,
    FairnessInputs,
)
from validation.group_fairness import (
    FAIRNESS_METRICS,
    assess_groups,
    group_labels,
    metrics_from_counts,
)

ROOT = Path(__file__).resolve().parents[2]
N_ROWS = 10_000
SEED = 2


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return load_spec(ROOT / "specs" / "credit.yaml")


def write_run(spec: ModelSpec, root: Path, bias: float, seed: int = SEED) -> tuple[Path, Path]:
    """features/{train,test}.parquet and evaluate/scores.parquet as docs/lifecycle.md says."""
    df = generate_credit(CreditConfig(n_rows=N_ROWS, seed=seed, bias=bias))
    features = spec.features.names
    passthrough = [*spec.protected_attributes, "region"]
    columns = ["application_id", "application_time", "default_12m", *features, *passthrough]
    table = df[[*columns, "label_time"]].sort_values("application_id")
    test_mask = table["application_id"] % 10 < 3
    train, test = table[~test_mask], table[test_mask]
    features_dir, eval_dir = root / "features", root / "evaluate"
    features_dir.mkdir(parents=True)
    eval_dir.mkdir(parents=True)
    train.to_parquet(features_dir / "train.parquet", index=False)
    test.to_parquet(features_dir / "test.parquet", index=False)
    params = {
        "objective": "binary",
        "verbose": -1,
        "seed": 1,
        "num_leaves": 15,
        "min_child_samples": 50,
        "learning_rate": 0.1,
        "num_threads": 1,
    }
    booster = lgb.train(params, lgb.Dataset(train[features], train["default_12m"]), 60)
    score = booster.predict(test[features])
    threshold = spec.gates.decision_threshold
    pd.DataFrame(
        {
            "id": test["application_id"].to_numpy(),
            "target": test["default_12m"].to_numpy(),
            "score": score,
            "baseline_score": score,
            "champion_score": np.nan,
            "decision": (score >= threshold).astype(np.int8),
        }
    ).to_parquet(eval_dir / "scores.parquet", index=False)
    return features_dir, eval_dir


@pytest.fixture(scope="module")
def runs(spec: ModelSpec, tmp_path_factory: pytest.TempPathFactory) -> dict[float, Any]:
    out = {}
    for bias in (0.0, 0.8):
        root = tmp_path_factory.mktemp(f"bias{bias}")
        features_dir, eval_dir = write_run(spec, root, bias)
        result = assess_fairness(
            spec, FairnessInputs(features_dir, eval_dir, seed=5), root / "fairness"
        )
        report = json.loads((root / "fairness" / "fairness.json").read_text())
        out[bias] = {"root": root, "result": result, "report": report}
    return out


def _proxy(report: dict[str, Any], feature: str, attribute: str) -> dict[str, Any]:
    (entry,) = [
        p for p in report["proxy_check"] if p["feature"] == feature and p["attribute"] == attribute
    ]
    return entry


def test_four_fifths_holds_without_bias_and_breaks_with_bias(runs: dict[float, Any]) -> None:
    fair = runs[0.0]["report"]["gate_metrics"]["race_ethnicity"]["demographic_parity_ratio"]
    biased = runs[0.8]["report"]["gate_metrics"]["race_ethnicity"]["demographic_parity_ratio"]
    assert fair >= 0.85
    assert biased < 0.75
    # the disadvantaged group is the one approved least often
    by_group = runs[0.8]["report"]["attributes"]["race_ethnicity"]["by_group"]
    assert min(by_group, key=lambda g: by_group[g]["selection_rate"]) == "group_b"


def test_proxy_check_flags_the_postcode_only_with_bias(runs: dict[float, Any]) -> None:
    biased = _proxy(runs[0.8]["report"], "postcode_risk_index", "race_ethnicity")
    assert biased["flagged"] is True
    assert biased["score"] > PROXY_AUC_THRESHOLD
    assert biased["group"] == "group_b"
    assert biased["threshold"] == PROXY_AUC_THRESHOLD
    assert biased["macro_auc"] < biased["score"]
    fair = _proxy(runs[0.0]["report"], "postcode_risk_index", "race_ethnicity")
    assert fair["flagged"] is False
    assert fair["score"] < 0.65
    assert "postcode_risk_index->race_ethnicity" in runs[0.8]["result"].proxy_flags
    assert "postcode_risk_index->race_ethnicity" not in runs[0.0]["result"].proxy_flags
    # every feature and all of them together, for every protected attribute
    report = runs[0.0]["report"]
    assert len(report["proxy_check"]) == (len(report["attributes"])) * 13
    assert {p["feature"] for p in report["proxy_check"]} >= {ALL_FEATURES, "income"}


def test_fairness_json_shape_and_cis(runs: dict[float, Any], spec: ModelSpec) -> None:
    report = runs[0.8]["report"]
    assert report["favourable_outcome"] == "approved"
    assert set(report["attributes"]) == set(spec.protected_attributes)
    assert set(report["gate_metrics"]) == set(spec.protected_attributes)
    blocks = list(report["attributes"].values()) + list(report["intersections"].values())
    assert report["intersections"], "at least one pairwise intersection is assessed"
    for block in blocks:
        assert set(block["metrics"]) == set(FAIRNESS_METRICS)
        for group in block["by_group"].values():
            assert set(group) == {"rows", "selection_rate", "tpr", "fpr"}
            assert 0.0 <= group["selection_rate"] <= 1.0
        for metric in block["metrics"].values():
            value, low, high = metric["value"], metric["ci_low"], metric["ci_high"]
            assert low <= value <= high
            assert high - low < 1.0
    for name, block in report["intersections"].items():
        assert "×" in name
        assert all(g["rows"] >= MIN_INTERSECTION_GROUP_ROWS for g in block["by_group"].values())
    # the gate metrics are the point estimates
    race = report["attributes"]["race_ethnicity"]["metrics"]
    assert report["gate_metrics"]["race_ethnicity"] == {m: race[m]["value"] for m in race}
    # the interval around a clearly biased ratio excludes the four-fifths line
    assert race["demographic_parity_ratio"]["ci_high"] < 0.8
    assert (runs[0.8]["root"] / "fairness" / "fairness.md").read_text().count("|") > 50


def test_group_metrics_match_fairlearn_definitions(runs: dict[float, Any]) -> None:
    """The bootstrap's count-based metrics equal fairlearn's on the observed sample."""
    root = runs[0.8]["root"]
    scores = pd.read_parquet(root / "evaluate" / "scores.parquet")
    test = pd.read_parquet(root / "features" / "test.parquet")
    data = scores.merge(test, left_on="id", right_on="application_id")
    groups = data["age_band"].astype(str).to_numpy()
    codes, uniques = pd.factorize(groups, sort=True)
    cells = np.bincount(
        codes * 4 + data["target"].to_numpy() * 2 + data["decision"].to_numpy(),
        minlength=len(uniques) * 4,
    )
    mine = metrics_from_counts(cells.reshape(len(uniques), 2, 2))
    report = runs[0.8]["report"]["attributes"]["age_band"]["metrics"]
    for name in FAIRNESS_METRICS:
        assert float(mine[name]) == pytest.approx(report[name]["value"], abs=1e-12), name


def _rows(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows (target, decision, group) with the given cell counts [group, target, decision]."""
    y, d, g = [], [], []
    for (group, target, decision), n in np.ndenumerate(counts):
        y += [target] * n
        d += [decision] * n
        g += [f"g{group}"] * n
    return np.array(y), np.array(d), np.array(g, dtype=object)


@pytest.mark.parametrize(
    "counts",
    [
        [[[5, 5], [2, 8]], [[9, 1], [0, 0]]],  # group 1 has no bad outcomes (TPR undefined)
        [[[5, 5], [2, 8]], [[0, 0], [3, 1]]],  # group 1 has no good outcomes (FPR undefined)
        [[[10, 0], [5, 0]], [[7, 0], [1, 0]]],  # nobody declined: TPR and FPR ratios 0/0
        [[[40, 3], [6, 9]], [[20, 5], [1, 4]], [[33, 1], [2, 2]]],
    ],
)
def test_metrics_from_counts_follow_fairlearn_edge_cases(counts: list[Any]) -> None:
    import fairlearn.metrics as flm

    y, adverse, groups = _rows(np.array(counts))
    mine = metrics_from_counts(np.array(counts))
    for name in FAIRNESS_METRICS:
        y_pred = 1 - adverse if name.startswith("demographic_parity") else adverse
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = getattr(flm, name)(y, y_pred, sensitive_features=groups)
        assert float(mine[name]) == pytest.approx(expected, nan_ok=True), name


def test_metrics_from_counts_by_hand() -> None:
    counts = np.array([[[5, 5], [2, 8]], [[9, 1], [0, 0]]])
    out = metrics_from_counts(counts)
    assert float(out["true_positive_rate_difference"]) == pytest.approx(0.8)  # 0.8 vs 0
    assert float(out["false_positive_rate_difference"]) == pytest.approx(0.4)  # 0.5 vs 0.1
    assert float(out["equalized_odds_difference"]) == pytest.approx(0.8)
    assert float(out["demographic_parity_ratio"]) == pytest.approx(0.35 / 0.9)  # approvals
    # a group absent from a resample is ignored
    absent = np.array([[[5, 5], [2, 8]], [[0, 0], [0, 0]]])
    assert float(metrics_from_counts(absent)["demographic_parity_difference"]) == 0.0
    # vectorised over leading axes (the bootstrap draws)
    stacked = metrics_from_counts(np.stack([counts, counts, absent]))
    assert stacked["demographic_parity_difference"].shape == (3,)


def test_deterministic_and_idempotent(runs: dict[float, Any], spec: ModelSpec) -> None:
    root = runs[0.8]["root"]
    out = root / "fairness"
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(first) == ["fairness.json", "fairness.md", "result.json"]
    again = assess_fairness(spec, FairnessInputs(root / "features", root / "evaluate", seed=5), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first
    assert again == runs[0.8]["result"]
    result = json.loads((out / "result.json").read_text())
    assert result["stage"] == "fairness"
    assert (result["seed"], result["n_bootstrap"]) == (5, 200)


def test_bootstrap_is_seeded() -> None:
    rng = np.random.default_rng(0)
    n = 2_000
    groups = rng.choice(np.array(["a", "b", "c"], dtype=object), n)
    y = (rng.random(n) < 0.2).astype(int)
    adverse = (rng.random(n) < np.where(groups == "a", 0.3, 0.2)).astype(int)

    def run(seed: int, n_bootstrap: int = 100) -> dict[str, Any]:
        return assess_groups(y, adverse, groups, n_bootstrap, np.random.default_rng(seed))

    first, same, other = run(1), run(1), run(2)
    assert first == same
    dpr = "demographic_parity_ratio"
    assert other["metrics"][dpr]["value"] == first["metrics"][dpr]["value"]
    assert other["metrics"][dpr]["ci_low"] != first["metrics"][dpr]["ci_low"]
    none = run(1, n_bootstrap=0)["metrics"][dpr]
    assert none["value"] == first["metrics"][dpr]["value"]
    assert (none["ci_low"], none["ci_high"]) == (None, None)


def test_missing_protected_column_is_a_clear_error(
    runs: dict[float, Any], spec: ModelSpec, tmp_path: Path
) -> None:
    root = runs[0.0]["root"]
    features_dir = tmp_path / "features"
    features_dir.mkdir()
    test = pd.read_parquet(root / "features" / "test.parquet").drop(columns=["sex"])
    test.to_parquet(features_dir / "test.parquet", index=False)
    with pytest.raises(DataValidationError, match="sex"):
        assess_fairness(spec, FairnessInputs(features_dir, root / "evaluate"), tmp_path / "out")


def test_fraud_favourable_outcome_is_not_flagged(tmp_path: Path) -> None:
    """Fraud: selection rate = share not flagged; FPR = legitimate customers flagged."""
    spec = load_spec(ROOT / "specs" / "fraud.yaml")
    rng = np.random.default_rng(4)
    n = 3_000
    ages = np.array(["18-25", "26-35", "36-50", "51-65", "65+"], dtype=object)
    table = pd.DataFrame({"transaction_id": np.arange(1, n + 1, dtype=np.int64)})
    table["is_fraud"] = (rng.random(n) < 0.05).astype(np.int64)
    for name in spec.features.names:
        if spec.data.columns.get(name) is not None and spec.data.columns[name].categories:
            cats = spec.data.columns[name].categories
            table[name] = pd.Categorical(rng.choice(cats, n), categories=cats)
        else:
            table[name] = rng.gamma(2.0, 10.0, n)
    table["customer_age_band"] = pd.Categorical(rng.choice(ages, n), categories=list(ages))
    features_dir, eval_dir = tmp_path / "features", tmp_path / "evaluate"
    features_dir.mkdir()
    eval_dir.mkdir()
    table.to_parquet(features_dir / "train.parquet", index=False)
    table.to_parquet(features_dir / "test.parquet", index=False)
    # legitimate customers aged 18-25 are flagged more often (scores placed around the
    # spec's decision threshold, whatever it is)
    t = spec.gates.decision_threshold
    young = (table["customer_age_band"] == "18-25").to_numpy()
    score = np.where(table["is_fraud"] == 1, 0.99, np.where(young, t - 0.05, t - 0.45))
    score = score + rng.normal(0, 0.01, n) + (rng.random(n) < 0.15) * 0.3
    score = np.clip(score, 0, 1)
    scores = pd.DataFrame(
        {
            "id": table["transaction_id"],
            "target": table["is_fraud"],
            "score": score,
            "baseline_score": score,
            "champion_score": np.nan,
            "decision": (score >= spec.gates.decision_threshold).astype(np.int8),
        }
    )
    scores.to_parquet(eval_dir / "scores.parquet", index=False)
    result = assess_fairness(
        spec, FairnessInputs(features_dir, eval_dir, n_bootstrap=50), tmp_path / "out"
    )
    assert result.favourable_outcome == "not_flagged"
    assert result.seed == spec.training.seed
    report = json.loads((tmp_path / "out" / "fairness.json").read_text())
    by_group = report["attributes"]["customer_age_band"]["by_group"]
    flagged = scores["decision"].to_numpy() == 1
    legit = scores["target"].to_numpy() == 0
    for group, row in by_group.items():
        rows = (table["customer_age_band"] == group).to_numpy()
        assert row["rows"] == rows.sum()
        assert row["selection_rate"] == pytest.approx(1 - flagged[rows].mean())
        assert row["fpr"] == pytest.approx(flagged[rows & legit].mean())
    fpr_diff = report["gate_metrics"]["customer_age_band"]["false_positive_rate_difference"]
    assert fpr_diff == pytest.approx(
        max(r["fpr"] for r in by_group.values()) - min(r["fpr"] for r in by_group.values())
    )
    assert fpr_diff > 0.1  # the young are flagged more often
    assert report["intersections"] == {}  # one protected attribute: no pairs
    # random features predict nothing
    assert not [p for p in report["proxy_check"] if p["flagged"]]


def test_group_labels() -> None:
    ages = pd.Series(np.arange(18, 88, dtype=np.int64))
    binned = group_labels(ages)
    assert len(set(binned)) == 5  # a many-valued numeric attribute is cut into quintiles
    assert list(group_labels(pd.Series([1, 2, np.nan]))) == ["1", "2", "<missing>"]
    cats = pd.Series(pd.Categorical(["a", None, "b"], categories=["b", "a"]))
    assert list(group_labels(cats)) == ["a", "<missing>", "b"]
    assert list(group_labels(pd.Series([True, False]))) == ["True", "False"]


def test_tiny_groups_do_not_decide_the_four_fifths_test(spec: ModelSpec, tmp_path: Path) -> None:
    """Three applicants aged 65+, all approved, must not set the approval-rate ratio."""
    features_dir, eval_dir = write_run(spec, tmp_path, bias=0.0)
    test = pd.read_parquet(features_dir / "test.parquet")
    scores = pd.read_parquet(eval_dir / "scores.parquet")
    old = test["age_band"] == "65+"
    keep = ~old | (old.cumsum() <= 3)  # only three 65+ applicants remain
    test = test[keep].copy()
    test.to_parquet(features_dir / "test.parquet", index=False)
    scores = scores[scores["id"].isin(test["application_id"])].copy()
    scores.loc[
        scores["id"].isin(test.loc[test["age_band"] == "65+", "application_id"]), "decision"
    ] = 0
    scores.to_parquet(eval_dir / "scores.parquet", index=False)
    result = assess_fairness(
        spec, FairnessInputs(features_dir, eval_dir, n_bootstrap=20), tmp_path / "fairness"
    )
    assert result.excluded_groups["age_band"] == {"65+": 3}
    report = json.loads((tmp_path / "fairness" / "fairness.json").read_text())
    assert "65+" not in report["attributes"]["age_band"]["by_group"]
    assert (
        "Left out, fewer than 30 test rows: 65+ (3)"
        in (tmp_path / "fairness" / "fairness.md").read_text()
    )
