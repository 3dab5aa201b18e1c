"""Early warning of market shifts: a generated indicator series and an online change-point watch.

Automated financial-management models are trained in one market regime and silently degrade
when the regime changes. This module watches a few market indicators and turns a regime
change into an alert and a retrain reason.

The generator (:func:`generate_market`)
---------------------------------------
A seeded series of daily (business or calendar) or hourly observations of

* ``equity_index``: an index level, a geometric Brownian motion starting at 4,000;
* ``equity_return``: its log return over the period;
* ``volatility_index``: a VIX-like implied volatility in points, a mean-reverting log process
  around 1.125 times the equity volatility, falling when equities rise (correlation -0.7);
* ``credit_spread_bp``: a corporate credit spread in basis points, mean-reverting around 120;
* ``rate_2y_pct``: a two-year government yield in percent, mean-reverting around 4 %.

With ``shock_at`` set, the regime changes at that period: the return volatility is multiplied
by ``vol_multiplier`` and its drift moves by ``drift_change`` (annualised); the volatility
index jumps half-way (in logs) to its new, ``vol_multiplier`` times higher level and trends
the rest of the way; the spread jumps by half of ``spread_jump_bp``, trends to the full
jump, and its volatility is multiplied by ``vol_multiplier``; the yield trends by
``rate_change_bp`` (flight to quality, priced-in cuts). The same config gives the same frame.

The watch (:mod:`pipelines.market_watch`) turns the series into :class:`ChangePoint`
detections; :func:`summarize_changes` turns them into a :class:`MarketWatch` whose ``reason``
is the alert text and the retrain event's reason.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipelines.errors import DataValidationError

Frequency = Literal["B", "D", "h"]
Transform = Literal["level", "diff", "log_diff"]
Kind = Literal["mean", "volatility"]
Direction = Literal["up", "down"]

TIME = "time"
INDICATORS: tuple[str, ...] = (
    "equity_index",
    "equity_return",
    "volatility_index",
    "credit_spread_bp",
    "rate_2y_pct",
)
COLUMNS: tuple[str, ...] = (TIME, *INDICATORS)
DEFAULT_INDICATORS: tuple[str, ...] = (
    "equity_return",
    "volatility_index",
    "credit_spread_bp",
    "rate_2y_pct",
)
DEFAULT_TRANSFORMS: Mapping[str, Transform] = {
    "equity_index": "log_diff",
    "equity_return": "level",
    "volatility_index": "log_diff",
    "credit_spread_bp": "diff",
    "rate_2y_pct": "diff",
}
PERIODS_PER_YEAR: Mapping[str, int] = {"B": 252, "D": 365, "h": 24 * 365}

# the generator's base regime (annualised where a rate)
_INDEX_START = 4_000.0
_VIX_PREMIUM = 1.125  # implied over realised volatility
_VIX_REVERSION = 0.10 * 252  # per year: about 10 % of the gap closes each trading day
_VIX_VOL = 0.065 * math.sqrt(252)  # of the log level
_SPREAD_BP = 120.0
_SPREAD_REVERSION = 0.03 * 252
_SPREAD_VOL_BP = 2.5 * math.sqrt(252)
_SPREAD_FLOOR_BP = 1.0
_RATE_PCT = 4.0
_RATE_REVERSION = 0.01 * 252
_RATE_VOL_PCT = 0.05 * math.sqrt(252)
# shocks of (return, volatility index, spread, yield)
_CORRELATION = np.array(
    [
        [1.0, -0.7, -0.4, 0.2],
        [-0.7, 1.0, 0.4, -0.1],
        [-0.4, 0.4, 1.0, -0.1],
        [0.2, -0.1, -0.1, 1.0],
    ]
)


# --------------------------------------------------------------------------- generator


@dataclass(frozen=True)
class MarketConfig:
    """Parameters of one generated market series (rates and drifts annualised)."""

    periods: int = 500
    freq: Frequency = "B"
    start: str = "2024-01-02"
    seed: int = 0
    shock_at: int | str | None = None  # period index or ISO date/time; None: no change
    vol_multiplier: float = 2.5
    drift_change: float = -0.30
    spread_jump_bp: float = 150.0
    rate_change_bp: float = -50.0
    annual_drift: float = 0.06
    annual_volatility: float = 0.16

    def __post_init__(self) -> None:
        _check_int("periods", self.periods, 10, 1_000_000)
        if self.freq not in PERIODS_PER_YEAR:
            raise DataValidationError(
                f"MarketConfig.freq must be one of {sorted(PERIODS_PER_YEAR)}, got {self.freq!r}"
            )
        _parse_start(self.start)
        _check_int("seed", self.seed, 0, 2**63 - 1)
        _check_number("vol_multiplier", self.vol_multiplier, 0.05, 20.0, low_open=False)
        _check_number("drift_change", self.drift_change, -5.0, 5.0)
        _check_number("spread_jump_bp", self.spread_jump_bp, -(_SPREAD_BP - 10.0), 5_000.0)
        _check_number("rate_change_bp", self.rate_change_bp, -1_000.0, 1_000.0)
        _check_number("annual_drift", self.annual_drift, -1.0, 1.0)
        _check_number("annual_volatility", self.annual_volatility, 0.001, 2.0)
        resolve_shock_index(self)

    def to_params(self) -> dict[str, Any]:
        """The configuration as a JSON-serialisable dict."""
        return dataclasses.asdict(self)


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if not isinstance(value, int | np.integer) or isinstance(value, bool):
        raise DataValidationError(f"MarketConfig.{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise DataValidationError(f"MarketConfig.{name} must be in [{low}, {high}], got {value}")


def _check_number(
    name: str, value: Any, low: float, high: float, *, low_open: bool = False
) -> None:
    if (
        not isinstance(value, int | float | np.integer | np.floating)
        or isinstance(value, bool)
        or not math.isfinite(float(value))
        or not low <= float(value) <= high
        or (low_open and float(value) == low)
    ):
        raise DataValidationError(
            f"MarketConfig.{name} must be a finite number in [{low}, {high}], got {value!r}"
        )


def _parse_start(value: Any) -> pd.Timestamp:
    message = f"MarketConfig.start must be an ISO date or date-time string, got {value!r}"
    if not isinstance(value, str):
        raise DataValidationError(message)
    try:
        return pd.Timestamp(dt.datetime.fromisoformat(value))
    except ValueError as exc:
        raise DataValidationError(message) from exc


def market_times(cfg: MarketConfig) -> pd.DatetimeIndex:
    """The period timestamps of a generated series."""
    return pd.date_range(_parse_start(cfg.start), periods=cfg.periods, freq=cfg.freq, name=TIME)


def resolve_shock_index(cfg: MarketConfig) -> int | None:
    """The period index where the regime changes (``shock_at`` as a date resolves to the
    first period at or after it), or None without a change."""
    shock = cfg.shock_at
    if shock is None:
        return None
    where = f"MarketConfig.shock_at must be a period index in [1, {cfg.periods - 1}]"
    if isinstance(shock, str):
        try:
            moment = pd.Timestamp(dt.datetime.fromisoformat(shock))
        except ValueError as exc:
            raise DataValidationError(f"{where} or an ISO date, got {shock!r}") from exc
        index = int(market_times(cfg).searchsorted(moment, side="left"))
        if not 1 <= index <= cfg.periods - 1:
            raise DataValidationError(
                f"{where} or a date after the first and not after the last period, got {shock!r}"
            )
        return index
    if not isinstance(shock, int | np.integer) or isinstance(shock, bool):
        raise DataValidationError(f"{where}, an ISO date or None, got {shock!r}")
    if not 1 <= shock <= cfg.periods - 1:
        raise DataValidationError(f"{where}, got {shock}")
    return int(shock)


def generate_market(cfg: MarketConfig) -> pd.DataFrame:
    """A seeded market series: columns :data:`COLUMNS`, one row per period, time ascending."""
    n = cfg.periods
    step = 1.0 / PERIODS_PER_YEAR[cfg.freq]
    shock = resolve_shock_index(cfg)
    after = np.zeros(n, dtype=bool) if shock is None else np.arange(n) >= shock
    rng = np.random.default_rng([cfg.seed, 1])
    shocks = rng.standard_normal((n, 4)) @ np.linalg.cholesky(_CORRELATION).T

    vol = cfg.annual_volatility * np.where(after, cfg.vol_multiplier, 1.0)
    drift = cfg.annual_drift + np.where(after, cfg.drift_change, 0.0)
    returns = (drift - vol**2 / 2) * step + vol * math.sqrt(step) * shocks[:, 0]
    vix = _volatility_index(100.0 * _VIX_PREMIUM * vol, shocks[:, 1], step, shock)
    spread_mean = _SPREAD_BP + np.where(after, cfg.spread_jump_bp, 0.0)
    spread_vol = _SPREAD_VOL_BP * np.where(after, cfg.vol_multiplier, 1.0)
    spread = _reverting(spread_mean, spread_vol, shocks[:, 2], step, _SPREAD_REVERSION, shock)
    rate_mean = _RATE_PCT + np.where(after, cfg.rate_change_bp / 100.0, 0.0)
    rate_vol = np.full(n, _RATE_VOL_PCT)
    rate = _reverting(rate_mean, rate_vol, shocks[:, 3], step, _RATE_REVERSION, None)
    return pd.DataFrame(
        {
            TIME: market_times(cfg).to_numpy(),
            "equity_index": _INDEX_START * np.exp(np.cumsum(returns)),
            "equity_return": returns,
            "volatility_index": vix,
            "credit_spread_bp": np.maximum(spread, _SPREAD_FLOOR_BP),
            "rate_2y_pct": rate,
        },
        columns=list(COLUMNS),
    )


def _volatility_index(
    target: np.ndarray, noise: np.ndarray, step: float, shock: int | None
) -> np.ndarray:
    """Mean-reverting log level around ``target``, jumping half-way at the shock."""
    log_target = np.log(target)
    reversion = min(_VIX_REVERSION * step, 1.0)
    scale = _VIX_VOL * math.sqrt(step)
    out = np.empty(len(target))
    level = log_target[0]
    for t in range(len(target)):
        if t == shock:
            level += (log_target[t] - level) / 2
        level += reversion * (log_target[t] - level) + scale * noise[t]
        out[t] = level
    return np.exp(out)


def _reverting(
    mean: np.ndarray,
    vol: np.ndarray,
    noise: np.ndarray,
    step: float,
    speed: float,
    shock: int | None,
) -> np.ndarray:
    """Ornstein-Uhlenbeck (Euler steps) around ``mean``, jumping half-way at ``shock``."""
    reversion = min(speed * step, 1.0)
    scales = vol * math.sqrt(step)
    out = np.empty(len(mean))
    level = float(mean[0])
    for t in range(len(mean)):
        if t == shock:
            level += (mean[t] - level) / 2
        level += reversion * (mean[t] - level) + scales[t] * noise[t]
        out[t] = level
    return out


# --------------------------------------------------------------------------- config


class MarketWatchConfig(BaseModel):
    """Thresholds of the market watch; every field has a default (a spec section can hold it).

    ``k`` and ``h`` are the mean charts' allowance and threshold in baseline standard
    deviations; ``volatility_ratio`` is the volatility change the volatility charts are
    tuned to (``r`` up and ``1/r`` down) and ``h_volatility`` their threshold in nats.
    ``reference_periods`` is the baseline length, at the start and after every change point.
    With the defaults, the four default indicators over generated years of 250 business days
    (a 100-day baseline, then 149 days watched) raise a false alarm in about 1.5 % of years
    (13 of 1,000 seeds; ``tests/unit/test_market.py`` checks 200). A shorter baseline raises
    that rate: the CUSUM trusts its estimated mean and scale as if they were exact.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    indicators: tuple[str, ...] = Field(DEFAULT_INDICATORS, min_length=1)
    transforms: dict[str, Transform] = Field(default_factory=dict)
    reference_periods: int = Field(100, ge=20, le=1_000_000)
    k: float = Field(0.5, gt=0, le=5)
    h: float = Field(12.0, gt=0, le=1_000)
    volatility_ratio: float = Field(2.0, gt=1, le=100)
    h_volatility: float = Field(12.0, gt=0, le=1_000)

    @field_validator("indicators")
    @classmethod
    def _distinct_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not name or name == TIME for name in value):
            raise ValueError(f"indicator names must be non-empty and not {TIME!r}")
        if len(set(value)) != len(value):
            raise ValueError(f"indicators must be distinct, got {list(value)}")
        return value

    def transform_of(self, indicator: str) -> Transform:
        """The transform applied to ``indicator`` before standardising (default ``level``)."""
        return self.transforms.get(indicator, DEFAULT_TRANSFORMS.get(indicator, "level"))


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ChangePoint:
    """One chart of one indicator crossing its threshold."""

    indicator: str
    kind: Kind
    direction: Direction
    index: int  # row position (over every row fed so far) at detection
    time: pd.Timestamp
    start_index: int  # estimated first period of the new regime
    start_time: pd.Timestamp
    statistic: float
    threshold: float
    reference_mean: float  # baseline of the transformed indicator
    reference_scale: float

    @property
    def delay(self) -> int:
        """Periods from the estimated start to the detection."""
        return self.index - self.start_index

    def describe(self) -> str:
        """One line for an alert message."""
        return (
            f"{self.indicator} {self.kind} {self.direction} from {_short(self.start_time)} "
            f"(detected {_short(self.time)}, CUSUM {self.statistic:.1f} >= {self.threshold:g})"
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (times in ISO 8601)."""
        out = dataclasses.asdict(self)
        out["time"], out["start_time"] = _iso(self.time), _iso(self.start_time)
        return out


@dataclass(frozen=True)
class MarketWatch:
    """The verdict over a set of change points: alert or not, and why."""

    alert: bool
    reason: str
    indicators: tuple[str, ...]  # that changed, in order of first detection
    change_points: tuple[ChangePoint, ...]

    def to_event(self) -> dict[str, Any]:
        """Payload of an alert or retrain event."""
        return {
            "type": "market_shift",
            "alert": self.alert,
            "reason": self.reason,
            "indicators": list(self.indicators),
            "change_points": [cp.to_dict() for cp in self.change_points],
        }


def summarize_changes(change_points: Sequence[ChangePoint]) -> MarketWatch:
    """Alert when any indicator changed; the reason names each change, earliest first."""
    ordered = tuple(sorted(change_points, key=lambda cp: (cp.index, cp.indicator)))
    if not ordered:
        return MarketWatch(False, "no market change point detected", (), ())
    indicators = tuple(dict.fromkeys(cp.indicator for cp in ordered))
    details = "; ".join(cp.describe() for cp in ordered)
    reason = f"market regime change in {len(indicators)} indicator(s): {details}"
    return MarketWatch(True, reason, indicators, ordered)


def _iso(moment: pd.Timestamp) -> str:
    return moment.isoformat()


def _short(moment: pd.Timestamp) -> str:
    """The date alone for daily periods, else minutes (and the zone, if any)."""
    if moment == moment.normalize():
        return moment.strftime("%Y-%m-%d")
    return moment.strftime("%Y-%m-%d %H:%M%z")
