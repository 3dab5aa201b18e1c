"""Rollout guardrails and step decisions, as plain functions (the controller DAG calls them).

A rollout step compares the challenger with the champion over the same time window:

* technical: the challenger's error rate and p99 latency;
* model: the PSI of the challenger's scores against the champion's (bins from the
  champion's quantiles), and, on mirrored requests (the gateway's shadow log), the share
  of requests where the two models decide differently;
* business: the change in the alert rate (fraud) or the approval rate (credit);
  distributions are compared once each side has 50 scores (fewer: noise, not signal);
* with labels (once they arrive): calibration error, and the fraud amount the challenger
  catches relative to the champion.

:func:`check_guardrails` returns every guardrail that tripped, with its value and limit;
:func:`decide` turns the step's state into ``rollback`` (any trip), ``hold`` (bake time or
minimum requests not reached yet), ``await_approval`` (before 100 % when the spec asks)
or ``advance``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from pipelines.drift_stats import psi
from pipelines.spec_base import duration_seconds
from pipelines.spec_operations import Guardrails, Rollout

Decision = Literal["advance", "hold", "rollback", "await_approval", "done"]
MIN_ALERTS = 30  # the relative alert-rate change is compared from this many champion alerts
MIN_SCORES = 50  # score distributions (PSI, decision rates) are compared from this many each


@dataclass
class Window:
    """One version's observations over a window (from its metrics and prediction log)."""

    requests: int
    errors: int = 0
    latencies_ms: np.ndarray = field(default_factory=lambda: np.empty(0))
    scores: np.ndarray = field(default_factory=lambda: np.empty(0))
    labels: np.ndarray | None = None  # 1 = fraud / default, once known; NaN: not yet
    amounts: np.ndarray | None = None  # transaction amounts, for the fraud amount caught

    def __post_init__(self) -> None:
        self.latencies_ms = np.asarray(self.latencies_ms, dtype=np.float64)
        self.scores = np.asarray(self.scores, dtype=np.float64)
        if self.requests < 0 or self.errors < 0 or self.errors > self.requests:
            raise ValueError(f"window: {self.errors} errors of {self.requests} requests")
        for name in ("labels", "amounts"):
            value = getattr(self, name)
            if value is not None:
                value = np.asarray(value, dtype=np.float64)
                if len(value) != len(self.scores):
                    raise ValueError(f"window: {len(value)} {name} for {len(self.scores)} scores")
                setattr(self, name, value)


@dataclass(frozen=True)
class Trip:
    guardrail: str
    value: float
    limit: float

    @property
    def message(self) -> str:
        return f"{self.guardrail} {self.value:.4g} beyond its limit {self.limit:.4g}"


def score_psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """PSI of the challenger's scores against the champion's (:func:`pipelines.drift_stats.psi`)."""
    return psi(reference, current, bins)


def disagreement_rate(primary: np.ndarray, shadow: np.ndarray, threshold: float) -> float:
    """Share of the same requests that the two models decide differently."""
    primary, shadow = np.asarray(primary, np.float64), np.asarray(shadow, np.float64)
    if primary.shape != shadow.shape or len(primary) == 0:
        raise ValueError("disagreement_rate needs paired scores of the same requests")
    return float(np.mean((primary >= threshold) != (shadow >= threshold)))


