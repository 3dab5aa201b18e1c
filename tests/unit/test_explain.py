"""Explain stage: TreeSHAP importance (cross-checked with shap), stability, reason codes."""

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
from pipelines.reasons import contributions
from pipelines.spec import ModelSpec, load_spec
from pipelines.stages.explain import explain
from validation.explain import sample_rows, stability

ROOT = Path(__file__).resolve().parents[2]
N_ROWS = 4_000
PARAMS = {
    "objective": "binary",
    "verbose": -1,
    "seed": 1,
    "num_leaves": 15,
    "min_child_samples": 30,
    "learning_rate": 0.1,
    "num_threads": 1,
}
REASON_COLUMNS = (
    ["id", "score"]
    + [f"reason_{i}" for i in range(1, 5)]
    + [f"reason_{i}_feature" for i in range(1, 5)]
    + [f"reason_{i}_contribution" for i in range(1, 5)]
)


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return load_spec(ROOT / "specs" / "credit.yaml")


@pytest.fixture(scope="module")
def run(spec: ModelSpec, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """features/, train/model.txt, evaluate/scores.parquet and a champion model."""
    root = tmp_path_factory.mktemp("run")
    df = generate_credit(CreditConfig(n_rows=N_ROWS, seed=3, bias=0.5))
    features = spec.features.names
    columns = ["application_id", "application_time", "default_12m", *features]
    table = df[[*columns, *spec.protected_attributes, "region", "label_time"]]
    test_mask = table["application_id"] % 4 == 0
    train, test = table[~test_mask], table[test_mask]
    dirs = {name: root / name for name in ("features", "train", "evaluate", "champion")}
    for path in dirs.values():
        path.mkdir()
    train.to_parquet(dirs["features"] / "train.parquet", index=False)
    test.to_parquet(dirs["features"] / "test.parquet", index=False)
    booster = lgb.train(PARAMS, lgb.Dataset(train[features], train["default_12m"]), 40)
    booster.save_model(str(dirs["train"] / "model.txt"))
    champ_features = [f for f in features if f != "postcode_risk_index"]
    champion = lgb.train(
        {**PARAMS, "num_leaves": 5}, lgb.Dataset(train[champ_features], train["default_12m"]), 20
    )
    champion.save_model(str(dirs["champion"] / "model.txt"))
    score = booster.predict(test[features])
    scores = pd.DataFrame(
        {
            "id": test["application_id"].to_numpy(),
            "target": test["default_12m"].to_numpy(),
            "score": score,
            "baseline_score": score,
            "champion_score": champion.predict(test[champ_features]),
            "decision": (score >= spec.gates.decision_threshold).astype(np.int8),
        }
    )
    scores.to_parquet(dirs["evaluate"] / "scores.parquet", index=False)
    return {"root": root, "dirs": dirs, "test": test, "scores": scores, "features": features}


def _explain(spec: ModelSpec, run: dict[str, Any], out: Path, **kwargs: Any) -> Any:
    d = run["dirs"]
    return explain(spec, d["features"], d["train"], d["evaluate"], out, **kwargs)


def test_contributions_agree_with_shap_tree_explainer(run: dict[str, Any]) -> None:
    import shap

    booster = lgb.Booster(model_file=str(run["dirs"]["train"] / "model.txt"))
    frame = run["test"].head(300)
    ours = contributions(booster, frame)
    explainer = shap.TreeExplainer(booster)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = np.asarray(explainer.shap_values(frame[booster.feature_name()]))
    # shap returns the feature columns only; its expected_value is our bias column
    assert values.shape == (len(frame), ours.shape[1] - 1)
    np.testing.assert_allclose(values, ours[:, :-1], atol=1e-6)
    np.testing.assert_allclose(float(np.ravel(explainer.expected_value)[0]), ours[:, -1], atol=1e-6)
    # additivity: contributions sum to the raw score (log-odds), sigmoid -> the probability
    raw = ours.sum(axis=1)
    np.testing.assert_allclose(
        1 / (1 + np.exp(-raw)), booster.predict(frame[booster.feature_name()])
    )


def test_contributions_agree_with_shaps_own_tree_shap() -> None:
    """shap delegates LightGBM to LightGBM's own TreeSHAP; on a numeric model, compare with
    shap's independent implementation (its parsed tree ensemble)."""
    import shap

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(1500, 4)), columns=["a", "b", "c", "d"])
    frame.loc[::11, "a"] = np.nan
    y = (frame["a"].fillna(0) + frame["b"] * frame["c"] + rng.normal(size=1500) > 0.3).astype(int)
    booster = lgb.train({**PARAMS, "num_leaves": 7}, lgb.Dataset(frame, y), 20)
    explainer = shap.TreeExplainer(booster)
    explainer.model.model_type = "internal"  # force shap's own algorithm (test only)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = explainer.shap_values(frame)
    ours = contributions(booster, frame)
    np.testing.assert_allclose(values, ours[:, :-1], atol=1e-6)


