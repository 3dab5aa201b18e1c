"""Explainability of a candidate: TreeSHAP global importance, stability, reason codes.

``explain_candidate(spec, ExplainInputs(features_dir, train_dir, eval_dir, champion_model))``
is the computation of the explain stage (:mod:`pipelines.stages.explain`, which writes
``shap_importance.json``, ``shap_summary.png``, ``reason_codes.parquet`` and
``result.json`` from its :class:`Explanation`; formats in ``docs/lifecycle.md``).

* Contributions are LightGBM's TreeSHAP (``pred_contrib=True``) through
  :func:`pipelines.reasons.contributions`, on the raw (log-odds) scale; ``shap`` itself is
  used for the summary plot only. For a LightGBM booster ``shap.TreeExplainer`` (default
  ``tree_path_dependent``) calls the same LightGBM routine, so the values agree exactly,
  and its ``expected_value`` is our bias column (the tests check both, and check shap's
  own TreeSHAP implementation on a numeric model to ~1e-12).
* Global importance = mean |contribution| per feature over a deterministic sample of the
  test rows: ``max_rows`` rows drawn without replacement with ``spec.training.seed``
  (all rows when there are fewer), in id order.
* Stability against the champion (when given, scored on the same sample): Spearman
  correlation of the mean-|SHAP| values over the features both models use, and the share
  of the top ``k = min(10, features of either model)`` features they have in common.
* Reason codes: every flagged/declined test row (``decision == 1`` in
  ``scores.parquet``), up to four adverse factors (:func:`pipelines.reasons.reason_codes`)
  labelled from ``spec.reason_codes``.
"""

from __future__ import annotations

import importlib.util
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.errors import DataValidationError
from pipelines.reasons import DEFAULT_REASONS, contributions, reason_codes
from pipelines.spec import ModelSpec

log = logging.getLogger(__name__)

TOP_K = 10
PLOT_MAX_FEATURES = 20


def load_booster(path: Path) -> Any:
    """The booster through ``pipelines.training.load_model`` (plain LightGBM without it)."""
    if not path.exists():
        raise DataValidationError(f"explain: model file {path} does not exist")
    if importlib.util.find_spec("pipelines.training") is not None:
        from pipelines.training import load_model

        return load_model(path)
    import lightgbm as lgb

    log.debug("pipelines.training is not available; loading %s with LightGBM", path)
    return lgb.Booster(model_file=str(path))


# ----------------------------------------------------------------------------- pieces


def sample_rows(frame: pd.DataFrame, id_column: str, max_rows: int, seed: int) -> pd.DataFrame:
    """Up to ``max_rows`` rows drawn without replacement (seeded), in id order."""
    ordered = frame.sort_values(id_column, kind="stable").reset_index(drop=True)
    if len(ordered) <= max_rows:
        return ordered
    picked = np.sort(np.random.default_rng(seed).choice(len(ordered), max_rows, replace=False))
    return ordered.iloc[picked].reset_index(drop=True)


def mean_abs_shap(contribs: np.ndarray, features: list[str]) -> dict[str, float]:
    """Mean |contribution| per feature (the bias column, if present, is ignored)."""
    values = np.abs(np.asarray(contribs, dtype=np.float64)[:, : len(features)])
    means = values.mean(axis=0) if len(values) else np.zeros(len(features))
    return {f: float(v) for f, v in zip(features, means, strict=True)}


def ranking(importance: dict[str, float]) -> list[str]:
    """Features by mean |SHAP|, largest first, ties by name."""
    return sorted(importance, key=lambda f: (-importance[f], f))


