"""Live monitoring: model performance, business KPIs and technical metrics per time window.

The monitoring job joins the model server's prediction log with the delayed label feed
into one frame of **observations**, one row per scored transaction or application:

================ =====================================================================
``request_id``    text
``timestamp``     time of the prediction (timezone-aware; compared in UTC)
``model_version`` text
``score``         probability of the bad outcome, in [0, 1]
``decision``      fraud: ``flag`` / ``pass``; credit: ``decline`` / ``approve``
``latency_ms``    server-side latency
features ...      the model's inputs; context columns (``region``, ...) may be missing
``label``         1.0 bad (fraud, default), 0.0 good, NaN not labelled (yet)
``label_time``    when the label arrived (NaT: not yet)
================ =====================================================================

Each function reads only the columns it needs; a missing one, a wrong type or a bad
value is a :class:`~pipelines.errors.DataValidationError` naming the column.

**Windows.** ``window`` is a pandas offset alias. Fixed-length windows (``"1h"``,
``"1D"``, ``"7D"``) are aligned on the Unix epoch, as ``Series.dt.floor`` aligns them, so
``"1D"`` is a UTC calendar day and a window always has the same bounds whatever the data;
calendar aliases (``"W-MON"``, ``"MS"``) start on the alias's anchors. A row belongs to
``[window_start, window_end)`` of its prediction ``timestamp``. Every window from the
first prediction to the last is reported, an empty one with ``n = 0``, so a gap in
traffic shows; a segment value appears in the windows where it has rows.

**Delayed labels.** A label is *known* at time T when ``label_time <= T``. Metrics use
the labels known at ``as_of`` (default: the latest ``label_time``); a row whose label
arrives after ``as_of``, or that has a label but no ``label_time``, counts as
unlabelled. ``as_of`` changes only what is known about outcomes, never which
predictions count, so re-running with the same ``as_of`` reproduces a past report.
The resolved ``as_of`` is kept in ``frame.attrs["as_of"]``.

**Performance** (:func:`performance_by_window`), on the labelled rows of a window and
segment value, with the definitions of :mod:`pipelines.evaluation` and
:mod:`pipelines.rollout`: ``roc_auc``; ``pr_auc`` = average precision;
``recall_at_fpr`` = the largest TPR among ROC points with FPR <= ``fpr`` (no
interpolation, as :func:`pipelines.evaluation.recall_at_fpr`); ``brier``;
``calibration_error`` = expected calibration error over ``calibration_bins``
equal-width score bins (as :func:`pipelines.rollout.calibration_error`);
``positive_rate`` = share of labelled rows that are bad. All are NaN below
``min_labels`` labelled rows, the ranking metrics also when the labelled rows hold one
class. ``n``, ``mean_score`` use every row. Segments are named as in
:mod:`pipelines.drift` (the whole population is segment ``all``, value ``all``; binned
segments give ``[lo, hi)`` values, rows outside the bins or missing are in no value;
a category column's missing values are the value ``(missing)``).

**Speed.** No loop over rows or groups: the labelled rows are sorted by score once;
per segment a stable (radix) sort by group keeps that order inside each window and
value, and every metric is a cumulative sum, ``bincount`` or ``reduceat`` over it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pandas.tseries.frequencies import to_offset
from pandas.tseries.offsets import BaseOffset, Tick

from pipelines import drift
from pipelines.errors import DataValidationError
from pipelines.spec_features import Segment

TIMESTAMP = "timestamp"
SCORE = "score"
DECISION = "decision"
LABEL = "label"
LABEL_TIME = "label_time"
ALL = drift.ALL
MAX_WINDOWS = 100_000
"""More windows than this over the data's time range is a mistake (``"1s"`` over a month)."""
ADVERSE = {"fraud": "flag", "credit": "decline"}
FAVOURABLE = {"fraud": "pass", "credit": "approve"}

PERFORMANCE_COLUMNS = [
    "window_start", "window_end", "segment", "value", "n", "n_labelled", "label_coverage",
    "positives", "roc_auc", "pr_auc", "recall_at_fpr", "brier", "calibration_error",
    "mean_score", "positive_rate",
]  # fmt: skip


# ---------------------------------------------------------------------------------------
# shared building blocks (also used by validation.compliance)


@dataclass(frozen=True)
class Windows:
    """Time windows over a set of timestamps: a window index per row and the bounds."""

    codes: np.ndarray  # int64, the window of each row
    starts: pd.DatetimeIndex  # UTC
    ends: pd.DatetimeIndex

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def seconds(self) -> np.ndarray:
        """The length of each window in seconds."""
        return (self.ends - self.starts).total_seconds().to_numpy(dtype=np.float64)


