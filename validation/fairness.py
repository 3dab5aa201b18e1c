"""Fairness assessment of a scored candidate: group metrics, bootstrap intervals, proxies.

``assess_fairness(spec, features_dir, eval_dir, out_dir)`` reads the test rows'
protected attributes (pass-through columns of ``features/test.parquet``; they are never
features) joined by id to ``evaluate/scores.parquet`` and writes ``fairness.json``,
``fairness.md`` and ``result.json`` (formats in ``docs/lifecycle.md``).

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
* Groups with fewer than :data:`MIN_GROUP_ROWS` test rows are left out of an
  attribute's metrics; intersections: every pair of protected attributes (``a×b``);
  groups with fewer than :data:`MIN_INTERSECTION_GROUP_ROWS` test rows are left out
  (both listed in ``fairness.md``), and an attribute or intersection with fewer than
  two groups left is skipped.
* Numeric protected attributes with more than :data:`MAX_GROUPS` distinct values are cut
  into :data:`NUMERIC_ATTRIBUTE_BINS` quantile bins; missing values form their own group.
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

import dataclasses
import functools
import itertools
import logging
import os
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.artifacts import to_jsonable, write_bytes_atomic, write_json
from pipelines.errors import DataValidationError
from pipelines.spec import ModelSpec

log = logging.getLogger(__name__)

FAIRNESS_METRICS: tuple[str, ...] = (
    "demographic_parity_ratio",
    "demographic_parity_difference",
    "equalized_odds_difference",
    "equalized_odds_ratio",
    "false_positive_rate_difference",
    "true_positive_rate_difference",
)
MIN_GROUP_ROWS = 30
"""Groups of one attribute with fewer test rows are left out of its metrics (their rates
are noise: three applicants aged 65+ all approved must not decide a four-fifths test);
they are listed under ``excluded_groups`` and in ``fairness.md``."""
MIN_INTERSECTION_GROUP_ROWS = 50
"""Intersection groups with fewer test rows are left out (their rates are noise)."""
MAX_GROUPS = 10
"""A numeric protected attribute with more distinct values is cut into quantile bins."""
NUMERIC_ATTRIBUTE_BINS = 5
PROXY_AUC_THRESHOLD = 0.7
"""A feature predicting a protected attribute with a holdout ROC-AUC above this is flagged."""
PROXY_SAMPLE_ROWS = 10_000
PROXY_HOLDOUT_FRACTION = 0.3
PROXY_BINS = 20
PROXY_SMOOTHING = 5.0
PROXY_FOREST_TREES = 50
PROXY_MIN_CLASS_ROWS = 10
ALL_FEATURES = "__all__"
CI_LEVEL = 0.95
MISSING_GROUP = "<missing>"
INTERSECTION_SEP = "×"
FAVOURABLE = {"credit": "approved", "fraud": "not_flagged"}


@dataclass(frozen=True)
class FairnessResult:
    """What ``assess_fairness`` wrote and found (``result.json``)."""

    out_dir: str
    favourable_outcome: str
    decision_threshold: float
    rows: int
    attributes: tuple[str, ...]
    intersections: tuple[str, ...]
    skipped_intersections: dict[str, str]
    excluded_groups: dict[str, dict[str, int]]
    proxy_flags: tuple[str, ...]
    gate_metrics: dict[str, dict[str, float | None]]
    n_bootstrap: int
    seed: int
    warnings: tuple[str, ...] = ()
    files: tuple[str, ...] = ("fairness.json", "fairness.md", "result.json")
    stage: str = field(default="fairness")

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(dataclasses.asdict(self))


def group_labels(values: pd.Series) -> np.ndarray:
    """String group labels for a protected attribute (object array, one per row)."""
    if isinstance(values.dtype, pd.CategoricalDtype) or values.dtype == object:
        out = values.astype(object).map(lambda v: MISSING_GROUP if pd.isna(v) else str(v))
        return out.to_numpy(dtype=object)
    if pd.api.types.is_bool_dtype(values.dtype):
        return values.map(lambda v: MISSING_GROUP if pd.isna(v) else str(bool(v))).to_numpy(
            dtype=object
        )
    numeric = pd.to_numeric(values, errors="coerce").astype("float64")
    if numeric.dropna().nunique() > MAX_GROUPS:
        binned = pd.qcut(numeric, q=NUMERIC_ATTRIBUTE_BINS, duplicates="drop")
        return (
            binned.astype(object)
            .map(lambda v: MISSING_GROUP if pd.isna(v) else str(v))
            .to_numpy(dtype=object)
        )

    def fmt(v: float) -> str:
        if np.isnan(v):
            return MISSING_GROUP
        return str(int(v)) if float(v).is_integer() else str(v)

    return numeric.map(fmt).to_numpy(dtype=object)


# ----------------------------------------------------------------------------- metrics


def metrics_from_counts(counts: np.ndarray) -> dict[str, np.ndarray]:
    """The fairness metrics from cell counts ``counts[..., group, target, decision]``.

    ``decision`` is the adverse decision (1 = flagged/declined). Same definitions as
    fairlearn's functions: groups absent from the sample are ignored, an undefined TPR
    or FPR (no bad / no good outcomes in a group) counts as 0, ratios are min/max over
    groups (NaN when both are 0), and the equalized-odds aggregates take the worse of
    the TPR and FPR statistic.
    """
    c = np.asarray(counts, dtype=np.float64)
    rows = c.sum(axis=(-2, -1))
    present = rows > 0
    favourable = c[..., 0, 0] + c[..., 1, 0]
    positives = c[..., 1, :].sum(axis=-1)
    negatives = c[..., 0, :].sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        selection = np.where(present, favourable / np.where(present, rows, 1), np.nan)
        tpr = np.where(positives > 0, c[..., 1, 1] / np.where(positives > 0, positives, 1), 0.0)
        fpr = np.where(negatives > 0, c[..., 0, 1] / np.where(negatives > 0, negatives, 1), 0.0)

    def gmin(x: np.ndarray) -> np.ndarray:
        return np.min(np.where(present, x, np.inf), axis=-1)

    def gmax(x: np.ndarray) -> np.ndarray:
        return np.max(np.where(present, x, -np.inf), axis=-1)

    def ratio(x: np.ndarray) -> np.ndarray:
        low, high = gmin(x), gmax(x)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(high > 0, low / np.where(high > 0, high, 1), np.nan)

    tpr_diff = gmax(tpr) - gmin(tpr)
    fpr_diff = gmax(fpr) - gmin(fpr)
    tpr_ratio, fpr_ratio = ratio(tpr), ratio(fpr)
    return {
        "demographic_parity_ratio": ratio(selection),
        "demographic_parity_difference": gmax(selection) - gmin(selection),
        # fairlearn: max([tpr, fpr]) / min([tpr, fpr]) on the two aggregates
        "equalized_odds_difference": np.where(fpr_diff > tpr_diff, fpr_diff, tpr_diff),
        "equalized_odds_ratio": np.where(fpr_ratio < tpr_ratio, fpr_ratio, tpr_ratio),
        "false_positive_rate_difference": fpr_diff,
        "true_positive_rate_difference": tpr_diff,
    }


def _fairlearn_metrics(
    y_true: np.ndarray, adverse: np.ndarray, groups: np.ndarray
) -> dict[str, float]:
    from fairlearn.metrics import (
        demographic_parity_difference,
        demographic_parity_ratio,
        equalized_odds_difference,
        equalized_odds_ratio,
        false_positive_rate_difference,
        true_positive_rate_difference,
    )

    favourable = 1 - adverse
    sf = {"sensitive_features": groups}
    fns: dict[str, tuple[Callable[..., Any], np.ndarray]] = {
        "demographic_parity_ratio": (demographic_parity_ratio, favourable),
        "demographic_parity_difference": (demographic_parity_difference, favourable),
        "equalized_odds_difference": (equalized_odds_difference, adverse),
        "equalized_odds_ratio": (equalized_odds_ratio, adverse),
        "false_positive_rate_difference": (false_positive_rate_difference, adverse),
        "true_positive_rate_difference": (true_positive_rate_difference, adverse),
    }
    return {name: float(fn(y_true, y_pred, **sf)) for name, (fn, y_pred) in fns.items()}


def _by_group(
    y_true: np.ndarray, adverse: np.ndarray, groups: np.ndarray
) -> dict[str, dict[str, Any]]:
    from fairlearn.metrics import (
        MetricFrame,
        count,
        false_positive_rate,
        selection_rate,
        true_positive_rate,
    )

    frame = MetricFrame(
        metrics={
            "rows": count,
            # the favourable outcome is decision 0
            "selection_rate": functools.partial(selection_rate, pos_label=0),
            "tpr": true_positive_rate,
            "fpr": false_positive_rate,
            "positives": _positives,
        },
        y_true=y_true,
        y_pred=adverse,
        sensitive_features=pd.Series(groups, name="group"),
    ).by_group
    out: dict[str, dict[str, Any]] = {}
    for group, row in frame.iterrows():
        rows, positives = int(row["rows"]), int(row["positives"])
        out[str(group)] = {
            "rows": rows,
            "selection_rate": float(row["selection_rate"]),
            "tpr": float(row["tpr"]) if positives > 0 else None,
            "fpr": float(row["fpr"]) if rows - positives > 0 else None,
        }
    return out


def _positives(y_true: np.ndarray, y_pred: np.ndarray) -> int:
    return int(np.sum(np.asarray(y_true) == 1))


def _interval(samples: np.ndarray, value: float) -> tuple[float | None, float | None]:
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return None, None
    tail = (1.0 - CI_LEVEL) / 2.0 * 100.0
    low, high = (float(v) for v in np.percentile(finite, [tail, 100.0 - tail]))
    if np.isfinite(value):
        low, high = min(low, value), max(high, value)
    return low, high


def assess_groups(
    y_true: np.ndarray,
    adverse: np.ndarray,
    groups: np.ndarray,
    n_bootstrap: int,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """``{"by_group": ..., "metrics": {metric: {"value", "ci_low", "ci_high"}}}``."""
    y_true = np.asarray(y_true, dtype=np.int64)
    adverse = np.asarray(adverse, dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        by_group = _by_group(y_true, adverse, groups)
        point = _fairlearn_metrics(y_true, adverse, groups)
    codes, uniques = pd.factorize(pd.Series(groups, dtype=object), sort=True)
    n_cells = len(uniques) * 4
    cells = np.bincount(codes * 4 + y_true * 2 + adverse, minlength=n_cells)
    n = int(cells.sum())
    if n_bootstrap > 0 and n > 0:
        draws = rng.multinomial(n, cells / n, size=n_bootstrap)
        boot = metrics_from_counts(draws.reshape(n_bootstrap, len(uniques), 2, 2))
    else:
        boot = {name: np.array([]) for name in FAIRNESS_METRICS}
    metrics: dict[str, dict[str, float | None]] = {}
    for name in FAIRNESS_METRICS:
        value = point[name]
        low, high = _interval(boot[name], value)
        metrics[name] = {
            "value": value if np.isfinite(value) else None,
            "ci_low": low,
            "ci_high": high,
        }
    return {"by_group": by_group, "metrics": metrics}


def _rng(seed: int, name: str) -> np.random.Generator:
    """A generator per grouping: adding an attribute does not change the others' draws."""
    return np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])


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


