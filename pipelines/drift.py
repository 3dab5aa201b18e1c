"""Drift statistics: every feature and the score, the whole population and each segment.

:func:`compare` takes a reference frame (the training or a champion's window) and a
current frame (a window of the prediction log, a new batch) and returns a
:class:`DriftReport`: one row per feature × segment value (the whole population is the
segment ``all``), with

* **PSI**, bins from the reference's quantiles (``bins`` of them, ties merged), empty
  bins floored at 1e-4; categories are the bins of a categorical feature;
* **Kolmogorov-Smirnov** (numeric): the statistic and p-value exactly as
  ``scipy.stats.ks_2samp`` computes them (exact p-value up to 10,000 rows a side,
  the asymptotic distribution beyond);
* **chi-square** (categorical): the test of homogeneity of the 2 × k table of category
  counts (reference and current are both samples: a rare category that one sample
  happens to lack is not drift by itself; categories expected fewer than 5 times are
  pooled, as the chi-square approximation needs);
* **Jensen-Shannon distance** (natural log, as ``scipy.spatial.distance.jensenshannon``)
  over the same bins or categories;
* **Wasserstein-1** distance (numeric) as ``scipy.stats.wasserstein_distance``, and
  divided by the reference's standard deviation (``wasserstein_norm``, the one compared
  with the spec's threshold, so it has no unit).

Missing values: a numeric feature's statistics use its non-missing values and report
the missing share of each side; a categorical feature's missing values are a category
of their own (``(missing)``), so a jump in missingness is drift.

**Decisions.** The p-values (KS for numeric, chi-square for categorical) of every row
are adjusted together with Benjamini-Hochberg at the spec's false discovery rate, over
features × segments. A row *drifts* when its adjusted p-value is significant *and* an
effect size crosses a threshold of the spec (PSI ≥ ``psi_warn``, JS ≥ ``js_distance``,
or normalised Wasserstein ≥ ``wasserstein``): with a million rows, a significant but
tiny change is not worth an alert. Severity ``alarm`` when PSI ≥ ``psi_alarm``,
``warn`` otherwise. Segment values with fewer than ``min_segment_rows`` on either side
are reported as skipped.

**Speed.** Each numeric feature is sorted once per side; every statistic of every
segment is read off those sorted values (segments by a stable radix sort of their codes
in value order). Features run on a thread pool (numpy's sorts release the GIL).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipelines.drift_stats import (
    benjamini_hochberg,
    binned_counts,
    chi2_from_counts,
    js_from_counts,
    ks_sorted,
    psi_from_counts,
    quantile_edges,
    wasserstein_sorted,
    without_nan,
)
from pipelines.errors import DataValidationError
from pipelines.spec_features import Segment
from pipelines.spec_operations import Drift

ALL = "all"
MISSING = "(missing)"
COLUMNS = [
    "segment", "value", "feature", "kind", "n_reference", "n_current",
    "missing_reference", "missing_current", "psi", "ks_statistic", "ks_pvalue",
    "chi2_statistic", "chi2_pvalue", "js_distance", "wasserstein", "wasserstein_norm",
    "pvalue", "pvalue_adjusted", "significant", "drifted", "severity", "skipped",
]  # fmt: skip


# ---------------------------------------------------------------------------------------
# single-column statistics (also used by the rollout guardrails)
# ---------------------------------------------------------------------------------------
# the report


@dataclass
class DriftReport:
    """The drift of one current window against a reference (see the module docstring)."""

    table: pd.DataFrame
    policy: Drift
    n_reference: int
    n_current: int
    features: list[str]
    segments: list[str] = field(default_factory=list)

    @property
    def drifted(self) -> pd.DataFrame:
        return self.table[self.table["drifted"]]

    @property
    def alarm(self) -> bool:
        return bool((self.table["severity"] == "alarm").any())

    def population(self) -> pd.DataFrame:
        """The whole-population rows, one per feature."""
        return self.table[self.table["segment"] == ALL].set_index("feature")

    def drifted_features(self) -> list[str]:
        """Features drifting in the whole population."""
        rows = self.table[(self.table["segment"] == ALL) & self.table["drifted"]]
        return sorted(rows["feature"])

    def drifted_segments(self) -> dict[str, list[str]]:
        """``segment=value`` → its drifting features (segments only, not ``all``)."""
        rows = self.table[(self.table["segment"] != ALL) & self.table["drifted"]]
        out: dict[str, list[str]] = {}
        for (segment, value), group in rows.groupby(["segment", "value"], sort=True):
            out[f"{segment}={value}"] = sorted(group["feature"])
        return out

    def segment_only(self) -> dict[str, list[str]]:
        """Drift that shows in a segment while the whole population stays put."""
        whole = set(self.drifted_features())
        out = {}
        for key, features in self.drifted_segments().items():
            only = [f for f in features if f not in whole]
            if only:
                out[key] = only
        return out

    def summary(self) -> dict[str, Any]:
        """The verdict in a few keys (for alerts, MLflow tags and the JSON report)."""
        tested = self.table[~self.table["skipped"].astype(bool)]
        worst = tested.sort_values("psi", ascending=False).head(1)
        worst_at = None
        if not worst.empty:
            w = worst.iloc[0]
            worst_at = f"{w['feature']} ({w['segment']}={w['value']})"
        skipped = self.table[self.table["skipped"] != ""]
        return {
            "n_reference": self.n_reference,
            "n_current": self.n_current,
            "tests": int(tested["pvalue"].notna().sum()),
            "false_discovery_rate": self.policy.false_discovery_rate,
            "drifted_features": self.drifted_features(),
            "drifted_segments": self.drifted_segments(),
            "segment_only_drift": self.segment_only(),
            "alarm": self.alarm,
            "warn": bool(len(self.drifted)),
            "max_psi": None if worst.empty else _finite(worst["psi"].iloc[0]),
            "max_psi_at": worst_at,
            "skipped_segments": sorted(set(skipped["segment"] + "=" + skipped["value"])),
        }

    def to_dict(self) -> dict[str, Any]:
        rows = [
            {k: _plain(v) for k, v in row.items()} for row in self.table.to_dict(orient="records")
        ]
        return {"summary": self.summary(), "policy": self.policy.model_dump(), "rows": rows}


def _finite(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


# ---------------------------------------------------------------------------------------
# comparing two frames


@dataclass(frozen=True)
class SegmentGroups:
    """One segment definition: a code per row of each side and the value names."""

    name: str
    names: list[str]
    ref: np.ndarray  # int codes, -1: the row is in no value of this segment
    cur: np.ndarray


def compare(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    numeric: Sequence[str],
    categorical: Sequence[str] = (),
    segments: Sequence[Segment] = (),
    policy: Drift | None = None,
    workers: int | None = None,
) -> DriftReport:
    """Drift of ``current`` against ``reference`` (see the module docstring)."""
    policy = policy or Drift()
    numeric, categorical = list(numeric), list(categorical)
    _check_columns(reference, current, numeric, categorical, segments)
    groups = [segment_groups(reference, current, s) for s in segments]
    jobs = [(f, "numeric") for f in numeric] + [(f, "categorical") for f in categorical]
    workers = workers or min(len(jobs), os.cpu_count() or 1) or 1

    def run(job: tuple[str, str]) -> list[dict[str, Any]]:
        name, kind = job
        if kind == "numeric":
            return _numeric_rows(name, reference[name], current[name], groups, policy)
        return _categorical_rows(name, reference[name], current[name], groups, policy)

    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(run, jobs))
    else:
        results = [run(job) for job in jobs]
    table = pd.DataFrame([row for rows in results for row in rows], columns=COLUMNS)
    _decide(table, policy)
    return DriftReport(
        table=table,
        policy=policy,
        n_reference=len(reference),
        n_current=len(current),
        features=numeric + categorical,
        segments=[s.name for s in segments],
    )


def _check_columns(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    numeric: list[str],
    categorical: list[str],
    segments: Sequence[Segment],
) -> None:
    if not numeric and not categorical:
        raise DataValidationError("drift: no features to compare")
    if len(reference) == 0 or len(current) == 0:
        side = "reference" if len(reference) == 0 else "current"
        raise DataValidationError(f"drift: the {side} data has no rows")
    both = set(numeric) & set(categorical)
    if both:
        raise DataValidationError(f"drift: {sorted(both)} listed as numeric and categorical")
    needed = numeric + categorical + [s.column for s in segments]
    for side, frame in (("reference", reference), ("current", current)):
        missing = [c for c in dict.fromkeys(needed) if c not in frame.columns]
        if missing:
            raise DataValidationError(f"drift: the {side} data lacks column(s) {missing}")
    for name in numeric:
        for side, frame in (("reference", reference), ("current", current)):
            if not (
                pd.api.types.is_numeric_dtype(frame[name])
                or pd.api.types.is_bool_dtype(frame[name])
            ):
                raise DataValidationError(
                    f"drift: numeric feature {name!r} has non-numeric values in the {side} "
                    f"data (dtype {frame[name].dtype})"
                )


def _labels(series: pd.Series) -> np.ndarray:
    """Category labels as strings, missing values as ``(missing)``."""
    values = series.astype("object").to_numpy()
    missing = pd.isna(values)
    out = values.astype(str)
    out[missing] = MISSING
    return out


def _codes(ref: pd.Series, cur: pd.Series) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Shared integer codes of two categorical columns (reference categories first)."""
    if isinstance(ref.dtype, pd.CategoricalDtype) and isinstance(cur.dtype, pd.CategoricalDtype):
        names = list(dict.fromkeys([*map(str, ref.cat.categories), *map(str, cur.cat.categories)]))
        index = {n: i for i, n in enumerate(names)}
        ref_map = np.array([index[str(c)] for c in ref.cat.categories], dtype=np.int64)
        cur_map = np.array([index[str(c)] for c in cur.cat.categories], dtype=np.int64)
        rc, cc = ref.cat.codes.to_numpy(), cur.cat.codes.to_numpy()
        r = np.where(rc >= 0, ref_map[np.maximum(rc, 0)] if len(ref_map) else 0, len(names))
        c = np.where(cc >= 0, cur_map[np.maximum(cc, 0)] if len(cur_map) else 0, len(names))
        if (rc < 0).any() or (cc < 0).any():
            names.append(MISSING)
        return r.astype(np.int64), c.astype(np.int64), names
    labels_ref, labels_cur = _labels(ref), _labels(cur)
    names_arr, inverse = np.unique(np.concatenate([labels_ref, labels_cur]), return_inverse=True)
    return inverse[: len(ref)], inverse[len(ref) :], [str(n) for n in names_arr]