def calibration_error(scores: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over equal-width score bins (rows with a label)."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, np.float64)
    known = ~np.isnan(labels)
    scores, labels = scores[known], labels[known]
    if len(scores) == 0:
        raise ValueError("calibration_error needs labelled rows")
    index = np.minimum((scores * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = index == b
        if mask.any():
            total += mask.mean() * abs(scores[mask].mean() - labels[mask].mean())
    return float(total)


def check_guardrails(
    guardrails: Guardrails,
    threshold: float,
    champion: Window,
    challenger: Window,
    paired: tuple[np.ndarray, np.ndarray] | None = None,
    use_case: str = "fraud",
) -> list[Trip]:
    """Every guardrail the challenger trips in this window (empty: all clear)."""
    trips: list[Trip] = []

    def limit(name: str, value: float, bound: float | None, above: bool = True) -> None:
        if bound is not None and (value > bound if above else value < bound):
            trips.append(Trip(name, value, bound))

    if challenger.requests:
        limit("error_rate", challenger.errors / challenger.requests, guardrails.max_error_rate)
    if len(challenger.latencies_ms):
        p99 = float(np.percentile(challenger.latencies_ms, 99))
        limit("p99_latency_ms", p99, guardrails.max_p99_latency_ms)
    if len(champion.scores) >= MIN_SCORES and len(challenger.scores) >= MIN_SCORES:
        limit("score_psi", score_psi(champion.scores, challenger.scores), guardrails.max_score_psi)
        champion_rate = float(np.mean(champion.scores >= threshold))
        challenger_rate = float(np.mean(challenger.scores >= threshold))
        champion_alerts = int(np.sum(champion.scores >= threshold))
        if use_case == "fraud" and champion_alerts >= MIN_ALERTS:  # fewer: noise, not signal
            change = abs(challenger_rate - champion_rate) / champion_rate
            limit("alert_rate_change", change, guardrails.max_alert_rate_change)
        else:  # credit: a score at or above the threshold is a decline
            change = abs((1 - challenger_rate) - (1 - champion_rate))
            limit("approval_rate_change", change, guardrails.max_approval_rate_change)
    if paired is not None and len(paired[0]):
        rate = disagreement_rate(paired[0], paired[1], threshold)
        limit("disagreement_rate", rate, guardrails.max_disagreement_rate)
    labelled = 0 if challenger.labels is None else int(np.sum(~np.isnan(challenger.labels)))
    if labelled >= MIN_SCORES:  # labels arrive late (chargebacks, defaults): when enough have
        assert challenger.labels is not None
        ece = calibration_error(challenger.scores, challenger.labels)
        limit("calibration_error", ece, guardrails.max_calibration_error)
        if (
            guardrails.min_fraud_amount_caught_ratio is not None
            and champion.labels is not None
            and champion.amounts is not None
            and challenger.amounts is not None
        ):
            caught_champion = _caught(champion, threshold)
            caught_challenger = _caught(challenger, threshold)
            if caught_champion > 0:
                ratio = caught_challenger / caught_champion
                limit(
                    "fraud_amount_caught_ratio",
                    ratio,
                    guardrails.min_fraud_amount_caught_ratio,
                    above=False,
                )
    return trips


def _caught(window: Window, threshold: float) -> float:
    """Fraud amount flagged per fraud amount seen (comparable across window sizes)."""
    assert window.labels is not None and window.amounts is not None
    fraud = (window.labels == 1) & ~np.isnan(window.amounts)
    total = float(window.amounts[fraud].sum())
    if total == 0:
        return 0.0
    return float(window.amounts[fraud & (window.scores >= threshold)].sum()) / total


@dataclass(frozen=True)
class StepState:
    """Where a rollout stands: the current step's share, how long it has baked, and how
    many requests the challenger answered in it."""

    percent: int  # 0 = shadow phase
    elapsed_s: float
    requests: int


def decide(policy: Rollout, state: StepState, trips: list[Trip]) -> tuple[Decision, int | None]:
    """(decision, the next step's percent or None)."""
    if trips:
        return "rollback", None
    if state.percent == 0:
        needed_s = duration_seconds(policy.shadow.duration)
        needed_requests = policy.shadow.min_requests
    else:
        needed_s = duration_seconds(policy.bake_time)
        needed_requests = 1
    if state.percent >= 100:
        return "done", None
    if state.elapsed_s < needed_s or state.requests < needed_requests:
        return "hold", state.percent
    following = next(s for s in policy.canary_steps if s > state.percent)
    if following == 100 and policy.approval_before_full:
        return "await_approval", following
    return "advance", following
