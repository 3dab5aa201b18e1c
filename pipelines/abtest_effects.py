"""A/B test effects with confidence intervals, CUPED and multiplicity adjustments.

The two-proportion z test, Welch's t test, and the delta-method z test for ratio metrics
when an entity (the randomisation unit) contributes several requests; optional CUPED
variance reduction with a pre-treatment covariate; Holm or Benjamini-Hochberg adjusted
p-values. Differences are always treatment minus control.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from scipy import stats

from pipelines.drift_stats import benjamini_hochberg

Correction = Literal["holm", "benjamini_hochberg"]


# --------------------------------------------------------------------------- effects
@dataclass(frozen=True)
class Arm:
    """One arm's estimate of a metric."""

    units: int  # entities (randomisation units)
    rows: int  # observations (requests) behind the estimate
    mean: float
    se: float
    sd: float
    df: float  # degrees of freedom of the estimate (inf: normal)


@dataclass(frozen=True)
class Effect:
    """Treatment minus control, with its test and a (1 - alpha) confidence interval."""

    test: str
    control: Arm
    treatment: Arm
    difference: float
    se: float
    ci_low: float
    ci_high: float
    statistic: float
    pvalue: float
    df: float
    relative: float | None  # difference / control mean
    relative_ci: tuple[float, float] | None
    alpha: float

    @property
    def z(self) -> float:
        """The Wald statistic of the difference (for sequential monitoring)."""
        return self.difference / self.se if self.se > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["relative_ci"] = list(self.relative_ci) if self.relative_ci else None
        return json_safe(data)


def proportion_arm(successes: float, n: int) -> Arm:
    if n <= 0:
        raise ValueError("an arm needs at least one unit")
    p = successes / n
    sd = math.sqrt(p * (1 - p))
    return Arm(n, n, p, sd / math.sqrt(n), sd, math.inf)


def mean_arm(values: np.ndarray) -> Arm:
    values = np.asarray(values, np.float64)
    n = len(values)
    if n < 2:
        raise ValueError("an arm needs at least two values for a variance")
    sd = float(values.std(ddof=1))
    return Arm(n, n, float(values.mean()), sd / math.sqrt(n), sd, float(n - 1))


def clustered_arm(numerators: np.ndarray, denominators: np.ndarray) -> Arm:
    """A ratio metric sum(y) / sum(n) over entities, its variance by the delta method
    (requests of one entity are correlated; the entity is the randomisation unit)."""
    y = np.asarray(numerators, np.float64)
    n = np.asarray(denominators, np.float64)
    units = len(y)
    if units < 2 or n.sum() <= 0:
        raise ValueError("a clustered arm needs at least two entities with observations")
    ratio = y.sum() / n.sum()
    mean_n = n.mean()
    residual = y - ratio * n
    variance = float(residual.var(ddof=1)) / (units * mean_n**2)
    se = math.sqrt(max(variance, 0.0))
    return Arm(units, int(n.sum()), float(ratio), se, se * math.sqrt(n.sum()), float(units - 1))


def _relative(control: Arm, treatment: Arm, z: float) -> tuple[float | None, Any]:
    if control.mean == 0:
        return None, None
    ratio = treatment.mean / control.mean - 1
    se = math.sqrt(
        treatment.se**2 / control.mean**2 + treatment.mean**2 * control.se**2 / control.mean**4
    )
    return ratio, (ratio - z * se, ratio + z * se)


def difference_test(
    control: Arm,
    treatment: Arm,
    alpha: float = 0.05,
    test: str = "Welch t",
    null_se: float | None = None,
) -> Effect:
    """The difference of two arms: Welch-Satterthwaite t when both have finite df,
    else normal. ``null_se``: the standard error under H0 for the p-value (pooled
    proportions); the interval always uses the unpooled one."""
    diff = treatment.mean - control.mean
    se = math.sqrt(control.se**2 + treatment.se**2)
    finite = math.isfinite(control.df) and math.isfinite(treatment.df)
    if finite and se > 0:
        df = (control.se**2 + treatment.se**2) ** 2 / (
            control.se**4 / max(control.df, 1) + treatment.se**4 / max(treatment.df, 1)
        )
        dist: Any = stats.t(df)
    else:
        df, dist = math.inf, stats.norm
    crit = float(dist.isf(alpha / 2))
    test_se = null_se if null_se is not None else se
    statistic = diff / test_se if test_se > 0 else 0.0
    pvalue = float(2 * dist.sf(abs(statistic))) if test_se > 0 else 1.0
    relative, relative_ci = _relative(control, treatment, crit)
    return Effect(
        test,
        control,
        treatment,
        diff,
        se,
        diff - crit * se,
        diff + crit * se,
        statistic,
        pvalue,
        df,
        relative,
        relative_ci,
        alpha,
    )