def segment_groups(reference: pd.DataFrame, current: pd.DataFrame, seg: Segment) -> SegmentGroups:
    """The segment's value names and each side's code per row (-1: in no value); bins are
    named ``[lo, hi)``, other columns by value (missing as :data:`MISSING`)."""
    if seg.bins is None:
        ref, cur, names = _codes(reference[seg.column], current[seg.column])
        return SegmentGroups(seg.name, names, ref, cur)
    edges = np.asarray(seg.bins, dtype=np.float64)
    names = [f"[{_num(lo)}, {_num(hi)})" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]

    def code(values: pd.Series) -> np.ndarray:
        x = pd.to_numeric(values, errors="coerce").to_numpy(np.float64)
        c = np.searchsorted(edges, x, side="right") - 1
        c[(c < 0) | (c >= len(names)) | np.isnan(x)] = -1
        return c

    return SegmentGroups(seg.name, names, code(reference[seg.column]), code(current[seg.column]))


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _base_row(
    segment: str, value: str, feature: str, kind: str, n_ref: int, n_cur: int
) -> dict[str, Any]:
    row = dict.fromkeys(COLUMNS, math.nan)
    row.update(
        segment=segment, value=value, feature=feature, kind=kind, n_reference=n_ref,
        n_current=n_cur, significant=False, drifted=False, severity="ok", skipped="",
    )  # fmt: skip
    return row