def assess_fairness(
    spec: ModelSpec,
    features_dir: str | os.PathLike[str],
    eval_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    n_bootstrap: int = 200,
    seed: int | None = None,
) -> FairnessResult:
    """Group fairness of the candidate's decisions and a proxy check; see the module doc."""
    features_dir, eval_dir, out_dir = Path(features_dir), Path(eval_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed = spec.training.seed if seed is None else int(seed)
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    threshold = spec.gates.decision_threshold
    favourable = FAVOURABLE[spec.use_case]
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

    attributes: dict[str, Any] = {}
    intersections: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    excluded: dict[str, dict[str, int]] = {}
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
            y_true[rows], adverse[rows], groups[rows], n_bootstrap, _rng(seed, key)
        )
        notes.extend(_undefined_rate_notes(key, target[key]["by_group"]))

    proxies: list[dict[str, Any]] = []
    if protected:
        train_path = features_dir / "train.parquet"
        if not train_path.exists():
            raise DataValidationError(f"fairness: {train_path} does not exist")
        train = pd.read_parquet(train_path)
        missing = [c for c in [*spec.features.names, *protected] if c not in train.columns]
        if missing:
            raise DataValidationError(f"fairness: {train_path} lacks the column(s) {missing}")
        proxies, proxy_notes = proxy_check(train, spec.features.names, protected, seed)
        notes.extend(proxy_notes)

    gate_metrics = {
        a: {m: v["value"] for m, v in attributes[a]["metrics"].items()} for a in attributes
    }
    report = {
        "favourable_outcome": favourable,
        "attributes": attributes,
        "intersections": intersections,
        "proxy_check": proxies,
        "gate_metrics": gate_metrics,
    }
    flags = tuple(f"{p['feature']}->{p['attribute']}" for p in proxies if p["flagged"])
    result = FairnessResult(
        out_dir=str(out_dir),
        favourable_outcome=favourable,
        decision_threshold=threshold,
        rows=len(data),
        attributes=tuple(protected),
        intersections=tuple(intersections),
        skipped_intersections=skipped,
        excluded_groups=excluded,
        proxy_flags=flags,
        gate_metrics=gate_metrics,
        n_bootstrap=n_bootstrap,
        seed=seed,
        warnings=tuple(notes),
    )
    write_json(out_dir / "fairness.json", report)
    markdown = render_markdown(spec, report, result)
    write_bytes_atomic(out_dir / "fairness.md", markdown.encode("utf-8"))
    write_json(out_dir / "result.json", result.to_dict())
    for note in notes:
        log.warning("%s: %s", spec.name, note)
    log.info(
        "%s: fairness on %d test rows, %d attribute(s), %d intersection(s), %d proxy flag(s)",
        spec.name,
        len(data),
        len(protected),
        len(intersections),
        len(flags),
    )
    return result


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


