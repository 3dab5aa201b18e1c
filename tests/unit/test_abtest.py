"""A/B statistics: power, tests, CUPED, SRM, multiplicity, sequential monitoring, the
guardrail stop rule and the decision; seeded simulations prove the error rates.

The three simulations of the issue:

* 1,000 A/A tests looked at every day keep the false-positive rate at alpha with the
  group-sequential boundaries, and a fixed-horizon test peeked at daily does not;
* at the designed sample size the observed power is the planned power (within 3 points);
* a harmful treatment is stopped by the guardrail rule before the planned end.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from pipelines import sequential
from pipelines.abtest import (
    GuardrailResult,
    SampleRatio,
    decide,
    group_sequential_look,
    guardrail_check,
    metric_values,
    msprt_look,
    segment_effects,
    srm_check,
)
from pipelines.abtest_design import (
    design_test,
    power_means,
    power_proportions,
    sample_size_means,
    sample_size_proportions,
)
from pipelines.abtest_effects import (
    Arm,
    clustered_arm,
    clustered_test,
    cuped,
    difference_test,
    holm,
    proportion_arm,
    two_proportion_test,
    welch_test,
)

ALPHA = 0.05


# --------------------------------------------------------------------------- boundaries
def test_boundaries_match_the_published_lan_demets_values() -> None:
    five = [0.2, 0.4, 0.6, 0.8, 1.0]
    # Jennison & Turnbull (2000), table 7.6; gsDesign sfLDOF / sfLDPocock, two-sided 0.05
    obf = sequential.boundaries(five, ALPHA, "obrien_fleming")
    np.testing.assert_allclose(obf, [4.877, 3.357, 2.680, 2.290, 2.031], atol=2e-3)
    pocock = sequential.boundaries(five, ALPHA, "pocock")
    np.testing.assert_allclose(pocock, [2.438, 2.427, 2.410, 2.397, 2.386], atol=2e-3)
    assert sequential.boundaries([1.0], ALPHA)[0] == pytest.approx(1.95996, abs=1e-4)
    assert sequential.boundaries([1.0], ALPHA, sides=1)[0] == pytest.approx(1.64485, abs=1e-4)


@pytest.mark.parametrize("spending", ["obrien_fleming", "pocock"])
def test_unplanned_unequal_looks_spend_exactly_alpha(spending: str) -> None:
    looks = [0.07, 0.1, 0.31, 0.33, 0.6, 0.95, 1.0]
    bounds = sequential.boundaries(looks, ALPHA, spending)  # type: ignore[arg-type]
    upper = sequential.crossing_probability(looks, bounds, drift=0.0)
    assert 2 * upper == pytest.approx(ALPHA, abs=1e-4)  # both sides together
    partial = sequential.crossing_probability(looks[:3], bounds[:3], drift=0.0)
    assert 2 * partial == pytest.approx(
        float(sequential.spent(0.31, ALPHA, spending)),
        abs=1e-5,  # type: ignore[arg-type]
    )


def test_bad_looks_are_refused() -> None:
    with pytest.raises(ValueError, match="increase"):
        sequential.boundaries([0.5, 0.4], ALPHA)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        sequential.boundaries([0.5, 1.2], ALPHA)
    with pytest.raises(ValueError, match="alpha"):
        sequential.boundaries([1.0], 1.5)


def test_the_sequential_maximum_grows_with_the_looks() -> None:
    factors = [sequential.inflation_factor(k, ALPHA, 0.8) for k in (1, 5, 14, 28)]
    assert factors[0] == pytest.approx(1.0, abs=1e-4)
    assert factors == sorted(factors)
    assert 1.02 < factors[1] < 1.03 and factors[-1] < 1.06  # O'Brien-Fleming costs little
    assert sequential.inflation_factor(5, ALPHA, 0.8, "pocock") > 1.15


# --------------------------------------------------------------------------- design
def test_sample_size_for_proportions_matches_the_textbook_and_its_power() -> None:
    # Fleiss (no continuity correction): 10 % -> 12 %, alpha 0.05 two-sided, power 0.8
    n_c, n_t = sample_size_proportions(0.10, 0.02, ALPHA, 0.8)
    assert n_c == n_t == 3841
    assert (
        power_proportions(n_c, n_t, 0.10, 0.12)
        >= 0.8
        > power_proportions(n_c - 10, n_t - 10, 0.10, 0.12)
    )
    # an unequal split needs more units in total, the treatment arm a quarter of them
    u_c, u_t = sample_size_proportions(0.10, 0.02, ALPHA, 0.8, treatment_share=0.2)
    assert u_c + u_t > n_c + n_t and u_t == math.ceil(u_c / 4)
    assert power_proportions(u_c, u_t, 0.10, 0.12) == pytest.approx(0.8, abs=0.003)
    # "lower is better": the treatment is planned at baseline - mde
    assert sample_size_proportions(0.12, 0.02, better="lower") == (3841, 3841)


def test_sample_size_for_means_uses_welch() -> None:
    n_c, n_t = sample_size_means(10.0, 1.0, ALPHA, 0.9)
    # normal approximation 2 (1.96 + 1.2816)^2 100 = 2101.5; t quantiles add a unit or two
    assert 2102 <= n_c <= 2105 and n_t == n_c
    assert power_means(n_c, n_t, 10.0, 10.0, 1.0) == pytest.approx(0.9, abs=0.002)


def test_design_gives_the_duration_and_warns_when_it_cannot_be_met() -> None:
    design = design_test("approval_rate", 0.75, 0.02, daily_units=2_000, max_days=42)
    assert design.max_total > design.fixed_control + design.fixed_treatment
    assert design.days == math.ceil(design.max_total / 2_000)
    assert design.looks == design.days and not design.warnings
    slow = design_test(
        "approval_rate", 0.75, 0.02, daily_units=200, max_days=14, max_treatment_units=1_000
    )
    assert any("longer than max_duration" in w for w in slow.warnings)
    assert any("exposure cap" in w for w in slow.warnings)
    with pytest.raises(ValueError, match="baseline_sd"):
        design_test("loss_amount", 2.0, 0.5)
    with pytest.raises(ValueError, match="rates in"):
        design_test("approval_rate", 0.99, 0.02)


# --------------------------------------------------------------------------- effects
def test_welch_test_matches_scipy() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.lognormal(0, 1, 400), rng.lognormal(0.15, 1.2, 650)
    effect = welch_test(a, b)
    reference = stats.ttest_ind(b, a, equal_var=False)
    assert effect.statistic == pytest.approx(reference.statistic)
    assert effect.pvalue == pytest.approx(reference.pvalue)
    interval = reference.confidence_interval(0.95)
    assert (effect.ci_low, effect.ci_high) == pytest.approx((interval.low, interval.high))


def test_two_proportion_test_equals_the_chi_square_test() -> None:
    effect = two_proportion_test(100, 1_000, 130, 1_000)
    chi2 = stats.chi2_contingency([[100, 900], [130, 870]], correction=False)
    assert effect.pvalue == pytest.approx(chi2.pvalue)
    assert effect.difference == pytest.approx(0.03)
    assert effect.ci_low < 0.03 < effect.ci_high
    assert effect.relative == pytest.approx(0.3)


def test_clustered_arm_reduces_to_a_proportion_and_widens_for_correlated_rows() -> None:
    rng = np.random.default_rng(4)
    single = rng.binomial(1, 0.3, 5_000).astype(float)
    arm = clustered_arm(single, np.ones_like(single))
    assert arm.mean == pytest.approx(single.mean())
    assert arm.se == pytest.approx(proportion_arm(single.sum(), 5_000).se, rel=1e-3)
    # each entity's requests share its propensity: the delta method sees that
    p = rng.beta(1, 2, 2_000)
    counts = rng.integers(1, 20, 2_000)
    hits = rng.binomial(counts, p).astype(float)
    naive = proportion_arm(hits.sum(), int(counts.sum()))
    clustered = clustered_arm(hits, counts.astype(float))
    assert clustered.se > 2 * naive.se
    effect = clustered_test((hits[:1000], counts[:1000]), (hits[1000:], counts[1000:]))
    assert effect.test.startswith("delta-method")


def test_cuped_removes_the_covariates_share_of_variance_without_bias() -> None:
    rng = np.random.default_rng(5)
    n = 20_000
    x = rng.normal(100, 20, n)
    arm = rng.integers(0, 2, n)
    y = 0.5 * x + rng.normal(0, 10, n) + 2.0 * arm
    adjusted, info = cuped(y, x, "amount")
    expected = np.corrcoef(x, y)[0, 1] ** 2
    assert info.variance_reduction == pytest.approx(expected, abs=0.01)
    plain = welch_test(y[arm == 0], y[arm == 1])
    reduced = welch_test(adjusted[arm == 0], adjusted[arm == 1])
    assert reduced.se < 0.75 * plain.se
    assert reduced.difference == pytest.approx(2.0, abs=3 * reduced.se)
    x[:10] = np.nan  # missing covariates: not adjusted, still usable
    assert np.isfinite(cuped(y, x)[0]).all()


def test_metric_definitions_from_logged_rows() -> None:
    scores = np.array([0.9, 0.1, 0.9, 0.1, 0.9, 0.1])
    labels = np.array([1, 1, 0, 0, np.nan, 0])
    amounts = np.array([100.0, 50.0, 10.0, 10.0, 10.0, np.nan])
    eligible, value = metric_values("fraud_capture_rate", scores, labels, amounts, 0.5)
    assert eligible.tolist() == [True, True, False, False, False, False]
    assert value[eligible].tolist() == [1.0, 0.0]
    eligible, value = metric_values("false_positive_rate", scores, labels, amounts, 0.5)
    assert value[eligible].tolist() == [1.0, 0.0, 0.0]
    eligible, value = metric_values("loss_amount", scores, labels, amounts, 0.5)
    assert value[eligible].tolist() == [0.0, 50.0, 0.0, 0.0]  # the missed fraud's amount
    eligible, value = metric_values("approval_rate", scores, labels, amounts, 0.5)
    assert value.mean() == pytest.approx(0.5)
    eligible, value = metric_values("default_rate", scores, labels, amounts, 0.5)
    assert eligible.tolist() == [False, True, False, True, False, True]  # approved, labelled
    assert value[eligible].tolist() == [1.0, 0.0, 0.0]


# --------------------------------------------------------------------------- SRM, multiplicity
def test_sample_ratio_mismatch() -> None:
    assert not srm_check(5_000, 5_040, 0.5).mismatch
    broken = srm_check(5_000, 5_400, 0.5)
    assert broken.mismatch and broken.pvalue < 1e-3
    assert not srm_check(8_000, 2_010, 0.2).mismatch  # an 80/20 split is not a mismatch
    assert srm_check(8_000, 2_500, 0.2).mismatch


def test_holm_and_segment_effects() -> None:
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    worse = two_proportion_test(500, 1_000, 420, 1_000)  # "higher is better": harmful
    fine = two_proportion_test(500, 1_000, 505, 1_000)
    results = segment_effects(
        [("channel", "online", worse), ("channel", "card_present", fine), ("region", "x", None)],
        better="higher",
    )
    assert results[0].harmful and results[0].pvalue_adjusted == pytest.approx(
        min(1.0, 2 * worse.pvalue)
    )
    assert not results[1].significant and results[2].effect is None
    bh = segment_effects([("a", "1", worse), ("a", "2", fine)], "higher", "benjamini_hochberg")
    assert bh[0].harmful and bh[0].pvalue_adjusted <= results[0].pvalue_adjusted


# --------------------------------------------------------------------------- guardrail, decide
def _effect(control_rate: float, treatment_rate: float, n: int) -> object:
    return two_proportion_test(control_rate * n, n, treatment_rate * n, n)


def test_the_guardrail_stops_only_when_worse_beyond_its_bound_with_significance() -> None:
    looks = [0.5]
    clearly = guardrail_check("false_positive_rate", _effect(0.02, 0.04, 20_000), 0.005, looks)
    assert clearly.breached and clearly.harm == pytest.approx(0.02)
    within = guardrail_check("false_positive_rate", _effect(0.02, 0.024, 200_000), 0.005, looks)
    assert not within.breached  # worse, significantly, but within the bound
    noisy = guardrail_check("false_positive_rate", _effect(0.02, 0.03, 500), 0.005, looks)
    assert not noisy.breached  # beyond the bound, not significantly
    better = guardrail_check("approval_rate", _effect(0.7, 0.75, 20_000), 0.0, looks)
    assert better.harm < 0 and not better.breached


def test_decide_names_every_reason() -> None:
    effect = _effect(0.5, 0.56, 4_000)
    monitor = group_sequential_look([1.0], effect, "higher", ALPHA)
    ok_srm = SampleRatio(4_000, 4_000, 0.5, 0.0, 1.0, False)
    assert decide(monitor, [], ok_srm, metric="approval_rate").action == "ship"
    bad_srm = SampleRatio(4_000, 4_400, 0.5, 19.0, 1e-5, True)
    stop = decide(monitor, [], bad_srm)
    assert stop.action == "stop" and "sample ratio mismatch" in stop.reasons[0]
    breached = GuardrailResult("default_rate", 0.01, 0.03, 4.0, 2.0, True, None)
    assert decide(monitor, [breached], ok_srm).action == "stop"
    harmed = segment_effects([("purpose", "car", _effect(0.5, 0.4, 2_000))], "higher")
    assert decide(monitor, [], ok_srm, harmed).action == "stop"
    early = group_sequential_look([0.2], _effect(0.5, 0.51, 1_000), "higher", ALPHA)
    assert decide(early, [], ok_srm).action == "continue"
    final = group_sequential_look([0.2, 1.0], _effect(0.5, 0.505, 4_000), "higher", ALPHA)
    result = decide(final, [], ok_srm)
    assert result.action == "stop" and "champion stays" in result.reasons[0]
    worse = group_sequential_look([1.0], _effect(0.5, 0.44, 4_000), "higher", ALPHA)
    assert decide(worse, [], ok_srm).action == "stop"
    assert decide(None, [], ok_srm).action == "continue"


def test_msprt_gives_always_valid_p_values_and_confidence_sequences() -> None:
    effect = _effect(0.5, 0.56, 4_000)
    first = msprt_look(1, 0.5, effect, "higher", ALPHA, tau=0.02)
    assert first.crossed and first.direction == "better"
    assert first.ci_low > 0 and first.ci_high > first.ci_low
    later = msprt_look(
        2,
        0.6,
        _effect(0.5, 0.5, 5_000),
        "higher",
        ALPHA,
        0.02,
        first.pvalue,
        (first.ci_low, first.ci_high),
    )
    assert later.pvalue == first.pvalue  # a running minimum never goes back up
    assert later.ci_low >= first.ci_low


# --------------------------------------------------------------------------- simulations
def _daily(total: int, days: int) -> np.ndarray:
    per = np.full(days, total // days)
    per[: total % days] += 1
    return per


def _proportion_z(
    rng: np.random.Generator,
    per_c: np.ndarray,
    per_t: np.ndarray,
    p_c: float,
    p_t: float,
    sims: int,
) -> np.ndarray:
    """Look statistics (sims x looks): the Wald z of the difference, as Effect.z."""
    n_c, n_t = np.cumsum(per_c), np.cumsum(per_t)
    x_c = rng.binomial(per_c, p_c, (sims, len(per_c))).cumsum(1)
    x_t = rng.binomial(per_t, p_t, (sims, len(per_t))).cumsum(1)
    a, b = x_c / n_c, x_t / n_t
    se = np.sqrt(a * (1 - a) / n_c + b * (1 - b) / n_t)
    return np.divide(b - a, se, out=np.zeros_like(se), where=se > 0)


def _welch_z(rng: np.random.Generator, per: np.ndarray, shift: float, sims: int) -> np.ndarray:
    """Look statistics of a skewed continuous metric (a loss amount), Welch's statistic."""
    days = len(per)
    out = np.empty((sims, days))
    for chunk in range(0, sims, 250):  # bounded memory: 250 tests at a time
        s = min(250, sims - chunk)
        sums = np.zeros((2, s))
        squares = np.zeros((2, s))
        n = 0
        for day, count in enumerate(per):
            draws = rng.lognormal(0.0, 1.0, (2, s, count))
            draws[1] += shift
            sums += draws.sum(-1)
            squares += (draws**2).sum(-1)
            n += count
            mean = sums / n
            var = (squares - n * mean**2) / (n - 1)
            out[chunk : chunk + s, day] = (mean[1] - mean[0]) / np.sqrt(var.sum(0) / n)
    return out


