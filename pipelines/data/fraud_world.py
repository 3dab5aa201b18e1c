"""The fraud generator's world: customers, cards and terminals on a map, drawn once.

Customers and physical terminals live on a 1000 x 1000 km map around a few cities; a
customer's region is the region of their home. Each customer has 1-3 cards, a spending
level, an online propensity and about ten usual terminals near home (:func:`build_world`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.data.fraud_config import (
    AGE_BANDS,
    CRYPTO_MCC,
    MCC_BY_SEGMENT,
    MCC_INDEX,
    REGIONS,
    SEG_INDEX,
    SEGMENTS,
    STREAM_WORLD,
    USUAL_TERMINALS,
    FraudConfig,
    stream_rng,
)

# ----------------------------------------------------------------------------- world model

_MAP_KM = 1000.0
_CELL_KM = 10.0
# city centres (km): the capital in the middle, then two or three cities per region
_CITY_CENTERS = np.array(
    [[500, 500], [470, 820], [840, 430], [300, 180], [150, 540], [380, 400], [720, 870],
     [870, 690], [620, 140], [190, 280], [640, 610], [250, 760], [760, 250], [520, 300]],
    dtype=float,
)  # fmt: skip
_RURAL_SHARE = 0.15
_VILLAGE_SPREAD_KM = 2.5

_USUAL_RADIUS_KM = 5.0  # spread of the points around home where usual terminals are sought
_TERMINAL_SPREAD_KM = 3.0  # terminals are placed this close to a random customer's home
_USUAL_SPREAD = 12  # fallback: +- neighbours in spatial order

_PHYSICAL_SEG_P = {
    "grocery": 0.28,
    "fuel": 0.14,
    "restaurant": 0.24,
    "electronics": 0.05,
    "travel": 0.04,
    "gambling": 0.02,
    "retail": 0.23,
}
_ONLINE_SEG_P = {
    "online_marketplace": 0.45,
    "retail": 0.18,
    "electronics": 0.12,
    "travel": 0.15,
    "gambling": 0.10,
}
_MARKETPLACE_MCC_P = np.array([0.70, 0.20, 0.10])  # 5999, 4829, 6051

_AGE_BAND_P = np.array([0.13, 0.21, 0.29, 0.23, 0.14])
_AGE_LOW = np.array([18, 26, 36, 51, 66])
_AGE_HIGH = np.array([25, 35, 50, 65, 85])
_AGE_ONLINE = np.array([0.45, 0.38, 0.28, 0.18, 0.10])
_AGE_SPEND = np.array([-0.25, 0.0, 0.12, 0.08, -0.10])

# ----------------------------------------------------------------------------- world


@dataclass(frozen=True)
class World:
    home_xy: np.ndarray  # (n_customers, 2) km
    region: np.ndarray  # int8 codes into REGIONS
    age_band: np.ndarray  # int8 codes into AGE_BANDS
    tenure0: np.ndarray  # int64 tenure in days at the start of the period
    activity_cdf: np.ndarray  # cumulative activity share, for choosing customers
    online_p: np.ndarray  # online propensity
    spend_mu: np.ndarray  # log spending multiplier
    n_cards: np.ndarray  # 1..3
    card_base: np.ndarray  # card_id of the customer's first card
    usual: np.ndarray  # (n_customers, K) int32 indices of usual physical terminals
    term_xy: np.ndarray  # (n_all_terminals, 2) km; online terminals at NaN
    term_seg: np.ndarray  # int8 codes into SEGMENTS
    term_mcc: np.ndarray  # int8 codes into MCCS
    n_phys: int
    n_online: int
    n_bnpl: int
    online_cdf: np.ndarray  # popularity of online merchants (indices n_phys..)

    @property
    def n_customers(self) -> int:
        return int(self.home_xy.shape[0])

    @property
    def bnpl_base(self) -> int:
        return self.n_phys + self.n_online


def _draw_locations(
    rng: np.random.Generator, n: int, centers: np.ndarray, spread: np.ndarray, cdf: np.ndarray
) -> np.ndarray:
    """Homes: mostly around the cities, the rest in villages of about 15 households."""
    city = np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), len(cdf) - 1)
    xy = centers[city] + rng.normal(size=(n, 2)) * spread[city, None]
    rural = rng.random(n) < _RURAL_SHARE
    n_rural = int(rural.sum())
    villages = rng.uniform(0.0, _MAP_KM, size=(max(10, n // 100), 2))
    village = rng.integers(0, villages.shape[0], size=n_rural)
    xy[rural] = villages[village] + rng.normal(0.0, _VILLAGE_SPREAD_KM, size=(n_rural, 2))
    return np.clip(xy, 0.0, _MAP_KM)


def _region_of(xy: np.ndarray) -> np.ndarray:
    dx = xy[:, 0] - _MAP_KM / 2
    dy = xy[:, 1] - _MAP_KM / 2
    vertical = np.abs(dy) >= np.abs(dx)
    code = np.where(
        vertical,
        np.where(dy > 0, REGIONS.index("north"), REGIONS.index("south")),
        np.where(dx > 0, REGIONS.index("east"), REGIONS.index("west")),
    )
    central = np.maximum(np.abs(dx), np.abs(dy)) < 170.0
    return np.where(central, REGIONS.index("central"), code).astype(np.int8)


def _spatial_key(xy: np.ndarray) -> np.ndarray:
    """Boustrophedon order of 10 km cells: neighbours in key are neighbours on the map."""
    n_cells = int(_MAP_KM / _CELL_KM)
    col = np.minimum((xy[:, 0] / _CELL_KM).astype(np.int64), n_cells - 1)
    row = np.minimum((xy[:, 1] / _CELL_KM).astype(np.int64), n_cells - 1)
    col = np.where(row % 2 == 0, col, n_cells - 1 - col)
    return row * n_cells + col


def _choice_codes(
    rng: np.random.Generator, names: Mapping[str, float], index: Mapping[str, int], n: int
) -> np.ndarray:
    keys = list(names)
    p = np.array([names[k] for k in keys], dtype=float)
    picks = rng.choice(len(keys), size=n, p=p / p.sum())
    return np.array([index[k] for k in keys], dtype=np.int8)[picks]


def _mcc_for_segments(rng: np.random.Generator, seg: np.ndarray) -> np.ndarray:
    """Pick an MCC for each terminal among its segment's codes (loop over 9 segments)."""
    mcc = np.zeros(seg.shape[0], dtype=np.int8)
    u = rng.random(seg.shape[0])
    for s, name in enumerate(SEGMENTS):
        mask = seg == s
        codes = np.array([MCC_INDEX[m] for m in MCC_BY_SEGMENT[name]], dtype=np.int8)
        if name == "online_marketplace":
            cdf = np.cumsum(_MARKETPLACE_MCC_P)
        else:
            cdf = np.arange(1, len(codes) + 1) / len(codes)
        pick = np.minimum(np.searchsorted(cdf, u[mask], side="right"), len(codes) - 1)
        mcc[mask] = codes[pick]
    return mcc