def require_columns(obs: pd.DataFrame, columns: Sequence[str], where: str) -> None:
    """Raise a :class:`DataValidationError` naming every column ``obs`` lacks."""
    missing = [c for c in dict.fromkeys(columns) if c not in obs.columns]
    if missing:
        raise DataValidationError(f"{where}: the observations lack column(s) {missing}")


def parse_window(window: str) -> BaseOffset:
    """The pandas offset of a window alias such as ``"1h"``, ``"1D"``, ``"7D"``."""
    try:
        offset = to_offset(window)
    except (ValueError, TypeError):
        offset = None
    if offset is None or offset.n <= 0 or (isinstance(offset, Tick) and offset.nanos <= 0):
        raise DataValidationError(
            f"window: {window!r} is not a positive pandas offset alias (e.g. '1h', '1D', '7D')"
        )
    return offset


def time_windows(timestamps: pd.Series, window: str, column: str = TIMESTAMP) -> Windows:
    """The window of each timestamp and every window from the first to the last."""
    offset = parse_window(window)
    ns, ok = _utc_ns(timestamps, column)
    if not ok.all():
        raise DataValidationError(f"{column}: {int((~ok).sum())} missing value(s)")
    if len(ns) == 0:
        empty = pd.DatetimeIndex([], tz="UTC")
        return Windows(np.zeros(0, dtype=np.int64), empty, empty)
    lo, hi = int(ns.min()), int(ns.max())
    if isinstance(offset, Tick):
        step = int(offset.nanos)
        origin = lo // step * step
        count = (hi - origin) // step + 1
        _check_window_count(count, window)
        edges = origin + step * np.arange(count + 1, dtype=np.int64)
        codes = (ns - origin) // step
    else:
        first, last = pd.Timestamp(lo, tz="UTC"), pd.Timestamp(hi, tz="UTC")
        index = pd.date_range(offset.rollback(first.normalize()), last, freq=offset)
        while len(index) == 0 or index[0] > first:
            start = (index[0] if len(index) else last) - offset
            index = pd.DatetimeIndex([start]).append(index)
        _check_window_count(len(index), window)
        index = index.append(pd.DatetimeIndex([index[-1] + offset]))
        edges = index.tz_convert(None).as_unit("ns").to_numpy().view(np.int64)
        codes = np.searchsorted(edges, ns, side="right") - 1
    bounds = pd.DatetimeIndex(pd.to_datetime(edges, unit="ns", utc=True))
    return Windows(codes.astype(np.int64), bounds[:-1], bounds[1:])


def known_labels(
    obs: pd.DataFrame, as_of: pd.Timestamp | str | None = None
) -> tuple[np.ndarray, pd.Timestamp | None]:
    """(labels known at ``as_of``, NaN otherwise; the ``as_of`` used).

    ``as_of`` defaults to the latest ``label_time`` of a labelled row (None when no row
    has a label with a time: then nothing is known).
    """
    y = _labels(obs[LABEL])
    arrived, has_time = _utc_ns(obs[LABEL_TIME], LABEL_TIME)
    has = ~np.isnan(y) & has_time
    if as_of is None:
        if not has.any():
            return np.full(len(y), np.nan), None
        cutoff = int(arrived[has].max())
        resolved = pd.Timestamp(cutoff, tz="UTC")
    else:
        resolved = _as_utc(as_of)
        cutoff = int(resolved.as_unit("ns").value)
    return np.where(has & (arrived <= cutoff), y, np.nan), resolved


def segment_codes(obs: pd.DataFrame, segment: Segment) -> tuple[np.ndarray, list[str]]:
    """(a value code per row, -1 for no value; the value names), named as in drift.

    Bins and category columns go through :mod:`pipelines.drift`'s own grouping; other
    columns are factorised (hashing, no string sort of every row) and given drift's
    names: ``str(value)``, missing as ``(missing)``, in sorted name order.
    """
    require_columns(obs, [segment.column], f"segment {segment.name}")
    column = obs[segment.column]
    if segment.bins is not None or isinstance(column.dtype, pd.CategoricalDtype):
        frame = obs[[segment.column]]
        groups = drift.segment_groups(frame, frame.iloc[:0], segment)
        return groups.ref.astype(np.int64), list(groups.names)
    codes, uniques = pd.factorize(column, use_na_sentinel=True)
    labels = [str(u) for u in uniques]
    missing = codes < 0
    if missing.any():
        labels.append(drift.MISSING)
        codes = np.where(missing, len(labels) - 1, codes)
    names, remap = np.unique(np.asarray(labels, dtype=str), return_inverse=True)
    return remap.reshape(-1)[codes].astype(np.int64), [str(n) for n in names]