@pytest.fixture(scope="module")
def plan() -> object:
    """A fraud test: capture rate 60 % -> 65 % at 400 labelled frauds a day."""
    design = design_test("fraud_capture_rate", 0.60, 0.05, daily_units=400, max_days=28)
    assert design.looks == design.days == math.ceil(design.max_total / 400)
    return design


def test_aa_tests_peeked_daily_keep_the_false_positive_rate_at_alpha(plan) -> None:  # noqa: ANN001
    rng = np.random.default_rng(20261128)
    per_c, per_t = _daily(plan.max_control, 14), _daily(plan.max_treatment, 14)
    fractions = np.cumsum(per_c + per_t) / plan.max_total
    bounds = sequential.boundaries(fractions, ALPHA)
    z = _proportion_z(rng, per_c, per_t, 0.6, 0.6, 1_000)
    sequential_rate = float((np.abs(z) >= bounds).any(1).mean())
    naive_rate = float((np.abs(z) >= stats.norm.isf(ALPHA / 2)).any(1).mean())
    print(
        f"\nA/A, 1,000 tests x 14 daily looks: sequential {sequential_rate:.3f}, "
        f"naive {naive_rate:.3f}"
    )
    assert 0.035 <= sequential_rate <= 0.065
    assert naive_rate > 0.065  # the test can fail: peeking at a fixed-horizon test does
    assert naive_rate > 2 * sequential_rate
    # the vectorised statistic and boundaries are the library's look, checked on one test
    x_c = rng.binomial(per_c, 0.6).cumsum()
    x_t = rng.binomial(per_t, 0.6).cumsum()
    for look in range(14):
        n_c, n_t = int(per_c[: look + 1].sum()), int(per_t[: look + 1].sum())
        effect = two_proportion_test(x_c[look], n_c, x_t[look], n_t)
        monitor = group_sequential_look(list(fractions[: look + 1]), effect, "higher", ALPHA)
        a, b = x_c[look] / n_c, x_t[look] / n_t
        vector_z = (b - a) / math.sqrt(a * (1 - a) / n_c + b * (1 - b) / n_t)
        assert monitor.z == pytest.approx(vector_z)
        assert monitor.boundary == pytest.approx(bounds[look])