def two_proportion_test(
    x_control: float, n_control: int, x_treatment: float, n_treatment: int, alpha: float = 0.05
) -> Effect:
    """Two-proportion z test (pooled variance for the p-value, Wald interval)."""
    control, treatment = (
        proportion_arm(x_control, n_control),
        proportion_arm(x_treatment, n_treatment),
    )
    pooled = (x_control + x_treatment) / (n_control + n_treatment)
    null_se = math.sqrt(pooled * (1 - pooled) * (1 / n_control + 1 / n_treatment))
    return difference_test(control, treatment, alpha, "two-proportion z", null_se)


def welch_test(control: np.ndarray, treatment: np.ndarray, alpha: float = 0.05) -> Effect:
    """Welch's unequal-variances t test and interval."""
    return difference_test(mean_arm(control), mean_arm(treatment), alpha, "Welch t")


def clustered_test(
    control: tuple[np.ndarray, np.ndarray],
    treatment: tuple[np.ndarray, np.ndarray],
    alpha: float = 0.05,
) -> Effect:
    """Difference of two ratio metrics, each (per-entity sums, per-entity counts)."""
    return difference_test(
        clustered_arm(*control), clustered_arm(*treatment), alpha, "delta-method z (by entity)"
    )


@dataclass(frozen=True)
class Cuped:
    covariate: str
    theta: float
    variance_reduction: float  # share of the metric's variance removed


def cuped(
    values: np.ndarray, covariate: np.ndarray, name: str = "covariate"
) -> tuple[np.ndarray, Cuped]:
    """CUPED (Deng et al. 2013): ``y - theta (x - mean x)`` with ``theta = cov(x, y) /
    var(x)`` from both arms pooled. ``x`` must not depend on the arm (a pre-treatment
    value such as a model input); missing ``x`` gets the mean (no adjustment)."""
    y = np.asarray(values, np.float64)
    x = np.asarray(covariate, np.float64)
    if len(x) != len(y):
        raise ValueError(f"cuped: {len(x)} covariate values for {len(y)} metric values")
    known = ~np.isnan(x)
    if known.sum() < 3 or np.var(x[known]) == 0:
        return y.copy(), Cuped(name, 0.0, 0.0)
    x = np.where(known, x, x[known].mean())
    centred = x - x.mean()
    theta = float(np.dot(centred, y - y.mean()) / np.dot(centred, centred))
    adjusted = y - theta * centred
    before = float(np.var(y))
    reduction = 1 - float(np.var(adjusted)) / before if before > 0 else 0.0
    return adjusted, Cuped(name, theta, reduction)


# --------------------------------------------------------------------------- multiplicity
def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (family-wise error rate)."""
    p = np.asarray(pvalues, np.float64)
    m = len(p)
    if m == 0:
        return p
    order = np.argsort(p)
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out


def adjust(pvalues: Sequence[float], correction: Correction, alpha: float) -> np.ndarray:
    if correction == "holm":
        return holm(pvalues)
    if correction == "benjamini_hochberg":
        if len(pvalues) == 0:
            return np.empty(0)
        return benjamini_hochberg(np.asarray(pvalues, np.float64), alpha)[1]
    raise ValueError(f"unknown correction {correction!r} (holm or benjamini_hochberg)")


def json_safe(data: Any) -> Any:
    """JSON-safe: infinities and NaN as None (recursively)."""
    if isinstance(data, dict):
        return {k: json_safe(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [json_safe(v) for v in data]
    if isinstance(data, float) and not math.isfinite(data):
        return None
    return data
