"""Drift statistics over the columns of two matrices (the monitoring issue builds on these).

* :func:`psi`: population stability index, bins from the reference's quantiles, empty
  bins floored at 1e-4; :func:`psi_matrix` does every column of two matrices at once.
* :func:`ks_matrix`: the two-sample Kolmogorov-Smirnov statistic of every column and its
  p-value, as ``scipy.stats.ks_2samp`` computes them (exact for small samples, the
  asymptotic distribution beyond 10,000 rows), NaN ignored.
* :func:`benjamini_hochberg`: which of many p-values are discoveries at a false
  discovery rate, and the adjusted p-values.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

EPSILON = 1e-4
EXACT_KS_MAX_N = 10_000  # scipy's "auto" switches to the asymptotic p-value above this


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """Population stability index of ``current`` against ``reference``."""
    reference = np.asarray(reference, dtype=np.float64)
    current = np.asarray(current, dtype=np.float64)
    reference, current = reference[~np.isnan(reference)], current[~np.isnan(current)]
    if len(reference) == 0 or len(current) == 0:
        raise ValueError("psi needs values on both sides")
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1))[1:-1])
    ref = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=len(edges) + 1)
    cur = np.bincount(np.searchsorted(edges, current, side="right"), minlength=len(edges) + 1)
    p = np.maximum(ref / ref.sum(), EPSILON)
    q = np.maximum(cur / cur.sum(), EPSILON)
    return float(np.sum((q - p) * np.log(q / p)))


def psi_matrix(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> np.ndarray:
    """:func:`psi` of every column (features in columns)."""
    reference, current = np.asarray(reference, np.float64), np.asarray(current, np.float64)
    _same_width(reference, current)
    return np.array([psi(reference[:, j], current[:, j], bins) for j in range(reference.shape[1])])


def ks_matrix(reference: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(statistic, p-value) of the two-sample KS test for every column."""
    reference, current = np.asarray(reference, np.float64), np.asarray(current, np.float64)
    _same_width(reference, current)
    width = reference.shape[1]
    statistic = np.empty(width)
    pvalue = np.empty(width)
    for j in range(width):
        a = np.sort(reference[:, j][~np.isnan(reference[:, j])])
        b = np.sort(current[:, j][~np.isnan(current[:, j])])
        if len(a) == 0 or len(b) == 0:
            raise ValueError(f"column {j}: ks needs values on both sides")
        if max(len(a), len(b)) <= EXACT_KS_MAX_N:  # scipy's exact p-value
            result = stats.ks_2samp(a, b)
            statistic[j], pvalue[j] = result.statistic, result.pvalue
            continue
        points = np.concatenate([a, b])
        cdf_a = np.searchsorted(a, points, side="right") / len(a)
        cdf_b = np.searchsorted(b, points, side="right") / len(b)
        d = float(np.max(np.abs(cdf_a - cdf_b)))
        en = len(a) * len(b) / (len(a) + len(b))
        statistic[j] = d
        pvalue[j] = float(np.clip(stats.kstwo.sf(d, np.round(en)), 0, 1))
    return statistic, pvalue


def benjamini_hochberg(pvalues: np.ndarray, rate: float) -> tuple[np.ndarray, np.ndarray]:
    """(discovery mask, adjusted p-values) controlling the false discovery rate."""
    p = np.asarray(pvalues, dtype=np.float64)
    if not 0 < rate < 1:
        raise ValueError(f"false discovery rate must be in (0, 1), got {rate}")
    if p.size == 0:
        return np.zeros(0, bool), np.zeros(0)
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError("p-values must be in [0, 1]")
    order = np.argsort(p)
    ranked = p[order] * p.size / np.arange(1, p.size + 1)
    adjusted_sorted = np.minimum(np.minimum.accumulate(ranked[::-1])[::-1], 1.0)
    adjusted = np.empty_like(adjusted_sorted)
    adjusted[order] = adjusted_sorted
    return adjusted <= rate, adjusted


def _same_width(reference: np.ndarray, current: np.ndarray) -> None:
    if reference.ndim != 2 or current.ndim != 2 or reference.shape[1] != current.shape[1]:
        raise ValueError(
            f"expected two matrices with the same columns, got {reference.shape} and "
            f"{current.shape}"
        )
