"""A/B test statistics for financial models, as plain functions.

A bank may claim that a new model is better, or keep customers on it longer, only with
statistics an auditor can follow. This module holds them, free of any orchestration:

* **design**: the sample size for a minimum detectable effect, alpha and power, for a
  proportion (two-proportion z test, pooled variance under H0) or a mean (Welch's t
  test), with unequal splits; the maximum sample size of the sequential test
  (:func:`pipelines.sequential.inflation_factor`) and the duration at a daily traffic;
* **effects** with confidence intervals: the two-proportion z test, Welch's t test, and
  the delta-method z test for ratio metrics when an entity (the randomisation unit)
  contributes several requests; optional CUPED variance reduction with a pre-treatment
  covariate;
* **sequential monitoring** of the primary metric at daily looks: group-sequential
  alpha spending (default) or mSPRT (:mod:`pipelines.sequential`);
* the **sample-ratio-mismatch** check (chi-square on the enrolled entities per arm);
* **segment** effects with Holm or Benjamini-Hochberg adjusted p-values;
* the **guardrail stop rule**: a guardrail metric worse than its bound, one-sided and
  significant under its own alpha-spending boundary, stops the test;
* :func:`decide`: ship, stop or continue, with every reason.

Differences are always treatment minus control. A metric knows which direction is better
(:data:`METRICS`); "harm" is the difference in the worse direction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
from scipy import stats

from pipelines import sequential
from pipelines.drift import benjamini_hochberg

Kind = Literal["proportion", "continuous"]
Better = Literal["higher", "lower"]
Action = Literal["ship", "stop", "continue"]
Correction = Literal["holm", "benjamini_hochberg"]
MIN_SEGMENT_UNITS = 30  # per arm: fewer and a segment is reported, not tested


@dataclass(frozen=True)
class MetricInfo:
    kind: Kind
    better: Better
    needs_labels: bool
    description: str


METRICS: dict[str, MetricInfo] = {
    "approval_rate": MetricInfo(
        "proportion", "higher", False, "share of applications approved (score below threshold)"
    ),
    "fraud_capture_rate": MetricInfo(
        "proportion", "higher", True, "share of labelled fraud transactions flagged"
    ),
    "false_positive_rate": MetricInfo(
        "proportion",
        "lower",
        True,
        "share of labelled good cases flagged (legitimate transactions alerted, good "
        "applicants declined)",
    ),
    "default_rate": MetricInfo(
        "proportion", "lower", True, "share of approved, labelled applications that defaulted"
    ),
    "loss_amount": MetricInfo(
        "continuous",
        "lower",
        True,
        "loss per labelled case: fraud amount missed, or the amount of an approved loan "
        "that defaulted",
    ),
}


def metric_info(name: str) -> MetricInfo:
    try:
        return METRICS[name]
    except KeyError:
        raise ValueError(f"unknown A/B metric {name!r} (known: {', '.join(METRICS)})") from None


def metric_values(
    name: str,
    scores: np.ndarray,
    labels: np.ndarray,
    amounts: np.ndarray,
    threshold: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(eligible mask, value per row) of a metric from logged rows.

    ``scores >= threshold`` is the model's adverse decision: a fraud alert, or a credit
    decline. ``labels``: 1 fraud/default, 0 good, NaN not known yet.
    """
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels, np.float64)
    amounts = np.asarray(amounts, np.float64)
    flagged = scores >= threshold
    known = ~np.isnan(labels)
    bad = known & (labels == 1)
    good = known & (labels == 0)
    if name == "approval_rate":
        return np.ones(len(scores), bool), (~flagged).astype(np.float64)
    if name == "fraud_capture_rate":
        return bad, flagged.astype(np.float64)
    if name == "false_positive_rate":
        return good, flagged.astype(np.float64)
    if name == "default_rate":
        return known & ~flagged, bad.astype(np.float64)
    if name == "loss_amount":  # fraud missed, or a loan approved that defaulted
        lost = bad & ~flagged
        return known & ~np.isnan(amounts), np.where(lost, np.nan_to_num(amounts), 0.0)
    raise ValueError(f"unknown A/B metric {name!r} (known: {', '.join(METRICS)})")