class _CellIndex:
    """Physical terminals bucketed by square map cells of ``cell_km``."""

    def __init__(self, xy: np.ndarray, cell_km: float) -> None:
        self.cell_km = cell_km
        self.n_side = int(math.ceil(_MAP_KM / cell_km))
        cell = self.cell_of(xy)
        self.members = np.argsort(cell, kind="stable")
        self.count = np.bincount(cell, minlength=self.n_side * self.n_side)
        self.start = np.cumsum(self.count) - self.count

    def cell_of(self, xy: np.ndarray) -> np.ndarray:
        col = np.clip((xy[..., 0] / self.cell_km).astype(np.int64), 0, self.n_side - 1)
        row = np.clip((xy[..., 1] / self.cell_km).astype(np.int64), 0, self.n_side - 1)
        return row * self.n_side + col

    def pick(self, xy: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A random terminal in the cell of each point, and whether the cell had any."""
        cell = self.cell_of(xy)
        count = self.count[cell]
        found = count > 0
        slot = self.start[cell] + (u * count).astype(np.int64)
        return self.members[np.minimum(slot, self.members.shape[0] - 1)], found


def _usual_terminals(
    rng: np.random.Generator, home_xy: np.ndarray, phys_xy: np.ndarray, phys_key: np.ndarray
) -> np.ndarray:
    """About ten terminals near each home: in the 10 km cell of a point a few km from
    home, else in the 40 km or 125 km cell of home, else spatial neighbours."""
    n_c, n_phys = home_xy.shape[0], phys_xy.shape[0]
    shape = (n_c, USUAL_TERMINALS)
    near = home_xy[:, None, :] + rng.normal(0.0, _USUAL_RADIUS_KM, size=(*shape, 2))
    fine, fine_ok = _CellIndex(phys_xy, 10.0).pick(near, rng.random(shape))
    home = np.broadcast_to(home_xy[:, None, :], (*shape, 2))
    coarse, coarse_ok = _CellIndex(phys_xy, 40.0).pick(home, rng.random(shape))
    wide, wide_ok = _CellIndex(phys_xy, 125.0).pick(home, rng.random(shape))
    pos = np.searchsorted(phys_key, _spatial_key(home_xy))
    offsets = rng.integers(-_USUAL_SPREAD, _USUAL_SPREAD + 1, size=shape)
    fallback = np.clip(pos[:, None] + offsets, 0, n_phys - 1)
    usual = np.where(wide_ok, wide, fallback)
    usual = np.where(coarse_ok, coarse, usual)
    usual = np.where(fine_ok, fine, usual)
    return usual.astype(np.int32)


def _terminals(
    rng: np.random.Generator, home_xy: np.ndarray, n_t: int
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The physical terminals' places and spatial keys (in spatial order), and the
    :class:`World` fields of every terminal."""
    # terminals: physical ones in spatial order, then online merchants, then BNPL
    n_online = max(20, round(0.08 * n_t))
    n_phys = n_t - n_online
    # shops are where people live: each one near a random customer's home
    anchor = rng.integers(0, len(home_xy), size=n_phys)
    phys_xy = home_xy[anchor] + rng.normal(0.0, _TERMINAL_SPREAD_KM, size=(n_phys, 2))
    phys_xy = np.clip(phys_xy, 0.0, _MAP_KM)
    phys_key = _spatial_key(phys_xy)
    order = np.lexsort((phys_xy[:, 0], phys_key))
    phys_xy = phys_xy[order]
    phys_key = phys_key[order]
    phys_seg = _choice_codes(rng, _PHYSICAL_SEG_P, SEG_INDEX, n_phys)
    online_seg = _choice_codes(rng, _ONLINE_SEG_P, SEG_INDEX, n_online)
    online_seg[-2:] = SEG_INDEX["online_marketplace"]
    n_bnpl = max(5, n_online // 8)
    bnpl_seg = np.full(n_bnpl, SEG_INDEX["bnpl"], dtype=np.int8)
    term_seg = np.concatenate([phys_seg, online_seg, bnpl_seg])
    term_mcc = _mcc_for_segments(rng, term_seg)
    term_mcc[n_phys + n_online - 2 : n_phys + n_online] = MCC_INDEX[CRYPTO_MCC]
    term_xy = np.full((n_phys + n_online + n_bnpl, 2), np.nan)
    term_xy[:n_phys] = phys_xy
    online_w = 1.0 / np.arange(1, n_online + 1) ** 0.8
    online_w = online_w[rng.permutation(n_online)]
    online_cdf = np.cumsum(online_w) / online_w.sum()

    terminals = {
        "term_xy": term_xy,
        "term_seg": term_seg,
        "term_mcc": term_mcc,
        "n_phys": n_phys,
        "n_online": n_online,
        "n_bnpl": n_bnpl,
        "online_cdf": online_cdf,
    }
    return phys_xy, phys_key, terminals


def _customers(
    rng: np.random.Generator,
    n_c: int,
    centers: np.ndarray,
    spread: np.ndarray,
    city_cdf: np.ndarray,
) -> dict[str, np.ndarray]:
    """The :class:`World` fields of every customer: home and region, age band, tenure,
    activity, online propensity, spending and cards."""
    home_xy = _draw_locations(rng, n_c, centers, spread, city_cdf)
    age_band = rng.choice(len(AGE_BANDS), size=n_c, p=_AGE_BAND_P).astype(np.int8)
    age = rng.uniform(_AGE_LOW[age_band], _AGE_HIGH[age_band] + 1)
    tenure_years = np.minimum(rng.exponential(6.0, size=n_c), age - 18.0)
    activity = rng.lognormal(0.0, 0.7, size=n_c)
    online_p = np.clip(_AGE_ONLINE[age_band] * rng.lognormal(0.0, 0.35, size=n_c), 0.02, 0.9)
    spend_mu = rng.normal(0.0, 0.45, size=n_c) + _AGE_SPEND[age_band]
    n_cards = rng.choice(np.array([1, 2, 3]), size=n_c, p=[0.62, 0.28, 0.10])
    return {
        "home_xy": home_xy,
        "region": _region_of(home_xy),
        "age_band": age_band,
        "tenure0": (tenure_years * 365.25).astype(np.int64),
        "activity_cdf": np.cumsum(activity) / activity.sum(),
        "online_p": online_p,
        "spend_mu": spend_mu,
        "n_cards": n_cards,
        "card_base": 1 + np.concatenate(([0], np.cumsum(n_cards)[:-1])).astype(np.int64),
    }


def build_world(cfg: FraudConfig) -> World:
    rng = stream_rng(cfg, STREAM_WORLD)
    n_c = int(cfg.n_customers or 0)
    n_t = int(cfg.n_terminals or 0)

    n_cities = _CITY_CENTERS.shape[0]
    centers = _CITY_CENTERS + rng.uniform(-25.0, 25.0, size=(n_cities, 2))
    spread = rng.uniform(8.0, 30.0, size=n_cities)
    city_w = 1.0 / np.arange(1, n_cities + 1) ** 0.8
    city_cdf = np.cumsum(city_w) / city_w.sum()

    customers = _customers(rng, n_c, centers, spread, city_cdf)
    home_xy = customers["home_xy"]
    phys_xy, phys_key, terminals = _terminals(rng, home_xy, n_t)
    usual = _usual_terminals(rng, home_xy, phys_xy, phys_key)
    return World(**customers, usual=usual, **terminals)