def test_aa_tests_of_a_skewed_continuous_metric_keep_alpha_too() -> None:
    rng = np.random.default_rng(7)
    per = _daily(2_000, 14)  # per arm
    fractions = np.cumsum(per) / per.sum()
    bounds = sequential.boundaries(fractions, ALPHA)
    z = _welch_z(rng, per, 0.0, 1_000)
    rate = float((np.abs(z) >= bounds).any(1).mean())
    naive = float((np.abs(z) >= stats.norm.isf(ALPHA / 2)).any(1).mean())
    print(
        f"\nA/A Welch (lognormal), 1,000 tests x 14 looks: sequential {rate:.3f}, naive {naive:.3f}"
    )
    assert 0.035 <= rate <= 0.065 and naive > 0.065


def test_msprt_is_valid_under_daily_looks_but_conservative(plan) -> None:  # noqa: ANN001
    rng = np.random.default_rng(11)
    per_c, per_t = _daily(plan.max_control, 14), _daily(plan.max_treatment, 14)
    z = _proportion_z(rng, per_c, per_t, 0.6, 0.6, 1_000)
    n_c, n_t = np.cumsum(per_c), np.cumsum(per_t)
    se = np.sqrt(0.24 / n_c + 0.24 / n_t)  # the per-look se (known variance here)
    v, t2 = se**2, 0.05**2  # tau = the design's minimum detectable effect
    ratio = np.sqrt(v / (v + t2)) * np.exp(t2 * (z * se) ** 2 / (2 * v * (v + t2)))
    rate = float((ratio >= 1 / ALPHA).any(1).mean())
    print(f"\nA/A mSPRT, 1,000 tests x 14 daily looks: {rate:.3f}")
    assert rate <= ALPHA
    # the scalar function is the same statistic
    assert sequential.msprt_statistic(float(z[0, 3] * se[3]), float(se[3]), 0.05) == (
        pytest.approx(float(ratio[0, 3]))
    )


