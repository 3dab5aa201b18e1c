"""A/B test statistics for financial models, as plain functions.

A bank may claim that a new model is better, or keep customers on it longer, only with
statistics an auditor can follow. This module holds them, free of any orchestration:

* **design** (:mod:`pipelines.abtest_design`): sample size, sequential maximum and
  duration;
* **effects** with confidence intervals (:mod:`pipelines.abtest_effects`), here per arm
  from logged rows (:func:`arm_effect`), with optional CUPED variance reduction;
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
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np
from scipy import stats

from pipelines import sequential
from pipelines.abtest_effects import (
    Correction,
    Cuped,
    Effect,
    adjust,
    clustered_test,
    cuped,
    json_safe,
    two_proportion_test,
    welch_test,
)

Kind = Literal["proportion", "continuous"]
Better = Literal["higher", "lower"]
Action = Literal["ship", "stop", "continue"]
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