def _check_window_count(count: int, window: str) -> None:
    if count > MAX_WINDOWS:
        raise DataValidationError(
            f"window: {window!r} gives {count:,} windows over the data's time range "
            f"(at most {MAX_WINDOWS:,}); use a longer window"
        )


def _utc_ns(values: pd.Series, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(nanoseconds since the epoch in UTC, not-missing mask) of a datetime column."""
    if not pd.api.types.is_datetime64_any_dtype(values.dtype):
        if values.isna().all():  # an all-missing column read without a type
            return np.zeros(len(values), dtype=np.int64), np.zeros(len(values), dtype=bool)
        raise DataValidationError(
            f"{column}: expected timezone-aware datetimes, got dtype {values.dtype}"
        )
    if getattr(values.dt, "tz", None) is None:
        raise DataValidationError(
            f"{column}: timezone-naive datetimes; localise them (these are UTC times)"
        )
    naive = values.dt.tz_convert(None).dt.as_unit("ns")
    ok = naive.notna().to_numpy()
    return naive.to_numpy().view(np.int64), ok


def _as_utc(value: pd.Timestamp | str) -> pd.Timestamp:
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError):
        raise DataValidationError(f"as_of: {value!r} is not a time") from None
    if stamp is pd.NaT:
        raise DataValidationError("as_of: a time is required, got NaT")
    if stamp.tzinfo is None:
        raise DataValidationError(f"as_of: {value!r} has no timezone (use UTC)")
    return stamp.tz_convert("UTC")


def _labels(values: pd.Series) -> np.ndarray:
    y = _as_numbers(values, LABEL, "numbers (1 bad, 0 good, NaN unlabelled)")
    bad = ~np.isnan(y) & (y != 0) & (y != 1)
    if bad.any():
        examples = sorted({float(v) for v in y[bad][:100]})[:5]
        raise DataValidationError(
            f"{LABEL}: {int(bad.sum())} value(s) other than 0, 1 and missing, e.g. {examples}"
        )
    return y


def _as_numbers(values: pd.Series, column: str, expected: str = "numbers") -> np.ndarray:
    """A numeric (or boolean, or all-missing) column as float64, NaN for missing."""
    numeric = pd.api.types.is_numeric_dtype(values.dtype) or pd.api.types.is_bool_dtype(
        values.dtype
    )
    if not numeric and not values.isna().all():
        raise DataValidationError(f"{column}: expected {expected}, got dtype {values.dtype}")
    return values.to_numpy(dtype=np.float64, na_value=np.nan)


def column_numbers(obs: pd.DataFrame, column: str) -> np.ndarray:
    return _as_numbers(obs[column], column)


def _scores(obs: pd.DataFrame) -> np.ndarray:
    s = column_numbers(obs, SCORE)
    missing = np.isnan(s)
    if missing.any():
        raise DataValidationError(f"{SCORE}: {int(missing.sum())} missing value(s)")
    outside = (s < 0) | (s > 1)
    if outside.any():
        raise DataValidationError(
            f"{SCORE}: {int(outside.sum())} value(s) outside [0, 1], e.g. {float(s[outside][0])}"
        )
    return s


def decisions(obs: pd.DataFrame, use_case: str) -> np.ndarray:
    """True where the decision is the use case's adverse one."""
    adverse, favourable = ADVERSE[use_case], FAVOURABLE[use_case]
    values = obs[DECISION].astype(object)
    is_adverse = (values == adverse).to_numpy(dtype=bool)
    unexpected = ~is_adverse & (values != favourable).to_numpy(dtype=bool)
    if unexpected.any():
        examples = sorted({str(v) for v in values[unexpected].head(1000)})[:5]
        raise DataValidationError(
            f"{DECISION}: {int(unexpected.sum())} value(s) other than {adverse!r} and "
            f"{favourable!r} for a {use_case} model, e.g. {examples}"
        )
    return is_adverse


def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Element-wise ratio, NaN where the denominator is 0."""
    num, den = np.asarray(numerator, np.float64), np.asarray(denominator, np.float64)
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def check_use_case(use_case: str) -> None:
    if use_case not in ADVERSE:
        raise DataValidationError(f"use_case: {use_case!r} is not one of {sorted(ADVERSE)}")


# ---------------------------------------------------------------------------------------
# model performance


def performance_by_window(
    obs: pd.DataFrame,
    *,
    window: str = "1D",
    segments: Sequence[Segment] = (),
    as_of: pd.Timestamp | None = None,
    fpr: float = 0.01,
    calibration_bins: int = 10,
    min_labels: int = 50,
) -> pd.DataFrame:
    """Model performance per window × segment value (see the module docstring)."""
    if not 0 < fpr < 1:
        raise ValueError(f"fpr must be in (0, 1), got {fpr}")
    if calibration_bins < 1 or min_labels < 1:
        raise ValueError("calibration_bins and min_labels must be at least 1")
    names = [s.name for s in segments]
    if ALL in names or len(set(names)) != len(names):
        raise DataValidationError(f"segments: names must be unique and not {ALL!r}, got {names}")
    required = [TIMESTAMP, SCORE, LABEL, LABEL_TIME, *(s.column for s in segments)]
    require_columns(obs, required, "performance_by_window")
    windows = time_windows(obs[TIMESTAMP], window)
    score = _scores(obs)
    y, resolved = known_labels(obs, as_of)
    labelled = np.flatnonzero(~np.isnan(y))
    by_score = labelled[np.argsort(-score[labelled], kind="stable")]
    groupings = [(ALL, np.zeros(len(obs), dtype=np.int64), [ALL])]
    groupings += [(s.name, *segment_codes(obs, s)) for s in segments]
    scored = _Labelled(score, y, by_score)
    options = _MetricOptions(fpr, calibration_bins, min_labels)
    parts = [
        _performance_part(name, position, windows, codes, values, scored, options)
        for position, (name, codes, values) in enumerate(groupings)
    ]
    table = pd.concat(parts, ignore_index=True)
    order = np.lexsort((table["_value"], table["_segment"], table["_window"]))
    table = table.iloc[order][PERFORMANCE_COLUMNS].reset_index(drop=True)
    table.attrs["as_of"] = resolved
    return table


@dataclass(frozen=True)
class _Labelled:
    """Every row's score and known label, and the labelled rows by score, descending."""

    score: np.ndarray
    y: np.ndarray
    by_score: np.ndarray


@dataclass(frozen=True)
class _MetricOptions:
    fpr: float
    bins: int
    min_labels: int


def _performance_part(
    name: str,
    position: int,
    windows: Windows,
    codes: np.ndarray,
    values: list[str],
    labelled: _Labelled,
    options: _MetricOptions,
) -> pd.DataFrame:
    """The rows of one segment: groups = (window, value), window-major, values in order."""
    score, y, by_score = labelled.score, labelled.y, labelled.by_score
    gid, n_groups, group_window, group_value = _groups(name, windows, codes, values)
    member = gid >= 0
    n = np.bincount(gid[member], minlength=n_groups)
    score_sum = np.bincount(gid[member], weights=score[member], minlength=n_groups)
    rows = by_score[gid[by_score] >= 0]
    rows = rows[np.argsort(gid[rows], kind="stable")]  # by group, score descending inside
    metrics = _label_metrics(gid[rows], score[rows], y[rows], n_groups, options)
    return pd.DataFrame(
        {
            "window_start": windows.starts[group_window],
            "window_end": windows.ends[group_window],
            "segment": name,
            "value": np.asarray(values, dtype=object)[group_value],
            "n": n.astype(np.int64),
            **metrics,
            "label_coverage": ratio(metrics["n_labelled"], n),
            "mean_score": ratio(score_sum, n),
            "_segment": position,
            "_window": group_window,
            "_value": group_value,
        }
    )


def _groups(
    name: str, windows: Windows, codes: np.ndarray, values: list[str]
) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
    """Per row its group (-1: none), the number of groups, and per group its window and
    value index."""
    if name == ALL:  # every window, empty ones too
        n_groups = len(windows)
        return windows.codes, n_groups, np.arange(n_groups), np.zeros(n_groups, dtype=np.int64)
    inside = codes >= 0
    key = windows.codes[inside] * len(values) + codes[inside]
    span = len(windows) * len(values)
    if span <= max(4 * len(key), 1 << 16):  # dense: compact the keys without a sort
        seen = np.bincount(key, minlength=span) > 0
        unique = np.flatnonzero(seen)
        inverse = (np.cumsum(seen) - 1)[key]
    else:
        unique, inverse = np.unique(key, return_inverse=True)
    gid = np.full(len(codes), -1, dtype=np.int64)
    gid[inside] = inverse.reshape(-1)
    return gid, len(unique), unique // len(values), unique % len(values)


def _label_metrics(
    g: np.ndarray, s: np.ndarray, y: np.ndarray, n_groups: int, options: _MetricOptions
) -> dict[str, np.ndarray]:
    """Per group, the label metrics of labelled rows sorted by group, score descending."""
    n_labelled = np.bincount(g, minlength=n_groups)
    positives = np.bincount(g, weights=y, minlength=n_groups)
    negatives = n_labelled - positives
    nan = np.full(n_groups, np.nan)
    out = {
        "n_labelled": n_labelled.astype(np.int64),
        "positives": positives.astype(np.int64),
        "roc_auc": nan.copy(),
        "pr_auc": nan.copy(),
        "recall_at_fpr": nan.copy(),
        "brier": nan.copy(),
        "calibration_error": nan.copy(),
        "positive_rate": nan.copy(),
    }
    if len(g) == 0:
        return out
    out["brier"] = ratio(np.bincount(g, weights=(s - y) ** 2, minlength=n_groups), n_labelled)
    out["positive_rate"] = ratio(positives, n_labelled)
    out["calibration_error"] = ratio(_calibration_gaps(g, s, y, n_groups, options.bins), n_labelled)
    area, ap, recall = _ranking(g, s, y, n_groups, options.fpr)

    enough = n_labelled >= options.min_labels
    both = enough & (positives > 0) & (negatives > 0)
    out["roc_auc"] = np.where(both, ratio(area, 2.0 * positives * negatives), np.nan)
    out["pr_auc"] = np.where(both, ratio(ap, positives), np.nan)
    out["recall_at_fpr"] = np.where(both, recall, np.nan)
    for key in ("brier", "calibration_error", "positive_rate"):
        out[key] = np.where(enough, out[key], np.nan)
    return out


def _calibration_gaps(
    g: np.ndarray, s: np.ndarray, y: np.ndarray, n_groups: int, bins: int
) -> np.ndarray:
    """Per group, the sum over bins of |sum(score) - sum(label)| (the ECE times n).
    Scores descend inside a group, so each (group, bin) is one run of rows."""
    b = np.minimum((s * bins).astype(np.int64), bins - 1)
    run = np.flatnonzero(np.r_[True, (g[1:] != g[:-1]) | (b[1:] != b[:-1])])
    gap = np.abs(np.add.reduceat(s, run) - np.add.reduceat(y, run))
    return np.bincount(g[run], weights=gap, minlength=n_groups)


def _ranking(
    g: np.ndarray, s: np.ndarray, y: np.ndarray, n_groups: int, fpr: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group, twice the ROC area times positives times negatives, the average
    precision times positives, and the recall at ``fpr``, from the ROC / PR points: the
    last row of each run of equal (group, score)."""
    positives = np.bincount(g, weights=y, minlength=n_groups)
    negatives = np.bincount(g, minlength=n_groups) - positives
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    position = np.cumsum(np.r_[True, g[1:] != g[:-1]]) - 1
    tp_all, fp_all = np.cumsum(y), np.cumsum(1.0 - y)
    base_tp = np.r_[0.0, tp_all][starts][position]
    base_fp = np.r_[0.0, fp_all][starts][position]
    last = np.r_[(g[1:] != g[:-1]) | (s[1:] != s[:-1]), True]
    tp, fp, gg = (tp_all - base_tp)[last], (fp_all - base_fp)[last], g[last]
    first_point = np.r_[True, gg[1:] != gg[:-1]]
    tp_prev = np.where(first_point, 0.0, np.r_[0.0, tp[:-1]])
    fp_prev = np.where(first_point, 0.0, np.r_[0.0, fp[:-1]])
    area = np.bincount(gg, weights=(fp - fp_prev) * (tp + tp_prev), minlength=n_groups)
    ap = np.bincount(gg, weights=(tp - tp_prev) * tp / (tp + fp), minlength=n_groups)
    p, q = positives[gg], negatives[gg]
    allowed = fp / np.where(q > 0, q, 1.0) <= fpr + 1e-12  # as evaluation.recall_at_fpr
    recall = np.zeros(n_groups)
    np.maximum.at(recall, gg[allowed], tp[allowed] / np.where(p > 0, p, 1.0)[allowed])
    return area, ap, recall
