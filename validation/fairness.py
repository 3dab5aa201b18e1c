"""Fairness assessment of a scored candidate: group metrics, bootstrap intervals, proxies.

``check_fairness(spec, FairnessInputs(features_dir, eval_dir))`` reads the test rows' protected
attributes (pass-through columns of ``features/test.parquet``; they are never features)
joined by id to ``evaluate/scores.parquet`` and returns a :class:`FairnessAssessment`
(the ``fairness.json`` report and its summary); it writes nothing. The stage
(:mod:`pipelines.stages.fairness`) writes ``fairness.json``, ``fairness.md`` and
``result.json`` (formats in ``docs/lifecycle.md``). The group metrics and their intervals
are :mod:`validation.group_fairness`.

Conventions
-----------
* Favourable outcome: approved (credit) / not flagged (fraud), i.e. ``decision == 0`` in
  ``scores.parquet``. ``selection_rate`` and the demographic-parity metrics are computed
  on it (fairlearn's selection rate counts ``y_pred == 1``, so the favourable indicator
  is passed as ``y_pred``); the four-fifths rule reads ``demographic_parity_ratio >= 0.8``.
* ``tpr``/``fpr`` and the equalized-odds metrics take the model's adverse decision
  (flagged/declined) as the prediction of the bad outcome (``target == 1``): TPR is the
  share of bad outcomes caught, FPR the share of good customers flagged or declined.
  Differences do not depend on this choice; ``equalized_odds_ratio`` does.
* Point estimates are fairlearn's (``MetricFrame``, ``demographic_parity_ratio``,
  ``equalized_odds_difference``, ... with ``sensitive_features``; a group without bad
  outcomes gets TPR 0 there, as in fairlearn, and the report says so).
* 95 % intervals: percentile bootstrap over test rows (``n_bootstrap`` resamples, seeded).
  Resampling rows is the same as drawing the (group, target, decision) cell counts from a
  multinomial, which is how it is done here (fast, and the metrics are recomputed from the
  counts with fairlearn's definitions). When the percentile interval of a min/max-type
  statistic excludes the point estimate (bootstrap bias), it is widened to include it.
* Groups with fewer than :data:`~validation.group_fairness.MIN_GROUP_ROWS` test rows are
  left out of an attribute's metrics; intersections: every pair of protected attributes
  (``a×b``);
  groups with fewer than :data:`MIN_INTERSECTION_GROUP_ROWS` test rows are left out
  (both listed in ``fairness.md``), and an attribute or intersection with fewer than
  two groups left is skipped.
* Numeric protected attributes with more than :data:`~validation.group_fairness.MAX_GROUPS`
  distinct values are cut into
  :data:`~validation.group_fairness.NUMERIC_ATTRIBUTE_BINS` quantile bins; missing values
  form their own group.
* Proxy check: on a seeded sample of ``features/train.parquet`` (up to
  :data:`PROXY_SAMPLE_ROWS` rows, a stratified 30 % holdout), each single feature predicts
  each protected attribute with a binned class-frequency model (quantile bins for numeric
  features, one bin per category; smoothed towards the class prior), and all features
  together with a small seeded single-threaded ``RandomForestClassifier`` (entry
  ``feature`` = :data:`ALL_FEATURES`; ``HistGradientBoostingClassifier`` was dropped: its
  OpenMP threads slowed it down a hundredfold on a busy two-core worker). The score is
  the holdout ROC-AUC of the best-predicted group (one-vs-rest; for a binary attribute
  the plain AUC), and ``group`` names that group. The one-vs-rest *macro* average is
  recorded as ``macro_auc`` but not used to flag: a proxy for one group out of five is
  diluted by the macro average (the biased credit data: about 0.95 for the disadvantaged
  group, 0.65 macro). A feature is flagged when the score exceeds
  :data:`PROXY_AUC_THRESHOLD`. ``macro_auc`` and ``group`` are additions to the
  documented proxy entry.
* The DP ratio uses groups as they are: one tiny group can swing it, which the
  interval shows.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.errors import DataValidationError
from pipelines.spec import ModelSpec
from validation.fairness_summary import FairnessSummary
from validation.group_fairness import (
    MIN_GROUP_ROWS,
    assess_groups,
    group_labels,
    grouping_rng,
)

log = logging.getLogger(__name__)

MIN_INTERSECTION_GROUP_ROWS = 50
"""Intersection groups with fewer test rows are left out (their rates are noise)."""
PROXY_AUC_THRESHOLD = 0.7
"""A feature predicting a protected attribute with a holdout ROC-AUC above this is flagged."""
PROXY_SAMPLE_ROWS = 10_000
PROXY_HOLDOUT_FRACTION = 0.3
PROXY_BINS = 20
PROXY_SMOOTHING = 5.0
PROXY_FOREST_TREES = 50
PROXY_MIN_CLASS_ROWS = 10
ALL_FEATURES = "__all__"
INTERSECTION_SEP = "×"
FAVOURABLE = {"credit": "approved", "fraud": "not_flagged"}


@dataclass(frozen=True)
class FairnessAssessment(FairnessSummary):
    """What :func:`check_fairness` found: its summary and ``report`` (``fairness.json``)."""

    report: dict[str, Any] = field(kw_only=True)


# ----------------------------------------------------------------------------- proxy check


def _bin_codes(col: pd.Series, fit: np.ndarray) -> np.ndarray:
    """Integer bins of one feature: categories, or quantile bins of the fit rows."""
    if (
        isinstance(col.dtype, pd.CategoricalDtype)
        or col.dtype == object
        or pd.api.types.is_bool_dtype(col.dtype)
    ):
        codes = pd.factorize(col.astype(object), use_na_sentinel=True, sort=False)[0]
        return np.where(codes < 0, codes.max(initial=0) + 1, codes).astype(np.int64)
    x = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)
    finite = x[fit][np.isfinite(x[fit])]
    if finite.size == 0:
        return np.where(np.isnan(x), 1, 0).astype(np.int64)
    edges = np.unique(np.quantile(finite, np.linspace(0.0, 1.0, PROXY_BINS + 1)[1:-1]))
    codes = np.searchsorted(edges, x, side="right")
    return np.where(np.isnan(x), len(edges) + 1, codes).astype(np.int64)


def _binned_proba(
    col: pd.Series, y: np.ndarray, n_classes: int, fit: np.ndarray, hold: np.ndarray
) -> np.ndarray:
    codes = _bin_codes(col, fit)
    counts = np.zeros((int(codes.max()) + 1, n_classes))
    np.add.at(counts, (codes[fit], y[fit]), 1.0)
    prior = np.bincount(y[fit], minlength=n_classes) / len(fit)
    proba = (counts + PROXY_SMOOTHING * prior) / (counts.sum(axis=1) + PROXY_SMOOTHING)[:, None]
    return proba[codes[hold]]


def _forest_proba(
    frame: pd.DataFrame, y: np.ndarray, fit: np.ndarray, hold: np.ndarray, seed: int
) -> np.ndarray:
    """All features together: a small seeded random forest (single-threaded, so no
    OpenMP oversubscription on busy workers; categories as ordinal codes, NaN allowed)."""
    from sklearn.ensemble import RandomForestClassifier

    columns = {}
    for name in frame.columns:
        col = frame[name]
        if (
            isinstance(col.dtype, pd.CategoricalDtype)
            or col.dtype == object
            or pd.api.types.is_bool_dtype(col.dtype)
        ):
            codes = pd.factorize(col.astype(object), use_na_sentinel=True, sort=False)[0]
            columns[name] = codes.astype(np.float64)
        else:
            columns[name] = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)
    x = np.column_stack([columns[name] for name in frame.columns])
    model = RandomForestClassifier(
        n_estimators=PROXY_FOREST_TREES,
        min_samples_leaf=20,
        max_features="sqrt",
        n_jobs=1,
        random_state=seed,
    )
    model.fit(x[fit], y[fit])
    return model.predict_proba(x[hold])


def _auc_scores(
    y: np.ndarray, proba: np.ndarray, classes: Sequence[str]
) -> tuple[float, float, str]:
    """(best one-vs-rest AUC, macro one-vs-rest AUC, best-predicted group)."""
    from sklearn.metrics import roc_auc_score

    aucs: list[tuple[float, str]] = []
    for k, label in enumerate(classes):
        truth = (y == k).astype(np.int64)
        if 0 < truth.sum() < len(truth):
            aucs.append((float(roc_auc_score(truth, proba[:, k])), label))
    if not aucs:
        return float("nan"), float("nan"), ""
    best = max(aucs, key=lambda t: (t[0], t[1]))
    return best[0], float(np.mean([a for a, _ in aucs])), best[1]


def proxy_check(
    train: pd.DataFrame,
    features: Sequence[str],
    attributes: Sequence[str],
    seed: int,
    threshold: float = PROXY_AUC_THRESHOLD,
) -> tuple[list[dict[str, Any]], list[str]]:
    """How well each feature (and all together) predicts each protected attribute."""
    from sklearn.model_selection import train_test_split

    notes: list[str] = []
    sample = train
    if len(train) > PROXY_SAMPLE_ROWS:
        sample = train.sample(n=PROXY_SAMPLE_ROWS, random_state=seed).sort_index()
    sample = sample.reset_index(drop=True)
    entries: list[dict[str, Any]] = []
    for attribute in attributes:
        labels = pd.Series(group_labels(sample[attribute]), dtype=object)
        sizes = labels.value_counts()
        keep_classes = sorted(str(g) for g in sizes[sizes >= PROXY_MIN_CLASS_ROWS].index)
        if len(keep_classes) < 2:
            notes.append(f"proxy check skipped for {attribute}: fewer than two groups")
            continue
        if len(keep_classes) < len(sizes):
            notes.append(
                f"proxy check for {attribute}: groups with < {PROXY_MIN_CLASS_ROWS} sampled "
                "rows left out"
            )
        rows = labels.isin(keep_classes).to_numpy()
        data = sample.loc[rows].reset_index(drop=True)
        y = pd.Categorical(labels[rows], categories=keep_classes).codes.astype(np.int64)
        fit, hold = train_test_split(
            np.arange(len(y)),
            test_size=PROXY_HOLDOUT_FRACTION,
            random_state=seed,
            stratify=y,
        )
        fit, hold = np.sort(fit), np.sort(hold)
        candidates: list[tuple[str, np.ndarray]] = [
            (name, _binned_proba(data[name], y, len(keep_classes), fit, hold)) for name in features
        ]
        candidates.append((ALL_FEATURES, _forest_proba(data[list(features)], y, fit, hold, seed)))
        for name, proba in candidates:
            score, macro, group = _auc_scores(y[hold], proba, keep_classes)
            entries.append(
                {
                    "feature": name,
                    "attribute": attribute,
                    "score": score if np.isfinite(score) else None,
                    "macro_auc": macro if np.isfinite(macro) else None,
                    "group": group,
                    "threshold": threshold,
                    "flagged": bool(np.isfinite(score) and score > threshold),
                }
            )
    return entries, notes


# ----------------------------------------------------------------------------- the stage


def _read_inputs(
    spec: ModelSpec, features_dir: Path, eval_dir: Path
) -> tuple[pd.DataFrame, list[str]]:
    protected = list(spec.protected_attributes)
    id_col = spec.data.id_column
    test_path = features_dir / "test.parquet"
    scores_path = eval_dir / "scores.parquet"
    for path in (test_path, scores_path):
        if not path.exists():
            raise DataValidationError(f"fairness: {path} does not exist")
    test = pd.read_parquet(test_path)
    missing = [c for c in [id_col, *protected] if c not in test.columns]
    if missing:
        raise DataValidationError(
            f"fairness: {test_path} lacks the pass-through column(s) {missing}"
        )
    scores = pd.read_parquet(scores_path)
    need = ["id", "target", "score", "decision"]
    missing = [c for c in need if c not in scores.columns]
    if missing:
        raise DataValidationError(f"fairness: {scores_path} lacks the column(s) {missing}")
    attrs = test[[id_col, *protected]].rename(columns={id_col: "__id"})
    if not attrs["__id"].is_unique:
        raise DataValidationError(f"fairness: {test_path} has duplicate ids in {id_col!r}")
    merged = scores[need].merge(attrs, left_on="id", right_on="__id", how="left", indicator=True)
    unmatched = int((merged["_merge"] != "both").sum())
    if unmatched:
        raise DataValidationError(
            f"fairness: {unmatched} scored row(s) have no {id_col!r} in {test_path}"
        )
    merged = merged.drop(columns=["__id", "_merge"]).sort_values("id", kind="stable")
    return merged.reset_index(drop=True), protected


def _assess_groupings(
    protected: list[str],
    labels: dict[str, np.ndarray],
    y_true: np.ndarray,
    adverse: np.ndarray,
    n_bootstrap: int,
    seed: int,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, str], dict[str, dict[str, int]], list[str]]:
    """Every attribute and pair of attributes: (attributes, intersections, skipped,
    excluded groups, notes)."""
    attributes: dict[str, Any] = {}
    intersections: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    excluded: dict[str, dict[str, int]] = {}
    notes: list[str] = []
    candidates = [(a, labels[a], MIN_GROUP_ROWS, attributes) for a in protected] + [
        (
            f"{a}{INTERSECTION_SEP}{b}",
            labels[a].astype(str) + INTERSECTION_SEP + labels[b].astype(str),
            MIN_INTERSECTION_GROUP_ROWS,
            intersections,
        )
        for a, b in itertools.combinations(protected, 2)
    ]
    for key, groups, min_rows, target in candidates:
        sizes = pd.Series(groups).value_counts()
        small = sizes[sizes < min_rows]
        if len(small):
            excluded[key] = {str(g): int(n) for g, n in sorted(small.items())}
        kept = sizes.index[sizes >= min_rows]
        if len(kept) < 2:
            skipped[key] = f"fewer than two groups with >= {min_rows} test rows"
            continue
        rows = np.isin(groups, np.asarray(kept, dtype=object))
        target[key] = assess_groups(
            y_true[rows], adverse[rows], groups[rows], n_bootstrap, grouping_rng(seed, key)
        )
        notes.extend(_undefined_rate_notes(key, target[key]["by_group"]))
    return attributes, intersections, skipped, excluded, notes


def _proxies(
    spec: ModelSpec, features_dir: Path, protected: list[str], seed: int
) -> tuple[list[dict[str, Any]], list[str]]:
    """The proxy check on ``train.parquet`` (nothing without protected attributes)."""
    if not protected:
        return [], []
    train_path = features_dir / "train.parquet"
    if not train_path.exists():
        raise DataValidationError(f"fairness: {train_path} does not exist")
    train = pd.read_parquet(train_path)
    missing = [c for c in [*spec.features.names, *protected] if c not in train.columns]
    if missing:
        raise DataValidationError(f"fairness: {train_path} lacks the column(s) {missing}")
    return proxy_check(train, spec.features.names, protected, seed)


@dataclass(frozen=True)
class FairnessInputs:
    """The fairness check's inputs: the ``features`` and ``evaluate`` folders, the
    bootstrap resamples of the intervals and their seed (None: the spec's)."""

    features_dir: Path
    eval_dir: Path
    n_bootstrap: int = 200
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.n_bootstrap < 0:
            raise ValueError(f"n_bootstrap must be >= 0, got {self.n_bootstrap}")


def check_fairness(spec: ModelSpec, inputs: FairnessInputs) -> FairnessAssessment:
    """Group fairness of the candidate's decisions and a proxy check; see the module doc."""
    features_dir, eval_dir, n_bootstrap = inputs.features_dir, inputs.eval_dir, inputs.n_bootstrap
    seed = spec.training.seed if inputs.seed is None else int(inputs.seed)
    threshold = spec.gates.decision_threshold
    data, protected = _read_inputs(spec, features_dir, eval_dir)
    notes: list[str] = []

    y_true = data["target"].astype(np.int64).to_numpy()
    adverse = data["decision"].astype(np.int64).to_numpy()
    expected = (data["score"].to_numpy(dtype=np.float64) >= threshold).astype(np.int64)
    mismatched = int((expected != adverse).sum())
    if mismatched:
        notes.append(
            f"{mismatched} row(s) of scores.parquet have a decision that differs from "
            f"score >= {threshold}; the recorded decision is used"
        )
    labels = {a: group_labels(data[a]) for a in protected}
    attributes, intersections, skipped, excluded, group_notes = _assess_groupings(
        protected, labels, y_true, adverse, n_bootstrap, seed
    )
    notes.extend(group_notes)
    proxies, proxy_notes = _proxies(spec, features_dir, protected, seed)
    notes.extend(proxy_notes)

    gate_metrics = {
        a: {m: v["value"] for m, v in attributes[a]["metrics"].items()} for a in attributes
    }
    report = {
        "favourable_outcome": FAVOURABLE[spec.use_case],
        "attributes": attributes,
        "intersections": intersections,
        "proxy_check": proxies,
        "gate_metrics": gate_metrics,
    }
    return FairnessAssessment(
        report=report,
        favourable_outcome=FAVOURABLE[spec.use_case],
        decision_threshold=threshold,
        rows=len(data),
        attributes=tuple(protected),
        intersections=tuple(intersections),
        skipped_intersections=skipped,
        excluded_groups=excluded,
        proxy_flags=tuple(f"{p['feature']}->{p['attribute']}" for p in proxies if p["flagged"]),
        gate_metrics=gate_metrics,
        n_bootstrap=n_bootstrap,
        seed=seed,
        warnings=tuple(notes),
    )


def _undefined_rate_notes(name: str, by_group: dict[str, dict[str, Any]]) -> list[str]:
    notes = []
    for group, row in sorted(by_group.items()):
        if row["tpr"] is None:
            notes.append(
                f"{name}={group}: no bad outcomes, TPR undefined (fairlearn counts it as 0 "
                "in the equalized-odds metrics)"
            )
        if row["fpr"] is None:
            notes.append(
                f"{name}={group}: no good outcomes, FPR undefined (fairlearn counts it as 0 "
                "in the equalized-odds metrics)"
            )
    return notes
