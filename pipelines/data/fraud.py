"""Synthetic card-transaction data with labelled fraud scenarios and drift knobs.

The generator is fully vectorised with numpy and seeded, so the same
:class:`FraudConfig` always gives the same rows and a byte-identical Parquet file.

How the data is built:

* A *world* (customers, cards, terminals) is drawn once from the seed. Customers and
  physical terminals live on a 1000 x 1000 km map around a few cities; a customer's
  region is the region of their home. Each customer has 1-3 cards, a spending level,
  an online propensity and about ten usual terminals near home.
* Legitimate transactions are drawn hour by hour. The number per hour follows daily
  and weekly seasonality (quiet nights, busier weekdays and Friday/Saturday
  evenings). Each hour has its own random stream, so the rows do not depend on the
  chunk size used to write them.
* Fraud is planned for the whole period up front (it is a small share of the rows)
  from four scenarios, then merged into the hours it falls in:

  - ``card_testing``: a stolen card makes a burst of 8-40 tiny online payments at one
    or two merchants within minutes;
  - ``account_takeover``: over 1-4 days a customer's card is used mostly online from
    far away, or at terminals far from home, for amounts several times their usual;
  - ``compromised_terminal``: for a window of 3-10 days part of the cards that use
    one terminal are used fraudulently there;
  - ``new_pattern`` (only with ``new_fraud_pattern``): high-value night-time online
    payments at crypto/quasi-cash merchants (MCC 6051) that look like the
    customer's own device (no distance signal), a scenario older models never saw.

* Each fraud dispute (a burst, a takeover, a card at a compromised terminal) gets a
  chargeback at its last transaction plus a lognormal delay (median 10 days, clipped
  to 1-90 days); legitimate rows have no chargeback.

Drift knobs (for monitoring tests and demos): ``amount_shift`` scales legitimate
amounts by ``1 + amount_shift`` (only for customers living in ``amount_shift_region``
when that is set); ``new_merchant_segment`` sends part of online spend to BNPL
merchants; ``new_fraud_pattern`` adds the scenario above. With ``drift_from_day`` the
knobs act from that day on only, so one data set holds a clean period and a drifted one
drawn from the same world.

Category columns have fixed category lists (including ``bnpl`` and ``new_pattern``)
whatever the knobs, so every fraud data set has the same schema and drift shows up
in the values only.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from pipelines.data.manifest import Manifest, write_parquet_with_manifest
from pipelines.errors import DataValidationError

log = logging.getLogger(__name__)

DATASET_NAME = "fraud_transactions"
GENERATOR = "pipelines.data.fraud.generate_fraud"

# ----------------------------------------------------------------------------- categories

SEGMENTS: tuple[str, ...] = (
    "grocery",
    "fuel",
    "restaurant",
    "electronics",
    "travel",
    "gambling",
    "retail",
    "online_marketplace",
    "bnpl",
)
MCC_BY_SEGMENT: dict[str, tuple[str, ...]] = {
    "grocery": ("5411",),
    "fuel": ("5541",),
    "restaurant": ("5812",),
    "electronics": ("5732",),
    "travel": ("4511", "7011"),
    "gambling": ("7995",),
    "retail": ("5310", "5311", "5944", "5999"),
    "online_marketplace": ("5999", "4829", "6051"),  # misc. retail, money transfer, crypto
    "bnpl": ("6012",),
}
MCCS: tuple[str, ...] = tuple(sorted({m for codes in MCC_BY_SEGMENT.values() for m in codes}))
CHANNELS: tuple[str, ...] = ("card_present", "online")
REGIONS: tuple[str, ...] = ("north", "south", "east", "west", "central")
AGE_BANDS: tuple[str, ...] = ("18-25", "26-35", "36-50", "51-65", "65+")
SCENARIOS: tuple[str, ...] = (
    "none",
    "card_testing",
    "account_takeover",
    "compromised_terminal",
    "new_pattern",
)
CRYPTO_MCC = "6051"

COLUMNS: tuple[str, ...] = (
    "transaction_id",
    "tx_time",
    "customer_id",
    "card_id",
    "terminal_id",
    "mcc",
    "merchant_segment",
    "channel",
    "amount",
    "distance_from_home_km",
    "region",
    "customer_tenure_days",
    "customer_age_band",
    "is_fraud",
    "fraud_scenario",
    "chargeback_time",
)

_CATEGORIES: dict[str, tuple[str, ...]] = {
    "mcc": MCCS,
    "merchant_segment": SEGMENTS,
    "channel": CHANNELS,
    "region": REGIONS,
    "customer_age_band": AGE_BANDS,
    "fraud_scenario": SCENARIOS,
}


def _dict_type() -> pa.DataType:
    return pa.dictionary(pa.int8(), pa.string())


FRAUD_SCHEMA: pa.Schema = pa.schema(
    [
        ("transaction_id", pa.int64()),
        ("tx_time", pa.timestamp("ns")),
        ("customer_id", pa.int64()),
        ("card_id", pa.int64()),
        ("terminal_id", pa.int64()),
        ("mcc", _dict_type()),
        ("merchant_segment", _dict_type()),
        ("channel", _dict_type()),
        ("amount", pa.float64()),
        ("distance_from_home_km", pa.float64()),
        ("region", _dict_type()),
        ("customer_tenure_days", pa.int32()),
        ("customer_age_band", _dict_type()),
        ("is_fraud", pa.int8()),
        ("fraud_scenario", _dict_type()),
        ("chargeback_time", pa.timestamp("ns")),
    ]
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
_USUAL_TERMINALS = 10
_USUAL_RADIUS_KM = 5.0  # spread of the points around home where usual terminals are sought
_TERMINAL_SPREAD_KM = 3.0  # terminals are placed this close to a random customer's home
_USUAL_SPREAD = 12  # fallback: +- neighbours in spatial order
_TRAVEL_SHARE = 0.02
_PRIMARY_CARD_SHARE = 0.7
_MAX_AMOUNT = 25_000.0  # card limit: no single payment above this
_SECONDS_PER_DAY = 86_400
_NS = 1_000_000_000

_SEG = {name: i for i, name in enumerate(SEGMENTS)}
_MCC = {code: i for i, code in enumerate(MCCS)}
_SCEN = {name: i for i, name in enumerate(SCENARIOS)}

# (median amount, lognormal sigma) per segment, in SEGMENTS order
_SEG_MEDIAN = np.array([32.0, 48.0, 27.0, 160.0, 290.0, 40.0, 45.0, 38.0, 240.0])
_SEG_SIGMA = np.array([0.70, 0.45, 0.60, 0.90, 0.80, 0.90, 0.80, 0.85, 0.60])
_SEG_MU = np.log(_SEG_MEDIAN)

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

# hour-of-day profile (0..23) and day-of-week factor (Mon..Sun)
_HOUR_PROFILE = np.array(
    [0.10, 0.06, 0.04, 0.03, 0.04, 0.08, 0.20, 0.45, 0.70, 0.85, 0.95, 1.05,
     1.20, 1.15, 1.00, 0.95, 1.00, 1.10, 1.20, 1.15, 0.95, 0.75, 0.50, 0.25]
)  # fmt: skip
_DOW_FACTOR = np.array([1.00, 1.00, 1.02, 1.05, 1.15, 1.10, 0.80])
_FRI_SAT_EVENING_BOOST = 1.35  # Friday/Saturday 18:00-23:59
_NIGHT_ONLINE_FACTOR = 1.6  # online share is higher 22:00-05:59

_AGE_BAND_P = np.array([0.13, 0.21, 0.29, 0.23, 0.14])
_AGE_LOW = np.array([18, 26, 36, 51, 66])
_AGE_HIGH = np.array([25, 35, 50, 65, 85])
_AGE_ONLINE = np.array([0.45, 0.38, 0.28, 0.18, 0.10])
_AGE_SPEND = np.array([-0.25, 0.0, 0.12, 0.08, -0.10])
_AGE_ATO_WEIGHT = np.array([1.0, 1.0, 1.0, 1.2, 1.6])

# random streams: one per purpose so a knob only changes what it should
_STREAM_WORLD = 0
_STREAM_PLAN = 1
_STREAM_LEGIT = 2
_STREAM_FRAUD = 3
_STREAM_BNPL = 4

_MAX_ROWS = 2_000_000_000


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class FraudConfig:
    """Parameters of one synthetic fraud data set.

    ``n_customers`` and ``n_terminals`` default to ``max(200, n_rows // 50)`` and
    ``max(200, n_rows // 100)`` (about 1.7 transactions per customer per day over 30
    days); after construction they hold the resolved values.
    """

    n_rows: int
    seed: int = 0
    start: str = "2026-01-01"
    days: int = 30
    n_customers: int | None = None
    n_terminals: int | None = None
    fraud_rate: float = 0.002
    new_fraud_pattern: bool = False
    amount_shift: float = 0.0
    new_merchant_segment: bool = False
    amount_shift_region: str | None = None
    drift_from_day: int = 0

    def __post_init__(self) -> None:
        _check_int("n_rows", self.n_rows, 1_000, _MAX_ROWS)
        _check_int("seed", self.seed, 0, 2**63 - 1)
        _check_date("start", self.start)
        _check_int("days", self.days, 1, 3_660)
        if self.n_customers is None:
            object.__setattr__(self, "n_customers", max(200, self.n_rows // 50))
        if self.n_terminals is None:
            object.__setattr__(self, "n_terminals", max(200, self.n_rows // 100))
        _check_int("n_customers", self.n_customers, 50, 100_000_000)
        _check_int("n_terminals", self.n_terminals, 100, 100_000_000)
        _check_float("fraud_rate", self.fraud_rate, 0.001, 0.01)
        _check_float("amount_shift", self.amount_shift, -0.5, 3.0)
        _check_int("drift_from_day", self.drift_from_day, 0, self.days - 1)
        if self.amount_shift_region is not None and self.amount_shift_region not in REGIONS:
            raise DataValidationError(
                f"FraudConfig.amount_shift_region must be one of {list(REGIONS)} or null, "
                f"got {self.amount_shift_region!r}"
            )
        for name in ("new_fraud_pattern", "new_merchant_segment"):
            if not isinstance(getattr(self, name), bool):
                raise DataValidationError(
                    f"FraudConfig.{name} must be true or false, got {getattr(self, name)!r}"
                )

    def to_params(self) -> dict[str, Any]:
        """The resolved configuration as a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> FraudConfig:
        """Rebuild a config from manifest params (keys that are not fields are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in params.items() if k in names})


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if not isinstance(value, int | np.integer) or isinstance(value, bool):
        raise DataValidationError(f"FraudConfig.{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise DataValidationError(f"FraudConfig.{name} must be in [{low}, {high}], got {value}")


def _check_date(name: str, value: Any) -> None:
    message = f"FraudConfig.{name} must be a 'YYYY-MM-DD' date string, got {value!r}"
    if not isinstance(value, str) or len(value) != 10:
        raise DataValidationError(message)
    try:
        dt.date.fromisoformat(value)
    except ValueError as exc:
        raise DataValidationError(message) from exc


def _check_float(name: str, value: Any, low: float, high: float) -> None:
    if not isinstance(value, int | float | np.floating) or isinstance(value, bool):
        raise DataValidationError(f"FraudConfig.{name} must be a number, got {value!r}")
    if not (math.isfinite(float(value)) and low <= float(value) <= high):
        raise DataValidationError(f"FraudConfig.{name} must be in [{low}, {high}], got {value}")


def _rng(cfg: FraudConfig, *keys: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, *keys])


# ----------------------------------------------------------------------------- world


@dataclass(frozen=True)
class _World:
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
        codes = np.array([_MCC[m] for m in MCC_BY_SEGMENT[name]], dtype=np.int8)
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
    shape = (n_c, _USUAL_TERMINALS)
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


def _build_world(cfg: FraudConfig) -> _World:
    rng = _rng(cfg, _STREAM_WORLD)
    n_c = int(cfg.n_customers or 0)
    n_t = int(cfg.n_terminals or 0)

    n_cities = _CITY_CENTERS.shape[0]
    centers = _CITY_CENTERS + rng.uniform(-25.0, 25.0, size=(n_cities, 2))
    spread = rng.uniform(8.0, 30.0, size=n_cities)
    city_w = 1.0 / np.arange(1, n_cities + 1) ** 0.8
    city_cdf = np.cumsum(city_w) / city_w.sum()

    # customers
    home_xy = _draw_locations(rng, n_c, centers, spread, city_cdf)
    region = _region_of(home_xy)
    age_band = rng.choice(len(AGE_BANDS), size=n_c, p=_AGE_BAND_P).astype(np.int8)
    age = rng.uniform(_AGE_LOW[age_band], _AGE_HIGH[age_band] + 1)
    tenure_years = np.minimum(rng.exponential(6.0, size=n_c), age - 18.0)
    tenure0 = (tenure_years * 365.25).astype(np.int64)
    activity = rng.lognormal(0.0, 0.7, size=n_c)
    activity_cdf = np.cumsum(activity) / activity.sum()
    online_p = np.clip(_AGE_ONLINE[age_band] * rng.lognormal(0.0, 0.35, size=n_c), 0.02, 0.9)
    spend_mu = rng.normal(0.0, 0.45, size=n_c) + _AGE_SPEND[age_band]
    n_cards = rng.choice(np.array([1, 2, 3]), size=n_c, p=[0.62, 0.28, 0.10])
    card_base = 1 + np.concatenate(([0], np.cumsum(n_cards)[:-1])).astype(np.int64)

    # terminals: physical ones in spatial order, then online merchants, then BNPL
    n_online = max(20, round(0.08 * n_t))
    n_phys = n_t - n_online
    # shops are where people live: each one near a random customer's home
    anchor = rng.integers(0, n_c, size=n_phys)
    phys_xy = home_xy[anchor] + rng.normal(0.0, _TERMINAL_SPREAD_KM, size=(n_phys, 2))
    phys_xy = np.clip(phys_xy, 0.0, _MAP_KM)
    phys_key = _spatial_key(phys_xy)
    order = np.lexsort((phys_xy[:, 0], phys_key))
    phys_xy = phys_xy[order]
    phys_key = phys_key[order]
    phys_seg = _choice_codes(rng, _PHYSICAL_SEG_P, _SEG, n_phys)
    online_seg = _choice_codes(rng, _ONLINE_SEG_P, _SEG, n_online)
    online_seg[-2:] = _SEG["online_marketplace"]
    n_bnpl = max(5, n_online // 8)
    bnpl_seg = np.full(n_bnpl, _SEG["bnpl"], dtype=np.int8)
    term_seg = np.concatenate([phys_seg, online_seg, bnpl_seg])
    term_mcc = _mcc_for_segments(rng, term_seg)
    term_mcc[n_phys + n_online - 2 : n_phys + n_online] = _MCC[CRYPTO_MCC]
    term_xy = np.full((n_phys + n_online + n_bnpl, 2), np.nan)
    term_xy[:n_phys] = phys_xy
    online_w = 1.0 / np.arange(1, n_online + 1) ** 0.8
    online_w = online_w[rng.permutation(n_online)]
    online_cdf = np.cumsum(online_w) / online_w.sum()

    usual = _usual_terminals(rng, home_xy, phys_xy, phys_key)

    return _World(
        home_xy=home_xy,
        region=region,
        age_band=age_band,
        tenure0=tenure0,
        activity_cdf=activity_cdf,
        online_p=online_p,
        spend_mu=spend_mu,
        n_cards=n_cards,
        card_base=card_base,
        usual=usual,
        term_xy=term_xy,
        term_seg=term_seg,
        term_mcc=term_mcc,
        n_phys=n_phys,
        n_online=n_online,
        n_bnpl=n_bnpl,
        online_cdf=online_cdf,
    )


# ----------------------------------------------------------------------------- rows


@dataclass
class _Rows:
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
    def concat(cls, parts: list[_Rows]) -> _Rows:
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{n: np.concatenate([getattr(p, n) for p in parts]) for n in names})

    def take(self, idx: np.ndarray | slice) -> _Rows:
        names = [f.name for f in dataclasses.fields(self)]
        return _Rows(**{n: getattr(self, n)[idx] for n in names})

    def __len__(self) -> int:
        return int(self.sec.shape[0])


def _empty_rows() -> _Rows:
    i64 = np.zeros(0, dtype=np.int64)
    return _Rows(
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


def _hour_weights(cfg: FraudConfig) -> np.ndarray:
    n_hours = cfg.days * 24
    hours = np.arange(n_hours)
    hour_of_day = hours % 24
    dow = (dt.date.fromisoformat(cfg.start).weekday() + hours // 24) % 7
    w = _HOUR_PROFILE[hour_of_day] * _DOW_FACTOR[dow]
    evening = ((dow == 4) | (dow == 5)) & (hour_of_day >= 18)
    return np.where(evening, w * _FRI_SAT_EVENING_BOOST, w)


def _online_distance(rng: np.random.Generator, n: int) -> np.ndarray:
    """Distance of the device's IP location from home: mostly 0, sometimes a few km."""
    near = rng.exponential(12.0, size=n)
    return np.where(rng.random(n) < 0.6, 0.0, near)


def _amounts(
    seg: np.ndarray, spend_mu: np.ndarray, z: np.ndarray, factor: float | np.ndarray = 1.0
) -> np.ndarray:
    raw = np.exp(_SEG_MU[seg] + spend_mu + _SEG_SIGMA[seg] * z) * factor
    return np.clip(np.round(raw, 2), 0.01, _MAX_AMOUNT)


def _physical_distance(world: _World, cust: np.ndarray, term: np.ndarray) -> np.ndarray:
    d = world.term_xy[term] - world.home_xy[cust]
    return np.hypot(d[:, 0], d[:, 1])


def _legit_hour(cfg: FraudConfig, world: _World, hour: int, n: int) -> _Rows:
    if n == 0:
        return _empty_rows()
    rng = _rng(cfg, _STREAM_LEGIT, hour)
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
    j = (_USUAL_TERMINALS * rng.random(n) ** 1.6).astype(np.int64)
    t_phys = world.usual[cust, j].astype(np.int64)
    travel = rng.random(n) < _TRAVEL_SHARE
    t_phys = np.where(travel, rng.integers(0, world.n_phys, size=n), t_phys)
    t_online = world.n_phys + np.minimum(
        np.searchsorted(world.online_cdf, rng.random(n), side="right"), world.n_online - 1
    )
    term = np.where(online, t_online, t_phys)
    z = rng.standard_normal(n)
    online_dist = _online_distance(rng, n)
    drifting = hour >= cfg.drift_from_day * 24
    if cfg.new_merchant_segment and drifting:
        # a separate stream, so the other rows stay as they are without the knob
        brng = _rng(cfg, _STREAM_BNPL, hour)
        to_bnpl = online & (brng.random(n) < 0.15)
        t_bnpl = world.bnpl_base + brng.integers(0, world.n_bnpl, size=n)
        term = np.where(to_bnpl, t_bnpl, term)
    seg = world.term_seg[term]
    factor: float | np.ndarray = 1.0 + cfg.amount_shift if drifting else 1.0
    if cfg.amount_shift_region is not None and drifting:
        home = world.region[cust] == REGIONS.index(cfg.amount_shift_region)
        factor = np.where(home, 1.0 + cfg.amount_shift, 1.0)
    amount = _amounts(seg, world.spend_mu[cust], z, factor)
    dist = np.where(online, online_dist, _physical_distance(world, cust, np.where(online, 0, term)))
    dist = np.round(dist, 2)
    return _Rows(
        sec=sec,
        cust=cust,
        card=card,
        term=term,
        online=online,
        amount=amount,
        dist=dist,
        scenario=np.zeros(n, dtype=np.int8),
        chargeback=np.full(n, -1, dtype=np.int64),
    )


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


def _group_starts(sizes: np.ndarray) -> np.ndarray:
    return np.cumsum(sizes) - sizes


def _random_card(rng: np.random.Generator, world: _World, cust: np.ndarray) -> np.ndarray:
    k = (rng.random(cust.shape[0]) * world.n_cards[cust]).astype(np.int64)
    return world.card_base[cust] + k


def _hour_in_profile(rng: np.random.Generator, weights: np.ndarray, n: int) -> np.ndarray:
    return rng.choice(24, size=n, p=weights / weights.sum())


def _card_testing(
    cfg: FraudConfig, world: _World, rng: np.random.Generator, budget: int, total_sec: int
) -> tuple[_Rows, np.ndarray]:
    sizes = _split_budget(rng, budget, 8, 40)
    n_ev, n = sizes.shape[0], int(sizes.sum())
    if n == 0:
        return _empty_rows(), np.zeros(0, dtype=np.int64)
    ev = np.repeat(np.arange(n_ev), sizes)
    cust_ev = rng.integers(0, world.n_customers, size=n_ev)
    card_ev = _random_card(rng, world, cust_ev)
    # bots work around the clock, a little more at night
    night_heavy = np.where((np.arange(24) < 6) | (np.arange(24) >= 22), 1.6, 1.0)
    day = rng.integers(0, cfg.days, size=n_ev)
    start_ev = day * _SECONDS_PER_DAY + _hour_in_profile(rng, night_heavy, n_ev) * 3600
    start_ev = start_ev + rng.integers(0, 3600, size=n_ev)
    gaps = rng.exponential(25.0, size=n)
    gaps[_group_starts(sizes)] = 0.0
    cum = np.cumsum(gaps)
    offset = cum - np.repeat(cum[_group_starts(sizes)], sizes)
    sec = np.minimum(start_ev[ev] + offset.astype(np.int64), total_sec - 1)
    # one or two small online merchants per burst
    candidates = world.n_phys + np.flatnonzero(
        np.isin(
            world.term_seg[world.n_phys : world.bnpl_base],
            [_SEG["online_marketplace"], _SEG["retail"]],
        )
    )
    terms_ev = candidates[rng.integers(0, candidates.shape[0], size=(n_ev, 2))]
    n_terms_ev = rng.integers(1, 3, size=n_ev)
    pick = (rng.random(n) * n_terms_ev[ev]).astype(np.int64)
    term = terms_ev[ev, pick]
    small = np.round(rng.uniform(0.5, 4.99, size=n), 2)
    amount = np.where(rng.random(n) < 0.3, 1.0, small)
    rows = _Rows(
        sec=sec,
        cust=cust_ev[ev],
        card=card_ev[ev],
        term=term,
        online=np.ones(n, dtype=bool),
        amount=amount,
        dist=rng.uniform(80.0, 1400.0, size=n),
        scenario=np.full(n, _SCEN["card_testing"], dtype=np.int8),
        chargeback=np.zeros(n, dtype=np.int64),
    )
    return rows, ev


def _account_takeover(
    cfg: FraudConfig, world: _World, rng: np.random.Generator, budget: int, total_sec: int
) -> tuple[_Rows, np.ndarray]:
    sizes = _split_budget(rng, budget, 3, 12)
    n_ev, n = sizes.shape[0], int(sizes.sum())
    if n == 0:
        return _empty_rows(), np.zeros(0, dtype=np.int64)
    ev = np.repeat(np.arange(n_ev), sizes)
    w = _AGE_ATO_WEIGHT[world.age_band]
    cdf = np.cumsum(w) / w.sum()
    cust_ev = np.minimum(
        np.searchsorted(cdf, rng.random(n_ev), side="right"), world.n_customers - 1
    )
    card_ev = _random_card(rng, world, cust_ev)
    length = np.minimum(rng.uniform(1.0, 4.0, size=n_ev) * _SECONDS_PER_DAY, total_sec - 1)
    start_ev = (rng.random(n_ev) * (total_sec - length)).astype(np.int64)
    sec = start_ev[ev] + (rng.random(n) * length[ev]).astype(np.int64)
    cust = cust_ev[ev]
    online = rng.random(n) < 0.75
    # far-away physical terminals, or big-ticket online merchants
    t_phys = rng.integers(0, world.n_phys, size=n)
    online_seg = world.term_seg[world.n_phys : world.bnpl_base]
    candidates = world.n_phys + np.flatnonzero(online_seg != _SEG["gambling"])
    t_online = candidates[rng.integers(0, candidates.shape[0], size=n)]
    term = np.where(online, t_online, t_phys)
    factor = rng.uniform(2.5, 8.0, size=n)
    amount = _amounts(world.term_seg[term], world.spend_mu[cust], rng.standard_normal(n), factor)
    far_ip = rng.uniform(150.0, 900.0, size=n)
    dist = np.where(online, far_ip, _physical_distance(world, cust, t_phys))
    rows = _Rows(
        sec=sec,
        cust=cust,
        card=card_ev[ev],
        term=term,
        online=online,
        amount=amount,
        dist=dist,
        scenario=np.full(n, _SCEN["account_takeover"], dtype=np.int8),
        chargeback=np.zeros(n, dtype=np.int64),
    )
    return rows, ev


def _compromised_terminal(
    cfg: FraudConfig, world: _World, rng: np.random.Generator, budget: int, total_sec: int
) -> tuple[_Rows, np.ndarray]:
    sizes = _split_budget(rng, budget, 15, 60)
    n_ev, n = sizes.shape[0], int(sizes.sum())
    if n == 0:
        return _empty_rows(), np.zeros(0, dtype=np.int64)
    ev = np.repeat(np.arange(n_ev), sizes)
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
    sec = day * _SECONDS_PER_DAY + _hour_in_profile(rng, _HOUR_PROFILE, n) * 3600
    sec = sec + rng.integers(0, 3600, size=n)
    # a fraction (30-60 %) of the terminal's cards, as a random cyclic run of its customers
    size_ev = c_size[term_ev]
    m_ev = np.maximum(1, np.ceil(rng.uniform(0.3, 0.6, size=n_ev) * size_ev)).astype(np.int64)
    rot_ev = rng.integers(0, np.maximum(size_ev, 1))
    member = (rot_ev[ev] + (rng.random(n) * m_ev[ev]).astype(np.int64)) % np.maximum(size_ev[ev], 1)
    cust = pair_cust[c_start[term_ev][ev] + member]
    term = term_ev[ev]
    factor = rng.uniform(1.2, 3.0, size=n)
    amount = _amounts(world.term_seg[term], world.spend_mu[cust], rng.standard_normal(n), factor)
    rows = _Rows(
        sec=sec,
        cust=cust,
        card=world.card_base[cust],
        term=term,
        online=np.zeros(n, dtype=bool),
        amount=amount,
        dist=_physical_distance(world, cust, term),
        scenario=np.full(n, _SCEN["compromised_terminal"], dtype=np.int8),
        chargeback=np.zeros(n, dtype=np.int64),
    )
    # one dispute per (terminal event, customer)
    _, group = np.unique(ev * n_c + cust, return_inverse=True)
    return rows, group.astype(np.int64)


def _new_pattern(
    cfg: FraudConfig, world: _World, rng: np.random.Generator, budget: int, total_sec: int
) -> tuple[_Rows, np.ndarray]:
    sizes = _split_budget(rng, budget, 1, 3)
    n_ev, n = sizes.shape[0], int(sizes.sum())
    if n == 0:
        return _empty_rows(), np.zeros(0, dtype=np.int64)
    ev = np.repeat(np.arange(n_ev), sizes)
    cust_ev = rng.integers(0, world.n_customers, size=n_ev)
    card_ev = _random_card(rng, world, cust_ev)
    day = rng.integers(cfg.drift_from_day, cfg.days, size=n_ev)
    start_ev = day * _SECONDS_PER_DAY + rng.integers(0, 4 * 3600, size=n_ev)
    sec = np.minimum(start_ev[ev] + rng.integers(0, 3600, size=n), total_sec - 1)
    crypto = np.flatnonzero(world.term_mcc == _MCC[CRYPTO_MCC])
    term = crypto[rng.integers(0, crypto.shape[0], size=n)]
    amount = np.round(np.exp(rng.uniform(np.log(600.0), np.log(4800.0), size=n)), 2)
    rows = _Rows(
        sec=sec,
        cust=cust_ev[ev],
        card=card_ev[ev],
        term=term,
        online=np.ones(n, dtype=bool),
        amount=amount,
        dist=_online_distance(rng, n),
        scenario=np.full(n, _SCEN["new_pattern"], dtype=np.int8),
        chargeback=np.zeros(n, dtype=np.int64),
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


def _plan_fraud(cfg: FraudConfig, world: _World) -> _Rows:
    """All fraud rows of the period, sorted by time, with chargebacks."""
    total_sec = cfg.days * _SECONDS_PER_DAY
    builders = {
        "card_testing": _card_testing,
        "account_takeover": _account_takeover,
        "compromised_terminal": _compromised_terminal,
        "new_pattern": _new_pattern,
    }
    parts: list[_Rows] = []
    groups: list[np.ndarray] = []
    next_group = 0
    for i, (name, budget) in enumerate(_scenario_budgets(cfg).items()):
        rng = _rng(cfg, _STREAM_FRAUD, i + 1)
        rows, group = builders[name](cfg, world, rng, budget, total_sec)
        if len(rows) == 0:
            continue
        parts.append(rows)
        groups.append(group + next_group)
        next_group += int(group.max()) + 1
    if not parts:
        return _empty_rows()
    rows = _Rows.concat(parts)
    group = np.concatenate(groups)
    # chargeback: the dispute's last transaction + lognormal delay (median 10 d, 1-90 d)
    rng = _rng(cfg, _STREAM_FRAUD, 0)
    last = np.full(next_group, -1, dtype=np.int64)
    np.maximum.at(last, group, rows.sec)
    delay_days = np.clip(rng.lognormal(np.log(10.0), 0.7, size=next_group), 1.0, 90.0)
    delay = (delay_days * _SECONDS_PER_DAY).astype(np.int64)
    cb = np.maximum(last[group] + delay[group], rows.sec + _SECONDS_PER_DAY)
    rows.chargeback = np.minimum(cb, rows.sec + 90 * _SECONDS_PER_DAY)
    rows.dist = np.round(rows.dist, 2)
    order = np.argsort(rows.sec, kind="stable")
    return rows.take(order)


# ----------------------------------------------------------------------------- output


def _dictionary(codes: np.ndarray, column: str) -> pa.Array:
    return pa.DictionaryArray.from_arrays(
        pa.array(codes.astype(np.int8, copy=False)), pa.array(list(_CATEGORIES[column]))
    )


def _to_table(world: _World, rows: _Rows, first_id: int, start_ns: int) -> pa.Table:
    n = len(rows)
    tx_ns = start_ns + rows.sec * _NS
    has_cb = rows.chargeback >= 0
    cb_ns = np.where(has_cb, start_ns + rows.chargeback * _NS, 0)
    arrays = {
        "transaction_id": pa.array(np.arange(first_id, first_id + n, dtype=np.int64)),
        "tx_time": pa.array(tx_ns, type=pa.timestamp("ns")),
        "customer_id": pa.array(rows.cust.astype(np.int64) + 1),
        "card_id": pa.array(rows.card.astype(np.int64)),
        "terminal_id": pa.array(rows.term.astype(np.int64) + 1),
        "mcc": _dictionary(world.term_mcc[rows.term], "mcc"),
        "merchant_segment": _dictionary(world.term_seg[rows.term], "merchant_segment"),
        "channel": _dictionary(rows.online.astype(np.int8), "channel"),
        "amount": pa.array(rows.amount.astype(np.float64)),
        "distance_from_home_km": pa.array(rows.dist.astype(np.float64)),
        "region": _dictionary(world.region[rows.cust], "region"),
        "customer_tenure_days": pa.array(
            (world.tenure0[rows.cust] + rows.sec // _SECONDS_PER_DAY).astype(np.int32)
        ),
        "customer_age_band": _dictionary(world.age_band[rows.cust], "customer_age_band"),
        "is_fraud": pa.array((rows.scenario > 0).astype(np.int8)),
        "fraud_scenario": _dictionary(rows.scenario, "fraud_scenario"),
        "chargeback_time": pa.array(cb_ns, type=pa.timestamp("ns"), mask=~has_cb),
    }
    return pa.Table.from_arrays(list(arrays.values()), schema=FRAUD_SCHEMA)


def _check_chunk_rows(chunk_rows: Any) -> None:
    if not isinstance(chunk_rows, int) or isinstance(chunk_rows, bool) or chunk_rows < 1:
        raise DataValidationError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")


def iter_fraud_tables(cfg: FraudConfig, chunk_rows: int = 1_000_000) -> Iterator[pa.Table]:
    """Yield the data set as Arrow tables of whole hours, each about ``chunk_rows`` rows.

    The rows (and their order) do not depend on ``chunk_rows``.
    """
    _check_chunk_rows(chunk_rows)
    return _iter_tables(cfg, chunk_rows)


def _iter_tables(cfg: FraudConfig, chunk_rows: int) -> Iterator[pa.Table]:
    world = _build_world(cfg)
    fraud = _plan_fraud(cfg, world)
    weights = _hour_weights(cfg)
    per_hour = _rng(cfg, _STREAM_PLAN).multinomial(cfg.n_rows - len(fraud), weights / weights.sum())
    fraud_hour_bounds = np.searchsorted(fraud.sec, np.arange(weights.shape[0] + 1) * 3600)
    start_ns = int(np.datetime64(cfg.start, "ns").astype(np.int64))
    log.info(
        "generating %d transactions (%d fraud) for %d customers, %d terminals",
        cfg.n_rows,
        len(fraud),
        world.n_customers,
        world.n_phys + world.n_online,
    )
    next_id = 1
    pending: list[_Rows] = []
    pending_rows = 0
    for hour in range(weights.shape[0]):
        lo, hi = fraud_hour_bounds[hour], fraud_hour_bounds[hour + 1]
        legit = _legit_hour(cfg, world, hour, int(per_hour[hour]))
        block = _Rows.concat([legit, fraud.take(slice(lo, hi))])
        block = block.take(np.argsort(block.sec, kind="stable"))
        pending.append(block)
        pending_rows += len(block)
        if pending_rows >= chunk_rows or hour == weights.shape[0] - 1:
            rows = _Rows.concat(pending)
            yield _to_table(world, rows, next_id, start_ns)
            next_id += len(rows)
            pending, pending_rows = [], 0


def generate_fraud(cfg: FraudConfig) -> pd.DataFrame:
    """The whole data set in memory (columns :data:`COLUMNS`, sorted by ``tx_time``)."""
    table = pa.concat_tables(iter_fraud_tables(cfg, chunk_rows=max(cfg.n_rows, 1)))
    return table.to_pandas()


def write_fraud(
    cfg: FraudConfig,
    out_dir: str | os.PathLike[str],
    chunk_rows: int = 1_000_000,
    name: str = DATASET_NAME,
) -> Manifest:
    """Write ``<out_dir>/<name>.parquet`` in row groups of ``chunk_rows`` plus its manifest.

    At most about two chunks are in memory at once; the manifest params are the
    resolved config plus ``chunk_rows`` (the row-group size, which the bytes depend on).
    """
    _check_chunk_rows(chunk_rows)
    params = {**cfg.to_params(), "chunk_rows": chunk_rows}
    return write_parquet_with_manifest(
        iter_fraud_tables(cfg, chunk_rows=chunk_rows),
        out_dir,
        name,
        params,
        generator=GENERATOR,
        row_group_rows=chunk_rows,
    )