def stability(
    candidate: dict[str, float], champion: dict[str, float], top_k: int = TOP_K
) -> tuple[float | None, float | None]:
    """(Spearman of mean-|SHAP| over shared features, top-k overlap share)."""
    from scipy.stats import spearmanr

    shared = sorted(set(candidate) & set(champion))
    rho: float | None = None
    if len(shared) >= 2:
        a = np.array([candidate[f] for f in shared])
        b = np.array([champion[f] for f in shared])
        if np.ptp(a) > 0 and np.ptp(b) > 0:
            rho = float(spearmanr(a, b).statistic)
    k = min(top_k, len(candidate), len(champion))
    overlap: float | None = None
    if k > 0:
        common = set(ranking(candidate)[:k]) & set(ranking(champion)[:k])
        overlap = len(common) / k
    return rho, overlap


def _display_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Numeric feature values for the plot's colour scale (categories as their codes)."""
    out = {}
    for name in frame.columns:
        col = frame[name]
        if isinstance(col.dtype, pd.CategoricalDtype):
            out[name] = col.cat.codes.astype("float64").where(col.notna())
        else:
            out[name] = pd.to_numeric(col, errors="coerce").astype("float64")
    return pd.DataFrame(out)


def summary_png(contribs: np.ndarray, frame: pd.DataFrame, features: list[str], seed: int) -> bytes:
    """``shap.summary_plot`` (beeswarm) of the sample, as PNG bytes (deterministic)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import shap

    plt.close("all")
    shap.summary_plot(
        np.asarray(contribs)[:, : len(features)],
        _display_frame(frame[features]),
        feature_names=features,
        max_display=PLOT_MAX_FEATURES,
        show=False,
        rng=np.random.default_rng(seed),
    )
    figure = plt.gcf()
    figure.suptitle("TreeSHAP contributions (log-odds of the bad outcome)", fontsize=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()


def reason_code_frame(
    ids: np.ndarray,
    scores: np.ndarray,
    contribs: np.ndarray,
    features: list[str],
    labels: dict[str, str],
    k: int = DEFAULT_REASONS,
) -> pd.DataFrame:
    """The ``reason_codes.parquet`` table: id, score, reason_i, reason_i_feature, ..."""
    codes = reason_codes(contribs, features, labels, k=k)
    data: dict[str, Any] = {
        "id": np.asarray(ids, dtype=np.int64),
        "score": np.asarray(scores, dtype=np.float64),
    }
    for field_name, position, dtype in (
        ("", 1, "string"),
        ("_feature", 0, "string"),
        ("_contribution", 2, "float64"),
    ):
        for i in range(k):
            values = [row[i][position] if i < len(row) else None for row in codes]
            if dtype == "float64":
                data[f"reason_{i + 1}{field_name}"] = np.array(
                    [np.nan if v is None else v for v in values], dtype=np.float64
                )
            else:
                data[f"reason_{i + 1}{field_name}"] = pd.array(values, dtype="string")
    return pd.DataFrame(data)


# ----------------------------------------------------------------------------- the stage


@dataclass(frozen=True)
class ExplainInputs:
    """The explanation's inputs: the ``features``, ``train`` and ``evaluate`` folders, the
    champion's model (None: none) and how many test rows to explain at most."""

    features_dir: Path
    train_dir: Path
    eval_dir: Path
    champion_model: Path | None = None
    max_rows: int = 2000

    def __post_init__(self) -> None:
        if self.max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {self.max_rows}")


def explain_candidate(spec: ModelSpec, inputs: ExplainInputs) -> Explanation:
    """The local explanation (:data:`pipelines.backends.EXPLAIN`); see the module doc."""
    seed, id_col = spec.training.seed, spec.data.id_column

    booster = load_booster(inputs.train_dir / "model.txt")
    test_path = inputs.features_dir / "test.parquet"
    if not test_path.exists():
        raise DataValidationError(f"explain: {test_path} does not exist")
    test = pd.read_parquet(test_path)
    if id_col not in test.columns:
        raise DataValidationError(f"explain: {test_path} lacks the id column {id_col!r}")

    sample = sample_rows(test, id_col, inputs.max_rows, seed)

    def flagged_contributions(flagged: pd.DataFrame, scores_path: Path) -> np.ndarray:
        if not test[id_col].is_unique:
            raise DataValidationError(f"explain: {test_path} has duplicate ids in {id_col!r}")
        rows = test.set_index(id_col)
        unknown = ~flagged["id"].isin(rows.index)
        if unknown.any():
            raise DataValidationError(
                f"explain: {int(unknown.sum())} flagged row(s) of {scores_path} have no "
                f"{id_col!r} in {test_path}"
            )
        return contributions(booster, rows.loc[flagged["id"].to_numpy()])

    return explain_sample(spec, inputs, booster, sample, flagged_contributions)