def _numeric_rows(
    name: str, ref: pd.Series, cur: pd.Series, groups: list[SegmentGroups], policy: Drift
) -> list[dict[str, Any]]:
    x = ref.to_numpy(np.float64, na_value=np.nan)
    y = cur.to_numpy(np.float64, na_value=np.nan)
    if not groups:  # no segments: the sorted values are enough (a sort beats an argsort)
        return [_numeric_stats(name, ALL, ALL, np.sort(x), np.sort(y), policy, min_rows=1)]
    order_x, order_y = np.argsort(x), np.argsort(y)  # NaN sort last
    sx, sy = x[order_x], y[order_y]
    rows = [_numeric_stats(name, ALL, ALL, sx, sy, policy, min_rows=1)]
    for g in groups:
        for value, a, b in _split_sorted(g, sx, sy, order_x, order_y):
            rows.append(_numeric_stats(name, g.name, value, a, b, policy, policy.min_segment_rows))
    return rows


def _split_sorted(
    g: SegmentGroups, sx: np.ndarray, sy: np.ndarray, order_x: np.ndarray, order_y: np.ndarray
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Per segment value, the sorted values of each side (a stable radix sort of codes)."""

    def split(sorted_values: np.ndarray, codes: np.ndarray) -> list[np.ndarray]:
        k = len(g.names)
        small = codes.astype(np.int16 if k < 32_000 else np.int64) + 1  # -1 → 0: no value
        by_code = np.argsort(small, kind="stable")
        grouped = sorted_values[by_code]
        bounds = np.concatenate([[0], np.cumsum(np.bincount(small, minlength=k + 1))])
        return [grouped[bounds[i + 1] : bounds[i + 2]] for i in range(k)]

    parts_x = split(sx, g.ref[order_x])
    parts_y = split(sy, g.cur[order_y])
    return [(g.names[i], parts_x[i], parts_y[i]) for i in range(len(g.names))]


def _numeric_stats(
    name: str,
    segment: str,
    value: str,
    sx: np.ndarray,
    sy: np.ndarray,
    policy: Drift,
    min_rows: int,
) -> dict[str, Any]:
    """Every numeric statistic from the two sorted sides (NaN last)."""
    a, b = without_nan(sx), without_nan(sy)
    row = _base_row(segment, value, name, "numeric", len(sx), len(sy))
    row["missing_reference"] = 1 - len(a) / len(sx) if len(sx) else math.nan
    row["missing_current"] = 1 - len(b) / len(sy) if len(sy) else math.nan
    if min(len(a), len(b)) < max(min_rows, 1):
        row["skipped"] = f"fewer than {max(min_rows, 1)} values on a side"
        return row
    ref_counts, cur_counts = binned_counts(a, b, quantile_edges(a, policy.bins))
    row["psi"] = psi_from_counts(ref_counts, cur_counts)
    row["js_distance"] = js_from_counts(ref_counts, cur_counts)
    row["ks_statistic"], row["ks_pvalue"] = ks_sorted(a, b)
    row["pvalue"] = row["ks_pvalue"]
    row["wasserstein"] = wasserstein_sorted(a, b)
    std = float(np.std(a))
    row["wasserstein_norm"] = (
        row["wasserstein"] / std if std > 0 else (0.0 if row["wasserstein"] == 0 else math.inf)
    )
    return row


def _categorical_rows(
    name: str, ref: pd.Series, cur: pd.Series, groups: list[SegmentGroups], policy: Drift
) -> list[dict[str, Any]]:
    rc, cc, names = _codes(ref, cur)
    k = len(names)
    rows = [_categorical_stats(name, ALL, ALL, _count(rc, k), _count(cc, k), 1)]
    for g in groups:
        v = len(g.names)
        ref_table = _count2(g.ref, rc, v, k)
        cur_table = _count2(g.cur, cc, v, k)
        for i, value in enumerate(g.names):
            rows.append(
                _categorical_stats(
                    name, g.name, value, ref_table[i], cur_table[i], policy.min_segment_rows
                )
            )
    return rows


def _count(codes: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(codes, minlength=k).astype(np.float64)


def _count2(groups: np.ndarray, codes: np.ndarray, v: int, k: int) -> np.ndarray:
    keep = groups >= 0
    flat = groups[keep].astype(np.int64) * k + codes[keep]
    return np.bincount(flat, minlength=v * k).reshape(v, k).astype(np.float64)


def _categorical_stats(
    name: str, segment: str, value: str, ref: np.ndarray, cur: np.ndarray, min_rows: int
) -> dict[str, Any]:
    n_ref, n_cur = int(ref.sum()), int(cur.sum())
    row = _base_row(segment, value, name, "categorical", n_ref, n_cur)
    row["missing_reference"] = row["missing_current"] = 0.0
    if min(n_ref, n_cur) < max(min_rows, 1):
        row["skipped"] = f"fewer than {max(min_rows, 1)} values on a side"
        return row
    row["psi"] = psi_from_counts(ref, cur)
    row["js_distance"] = js_from_counts(ref, cur)
    row["chi2_statistic"], row["chi2_pvalue"] = chi2_from_counts(ref, cur)
    row["pvalue"] = row["chi2_pvalue"]
    return row


def _decide(table: pd.DataFrame, policy: Drift) -> None:
    """BH over every tested row, then the effect-size thresholds (in place)."""
    tested = table["pvalue"].notna().to_numpy()
    significant = np.zeros(len(table), bool)
    adjusted = np.full(len(table), np.nan)
    if tested.any():
        found, adj = benjamini_hochberg(
            table.loc[tested, "pvalue"].to_numpy(), policy.false_discovery_rate
        )
        significant[tested], adjusted[tested] = found, adj
    effect = (table["psi"] >= policy.psi_warn) | (table["js_distance"] >= policy.js_distance)
    if policy.wasserstein is not None:
        effect |= table["wasserstein_norm"] >= policy.wasserstein
    drifted = significant & effect.to_numpy()
    table["pvalue_adjusted"] = adjusted
    table["significant"] = significant
    table["drifted"] = drifted
    alarm = drifted & (table["psi"] >= policy.psi_alarm).to_numpy()
    table["severity"] = np.where(alarm, "alarm", np.where(drifted, "warn", "ok"))
