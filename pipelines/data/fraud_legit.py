"""Legitimate card transactions of the fraud generator, drawn hour by hour.

The number per hour follows daily and weekly seasonality (quiet nights, busier weekdays
and Friday/Saturday evenings); each hour has its own random stream, so the rows do not
depend on the chunk size used to write them (:func:`legit_hour`). :class:`Rows` holds
transactions before the derived columns are added.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass

import numpy as np

from pipelines.data.fraud_config import (
    HOUR_PROFILE,
    REGIONS,
    SCENARIO_INDEX,
    STREAM_BNPL,
    STREAM_LEGIT,
    USUAL_TERMINALS,
    FraudConfig,
    stream_rng,
)
from pipelines.data.fraud_world import World

_TRAVEL_SHARE = 0.02
_PRIMARY_CARD_SHARE = 0.7
_MAX_AMOUNT = 25_000.0  # card limit: no single payment above this

# (median amount, lognormal sigma) per segment, in SEGMENTS order
_SEG_MEDIAN = np.array([32.0, 48.0, 27.0, 160.0, 290.0, 40.0, 45.0, 38.0, 240.0])
_SEG_SIGMA = np.array([0.70, 0.45, 0.60, 0.90, 0.80, 0.90, 0.80, 0.85, 0.60])
_SEG_MU = np.log(_SEG_MEDIAN)

_DOW_FACTOR = np.array([1.00, 1.00, 1.02, 1.05, 1.15, 1.10, 0.80])
_FRI_SAT_EVENING_BOOST = 1.35  # Friday/Saturday 18:00-23:59
_NIGHT_ONLINE_FACTOR = 1.6  # online share is higher 22:00-05:59

# ----------------------------------------------------------------------------- rows


@dataclass
class Rows:
    """Transactions before the derived columns are added (internal)."""

    sec: np.ndarray  # int64 seconds since the start of the period
    cust: np.ndarray  # int64 customer index
    card: np.ndarray  # int64 card_id
    term: np.ndarray  # int64 terminal index
    online: np.ndarray  # bool
    amount: np.ndarray  # float64
    dist: np.ndarray  # float64
    scenario: np.ndarray  # int8
    chargeback: np.ndarray  # int64 seconds since start, -1 if none

    @classmethod
    def concat(cls, parts: list[Rows]) -> Rows:
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{n: np.concatenate([getattr(p, n) for p in parts]) for n in names})

    def take(self, idx: np.ndarray | slice) -> Rows:
        names = [f.name for f in dataclasses.fields(self)]
        return Rows(**{n: getattr(self, n)[idx] for n in names})

    def __len__(self) -> int:
        return int(self.sec.shape[0])


def labelled_rows(
    world: World,
    scenario: str,
    sec: np.ndarray,
    cust: np.ndarray,
    card: np.ndarray,
    term: np.ndarray,
    amount: np.ndarray,
    dist: np.ndarray,
) -> Rows:
    """Transactions of one scenario (``none``: legitimate), online where the terminal is an
    online merchant's; a fraud's chargeback is set when the plan is merged (-1: none)."""
    n = len(sec)
    return Rows(
        sec=sec,
        cust=cust,
        card=card,
        term=term,
        online=term >= world.n_phys,
        amount=amount,
        dist=dist,
        scenario=np.full(n, SCENARIO_INDEX[scenario], dtype=np.int8),
        chargeback=np.full(n, -1 if scenario == "none" else 0, dtype=np.int64),
    )


def empty_rows() -> Rows:
    i64 = np.zeros(0, dtype=np.int64)
    return Rows(
        sec=i64,
        cust=i64,
        card=i64,
        term=i64,
        online=np.zeros(0, dtype=bool),
        amount=np.zeros(0),
        dist=np.zeros(0),
        scenario=np.zeros(0, dtype=np.int8),
        chargeback=i64,
    )


def hour_weights(cfg: FraudConfig) -> np.ndarray:
    n_hours = cfg.days * 24
    hours = np.arange(n_hours)
    hour_of_day = hours % 24
    dow = (dt.date.fromisoformat(cfg.start).weekday() + hours // 24) % 7
    w = HOUR_PROFILE[hour_of_day] * _DOW_FACTOR[dow]
    evening = ((dow == 4) | (dow == 5)) & (hour_of_day >= 18)
    return np.where(evening, w * _FRI_SAT_EVENING_BOOST, w)


def online_distance(rng: np.random.Generator, n: int) -> np.ndarray:
    """Distance of the device's IP location from home: mostly 0, sometimes a few km."""
    near = rng.exponential(12.0, size=n)
    return np.where(rng.random(n) < 0.6, 0.0, near)


