"""Rollout guardrails and step decisions (pipelines/rollout.py)."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.rollout import (
    StepState,
    Window,
    calibration_error,
    check_guardrails,
    decide,
    disagreement_rate,
    score_psi,
)
from pipelines.spec import load_spec
from pipelines.spec_operations import Guardrails, Rollout

FRAUD = load_spec("specs/fraud.yaml")
THRESHOLD = FRAUD.gates.decision_threshold


def scores(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    return 1 / (1 + np.exp(-(rng.normal(-1 + shift, 1.5, n))))


def window(rng: np.random.Generator, n: int = 20_000, **kwargs: object) -> Window:
    return Window(requests=n, latencies_ms=rng.gamma(2, 2, n), scores=scores(rng, n), **kwargs)


def test_psi_is_zero_for_the_same_distribution_and_grows_with_a_shift() -> None:
    rng = np.random.default_rng(1)
    reference = scores(rng, 50_000)
    assert score_psi(reference, scores(rng, 50_000)) < 0.01
    assert score_psi(reference, scores(rng, 50_000, shift=1.0)) > 0.2
    # hand-checked: two bins, 50/50 against 90/10
    assert score_psi(np.array([0.0, 1.0] * 50), np.array([0.0] * 90 + [1.0] * 10)) == (
        pytest.approx((0.9 - 0.5) * np.log(0.9 / 0.5) + (0.1 - 0.5) * np.log(0.1 / 0.5))
    )


def test_a_healthy_challenger_trips_nothing() -> None:
    rng = np.random.default_rng(2)
    champion, challenger = window(rng), window(rng)
    paired = (champion.scores[:5000], champion.scores[:5000] + rng.normal(0, 1e-4, 5000))
    assert check_guardrails(FRAUD.rollout.guardrails, THRESHOLD, champion, challenger, paired) == []


def test_each_kind_of_fault_trips_its_guardrail() -> None:
    rng = np.random.default_rng(3)
    guardrails = FRAUD.rollout.guardrails
    champion = window(rng)

    def tripped(challenger: Window, paired: tuple | None = None) -> set[str]:
        trips = check_guardrails(guardrails, THRESHOLD, champion, challenger, paired)
        return {t.guardrail for t in trips}

    errors = window(rng, errors=100)  # 0.5 % against a 0.1 % limit
    assert "error_rate" in tripped(errors)
    slow = window(rng)
    slow.latencies_ms = slow.latencies_ms + 40
    assert "p99_latency_ms" in tripped(slow)
    skewed = Window(requests=20_000, scores=scores(rng, 20_000, shift=1.0))
    assert {"score_psi", "alert_rate_change"} <= tripped(skewed)
    other = rng.random(5000)
    assert "disagreement_rate" in tripped(window(rng), (other, 1 - other))


def test_labels_bring_calibration_and_the_fraud_amount_caught() -> None:
    rng = np.random.default_rng(4)
    n = 20_000
    labels = (rng.random(n) < 0.01).astype(float)
    amounts = rng.lognormal(4, 1, n)
    good = np.where(labels == 1, 0.95, 0.01)
    champion = Window(requests=n, scores=good, labels=labels, amounts=amounts)
    blind = Window(requests=n, scores=np.full(n, 0.01), labels=labels, amounts=amounts)
    guardrails = Guardrails(min_fraud_amount_caught_ratio=0.95, max_calibration_error=0.05)
    trips = {t.guardrail: t for t in check_guardrails(guardrails, THRESHOLD, champion, blind)}
    assert trips["fraud_amount_caught_ratio"].value == 0.0
    assert calibration_error(good, labels) < 0.06
    assert calibration_error(np.full(n, 0.5), labels) > 0.4


def test_bad_windows_and_pairs_are_refused() -> None:
    with pytest.raises(ValueError, match="errors"):
        Window(requests=3, errors=4)
    with pytest.raises(ValueError, match="labels"):
        Window(requests=2, scores=[0.1, 0.2], labels=[1])
    with pytest.raises(ValueError, match="paired"):
        disagreement_rate(np.zeros(3), np.zeros(4), 0.5)


def test_decisions_follow_the_policy() -> None:
    policy = Rollout(
        shadow={"duration": "1h", "min_requests": 5000},
        canary_steps=[5, 25, 50, 100],
        bake_time="30m",
        approval_before_full=True,
    )
    trip = check_guardrails(
        Guardrails(max_error_rate=0.0), 0.5, Window(requests=1), Window(requests=10, errors=1)
    )
    assert decide(policy, StepState(25, 10, 10), trip) == ("rollback", None)
    assert decide(policy, StepState(0, 3600, 4999), []) == ("hold", 0)  # too few requests
    assert decide(policy, StepState(0, 3600, 5000), []) == ("advance", 5)
    assert decide(policy, StepState(5, 1799, 900), []) == ("hold", 5)
    assert decide(policy, StepState(25, 1800, 900), []) == ("advance", 50)
    assert decide(policy, StepState(50, 1800, 900), []) == ("await_approval", 100)
    no_gate = policy.model_copy(update={"approval_before_full": False})
    assert decide(no_gate, StepState(50, 1800, 900), []) == ("advance", 100)
    assert decide(policy, StepState(100, 0, 0), []) == ("done", None)


def test_the_alert_rate_is_compared_only_from_enough_champion_alerts() -> None:
    few = np.full(1000, 0.1)
    few[:5] = 0.9  # 5 alerts: a tenfold change would be noise
    more = np.full(1000, 0.1)
    more[:50] = 0.9
    guardrails = Guardrails(max_alert_rate_change=0.5, max_score_psi=10)

    def alerts_trip(champion: np.ndarray, challenger: np.ndarray) -> bool:
        trips = check_guardrails(
            guardrails, 0.85, Window(requests=1000, scores=champion),
            Window(requests=1000, scores=challenger),
        )  # fmt: skip
        return any(t.guardrail == "alert_rate_change" for t in trips)

    assert not alerts_trip(few, more)
    assert alerts_trip(more, few)