def test_explain_writes_importance_plot_and_reason_codes(
    spec: ModelSpec, run: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "explain"
    result = _explain(spec, run, out, max_rows=500)
    assert sorted(p.name for p in out.iterdir()) == [
        "reason_codes.parquet",
        "result.json",
        "shap_importance.json",
        "shap_summary.png",
    ]
    importance = json.loads((out / "shap_importance.json").read_text())
    assert set(importance) == {"mean_abs_shap", "ranking", "stability", "rows_explained"}
    assert importance["rows_explained"] == 500 == result.rows_explained
    assert importance["stability"] == {"champion_spearman": None, "top10_overlap": None}
    mean_abs = importance["mean_abs_shap"]
    assert set(mean_abs) == set(run["features"])
    ranking = importance["ranking"]
    assert sorted(ranking) == sorted(run["features"])
    assert [mean_abs[f] for f in ranking] == sorted(mean_abs.values(), reverse=True)
    assert tuple(ranking) == result.ranking
    # the strongest drivers of the synthetic default label rank high
    assert {"credit_utilisation", "debt_to_income"} & set(ranking[:4])
    assert (out / "shap_summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    codes = pd.read_parquet(out / "reason_codes.parquet")
    flagged = run["scores"][run["scores"]["decision"] == 1].sort_values("id")
    assert list(codes.columns) == REASON_COLUMNS
    assert codes["id"].tolist() == flagged["id"].tolist()
    assert len(codes) == result.reason_rows > 0
    np.testing.assert_allclose(codes["score"], flagged["score"])
    contrib = codes[[f"reason_{i}_contribution" for i in range(1, 5)]].to_numpy()
    assert (contrib[:, 0] > 0).all()  # a declined row has at least one adverse factor
    filled = np.where(np.isnan(contrib), -np.inf, contrib)
    assert (np.diff(filled, axis=1) <= 0).all()  # largest first
    labels = dict(spec.reason_codes)
    for i in range(1, 5):
        present = codes[f"reason_{i}_feature"].notna()
        expected = codes.loc[present, f"reason_{i}_feature"].map(lambda f: labels.get(f, f))
        assert codes.loc[present, f"reason_{i}"].tolist() == expected.tolist()
        assert codes.loc[~present, f"reason_{i}"].isna().all()
    assert "Debt-to-income ratio too high" in set(codes["reason_1"]) | set(codes["reason_2"])


def test_reason_codes_equal_the_shared_ranking(
    spec: ModelSpec, run: dict[str, Any], tmp_path: Path
) -> None:
    from pipelines.reasons import reason_codes

    _explain(spec, run, tmp_path / "e", max_rows=100)
    codes = pd.read_parquet(tmp_path / "e" / "reason_codes.parquet").head(20)
    booster = lgb.Booster(model_file=str(run["dirs"]["train"] / "model.txt"))
    rows = run["test"].set_index("application_id").loc[codes["id"]]
    expected = reason_codes(contributions(booster, rows), booster.feature_name(), spec.reason_codes)
    for (_, row), reasons in zip(codes.iterrows(), expected, strict=True):
        for i, reason in enumerate(reasons, start=1):
            assert row[f"reason_{i}_feature"] == reason.feature
            assert row[f"reason_{i}"] == reason.label
            assert row[f"reason_{i}_contribution"] == pytest.approx(reason.contribution)


def test_stability_against_the_champion(
    spec: ModelSpec, run: dict[str, Any], tmp_path: Path
) -> None:
    d = run["dirs"]
    same = _explain(spec, run, tmp_path / "same", champion_model=d["train"] / "model.txt")
    assert same.champion_spearman == pytest.approx(1.0)
    assert same.top10_overlap == 1.0
    other = _explain(spec, run, tmp_path / "other", champion_model=d["champion"] / "model.txt")
    assert other.champion_spearman is not None and -1.0 <= other.champion_spearman < 1.0
    assert other.champion_spearman > 0.5  # same data, similar drivers
    assert 0.0 < other.top10_overlap <= 1.0
    written = json.loads((tmp_path / "other" / "shap_importance.json").read_text())
    assert written["stability"] == {
        "champion_spearman": other.champion_spearman,
        "top10_overlap": other.top10_overlap,
    }


def test_stability_helper() -> None:
    a = {"x": 3.0, "y": 2.0, "z": 1.0, "only_a": 0.5}
    b = {"x": 1.0, "y": 2.0, "z": 3.0}
    rho, overlap = stability(a, b, top_k=2)
    assert rho == pytest.approx(-1.0)  # over the shared features x, y, z
    assert overlap == 0.5  # top-2 {x, y} vs {z, y}
    assert stability({"x": 1.0}, {"x": 2.0}) == (None, 1.0)


def test_deterministic_and_idempotent(spec: ModelSpec, run: dict[str, Any], tmp_path: Path) -> None:
    first = _explain(spec, run, tmp_path / "a", max_rows=300)
    files = {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()}
    again = _explain(spec, run, tmp_path / "a", max_rows=300)
    assert again == first
    assert {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()} == files
    # the sample is seeded and in id order
    test = run["test"]
    sample = sample_rows(test, "application_id", 300, seed=11)
    assert sample["application_id"].is_monotonic_increasing
    assert (
        sample["application_id"].tolist()
        == sample_rows(test.sample(frac=1.0, random_state=0), "application_id", 300, seed=11)[
            "application_id"
        ].tolist()
    )
    assert len(sample_rows(test, "application_id", 10**6, seed=11)) == len(test)