def harm(difference: float, better: Better) -> float:
    """The difference (treatment - control) expressed in the worse direction."""
    return -difference if better == "higher" else difference


# --------------------------------------------------------------------------- design
def _share(treatment_share: float) -> float:
    if not 0 < treatment_share < 1:
        raise ValueError(f"treatment_share must be in (0, 1), got {treatment_share}")
    return treatment_share / (1 - treatment_share)


def _z(alpha: float, power: float, sides: int) -> tuple[float, float]:
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"alpha and power must be in (0, 1), got {alpha}, {power}")
    return float(stats.norm.isf(alpha / sides)), float(stats.norm.ppf(power))


def treated_value(baseline: float, mde: float, better: Better) -> float:
    """The treatment's expected value under the alternative (better by ``mde``)."""
    return baseline + mde if better == "higher" else baseline - mde


def sample_size_proportions(
    baseline: float,
    mde: float,
    alpha: float = 0.05,
    power: float = 0.8,
    treatment_share: float = 0.5,
    better: Better = "higher",
    sides: int = 2,
) -> tuple[int, int]:
    """(control, treatment) units for a two-proportion z test to detect ``mde``
    (absolute) with the given power; pooled variance under H0."""
    p_c, p_t = baseline, treated_value(baseline, mde, better)
    if not (0 < p_c < 1 and 0 < p_t < 1) or mde <= 0:
        raise ValueError(
            f"baseline {baseline} and baseline +/- mde {p_t:g} must be rates in (0, 1), mde > 0"
        )
    k = _share(treatment_share)
    z_a, z_b = _z(alpha, power, sides)
    pooled = (p_c + k * p_t) / (1 + k)
    numerator = z_a * math.sqrt(pooled * (1 - pooled) * (1 + 1 / k)) + z_b * math.sqrt(
        p_c * (1 - p_c) + p_t * (1 - p_t) / k
    )
    n_c = math.ceil((numerator / mde) ** 2)
    return n_c, math.ceil(n_c * k)


def power_proportions(
    n_control: int,
    n_treatment: int,
    p_control: float,
    p_treatment: float,
    alpha: float = 0.05,
    sides: int = 2,
) -> float:
    """Power of the pooled two-proportion z test (rejections in the effect's direction)."""
    z_a = float(stats.norm.isf(alpha / sides))
    pooled = (n_control * p_control + n_treatment * p_treatment) / (n_control + n_treatment)
    s0 = math.sqrt(pooled * (1 - pooled) * (1 / n_control + 1 / n_treatment))
    s1 = math.sqrt(
        p_control * (1 - p_control) / n_control + p_treatment * (1 - p_treatment) / n_treatment
    )
    return float(stats.norm.cdf((abs(p_treatment - p_control) - z_a * s0) / s1))


def _welch_df(v_c: float, n_c: float, v_t: float, n_t: float) -> float:
    a, b = v_c / n_c, v_t / n_t
    if a + b == 0:
        return math.inf
    denominator = (a * a / (n_c - 1) if n_c > 1 else 0.0) + (b * b / (n_t - 1) if n_t > 1 else 0.0)
    return (a + b) ** 2 / denominator if denominator > 0 else math.inf


def sample_size_means(
    sd_control: float,
    mde: float,
    alpha: float = 0.05,
    power: float = 0.8,
    treatment_share: float = 0.5,
    sd_treatment: float | None = None,
    sides: int = 2,
) -> tuple[int, int]:
    """(control, treatment) units for Welch's t test to detect a difference of ``mde``;
    the normal approximation refined with t quantiles at the Welch-Satterthwaite df."""
    if sd_control <= 0 or mde <= 0:
        raise ValueError(f"sd ({sd_control}) and mde ({mde}) must be positive")
    sd_t = sd_control if sd_treatment is None else sd_treatment
    k = _share(treatment_share)
    z_a, z_b = _z(alpha, power, sides)
    spread = sd_control**2 + sd_t**2 / k
    n_c = max(2.0, (z_a + z_b) ** 2 * spread / mde**2)
    for _ in range(50):
        df = _welch_df(sd_control**2, n_c, sd_t**2, n_c * k)
        t_a = float(stats.t.isf(alpha / sides, df))
        t_b = float(stats.t.ppf(power, df))
        updated = max(2.0, (t_a + t_b) ** 2 * spread / mde**2)
        if abs(updated - n_c) < 1e-6:
            break
        n_c = updated
    return math.ceil(n_c), math.ceil(math.ceil(n_c) * k)