def _champion_stability(
    champion_model: Path | None,
    sample: pd.DataFrame,
    importance: dict[str, float],
    notes: list[str],
) -> tuple[float | None, float | None]:
    """Spearman correlation and top-10 overlap of the champion's importance with the
    candidate's (``None`` without a champion, or with a note when it cannot be computed)."""
    if champion_model is None:
        return None, None
    champion = load_booster(Path(champion_model))
    champ_features = [str(f) for f in champion.feature_name()]
    missing = [f for f in champ_features if f not in sample.columns]
    if missing:
        notes.append(f"champion stability not computed: the test features lack {missing}")
        return None, None
    champ_importance = mean_abs_shap(contributions(champion, sample), champ_features)
    return stability(importance, champ_importance)


def _reason_codes(
    spec: ModelSpec,
    features: list[str],
    scores_path: Path,
    flagged_contributions: Callable[[pd.DataFrame, Path], np.ndarray],
) -> pd.DataFrame:
    """The reason codes of the flagged rows of ``scores.parquet``, by id."""
    if not scores_path.exists():
        raise DataValidationError(f"explain: {scores_path} does not exist")
    scores = pd.read_parquet(scores_path, columns=["id", "score", "decision"])
    flagged = scores[scores["decision"].astype(np.int64) == 1].sort_values("id", kind="stable")
    return reason_code_frame(
        flagged["id"].to_numpy(),
        flagged["score"].to_numpy(),
        flagged_contributions(flagged, scores_path),
        features,
        dict(spec.reason_codes),
    )


@dataclass(frozen=True)
class Explanation:
    """What an explanation (local or on Dask) found, for the stage's files
    (:func:`pipelines.stages.explain.write_explanation`): the explained sample and its
    contributions, the importance, the stability against the champion, the reason codes
    of the flagged rows and notes; ``marker`` is what a backend adds to
    ``result.json``."""

    sample: pd.DataFrame
    contributions: np.ndarray
    features: list[str]
    importance: dict[str, float]
    #: (Spearman correlation, top-10 overlap) with the champion's importance
    stability: tuple[float | None, float | None]
    reason_codes: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    marker: dict[str, Any] = field(default_factory=dict)

    @property
    def ranking(self) -> list[str]:
        """The features by mean |SHAP|, largest first."""
        return ranking(self.importance)


def explain_sample(
    spec: ModelSpec,
    inputs: ExplainInputs,
    booster: Any,
    sample: pd.DataFrame,
    flagged_contributions: Callable[[pd.DataFrame, Path], np.ndarray],
    marker: dict[str, Any] | None = None,
) -> Explanation:
    """The explanation of the stage's sample of test rows, once whatever the backend;
    ``flagged_contributions(flagged, scores_path)`` gives the contributions of the flagged
    rows (in ``flagged`` order), ``marker`` what a backend adds to ``result.json``."""
    features = [str(f) for f in booster.feature_name()]
    notes: list[str] = []
    contribs = contributions(booster, sample)
    importance = mean_abs_shap(contribs, features)
    stable = _champion_stability(inputs.champion_model, sample, importance, notes)
    table = _reason_codes(spec, features, inputs.eval_dir / "scores.parquet", flagged_contributions)
    return Explanation(sample, contribs, features, importance, stable, table, notes, marker or {})