def draw_amounts(
    seg: np.ndarray, spend_mu: np.ndarray, z: np.ndarray, factor: float | np.ndarray = 1.0
) -> np.ndarray:
    raw = np.exp(_SEG_MU[seg] + spend_mu + _SEG_SIGMA[seg] * z) * factor
    return np.clip(np.round(raw, 2), 0.01, _MAX_AMOUNT)


def physical_distance(world: World, cust: np.ndarray, term: np.ndarray) -> np.ndarray:
    d = world.term_xy[term] - world.home_xy[cust]
    return np.hypot(d[:, 0], d[:, 1])


def legit_hour(cfg: FraudConfig, world: World, hour: int, n: int) -> Rows:
    if n == 0:
        return empty_rows()
    rng = stream_rng(cfg, STREAM_LEGIT, hour)
    n_c = world.n_customers
    cust = np.minimum(np.searchsorted(world.activity_cdf, rng.random(n), side="right"), n_c - 1)
    sec = hour * 3600 + rng.integers(0, 3600, size=n)
    hod = hour % 24
    night = hod >= 22 or hod < 6
    p_online = world.online_p[cust] * (_NIGHT_ONLINE_FACTOR if night else 1.0)
    online = rng.random(n) < np.minimum(p_online, 0.95)
    k = (rng.random(n) * world.n_cards[cust]).astype(np.int64)
    k = np.where(rng.random(n) < _PRIMARY_CARD_SHARE, 0, k)
    card = world.card_base[cust] + k
    j = (USUAL_TERMINALS * rng.random(n) ** 1.6).astype(np.int64)
    t_phys = world.usual[cust, j].astype(np.int64)
    travel = rng.random(n) < _TRAVEL_SHARE
    t_phys = np.where(travel, rng.integers(0, world.n_phys, size=n), t_phys)
    t_online = world.n_phys + np.minimum(
        np.searchsorted(world.online_cdf, rng.random(n), side="right"), world.n_online - 1
    )
    term = np.where(online, t_online, t_phys)
    z = rng.standard_normal(n)
    online_dist = online_distance(rng, n)
    drifting = hour >= cfg.drift_from_day * 24
    if cfg.new_merchant_segment and drifting:
        # a separate stream, so the other rows stay as they are without the knob
        brng = stream_rng(cfg, STREAM_BNPL, hour)
        to_bnpl = online & (brng.random(n) < 0.15)
        t_bnpl = world.bnpl_base + brng.integers(0, world.n_bnpl, size=n)
        term = np.where(to_bnpl, t_bnpl, term)
    seg = world.term_seg[term]
    factor: float | np.ndarray = 1.0 + cfg.amount_shift if drifting else 1.0
    if cfg.amount_shift_region is not None and drifting:
        home = world.region[cust] == REGIONS.index(cfg.amount_shift_region)
        factor = np.where(home, 1.0 + cfg.amount_shift, 1.0)
    amount = draw_amounts(seg, world.spend_mu[cust], z, factor)
    dist = np.where(online, online_dist, physical_distance(world, cust, np.where(online, 0, term)))
    dist = np.round(dist, 2)
    return labelled_rows(world, "none", sec, cust, card, term, amount, dist)