def power_means(
    n_control: int,
    n_treatment: int,
    sd_control: float,
    sd_treatment: float,
    difference: float,
    alpha: float = 0.05,
    sides: int = 2,
) -> float:
    """Power of Welch's t test (noncentral t at the Welch-Satterthwaite df)."""
    se = math.sqrt(sd_control**2 / n_control + sd_treatment**2 / n_treatment)
    df = _welch_df(sd_control**2, n_control, sd_treatment**2, n_treatment)
    t_a = float(stats.t.isf(alpha / sides, df))
    return float(stats.nct.sf(t_a, df, abs(difference) / se))


@dataclass(frozen=True)
class Design:
    """The plan of a test, fixed before any data is seen."""

    metric: str
    kind: Kind
    better: Better
    baseline: float
    baseline_sd: float | None
    minimum_detectable_effect: float
    alpha: float
    power: float
    treatment_share: float
    fixed_control: int  # fixed-horizon units per arm
    fixed_treatment: int
    method: str  # group_sequential | msprt
    spending: str
    looks: int  # planned daily looks
    inflation: float
    max_control: int  # what the sequential test plans for
    max_treatment: int
    daily_units: float | None  # eligible units per day (both arms), at the observed traffic
    days: int | None
    max_days: int
    warnings: list[str] = field(default_factory=list)

    @property
    def max_total(self) -> int:
        return self.max_control + self.max_treatment

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "max_total": self.max_total}


def design_test(
    metric: str,
    baseline: float,
    mde: float,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    treatment_share: float = 0.5,
    baseline_sd: float | None = None,
    method: str = "group_sequential",
    spending: sequential.Spending = "obrien_fleming",
    daily_units: float | None = None,
    max_days: int = 28,
    max_treatment_units: float | None = None,
) -> Design:
    """Sample size, sequential maximum and duration of a test of ``metric``.

    ``daily_units``: eligible units per day over both arms at the observed traffic (None:
    unknown; the duration is then not given). ``max_treatment_units``: what an exposure
    cap allows (a warning when the design needs more).
    """
    info = metric_info(metric)
    if info.kind == "proportion":
        n_c, n_t = sample_size_proportions(
            baseline, mde, alpha, power, treatment_share, info.better
        )
    else:
        if baseline_sd is None:
            raise ValueError(f"{metric} is continuous: the design needs baseline_sd")
        n_c, n_t = sample_size_means(baseline_sd, mde, alpha, power, treatment_share)
    warnings: list[str] = []
    looks, inflation = max_days, 1.0
    if method == "group_sequential":
        looks = _planned_looks(n_c + n_t, daily_units, max_days, alpha, power, spending)
        inflation = sequential.inflation_factor(looks, alpha, power, spending)
    max_c, max_t = math.ceil(n_c * inflation), math.ceil(n_t * inflation)
    days = None
    if daily_units:
        days = math.ceil((max_c + max_t) / daily_units)
        if days > max_days:
            warnings.append(
                f"needs {days} days at {daily_units:,.0f} eligible units/day, longer than "
                f"max_duration ({max_days} days): the final look comes at day {max_days} "
                "with less power than planned"
            )
    if max_treatment_units is not None and max_t > max_treatment_units:
        warnings.append(
            f"needs {max_t:,} treatment units but the exposure cap allows about "
            f"{max_treatment_units:,.0f}: raise the cap or the minimum detectable effect"
        )
    return Design(
        metric,
        info.kind,
        info.better,
        baseline,
        baseline_sd,
        mde,
        alpha,
        power,
        treatment_share,
        n_c,
        n_t,
        method,
        spending,
        looks,
        inflation,
        max_c,
        max_t,
        daily_units,
        days,
        max_days,
        warnings,
    )


