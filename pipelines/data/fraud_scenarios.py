"""The fraud scenarios of the fraud generator, planned for the whole period up front.

Card testing, account takeover, compromised terminals and (with ``new_fraud_pattern``)
the new pattern, each with its chargeback delay (:func:`plan_fraud`); see
:mod:`pipelines.data.fraud` for what each looks like.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipelines.data.fraud_config import (
    CRYPTO_MCC,
    HOUR_PROFILE,
    MCC_INDEX,
    SECONDS_PER_DAY,
    SEG_INDEX,
    STREAM_FRAUD,
    FraudConfig,
    stream_rng,
)
from pipelines.data.fraud_legit import (
    Rows,
    draw_amounts,
    empty_rows,
    labelled_rows,
    online_distance,
    physical_distance,
)
from pipelines.data.fraud_world import World

_AGE_ATO_WEIGHT = np.array([1.0, 1.0, 1.0, 1.2, 1.6])

# ----------------------------------------------------------------------------- fraud


def _split_budget(rng: np.random.Generator, budget: int, low: int, high: int) -> np.ndarray:
    """Event sizes in [low, high] summing exactly to ``budget`` (the last may be smaller)."""
    if budget <= 0:
        return np.zeros(0, dtype=np.int64)
    sizes = rng.integers(low, high + 1, size=budget // low + 1)
    cum = np.cumsum(sizes)
    n_events = int(np.searchsorted(cum, budget)) + 1
    sizes = sizes[:n_events].copy()
    sizes[-1] -= cum[n_events - 1] - budget
    return sizes


@dataclass(frozen=True)
class _Events:
    """One scenario's events: their sizes (rows), each row's event, the period (s)."""

    sizes: np.ndarray
    ev: np.ndarray
    total_sec: int

    @property
    def n_events(self) -> int:
        return int(self.sizes.shape[0])

    @property
    def n_rows(self) -> int:
        return len(self.ev)


def _group_starts(sizes: np.ndarray) -> np.ndarray:
    return np.cumsum(sizes) - sizes


def _random_card(rng: np.random.Generator, world: World, cust: np.ndarray) -> np.ndarray:
    k = (rng.random(cust.shape[0]) * world.n_cards[cust]).astype(np.int64)
    return world.card_base[cust] + k


def _random_victims(
    rng: np.random.Generator, world: World, n_events: int
) -> tuple[np.ndarray, np.ndarray]:
    """A random customer per event, and one of their cards."""
    cust_ev = rng.integers(0, world.n_customers, size=n_events)
    return cust_ev, _random_card(rng, world, cust_ev)


def _hour_in_profile(rng: np.random.Generator, weights: np.ndarray, n: int) -> np.ndarray:
    return rng.choice(24, size=n, p=weights / weights.sum())


def _card_testing(
    cfg: FraudConfig, world: World, rng: np.random.Generator, events: _Events
) -> tuple[Rows, np.ndarray]:
    ev, total_sec, n_ev, n = events.ev, events.total_sec, events.n_events, events.n_rows
    cust_ev, card_ev = _random_victims(rng, world, n_ev)
    # bots work around the clock, a little more at night
    night_heavy = np.where((np.arange(24) < 6) | (np.arange(24) >= 22), 1.6, 1.0)
    day = rng.integers(0, cfg.days, size=n_ev)
    start_ev = day * SECONDS_PER_DAY + _hour_in_profile(rng, night_heavy, n_ev) * 3600
    start_ev = start_ev + rng.integers(0, 3600, size=n_ev)
    gaps = rng.exponential(25.0, size=n)
    gaps[_group_starts(events.sizes)] = 0.0
    cum = np.cumsum(gaps)
    offset = cum - np.repeat(cum[_group_starts(events.sizes)], events.sizes)
    sec = np.minimum(start_ev[ev] + offset.astype(np.int64), total_sec - 1)
    # one or two small online merchants per burst
    candidates = world.n_phys + np.flatnonzero(
        np.isin(
            world.term_seg[world.n_phys : world.bnpl_base],
            [SEG_INDEX["online_marketplace"], SEG_INDEX["retail"]],
        )
    )
    terms_ev = candidates[rng.integers(0, candidates.shape[0], size=(n_ev, 2))]
    n_terms_ev = rng.integers(1, 3, size=n_ev)
    pick = (rng.random(n) * n_terms_ev[ev]).astype(np.int64)
    term = terms_ev[ev, pick]
    small = np.round(rng.uniform(0.5, 4.99, size=n), 2)
    amount = np.where(rng.random(n) < 0.3, 1.0, small)
    rows = labelled_rows(
        world,
        "card_testing",
        sec,
        cust_ev[ev],
        card_ev[ev],
        term,
        amount,
        rng.uniform(80.0, 1400.0, size=n),
    )
    return rows, ev


def _account_takeover(
    cfg: FraudConfig, world: World, rng: np.random.Generator, events: _Events
) -> tuple[Rows, np.ndarray]:
    ev, total_sec, n_ev, n = events.ev, events.total_sec, events.n_events, events.n_rows
    w = _AGE_ATO_WEIGHT[world.age_band]
    cdf = np.cumsum(w) / w.sum()
    cust_ev = np.minimum(
        np.searchsorted(cdf, rng.random(n_ev), side="right"), world.n_customers - 1
    )
    card_ev = _random_card(rng, world, cust_ev)
    length = np.minimum(rng.uniform(1.0, 4.0, size=n_ev) * SECONDS_PER_DAY, total_sec - 1)
    start_ev = (rng.random(n_ev) * (total_sec - length)).astype(np.int64)
    sec = start_ev[ev] + (rng.random(n) * length[ev]).astype(np.int64)
    cust = cust_ev[ev]
    online = rng.random(n) < 0.75
    # far-away physical terminals, or big-ticket online merchants
    t_phys = rng.integers(0, world.n_phys, size=n)
    online_seg = world.term_seg[world.n_phys : world.bnpl_base]
    candidates = world.n_phys + np.flatnonzero(online_seg != SEG_INDEX["gambling"])
    t_online = candidates[rng.integers(0, candidates.shape[0], size=n)]
    term = np.where(online, t_online, t_phys)
    factor = rng.uniform(2.5, 8.0, size=n)
    amount = draw_amounts(
        world.term_seg[term], world.spend_mu[cust], rng.standard_normal(n), factor
    )
    far_ip = rng.uniform(150.0, 900.0, size=n)
    dist = np.where(online, far_ip, physical_distance(world, cust, t_phys))
    rows = labelled_rows(
        world,
        "account_takeover",
        sec,
        cust,
        card_ev[ev],
        term,
        amount,
        dist,
    )
    return rows, ev


def _compromised_terminal(
    cfg: FraudConfig, world: World, rng: np.random.Generator, events: _Events
) -> tuple[Rows, np.ndarray]:
    ev, n_ev, n = events.ev, events.n_events, events.n_rows
    # catchment of each physical terminal: the customers that use it
    n_c = world.n_customers
    pair = np.unique(world.usual.astype(np.int64) * n_c + np.arange(n_c)[:, None])
    pair_term, pair_cust = pair // n_c, pair % n_c
    c_start = np.searchsorted(pair_term, np.arange(world.n_phys))
    c_size = np.searchsorted(pair_term, np.arange(world.n_phys), side="right") - c_start
    weight = np.where(c_size >= 3, c_size, 0).astype(float)
    if weight.sum() == 0:
        weight = c_size.astype(float)
    replace = n_ev > int(np.count_nonzero(weight))
    term_ev = rng.choice(world.n_phys, size=n_ev, replace=replace, p=weight / weight.sum())
    window_days = np.minimum(rng.integers(3, 11, size=n_ev), cfg.days)
    start_day = (rng.random(n_ev) * (cfg.days - window_days + 1)).astype(np.int64)
    day = start_day[ev] + (rng.random(n) * window_days[ev]).astype(np.int64)
    sec = day * SECONDS_PER_DAY + _hour_in_profile(rng, HOUR_PROFILE, n) * 3600
    sec = sec + rng.integers(0, 3600, size=n)
    # a fraction (30-60 %) of the terminal's cards, as a random cyclic run of its customers
    size_ev = c_size[term_ev]
    m_ev = np.maximum(1, np.ceil(rng.uniform(0.3, 0.6, size=n_ev) * size_ev)).astype(np.int64)
    rot_ev = rng.integers(0, np.maximum(size_ev, 1))
    member = (rot_ev[ev] + (rng.random(n) * m_ev[ev]).astype(np.int64)) % np.maximum(size_ev[ev], 1)
    cust = pair_cust[c_start[term_ev][ev] + member]
    term = term_ev[ev]
    factor = rng.uniform(1.2, 3.0, size=n)
    amount = draw_amounts(
        world.term_seg[term], world.spend_mu[cust], rng.standard_normal(n), factor
    )
    rows = labelled_rows(
        world,
        "compromised_terminal",
        sec,
        cust,
        world.card_base[cust],
        term,
        amount,
        physical_distance(world, cust, term),
    )
    # one dispute per (terminal event, customer)
    _, group = np.unique(ev * n_c + cust, return_inverse=True)
    return rows, group.astype(np.int64)


def _new_pattern(
    cfg: FraudConfig, world: World, rng: np.random.Generator, events: _Events
) -> tuple[Rows, np.ndarray]:
    ev, total_sec, n_ev, n = events.ev, events.total_sec, events.n_events, events.n_rows
    cust_ev, card_ev = _random_victims(rng, world, n_ev)
    day = rng.integers(cfg.drift_from_day, cfg.days, size=n_ev)
    start_ev = day * SECONDS_PER_DAY + rng.integers(0, 4 * 3600, size=n_ev)
    sec = np.minimum(start_ev[ev] + rng.integers(0, 3600, size=n), total_sec - 1)
    crypto = np.flatnonzero(world.term_mcc == MCC_INDEX[CRYPTO_MCC])
    term = crypto[rng.integers(0, crypto.shape[0], size=n)]
    amount = np.round(np.exp(rng.uniform(np.log(600.0), np.log(4800.0), size=n)), 2)
    rows = labelled_rows(
        world,
        "new_pattern",
        sec,
        cust_ev[ev],
        card_ev[ev],
        term,
        amount,
        online_distance(rng, n),
    )
    return rows, ev


def _scenario_budgets(cfg: FraudConfig) -> dict[str, int]:
    """Fraud rows per scenario, summing exactly to round(fraud_rate * n_rows)."""
    n_fraud = max(1, round(cfg.fraud_rate * cfg.n_rows))
    if cfg.new_fraud_pattern:
        shares = {
            "card_testing": 0.28,
            "account_takeover": 0.27,
            "compromised_terminal": 0.25,
            "new_pattern": 0.20,
        }
    else:
        shares = {"card_testing": 0.35, "account_takeover": 0.35, "compromised_terminal": 0.30}
    exact = {k: v * n_fraud for k, v in shares.items()}
    budgets = {k: int(math.floor(v)) for k, v in exact.items()}
    left = n_fraud - sum(budgets.values())
    for k in sorted(exact, key=lambda k: budgets[k] - exact[k])[:left]:
        budgets[k] += 1
    return budgets


def plan_fraud(cfg: FraudConfig, world: World) -> Rows:
    """All fraud rows of the period, sorted by time, with chargebacks."""
    total_sec = cfg.days * SECONDS_PER_DAY
    builders = {  # each scenario with the least and most rows of one event
        "card_testing": (_card_testing, 8, 40),
        "account_takeover": (_account_takeover, 3, 12),
        "compromised_terminal": (_compromised_terminal, 15, 60),
        "new_pattern": (_new_pattern, 1, 3),
    }
    parts: list[Rows] = []
    groups: list[np.ndarray] = []
    next_group = 0
    for i, (name, budget) in enumerate(_scenario_budgets(cfg).items()):
        rng = stream_rng(cfg, STREAM_FRAUD, i + 1)
        build, low, high = builders[name]
        sizes = _split_budget(rng, budget, low, high)
        if int(sizes.sum()) == 0:
            continue
        events = _Events(sizes, np.repeat(np.arange(sizes.shape[0]), sizes), total_sec)
        rows, group = build(cfg, world, rng, events)
        if len(rows) == 0:
            continue
        parts.append(rows)
        groups.append(group + next_group)
        next_group += int(group.max()) + 1
    if not parts:
        return empty_rows()
    rows = Rows.concat(parts)
    group = np.concatenate(groups)
    # chargeback: the dispute's last transaction + lognormal delay (median 10 d, 1-90 d)
    rng = stream_rng(cfg, STREAM_FRAUD, 0)
    last = np.full(next_group, -1, dtype=np.int64)
    np.maximum.at(last, group, rows.sec)
    delay_days = np.clip(rng.lognormal(np.log(10.0), 0.7, size=next_group), 1.0, 90.0)
    delay = (delay_days * SECONDS_PER_DAY).astype(np.int64)
    cb = np.maximum(last[group] + delay[group], rows.sec + SECONDS_PER_DAY)
    rows.chargeback = np.minimum(cb, rows.sec + 90 * SECONDS_PER_DAY)
    rows.dist = np.round(rows.dist, 2)
    order = np.argsort(rows.sec, kind="stable")
    return rows.take(order)
