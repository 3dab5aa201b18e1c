"""Single-column drift statistics, shared by the drift report and the rollout guardrails.

PSI with bins from the reference's quantiles (empty bins floored at 1e-4), the
Kolmogorov-Smirnov statistic and p-value as ``scipy.stats.ks_2samp`` computes them, the
chi-square test of homogeneity (categories expected fewer than 5 times pooled),
Jensen-Shannon distance, Wasserstein-1 on sorted values, and Benjamini-Hochberg
adjusted p-values. :mod:`pipelines.drift` builds the per-feature, per-segment report on
them.
"""

from __future__ import annotations

import numpy as np
from scipy import stats
from scipy.spatial import distance

EPSILON = 1e-4
MIN_EXPECTED = 5.0  # pooled below this expected count (chi-square)
EXACT_KS_MAX_N = 10_000  # scipy's "auto" switches to the asymptotic p-value above this


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """Population stability index of ``current`` against ``reference``."""
    reference = np.asarray(reference, dtype=np.float64)
    current = np.asarray(current, dtype=np.float64)
    reference, current = reference[~np.isnan(reference)], current[~np.isnan(current)]
    if len(reference) == 0 or len(current) == 0:
        raise ValueError("psi needs values on both sides")
    a, b = np.sort(reference), np.sort(current)
    ref, cur = binned_counts(a, b, quantile_edges(a, bins))
    return psi_from_counts(ref, cur)


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
    statistic, pvalue = np.empty(width), np.empty(width)
    for j in range(width):
        a = np.sort(reference[:, j][~np.isnan(reference[:, j])])
        b = np.sort(current[:, j][~np.isnan(current[:, j])])
        if len(a) == 0 or len(b) == 0:
            raise ValueError(f"column {j}: ks needs values on both sides")
        statistic[j], pvalue[j] = ks_sorted(a, b)
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


def ks_sorted(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """KS statistic and p-value of two sorted samples without NaN (as ``ks_2samp``)."""
    n, m = len(a), len(b)
    if max(n, m) <= EXACT_KS_MAX_N:
        result = stats.ks_2samp(a, b)
        return float(result.statistic), float(result.pvalue)
    d = _ks_statistic(a, b)
    en = n * m / (n + m)
    return d, float(np.clip(stats.kstwo.sf(d, np.round(en)), 0, 1))


def wasserstein_sorted(a: np.ndarray, b: np.ndarray) -> float:
    """Wasserstein-1 distance of two sorted samples (as ``scipy.stats.wasserstein_distance``)."""
    points = np.sort(np.concatenate([a, b]), kind="stable")  # a merge of two sorted runs
    deltas = np.diff(points)
    cdf_a = np.searchsorted(a, points[:-1], side="right") / len(a)
    cdf_b = np.searchsorted(b, points[:-1], side="right") / len(b)
    return float(np.sum(np.abs(cdf_a - cdf_b) * deltas))


def _ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    n, m = len(a), len(b)
    last_a = np.flatnonzero(np.append(a[1:] != a[:-1], True))  # last of each run of ties
    last_b = np.flatnonzero(np.append(b[1:] != b[:-1], True))
    at_a = np.abs((last_a + 1) / n - np.searchsorted(b, a[last_a], side="right") / m)
    at_b = np.abs(np.searchsorted(a, b[last_b], side="right") / n - (last_b + 1) / m)
    return float(max(at_a.max(), at_b.max()))


def without_nan(sorted_values: np.ndarray) -> np.ndarray:
    """A sorted array without its NaN (which numpy sorts last)."""
    return sorted_values[: np.searchsorted(sorted_values, np.nan, side="left")]


def quantile_edges(sorted_reference: np.ndarray, bins: int) -> np.ndarray:
    """Inner bin edges: the reference's quantiles, ties merged."""
    return np.unique(np.quantile(sorted_reference, np.linspace(0, 1, bins + 1))[1:-1])


def binned_counts(a: np.ndarray, b: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counts of two sorted samples in the bins (-inf, e0), [e0, e1), ..., [ek, inf)."""

    def counts(x: np.ndarray) -> np.ndarray:
        cuts = np.concatenate([[0], np.searchsorted(x, edges, side="left"), [len(x)]])
        return np.diff(cuts).astype(np.float64)

    return counts(a), counts(b)


def psi_from_counts(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    p = np.maximum(ref_counts / ref_counts.sum(), EPSILON)
    q = np.maximum(cur_counts / cur_counts.sum(), EPSILON)
    return float(np.sum((q - p) * np.log(q / p)))


def js_from_counts(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    return float(
        distance.jensenshannon(ref_counts / ref_counts.sum(), cur_counts / cur_counts.sum())
    )


def chi2_from_counts(ref_counts: np.ndarray, cur_counts: np.ndarray) -> tuple[float, float]:
    """Chi-square test of homogeneity of two count vectors over the same categories.

    Categories expected fewer than 5 times on a side are pooled into one (Cochran's
    rule): the chi-square approximation does not hold for sparse cells.
    """
    seen = (ref_counts + cur_counts) > 0
    r, c = ref_counts[seen], cur_counts[seen]
    n_r, n_c = r.sum(), c.sum()
    sparse = (r + c) * min(n_r, n_c) / (n_r + n_c) < MIN_EXPECTED
    if sparse.any():
        r = np.append(r[~sparse], r[sparse].sum())
        c = np.append(c[~sparse], c[sparse].sum())
    if len(r) < 2:
        return 0.0, 1.0
    total = r + c
    e_r, e_c = total * n_r / (n_r + n_c), total * n_c / (n_r + n_c)
    statistic = float(np.sum((r - e_r) ** 2 / e_r) + np.sum((c - e_c) ** 2 / e_c))
    return statistic, float(stats.chi2.sf(statistic, len(r) - 1))


def _same_width(reference: np.ndarray, current: np.ndarray) -> None:
    if reference.ndim != 2 or current.ndim != 2 or reference.shape[1] != current.shape[1]:
        raise ValueError(
            f"expected two matrices with the same columns, got {reference.shape} and "
            f"{current.shape}"
        )