def _planned_looks(
    fixed_total: int,
    daily_units: float | None,
    max_days: int,
    alpha: float,
    power: float,
    spending: sequential.Spending,
) -> int:
    """Daily looks until the sequential maximum is reached (at most ``max_days``)."""
    if not daily_units:
        return max_days
    looks = min(max_days, max(1, math.ceil(fixed_total / daily_units)))
    for _ in range(5):  # the maximum grows with the looks, the looks with the maximum
        total = fixed_total * sequential.inflation_factor(looks, alpha, power, spending)
        following = min(max_days, max(1, math.ceil(total / daily_units)))
        if following == looks:
            break
        looks = following
    return looks


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


def arm_effect(
    values: np.ndarray,
    arms: np.ndarray,
    entities: np.ndarray,
    kind: Kind,
    alpha: float = 0.05,
    covariate: np.ndarray | None = None,
    covariate_name: str = "covariate",
    min_units: int = 2,
) -> tuple[Effect | None, Cuped | None]:
    """The effect of a metric from its observations (one per eligible request), each with
    its arm (``control``/``treatment``) and entity; None when an arm has fewer than
    ``min_units`` entities.

    The test follows the data: with several observations per entity, the delta-method z
    by entity; else a proportion's two-proportion z test, or Welch's t test (a continuous
    metric, or any metric adjusted by CUPED with ``covariate``)."""
    values = np.asarray(values, np.float64)
    arms = np.asarray(arms)
    entities = np.asarray(entities)
    info = None
    if covariate is not None and len(values):
        values, info = cuped(values, covariate, covariate_name)
        if info.theta == 0.0:  # nothing to adjust with (no covariate values, no variance)
            info = None
    sides = {}
    for arm in ("control", "treatment"):
        mask = arms == arm
        keys, index = np.unique(entities[mask], return_inverse=True)
        if len(keys) < min_units:
            return None, info
        sums = np.bincount(index, weights=values[mask], minlength=len(keys))
        counts = np.bincount(index, minlength=len(keys)).astype(np.float64)
        sides[arm] = (values[mask], sums, counts)
    (vc, sc, nc), (vt, st, nt) = sides["control"], sides["treatment"]
    if len(sc) < len(vc) or len(st) < len(vt):
        effect = clustered_test((sc, nc), (st, nt), alpha)
    elif kind == "proportion" and info is None:
        effect = two_proportion_test(vc.sum(), len(vc), vt.sum(), len(vt), alpha)
    else:
        effect = welch_test(vc, vt, alpha)
    if info is not None:
        effect = replace(effect, test=f"{effect.test}, CUPED on {info.covariate}")
    return effect, info


# --------------------------------------------------------------------------- SRM
@dataclass(frozen=True)
class SampleRatio:
    control: int
    treatment: int
    expected_treatment_share: float
    chi2: float
    pvalue: float
    mismatch: bool


def srm_check(
    control: int, treatment: int, treatment_share: float, threshold: float = 0.001
) -> SampleRatio:
    """Chi-square goodness of fit of the enrolled units per arm against the split.

    A mismatch (p below ``threshold``; 0.001 is customary as the check runs at every
    look) means the assignment or the logging is broken and no effect can be trusted."""
    total = control + treatment
    if total == 0:
        return SampleRatio(0, 0, treatment_share, 0.0, 1.0, False)
    expected = np.array([total * (1 - treatment_share), total * treatment_share])
    observed = np.array([control, treatment], np.float64)
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    pvalue = float(stats.chi2.sf(chi2, df=1))
    return SampleRatio(control, treatment, treatment_share, chi2, pvalue, pvalue < threshold)


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


@dataclass(frozen=True)
class SegmentEffect:
    segment: str
    value: str
    effect: Effect | None  # None: too few units to test
    pvalue_adjusted: float | None
    significant: bool
    harmful: bool  # significant and in the worse direction
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "segment": self.segment,
            "value": self.value,
            "effect": self.effect.as_dict() if self.effect else None,
            "pvalue_adjusted": self.pvalue_adjusted,
            "significant": self.significant,
            "harmful": self.harmful,
            "note": self.note,
        }


