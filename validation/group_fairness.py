"""Group fairness metrics of decisions: groups, fairlearn's metrics, bootstrap intervals.

:func:`group_labels` names the groups of a protected attribute; :func:`metrics_from_counts`
computes the fairness metrics (fairlearn's definitions) from (group, target, decision)
cell counts; :func:`assess_groups` gives the per-group rates and every metric with a
percentile-bootstrap interval. Conventions are in :mod:`validation.fairness` (the check
of a scored candidate) and :mod:`validation.compliance` (over time windows) use them.
"""

from __future__ import annotations

import functools
import warnings
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

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
MAX_GROUPS = 10
"""A numeric protected attribute with more distinct values is cut into quantile bins."""
NUMERIC_ATTRIBUTE_BINS = 5
CI_LEVEL = 0.95
MISSING_GROUP = "<missing>"


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


def grouping_rng(seed: int, name: str) -> np.random.Generator:
    """A generator per grouping: adding an attribute does not change the others' draws."""
    return np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])
