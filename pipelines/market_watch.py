"""The online change-point watch of market indicators (CUSUM charts, one alarm per regime change).

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
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipelines.errors import DataValidationError
from pipelines.market import (
    TIME,
    ChangePoint,
    Direction,
    Kind,
    MarketWatch,
    MarketWatchConfig,
    Transform,
    summarize_changes,
)

log = logging.getLogger("pipelines.market")  # the market early warning's one logger


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