def segment_effects(
    effects: Sequence[tuple[str, str, Effect | None]],
    better: Better,
    correction: Correction = "holm",
    alpha: float = 0.05,
) -> list[SegmentEffect]:
    """Adjust every tested (segment, value) effect together for multiplicity."""
    tested = [i for i, (_, _, e) in enumerate(effects) if e is not None]
    adjusted = adjust([effects[i][2].pvalue for i in tested], correction, alpha)  # type: ignore[union-attr]
    by_index = dict(zip(tested, adjusted, strict=True))
    out = []
    for i, (segment, value, effect) in enumerate(effects):
        if effect is None:
            note = f"fewer than {MIN_SEGMENT_UNITS} units in an arm"
            out.append(SegmentEffect(segment, value, None, None, False, False, note))
            continue
        p_adj = float(by_index[i])
        significant = p_adj < alpha
        worse = harm(effect.difference, better) > 0
        out.append(SegmentEffect(segment, value, effect, p_adj, significant, significant and worse))
    return out


# --------------------------------------------------------------------------- sequential
@dataclass(frozen=True)
class Monitor:
    """The primary metric at one look of the sequential test."""

    method: str
    look: int
    fraction: float
    final: bool
    z: float
    boundary: float | None  # group-sequential critical |z|
    pvalue: float  # always-valid p (mSPRT) or the nominal p at this look
    crossed: bool
    direction: Literal["better", "worse", "none"]
    ci_low: float  # repeated confidence interval / confidence sequence
    ci_high: float


def group_sequential_look(
    fractions: Sequence[float],
    effect: Effect,
    better: Better,
    alpha: float,
    spending: sequential.Spending = "obrien_fleming",
) -> Monitor:
    """The look at ``fractions[-1]`` (earlier looks' fractions before it; 1 = final)."""
    bounds = sequential.boundaries(list(fractions), alpha, spending, sides=2)
    c = float(bounds[-1])
    z = effect.z
    crossed = abs(z) >= c
    return Monitor(
        "group_sequential",
        len(fractions),
        float(fractions[-1]),
        fractions[-1] >= 1.0,
        z,
        c,
        float(2 * stats.norm.sf(abs(z))),
        crossed,
        _direction(crossed, z, better),
        effect.difference - c * effect.se,
        effect.difference + c * effect.se,
    )


def msprt_look(
    look: int,
    fraction: float,
    effect: Effect,
    better: Better,
    alpha: float,
    tau: float,
    previous_p: float = 1.0,
    previous_ci: tuple[float, float] = (-math.inf, math.inf),
) -> Monitor:
    """The mSPRT at this look: always-valid p (running minimum) and the running
    intersection of the confidence sequence; ``tau``: the mixing sd (the design's MDE)."""
    se = max(effect.se, 1e-12)
    p = sequential.msprt_pvalue(effect.difference, se, tau, previous_p)
    low, high = sequential.msprt_interval(effect.difference, se, tau, alpha)
    low, high = max(low, previous_ci[0]), min(high, previous_ci[1])
    crossed = p < alpha
    return Monitor(
        "msprt",
        look,
        fraction,
        fraction >= 1.0,
        effect.z,
        None,
        p,
        crossed,
        _direction(crossed, effect.difference, better),
        low,
        high,
    )


def _direction(crossed: bool, signed: float, better: Better) -> Literal["better", "worse", "none"]:
    if not crossed:
        return "none"
    return "worse" if harm(signed, better) > 0 else "better"


# --------------------------------------------------------------------------- guardrails
@dataclass(frozen=True)
class GuardrailResult:
    metric: str
    bound: float  # largest tolerated harm (metric units)
    harm: float  # observed harm (treatment worse by this much; negative: better)
    z: float  # (harm - bound) / se
    boundary: float  # one-sided critical z at this look
    breached: bool
    effect: Effect | None
    note: str = ""

    @property
    def message(self) -> str:
        return (
            f"guardrail {self.metric}: treatment worse by {self.harm:.4g}, beyond the bound "
            f"{self.bound:.4g} (z {self.z:.2f} >= {self.boundary:.2f})"
        )

    def as_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "effect"}
        data["effect"] = self.effect.as_dict() if self.effect else None
        return json_safe(data)