# ----------------------------------------------------------------------------- report


def _f(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return str(int(value))
    return f"{float(value):.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _section(title: str, block: dict[str, Any], favourable: str) -> list[str]:
    lines = [f"### {title}", ""]
    groups = block["by_group"]
    lines += _table(
        ["group", "rows", f"selection rate ({favourable})", "TPR", "FPR"],
        [
            [g, _f(r["rows"]), _f(r["selection_rate"]), _f(r["tpr"]), _f(r["fpr"])]
            for g, r in groups.items()
        ],
    )
    lines.append("")
    lines += _table(
        ["metric", "value", "95 % CI"],
        [
            [m, _f(v["value"]), f"[{_f(v['ci_low'])}, {_f(v['ci_high'])}]"]
            for m, v in block["metrics"].items()
        ],
    )
    lines.append("")
    return lines


def render_markdown(spec: ModelSpec, report: dict[str, Any], result: FairnessResult) -> str:
    """A readable fairness report (``fairness.md``)."""
    fav = report["favourable_outcome"].replace("_", " ")
    lines = [
        f"# Fairness report: {spec.name}",
        "",
        f"- test rows: {result.rows}; decision threshold {result.decision_threshold} "
        f"(score >= threshold is {'declined' if spec.use_case == 'credit' else 'flagged'})",
        f"- favourable outcome: **{fav}**; selection rates and demographic parity are on it "
        "(four-fifths rule: ratio >= 0.8)",
        "- TPR / FPR: share of bad / good outcomes that the model flags or declines",
        f"- 95 % confidence intervals: percentile bootstrap, {result.n_bootstrap} resamples, "
        f"seed {result.seed}",
        "",
        "## Protected attributes",
        "",
    ]
    if not report["attributes"]:
        lines += ["The spec lists no protected attributes.", ""]
    for name, block in report["attributes"].items():
        lines += _section(name, block, fav)
        if name in result.excluded_groups:
            small = ", ".join(f"{g} ({n})" for g, n in result.excluded_groups[name].items())
            lines += [f"Left out, fewer than {MIN_GROUP_ROWS} test rows: {small}", ""]
    lines += [
        "## Intersections",
        "",
        f"Groups with fewer than {MIN_INTERSECTION_GROUP_ROWS} test rows are left out.",
        "",
    ]
    for name, block in report["intersections"].items():
        lines += _section(name, block, fav)
        if name in result.excluded_groups:
            small = ", ".join(f"{g} ({n})" for g, n in result.excluded_groups[name].items())
            lines += [f"Left out (rows): {small}", ""]
    for name, reason in result.skipped_intersections.items():
        lines += [f"- {name}: skipped, {reason}", ""]
    lines += [
        "## Proxy check",
        "",
        f"Holdout ROC-AUC of predicting each protected attribute from each feature "
        f"({ALL_FEATURES} = all features together); score = the best-predicted group "
        f"(one-vs-rest), flagged above {PROXY_AUC_THRESHOLD}.",
        "",
    ]
    lines += _table(
        ["attribute", "feature", "score", "best-predicted group", "macro AUC", "flagged"],
        [
            [
                p["attribute"],
                p["feature"],
                _f(p["score"]),
                p["group"],
                _f(p["macro_auc"]),
                "**yes**" if p["flagged"] else "no",
            ]
            for p in report["proxy_check"]
        ],
    )
    lines.append("")
    if result.warnings:
        lines += ["## Notes", ""] + [f"- {w}" for w in result.warnings] + [""]
    return "\n".join(lines)
