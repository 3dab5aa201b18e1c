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

The watch (:class:`MarketWatcher`, :func:`detect_changes`)
----------------------------------------------------------
Each indicator is first made roughly serially independent by a transform (``level``,
``diff`` or ``log_diff``; levels of mean-reverting series such as a spread are far too
autocorrelated for a CUSUM, their changes are not). The first ``reference_periods``
transformed values are the baseline: their mean ``m`` and standard deviation ``s`` standardise
every later value, ``z = (x - m) / s``. Four one-sided CUSUM charts (Page, 1954) then run on
``z``, each the running maximum ``S = max(0, S + increment)`` of a log-likelihood ratio:

* mean up / down: ``+z - k`` and ``-z - k``, the classic allowance ``k`` (half the shift, in
  baseline standard deviations, that the chart detects fastest) and threshold ``h``;
* volatility up: ``z**2 (1 - 1/r**2) / 2 - log r``, the likelihood ratio of N(0, r**2) against
  N(0, 1) for ``r = volatility_ratio``, and volatility down the same for ``1/r``; their
  threshold ``h_volatility`` is in nats, so each has a false-alarm run length of at least
  ``exp(h_volatility)`` periods under the baseline (Wald's bound).

A chart reaching its threshold is a :class:`ChangePoint`. Its estimated start is the most
likely change time within the chart's current excursion above zero: the generalised
likelihood ratio with the new mean (or variance) estimated, which places a large jump on its
day where Page's estimate (the period after the chart last stood at zero) can be days early.
The indicator then re-baselines: the next ``reference_periods`` values, from the new regime,
become its reference, so one regime change gives one alarm per indicator rather than an alarm
every period (and the indicator is blind while it re-learns its baseline).

Everything runs online: :meth:`MarketWatcher.update` takes the next rows (an hour's or a
day's worth), carries the state, and gives exactly the detections one pass over the whole
series gives; :meth:`MarketWatcher.state_dict` is JSON, so a scheduled task can store the
state between runs. :func:`summarize_changes` turns detections into a :class:`MarketWatch`
whose ``reason`` is the alert text and the retrain event's reason.
"""

from __future__ import annotations

import bisect
import copy
import dataclasses
import datetime as dt
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipelines.errors import DataValidationError

log = logging.getLogger(__name__)

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


# --------------------------------------------------------------------------- detector

_CHARTS: tuple[tuple[Kind, Direction], ...] = (
    ("mean", "up"),
    ("mean", "down"),
    ("volatility", "up"),
    ("volatility", "down"),
)
_STATE_VERSION = 1
START_WINDOW = 500  # periods of an open excursion searched for the change's start


@dataclass
class _Chart:
    """Online state of one indicator: its baseline and its four CUSUM sums."""

    transform: Transform
    previous: float | None = None  # last raw value, for differences
    reference: list[float] = dataclasses.field(default_factory=list)
    mean: float | None = None
    scale: float | None = None
    sums: list[float] = dataclasses.field(default_factory=lambda: [0.0] * 4)
    starts: list[int] = dataclasses.field(default_factory=lambda: [0] * 4)
    # the standardised values of the open excursions (for the start estimate)
    recent_z: list[float] = dataclasses.field(default_factory=list)
    recent_rows: list[int] = dataclasses.field(default_factory=list)
    recent_ns: list[int] = dataclasses.field(default_factory=list)


@dataclass
class _State:
    rows: int = 0
    last_ns: int | None = None
    tz: str | None = None
    charts: dict[str, _Chart] = dataclasses.field(default_factory=dict)


class MarketWatcher:
    """Online CUSUM watch over market indicators; feed rows in time order with :meth:`update`."""

    def __init__(
        self, indicators: Sequence[str] | None = None, config: MarketWatchConfig | None = None
    ) -> None:
        config = config or MarketWatchConfig()
        if indicators is not None:
            fields = config.model_dump() | {"indicators": tuple(indicators)}
            config = MarketWatchConfig.model_validate(fields)
        self.config = config
        self.indicators: tuple[str, ...] = self.config.indicators
        self._state = _State(
            charts={name: _Chart(self.config.transform_of(name)) for name in self.indicators}
        )

    @property
    def rows(self) -> int:
        """Rows fed so far."""
        return self._state.rows

    def update(self, frame: pd.DataFrame) -> list[ChangePoint]:
        """Process the next rows (strictly after every earlier row); return new change points.

        On an error the state is left as it was before the call.
        """
        times, tz = _times(frame, self._state)
        values = {name: _values(frame, name) for name in self.indicators}
        state = copy.deepcopy(self._state)
        state.tz = tz
        found: list[ChangePoint] = []
        for name in self.indicators:
            found += _run(name, values[name], times, state, self.config)
        state.rows += len(frame)
        if len(times):
            state.last_ns = int(times[-1])
        self._state = state
        found.sort(key=lambda cp: (cp.index, self.indicators.index(cp.indicator)))
        for cp in found:
            log.info("market change point: %s", cp.describe())
        return found

    def watch(self, frame: pd.DataFrame) -> MarketWatch:
        """:meth:`update`, summarised."""
        return summarize_changes(self.update(frame))

    def state_dict(self) -> dict[str, Any]:
        """The full state as JSON-serialisable data (config included)."""
        state = self._state
        return {
            "version": _STATE_VERSION,
            "config": self.config.model_dump(mode="json"),
            "rows": state.rows,
            "last_ns": state.last_ns,
            "tz": state.tz,
            "charts": {name: dataclasses.asdict(chart) for name, chart in state.charts.items()},
        }

    @classmethod
    def from_state(cls, data: Mapping[str, Any]) -> MarketWatcher:
        """A watcher continuing from :meth:`state_dict` output."""
        if not isinstance(data, Mapping) or data.get("version") != _STATE_VERSION:
            raise DataValidationError(
                f"market watch state must be a dict with version {_STATE_VERSION}"
            )
        try:
            watcher = cls(config=MarketWatchConfig.model_validate(data["config"]))
            charts = {name: _Chart(**fields) for name, fields in data["charts"].items()}
            watcher._state = _State(
                rows=int(data["rows"]),
                last_ns=None if data["last_ns"] is None else int(data["last_ns"]),
                tz=data["tz"],
                charts=charts,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataValidationError(f"market watch state is malformed: {exc}") from exc
        if set(charts) != set(watcher.indicators):
            raise DataValidationError(
                f"market watch state has charts {sorted(charts)} for indicators "
                f"{sorted(watcher.indicators)}"
            )
        return watcher


def detect_changes(
    frame: pd.DataFrame,
    indicators: Sequence[str] | None = None,
    config: MarketWatchConfig | None = None,
) -> list[ChangePoint]:
    """Change points of ``indicators`` (default: the config's) over the whole frame, one pass."""
    watcher = MarketWatcher(indicators, config)
    needed = watcher.config.reference_periods + 2  # a difference, a baseline, one period watched
    if len(frame) < needed:
        raise DataValidationError(
            f"the market frame has {len(frame)} rows; reference_periods="
            f"{watcher.config.reference_periods} needs at least {needed}"
        )
    return watcher.update(frame)


def watch_market(
    frame: pd.DataFrame,
    indicators: Sequence[str] | None = None,
    config: MarketWatchConfig | None = None,
) -> MarketWatch:
    """:func:`detect_changes`, summarised into an alert."""
    return summarize_changes(detect_changes(frame, indicators, config))


def _times(frame: pd.DataFrame, state: _State) -> tuple[np.ndarray, str | None]:
    """The ``time`` column as int64 nanoseconds, checked strictly increasing."""
    if not isinstance(frame, pd.DataFrame):
        raise DataValidationError(f"expected a DataFrame, got {type(frame).__name__}")
    if TIME not in frame.columns:
        raise DataValidationError(f"the market frame has no {TIME!r} column")
    column = frame[TIME]
    if not pd.api.types.is_datetime64_any_dtype(column):
        raise DataValidationError(f"column {TIME!r} must be datetimes, got {column.dtype}")
    if column.isna().any():
        raise DataValidationError(f"column {TIME!r} has missing values")
    tz = None if column.dt.tz is None else str(column.dt.tz)
    if state.rows and tz != state.tz:
        raise DataValidationError(f"column {TIME!r} time zone {tz} differs from earlier {state.tz}")
    utc = column.dt.tz_convert("UTC").dt.tz_localize(None) if tz else column
    ns = utc.to_numpy(dtype="datetime64[ns]").astype(np.int64)
    earlier = np.asarray([] if state.last_ns is None else [state.last_ns], dtype=np.int64)
    bad = np.flatnonzero(np.diff(np.concatenate([earlier, ns])) <= 0)
    if bad.size:
        row = int(bad[0]) + 1 - len(earlier)
        raise DataValidationError(
            f"column {TIME!r} must be strictly increasing, also after earlier rows; "
            f"row {row} is not"
        )
    return ns, tz


def _values(frame: pd.DataFrame, name: str) -> np.ndarray:
    if name not in frame.columns:
        known = [c for c in frame.columns if c != TIME]
        raise DataValidationError(f"unknown indicator {name!r}; the frame has {known}")
    column = frame[name]
    if not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        raise DataValidationError(f"indicator {name!r} must be numeric, got {column.dtype}")
    values = column.to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise DataValidationError(
            f"indicator {name!r} has {bad.size} missing or infinite value(s), first at row "
            f"{int(bad[0])} of the frame"
        )
    return values


def _transformed(name: str, raw: np.ndarray, chart: _Chart) -> tuple[np.ndarray, int]:
    """(transformed values, position in ``raw`` of the first); uses the chunk before's last."""
    if chart.transform == "level" or raw.size == 0:
        return raw, 0
    if chart.transform == "log_diff":
        if (raw <= 0).any():
            row = int(np.flatnonzero(raw <= 0)[0])
            raise DataValidationError(
                f"indicator {name!r} needs positive values for log_diff; row {row} of the "
                f"frame is {raw[row]}"
            )
        raw = np.log(raw)
        previous = None if chart.previous is None else math.log(chart.previous)
    else:
        previous = chart.previous
    chained = raw if previous is None else np.concatenate([[previous], raw])
    offset = 1 if previous is None else 0
    return np.diff(chained), offset


def _run(
    name: str, raw: np.ndarray, times: np.ndarray, state: _State, cfg: MarketWatchConfig
) -> list[ChangePoint]:
    chart = state.charts[name]
    values, offset = _transformed(name, raw, chart)
    if raw.size:
        chart.previous = float(raw[-1])
    found: list[ChangePoint] = []
    ratio = cfg.volatility_ratio
    up_a, down_a, log_r = (1 - 1 / ratio**2) / 2, (ratio**2 - 1) / 2, math.log(ratio)
    for i, x in enumerate(values.tolist(), start=offset):
        if chart.mean is None or chart.scale is None:
            _learn(name, chart, x, state.rows + i, cfg)
            continue
        z = (x - chart.mean) / chart.scale
        zz = z * z
        increments = (z - cfg.k, -z - cfg.k, up_a * zz - log_r, log_r - down_a * zz)
        crossed = _step(chart, increments, state.rows + i, cfg)
        _remember(chart, z, state.rows + i, int(times[i]))
        if crossed:
            found += [_change_point(name, chart, j, state, i, times, cfg) for j in crossed]
            _rebaseline(chart)
    return found


def _learn(name: str, chart: _Chart, x: float, row: int, cfg: MarketWatchConfig) -> None:
    """Collect one baseline value; fix mean and scale once the window is full."""
    chart.reference.append(x)
    if len(chart.reference) < cfg.reference_periods:
        return
    window = np.asarray(chart.reference)
    scale = float(window.std(ddof=1))
    if not scale > 0 or not math.isfinite(scale):
        raise DataValidationError(
            f"indicator {name!r} is constant over its reference window (ending at row {row}); "
            f"a change cannot be scaled: monitor its {chart.transform} another way or drop it"
        )
    chart.mean, chart.scale = float(window.mean()), scale
    chart.reference = []


def _step(
    chart: _Chart, increments: tuple[float, ...], row: int, cfg: MarketWatchConfig
) -> list[int]:
    """Advance the four sums one period; the indices of the charts that crossed."""
    crossed = []
    for j, inc in enumerate(increments):
        before = chart.sums[j]
        after = max(0.0, before + inc)
        if before == 0.0 and after > 0.0:
            chart.starts[j] = row
        chart.sums[j] = after
        if after >= (cfg.h if j < 2 else cfg.h_volatility):
            crossed.append(j)
    return crossed


def _remember(chart: _Chart, z: float, row: int, ns: int) -> None:
    """Keep the values of the open excursions (at most :data:`START_WINDOW` of them)."""
    open_starts = [start for start, total in zip(chart.starts, chart.sums, strict=True) if total]
    if not open_starts:
        chart.recent_z, chart.recent_rows, chart.recent_ns = [], [], []
        return
    chart.recent_z.append(z)
    chart.recent_rows.append(row)
    chart.recent_ns.append(ns)
    keep_from = max(min(open_starts), row - START_WINDOW + 1)
    drop = bisect.bisect_left(chart.recent_rows, keep_from)
    if drop:
        del chart.recent_z[:drop], chart.recent_rows[:drop], chart.recent_ns[:drop]


def _estimate_start(chart: _Chart, j: int) -> tuple[int, int]:
    """(row, ns) of the most likely first period of the new regime, for chart ``j``.

    Page's estimate (the period after the chart last stood at zero) assumes the shift the
    chart is tuned to; a larger jump is better placed by the generalised likelihood ratio:
    the start ``t`` in the open excursion maximising the evidence of the values from ``t``
    on, with the shift (mean) or the variance ratio (volatility) estimated from them.
    """
    first = bisect.bisect_left(chart.recent_rows, chart.starts[j])
    z = np.asarray(chart.recent_z[first:])
    counts = np.arange(len(z), 0, -1, dtype=np.float64)
    if _CHARTS[j][0] == "mean":
        sign = 1.0 if _CHARTS[j][1] == "up" else -1.0
        tail = sign * np.cumsum(z[::-1])[::-1]
        score = np.where(tail > 0, tail**2 / counts, 0.0)
    else:
        ratio = np.maximum(np.cumsum((z * z)[::-1])[::-1] / counts, 1e-12)
        wanted = ratio > 1 if _CHARTS[j][1] == "up" else ratio < 1
        score = np.where(wanted, counts * (ratio - 1 - np.log(ratio)), 0.0)
    best = first + int(np.argmax(score))
    return chart.recent_rows[best], chart.recent_ns[best]


def _change_point(
    name: str,
    chart: _Chart,
    j: int,
    state: _State,
    i: int,
    times: np.ndarray,
    cfg: MarketWatchConfig,
) -> ChangePoint:
    kind, direction = _CHARTS[j]
    assert chart.mean is not None and chart.scale is not None
    start_row, start_ns = _estimate_start(chart, j)
    return ChangePoint(
        indicator=name,
        kind=kind,
        direction=direction,
        index=state.rows + i,
        time=_timestamp(int(times[i]), state.tz),
        start_index=start_row,
        start_time=_timestamp(start_ns, state.tz),
        statistic=chart.sums[j],
        threshold=cfg.h if j < 2 else cfg.h_volatility,
        reference_mean=chart.mean,
        reference_scale=chart.scale,
    )


def _rebaseline(chart: _Chart) -> None:
    """Forget the old regime: the next values become the new reference."""
    chart.mean = chart.scale = None
    chart.reference = []
    chart.sums = [0.0] * 4
    chart.recent_z, chart.recent_rows, chart.recent_ns = [], [], []


def _timestamp(ns: int, tz: str | None) -> pd.Timestamp:
    moment = pd.Timestamp(ns, unit="ns")
    return moment.tz_localize("UTC").tz_convert(tz) if tz else moment