def guardrail_check(
    metric: str,
    effect: Effect | None,
    bound: float,
    fractions: Sequence[float],
    alpha: float = 0.05,
    spending: sequential.Spending = "pocock",
) -> GuardrailResult:
    """One-sided test of H0 "harm <= bound" at this look; breached when the harm is
    beyond the bound with significance (its own alpha spent over the looks)."""
    better = metric_info(metric).better
    c = float(sequential.boundaries(list(fractions), alpha, spending, sides=1)[-1])
    if effect is None or effect.se <= 0:
        return GuardrailResult(metric, bound, 0.0, 0.0, c, False, effect, "no data yet")
    worse = harm(effect.difference, better)
    z = (worse - bound) / effect.se
    return GuardrailResult(metric, bound, worse, z, c, z >= c, effect)


# --------------------------------------------------------------------------- decision
@dataclass(frozen=True)
class Decision:
    action: Action
    reasons: list[str]


def decide(
    monitor: Monitor | None,
    guardrails: Sequence[GuardrailResult],
    srm: SampleRatio,
    segments: Sequence[SegmentEffect] = (),
    final: bool = False,
    metric: str = "primary metric",
) -> Decision:
    """Ship, stop or continue, with every reason.

    Stop: a sample-ratio mismatch (the assignment is broken), a breached guardrail, the
    primary metric significantly worse, a significantly harmed segment when the primary
    metric would ship, or the final look without a significant improvement. Ship: the
    primary metric crossed its boundary in the better direction and nothing stops the
    test. Otherwise continue.
    """
    reasons: list[str] = []
    if srm.mismatch:
        reasons.append(
            f"sample ratio mismatch: {srm.control:,} control vs {srm.treatment:,} treatment "
            f"entities for a {srm.expected_treatment_share:.0%} split (p {srm.pvalue:.2g}): the "
            "assignment or logging is broken and no effect can be trusted"
        )
    reasons += [g.message for g in guardrails if g.breached]
    if reasons:
        return Decision("stop", reasons)
    if monitor is None:
        if final:
            return Decision("stop", [f"final look without data on {metric}"])
        return Decision("continue", [f"no data on {metric} yet"])
    if monitor.crossed and monitor.direction == "worse":
        return Decision("stop", [f"{metric} significantly worse ({_monitor_text(monitor)})"])
    if monitor.crossed:
        harmed = [s for s in segments if s.harmful]
        if harmed:
            return Decision(
                "stop",
                [
                    f"{metric} better overall ({_monitor_text(monitor)}) but significantly worse "
                    f"in {s.segment}={s.value} (adjusted p {s.pvalue_adjusted:.3g}): "
                    "review before shipping"
                    for s in harmed
                ],
            )
        return Decision("ship", [f"{metric} significantly better ({_monitor_text(monitor)})"])
    if final or monitor.final:
        return Decision(
            "stop",
            [
                f"final look: no significant effect on {metric} ({_monitor_text(monitor)}); "
                "the champion stays"
            ],
        )
    return Decision(
        "continue",
        [
            f"{metric}: not significant yet at {monitor.fraction:.0%} of the planned sample "
            f"({_monitor_text(monitor)})"
        ],
    )


def _monitor_text(m: Monitor) -> str:
    if m.method == "msprt":
        return f"always-valid p {m.pvalue:.3g}, look {m.look}"
    if m.boundary is not None and m.boundary >= sequential.NO_BOUNDARY:
        return f"z {m.z:.2f}, no alpha to spend this early, look {m.look}"
    return f"z {m.z:.2f}, boundary +/-{m.boundary:.2f}, look {m.look}"


def json_safe(data: Any) -> Any:
    """JSON-safe: infinities and NaN as None (recursively)."""
    if isinstance(data, dict):
        return {k: json_safe(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [json_safe(v) for v in data]
    if isinstance(data, float) and not math.isfinite(data):
        return None
    return data