def test_the_designed_sample_size_gives_the_planned_power(plan) -> None:  # noqa: ANN001
    rng = np.random.default_rng(42)
    sims = 4_000
    looks = plan.looks
    per_c, per_t = _daily(plan.max_control, looks), _daily(plan.max_treatment, looks)
    fractions = np.cumsum(per_c + per_t) / plan.max_total
    bounds = sequential.boundaries(fractions, ALPHA)
    z = _proportion_z(rng, per_c, per_t, 0.60, 0.65, sims)
    seq_power = float((z >= bounds).any(1).mean())
    fixed = _proportion_z(
        rng, np.array([plan.fixed_control]), np.array([plan.fixed_treatment]), 0.60, 0.65, sims
    )
    fixed_power = float((fixed[:, 0] >= stats.norm.isf(ALPHA / 2)).mean())
    print(
        f"\npower at the designed size (planned {plan.power}): sequential {seq_power:.3f} "
        f"({looks} looks, {plan.max_total:,} units), fixed {fixed_power:.3f}"
    )
    assert abs(seq_power - plan.power) <= 0.03
    assert abs(fixed_power - plan.power) <= 0.03


def test_the_designed_sample_size_for_a_mean_gives_the_planned_power() -> None:
    sd = math.sqrt((math.e - 1) * math.e)  # lognormal(0, 1)
    design = design_test(
        "loss_amount", math.sqrt(math.e), 0.1 * sd, baseline_sd=sd, daily_units=400, max_days=28
    )
    rng = np.random.default_rng(8)
    per = _daily(design.max_control, design.looks)
    fractions = np.cumsum(per) / per.sum()
    bounds = sequential.boundaries(fractions, ALPHA)
    z = _welch_z(rng, per, -0.1 * sd, 2_000)  # lower loss is better
    power = float((-z >= bounds).any(1).mean())
    print(f"\npower of the loss test (planned {design.power}): {power:.3f}")
    assert abs(power - design.power) <= 0.03


