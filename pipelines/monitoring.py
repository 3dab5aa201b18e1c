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

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pandas.tseries.frequencies import to_offset
from pandas.tseries.offsets import BaseOffset, Tick

from pipelines import drift
from pipelines.errors import DataValidationError
from pipelines.spec import Segment

TIMESTAMP = "timestamp"
SCORE = "score"
DECISION = "decision"
LATENCY = "latency_ms"
LABEL = "label"
LABEL_TIME = "label_time"
ALL = drift.ALL
MAX_WINDOWS = 100_000
"""More windows than this over the data's time range is a mistake (``"1s"`` over a month)."""
ADVERSE = {"fraud": "flag", "credit": "decline"}
FAVOURABLE = {"fraud": "pass", "credit": "approve"}
SCORING_KINDS = ("predict", "infer", "explain")
"""Request kinds of ``govml_requests_total`` that are scoring traffic (see serving/http.py)."""
REQUESTS_SAMPLE = "govml_requests_total"

PERFORMANCE_COLUMNS = [
    "window_start", "window_end", "segment", "value", "n", "n_labelled", "label_coverage",
    "positives", "roc_auc", "pr_auc", "recall_at_fpr", "brier", "calibration_error",
    "mean_score", "positive_rate",
]  # fmt: skip
KPI_COLUMNS = {
    "fraud": [
        "window_start", "window_end", "n", "n_labelled", "adverse_rate", "alert_volume",
        "false_positive_rate", "precision", "frauds_caught", "frauds_missed",
        "fraud_amount_caught", "fraud_amount_missed", "caught_ratio",
    ],
    "credit": [
        "window_start", "window_end", "n", "n_labelled", "adverse_rate", "approvals",
        "approval_rate", "false_positive_rate", "precision", "default_rate_approved",
    ],
}  # fmt: skip
TECHNICAL_COLUMNS = [
    "window_start", "window_end", "requests", "throughput_per_s", "latency_p50_ms",
    "latency_p95_ms", "latency_p99_ms",
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


def _numbers(obs: pd.DataFrame, column: str) -> np.ndarray:
    return _as_numbers(obs[column], column)


def _scores(obs: pd.DataFrame) -> np.ndarray:
    s = _numbers(obs, SCORE)
    missing = np.isnan(s)
    if missing.any():
        raise DataValidationError(f"{SCORE}: {int(missing.sum())} missing value(s)")
    outside = (s < 0) | (s > 1)
    if outside.any():
        raise DataValidationError(
            f"{SCORE}: {int(outside.sum())} value(s) outside [0, 1], e.g. {float(s[outside][0])}"
        )
    return s


def _decisions(obs: pd.DataFrame, use_case: str) -> np.ndarray:
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


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Element-wise ratio, NaN where the denominator is 0."""
    num, den = np.asarray(numerator, np.float64), np.asarray(denominator, np.float64)
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _use_case(use_case: str) -> None:
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
    parts = [
        _performance_part(
            name,
            position,
            windows,
            codes,
            values,
            score,
            y,
            by_score,
            fpr=fpr,
            bins=calibration_bins,
            min_labels=min_labels,
        )  # fmt: skip
        for position, (name, codes, values) in enumerate(groupings)
    ]
    table = pd.concat(parts, ignore_index=True)
    order = np.lexsort((table["_value"], table["_segment"], table["_window"]))
    table = table.iloc[order][PERFORMANCE_COLUMNS].reset_index(drop=True)
    table.attrs["as_of"] = resolved
    return table


def _performance_part(
    name: str,
    position: int,
    windows: Windows,
    codes: np.ndarray,
    values: list[str],
    score: np.ndarray,
    y: np.ndarray,
    by_score: np.ndarray,
    *,
    fpr: float,
    bins: int,
    min_labels: int,
) -> pd.DataFrame:
    """The rows of one segment: groups = (window, value), window-major, values in order."""
    if name == ALL:  # every window, empty ones too
        gid, n_groups = windows.codes, len(windows)
        group_window = np.arange(n_groups)
        group_value = np.zeros(n_groups, dtype=np.int64)
    else:
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
        n_groups = len(unique)
        group_window, group_value = unique // len(values), unique % len(values)
    member = gid >= 0
    n = np.bincount(gid[member], minlength=n_groups)
    score_sum = np.bincount(gid[member], weights=score[member], minlength=n_groups)
    rows = by_score[gid[by_score] >= 0]
    rows = rows[np.argsort(gid[rows], kind="stable")]  # by group, score descending inside
    metrics = _label_metrics(
        gid[rows], score[rows], y[rows], n_groups, fpr=fpr, bins=bins, min_labels=min_labels
    )
    return pd.DataFrame(
        {
            "window_start": windows.starts[group_window],
            "window_end": windows.ends[group_window],
            "segment": name,
            "value": np.asarray(values, dtype=object)[group_value],
            "n": n.astype(np.int64),
            **metrics,
            "label_coverage": _ratio(metrics["n_labelled"], n),
            "mean_score": _ratio(score_sum, n),
            "_segment": position,
            "_window": group_window,
            "_value": group_value,
        }
    )


def _label_metrics(
    g: np.ndarray,
    s: np.ndarray,
    y: np.ndarray,
    n_groups: int,
    *,
    fpr: float,
    bins: int,
    min_labels: int,
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
    out["brier"] = _ratio(np.bincount(g, weights=(s - y) ** 2, minlength=n_groups), n_labelled)
    out["positive_rate"] = _ratio(positives, n_labelled)

    # ECE: sum over bins of |sum(score) - sum(label)| / n. Scores descend inside a group,
    # so each (group, bin) is one run of rows.
    b = np.minimum((s * bins).astype(np.int64), bins - 1)
    run = np.flatnonzero(np.r_[True, (g[1:] != g[:-1]) | (b[1:] != b[:-1])])
    gap = np.abs(np.add.reduceat(s, run) - np.add.reduceat(y, run))
    out["calibration_error"] = _ratio(
        np.bincount(g[run], weights=gap, minlength=n_groups), n_labelled
    )

    # ROC / PR points: the last row of each run of equal (group, score).
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

    enough = n_labelled >= min_labels
    both = enough & (positives > 0) & (negatives > 0)
    out["roc_auc"] = np.where(both, _ratio(area, 2.0 * positives * negatives), np.nan)
    out["pr_auc"] = np.where(both, _ratio(ap, positives), np.nan)
    out["recall_at_fpr"] = np.where(both, recall, np.nan)
    for key in ("brier", "calibration_error", "positive_rate"):
        out[key] = np.where(enough, out[key], np.nan)
    return out


# ---------------------------------------------------------------------------------------
# business KPIs


def business_kpis(
    obs: pd.DataFrame,
    *,
    window: str = "1D",
    use_case: str,
    amount_column: str | None = "amount",
    as_of: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """Business KPIs of the live decisions per window.

    Both use cases: ``n``, ``n_labelled`` (labels known at ``as_of``), ``adverse_rate``
    (share flagged / declined), ``false_positive_rate`` (labelled good rows given the
    adverse decision, over labelled good rows) and ``precision`` (labelled adverse rows
    that are bad, over labelled adverse rows). Fraud: ``alert_volume`` (flags),
    ``frauds_caught`` / ``frauds_missed`` (labelled frauds flagged / passed) and their
    ``amount_column`` sums ``fraud_amount_caught`` / ``fraud_amount_missed`` (a missing
    amount counts 0; NaN without an amount column), ``caught_ratio`` = caught amount
    over the frauds' total. Credit: ``approvals``, ``approval_rate`` and
    ``default_rate_approved`` (labelled approved applications that defaulted; the
    amount column is not used). A ratio with a zero denominator is NaN. Every row needs
    one of the use case's two decisions (see :data:`ADVERSE`, :data:`FAVOURABLE`).
    """
    _use_case(use_case)
    amount_needed = use_case == "fraud" and amount_column is not None
    required = [TIMESTAMP, DECISION, LABEL, LABEL_TIME]
    if amount_needed:
        required.append(str(amount_column))
    require_columns(obs, required, "business_kpis")
    windows = time_windows(obs[TIMESTAMP], window)
    adverse = _decisions(obs, use_case)
    y, resolved = known_labels(obs, as_of)
    w, size = windows.codes, len(windows)

    def count(mask: np.ndarray) -> np.ndarray:
        return np.bincount(w[mask], minlength=size).astype(np.int64)

    known = ~np.isnan(y)
    bad, good = known & (y == 1), known & (y == 0)
    n, n_adverse = count(np.ones(len(w), dtype=bool)), count(adverse)
    table: dict[str, Any] = {
        "window_start": windows.starts,
        "window_end": windows.ends,
        "n": n,
        "n_labelled": count(known),
        "adverse_rate": _ratio(n_adverse, n),
        "false_positive_rate": _ratio(count(good & adverse), count(good)),
        "precision": _ratio(count(bad & adverse), count(known & adverse)),
    }
    if use_case == "fraud":
        table["alert_volume"] = n_adverse
        table["frauds_caught"] = count(bad & adverse)
        table["frauds_missed"] = count(bad & ~adverse)
        if amount_needed:
            amount = np.nan_to_num(_numbers(obs, str(amount_column)), nan=0.0)
            caught = np.bincount(w, weights=np.where(bad & adverse, amount, 0.0), minlength=size)
            missed = np.bincount(w, weights=np.where(bad & ~adverse, amount, 0.0), minlength=size)
        else:
            caught = missed = np.full(size, np.nan)
        table["fraud_amount_caught"] = caught
        table["fraud_amount_missed"] = missed
        table["caught_ratio"] = _ratio(caught, caught + missed)
    else:
        approved = ~adverse
        table["approvals"] = count(approved)
        table["approval_rate"] = _ratio(table["approvals"], n)
        table["default_rate_approved"] = _ratio(count(bad & approved), count(known & approved))
    frame = pd.DataFrame(table)[KPI_COLUMNS[use_case]]
    frame.attrs["as_of"] = resolved
    return frame


# ---------------------------------------------------------------------------------------
# technical metrics


def technical_metrics(obs: pd.DataFrame, *, window: str = "1h") -> pd.DataFrame:
    """Requests, throughput and latency percentiles per window.

    ``throughput_per_s`` is requests over the window's full length (a first or last
    window the data covers only in part reads low). Latency percentiles are numpy's
    (linear interpolation) over the rows with a latency; NaN in a window without any.
    """
    require_columns(obs, [TIMESTAMP, LATENCY], "technical_metrics")
    windows = time_windows(obs[TIMESTAMP], window)
    latency = _numbers(obs, LATENCY)
    size = len(windows)
    requests = np.bincount(windows.codes, minlength=size).astype(np.int64)
    has = ~np.isnan(latency)
    p50, p95, p99 = _grouped_percentiles(windows.codes[has], latency[has], size, (50, 95, 99))
    return pd.DataFrame(
        {
            "window_start": windows.starts,
            "window_end": windows.ends,
            "requests": requests,
            "throughput_per_s": _ratio(requests, windows.seconds),
            "latency_p50_ms": p50,
            "latency_p95_ms": p95,
            "latency_p99_ms": p99,
        }
    )[TECHNICAL_COLUMNS]


def _grouped_percentiles(
    g: np.ndarray, v: np.ndarray, n_groups: int, percentiles: Sequence[float]
) -> list[np.ndarray]:
    """``np.percentile(v[g == k], q)`` for every group k and q (linear method), NaN if empty."""
    order = np.lexsort((v, g))
    v = v[order]
    counts = np.bincount(g, minlength=n_groups)
    present = np.flatnonzero(counts)
    size = counts[present]
    offset = (np.cumsum(counts) - counts)[present]
    out = []
    for q in percentiles:
        virtual = (size - 1) * (np.float64(q) / 100.0)  # as numpy's "linear" method
        below = np.floor(virtual)
        above = np.minimum(below + 1, size - 1)
        gamma = virtual - below
        a = v[offset + below.astype(np.int64)]
        b = v[offset + above.astype(np.int64)]
        diff = b - a
        value = np.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)
        result = np.full(n_groups, np.nan)
        result[present] = value
        out.append(result)
    return out


def server_error_rates(
    metrics_text: str,
    *,
    previous: str | None = None,
    kinds: Collection[str] | None = SCORING_KINDS,
) -> dict[str, Any]:
    """Request counts and error rates from the model server's ``/metrics`` text.

    Reads ``govml_requests_total{kind, code}`` (serving/http.py). ``kinds`` keeps the
    scoring traffic by default (health probes and scrapes would dilute the rates;
    ``None`` keeps every kind). With ``previous`` (an earlier scrape of the same
    server) the counts are the increase between the two, a counter that went down
    (the server restarted) counting from zero, as Prometheus' ``increase()`` does.
    Returns ``requests``, ``by_code``, ``by_kind``, ``client_errors`` (4xx),
    ``server_errors`` (5xx), their rates and ``error_rate`` (4xx + 5xx over all
    requests); rates are None without requests.
    """
    now = _request_counts(metrics_text)
    if previous is not None:
        before = _request_counts(previous)
        now = {
            key: value - before.get(key, 0.0) if value >= before.get(key, 0.0) else value
            for key, value in now.items()
        }
    wanted = None if kinds is None else set(kinds)
    by_code: dict[str, float] = {}
    by_kind: dict[str, float] = {}
    for (kind, code), value in now.items():
        if wanted is None or kind in wanted:
            by_code[code] = by_code.get(code, 0.0) + value
            by_kind[kind] = by_kind.get(kind, 0.0) + value
    total = sum(by_code.values())
    client = sum(v for c, v in by_code.items() if c.startswith("4"))
    server = sum(v for c, v in by_code.items() if c.startswith("5"))

    def rate(value: float) -> float | None:
        return value / total if total > 0 else None

    return {
        "requests": int(round(total)),
        "by_code": {c: int(round(v)) for c, v in sorted(by_code.items())},
        "by_kind": {k: int(round(v)) for k, v in sorted(by_kind.items())},
        "client_errors": int(round(client)),
        "server_errors": int(round(server)),
        "client_error_rate": rate(client),
        "server_error_rate": rate(server),
        "error_rate": rate(client + server),
        "kinds": None if wanted is None else sorted(wanted),
    }


def _request_counts(metrics_text: str) -> dict[tuple[str, str], float]:
    """``(kind, code)`` → requests of ``govml_requests_total`` in an exposition text."""
    from prometheus_client.parser import text_string_to_metric_families

    counts: dict[tuple[str, str], float] = {}
    found = False
    try:
        for family in text_string_to_metric_families(metrics_text):
            if family.name not in ("govml_requests", REQUESTS_SAMPLE):
                continue
            found = True
            for sample in family.samples:
                if sample.name != REQUESTS_SAMPLE:
                    continue  # _created
                key = (sample.labels.get("kind", ""), sample.labels.get("code", ""))
                counts[key] = counts.get(key, 0.0) + float(sample.value)
    except ValueError as exc:
        raise DataValidationError(f"metrics: not Prometheus exposition text ({exc})") from None
    if not found:
        raise DataValidationError(
            f"metrics: no {REQUESTS_SAMPLE} in the text (is this the model server's /metrics?)"
        )
    return {k: v for k, v in counts.items() if math.isfinite(v)}
