"""A/B test design: the sample size for a minimum detectable effect, alpha and power.

For a proportion (two-proportion z test, pooled variance under H0) or a mean (Welch's t
test), with unequal splits; the maximum sample size of the sequential test
(:func:`pipelines.sequential.inflation_factor`) and the duration at a daily traffic
(:func:`design_test`). The metrics themselves are in :mod:`pipelines.abtest`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from scipy import stats

from pipelines import sequential
from pipelines.abtest import Better, Kind, metric_info


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


@dataclass(frozen=True)
class DesignChoices:
    """The statistical choices of a design: error rates, the split, the sequential method."""

    alpha: float = 0.05
    power: float = 0.8
    treatment_share: float = 0.5
    method: str = "group_sequential"
    spending: sequential.Spending = "obrien_fleming"


def design_test(
    metric: str,
    baseline: float,
    mde: float,
    *,
    baseline_sd: float | None = None,
    choices: DesignChoices = DesignChoices(),
    daily_units: float | None = None,
    max_days: int = 28,
    max_treatment_units: float | None = None,
) -> Design:
    """Sample size, sequential maximum and duration of a test of ``metric``.

    ``daily_units``: eligible units per day over both arms at the observed traffic (None:
    unknown; the duration is then not given). ``max_treatment_units``: what an exposure
    cap allows (a warning when the design needs more).
    """
    alpha, power, treatment_share = choices.alpha, choices.power, choices.treatment_share
    method, spending = choices.method, choices.spending
    info = metric_info(metric)
    if info.kind == "proportion":
        n_c, n_t = sample_size_proportions(
            baseline, mde, alpha, power, treatment_share, info.better
        )
    else:
        if baseline_sd is None:
            raise ValueError(f"{metric} is continuous: the design needs baseline_sd")
        n_c, n_t = sample_size_means(baseline_sd, mde, alpha, power, treatment_share)
    looks, inflation = max_days, 1.0
    if method == "group_sequential":
        looks = _planned_looks(n_c + n_t, daily_units, max_days, alpha, power, spending)
        inflation = sequential.inflation_factor(looks, alpha, power, spending)
    max_c, max_t = math.ceil(n_c * inflation), math.ceil(n_t * inflation)
    days = math.ceil((max_c + max_t) / daily_units) if daily_units else None
    warnings = _design_warnings(days, daily_units, max_days, max_t, max_treatment_units)
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


def _design_warnings(
    days: int | None,
    daily_units: float | None,
    max_days: int,
    max_t: int,
    max_treatment_units: float | None,
) -> list[str]:
    """What the plan cannot deliver: a duration beyond ``max_days``, more treatment
    units than the exposure cap allows."""
    warnings: list[str] = []
    if days is not None and days > max_days:
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
    return warnings


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