def test_a_harmful_treatment_is_stopped_by_the_guardrail_before_the_planned_end(
    plan,  # noqa: ANN001
) -> None:
    """The challenger catches as much fraud but raises false alerts from 1 % to 1.4 %
    (bound: 0.2 points). Every simulated test stops on the guardrail, well before the
    last look; an A/A test almost never trips it."""
    rng = np.random.default_rng(99)
    looks = plan.looks
    legit_per_day = 20_000  # labelled legitimate transactions per arm and day
    stopped_at = []
    for _ in range(50):
        fp_c = rng.binomial(legit_per_day, 0.010, looks).cumsum()
        fp_t = rng.binomial(legit_per_day, 0.014, looks).cumsum()
        fraud_c = rng.binomial(_daily(plan.max_control, looks), 0.6).cumsum()
        fraud_t = rng.binomial(_daily(plan.max_treatment, looks), 0.6).cumsum()
        fractions: list[float] = []
        for day in range(looks):
            n = legit_per_day * (day + 1)
            fractions.append((day + 1) / looks)
            guard = guardrail_check(
                "false_positive_rate",
                two_proportion_test(fp_c[day], n, fp_t[day], n),
                0.002,
                fractions,
            )
            n_c = int(_daily(plan.max_control, looks)[: day + 1].sum())
            n_t = int(_daily(plan.max_treatment, looks)[: day + 1].sum())
            monitor = group_sequential_look(
                fractions,
                two_proportion_test(fraud_c[day], n_c, fraud_t[day], n_t),
                "higher",
                ALPHA,
            )
            srm = srm_check(n_c, n_t, 0.5)
            decision = decide(monitor, [guard], srm, metric="fraud_capture_rate")
            if decision.action != "continue":
                assert decision.action == "stop"
                assert "guardrail false_positive_rate" in decision.reasons[0]
                stopped_at.append(day + 1)
                break
        else:
            stopped_at.append(None)
    print(f"\nharmful treatment stopped on days {sorted(stopped_at)} of {looks}")
    assert all(day is not None and day < looks for day in stopped_at)
    assert float(np.median(stopped_at)) <= looks / 2
    # and a harmless treatment (same false-positive rate) trips the guardrail rarely
    per = np.full(looks, legit_per_day)
    z = _proportion_z(rng, per, per, 0.010, 0.010, 1_000)
    se = np.sqrt(2 * 0.01 * 0.99 / np.cumsum(per))
    one_sided = sequential.boundaries(np.arange(1, looks + 1) / looks, ALPHA, "pocock", 1)
    false_stops = float(((z * se - 0.002) / se >= one_sided).any(1).mean())
    assert false_stops < 0.01


def test_effects_of_arms_with_and_without_degrees_of_freedom() -> None:
    normal = difference_test(
        Arm(100, 100, 0.5, 0.05, 0.5, math.inf), Arm(100, 100, 0.6, 0.05, 0.5, math.inf)
    )
    assert math.isinf(normal.df)
    assert normal.ci_high - normal.ci_low == pytest.approx(2 * 1.959964 * normal.se, rel=1e-5)
