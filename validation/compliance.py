"""Compliance checks on a live model: fairness over time, adverse-action reasons, documents.

* :func:`fairness_over_time`: the fairness metrics of :mod:`validation.fairness`
  (fairlearn's definitions, through :func:`~validation.fairness.metrics_from_counts`)
  on the live decisions of each time window, for one protected attribute.
* :func:`decline_reason_coverage`: whether every adverse decision can be explained with
  human-readable reasons (an adverse-action notice under FCRA/ECOA lists the principal
  reasons; a factor without a label makes the notice incomplete).
* :func:`model_card_completeness`: which required sections of a model card are missing.
* :func:`approvals_validity`: which human approvals can still authorise a deployment.

Fairness conventions (as in :mod:`validation.fairness`): the favourable outcome is any
decision other than ``adverse``; selection rates and the demographic-parity metrics
use every decided row of the window (a missing decision is no decision); TPR/FPR and
the equalized-odds metrics take the adverse decision as the prediction of the bad
outcome and use the rows whose label is known at ``as_of`` (see
:mod:`pipelines.monitoring`). In each window and for each of the two row sets, groups
with fewer than ``min_group_rows`` rows are left out (their rates are noise); a metric
is NaN when its row set has fewer than ``min_rows`` rows or fewer than two groups left.
Groups are named by :func:`~validation.fairness.group_labels` over the whole frame, so a
numeric attribute's bins are the same in every window.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from pipelines.errors import DataValidationError
from pipelines.monitoring import (
    DECISION,
    LABEL,
    LABEL_TIME,
    TIMESTAMP,
    known_labels,
    require_columns,
    time_windows,
)
from pipelines.reasons import DEFAULT_REASONS
from validation.group_fairness import (
    FAIRNESS_METRICS,
    MIN_GROUP_ROWS,
    group_labels,
    metrics_from_counts,
)

SELECTION_METRICS = ("demographic_parity_ratio", "demographic_parity_difference")
LABEL_METRICS = tuple(m for m in FAIRNESS_METRICS if m not in SELECTION_METRICS)
FAIRNESS_COLUMNS = [
    "window_start", "window_end", "attribute", "n", "n_labelled", "groups",
    "groups_labelled", *FAIRNESS_METRICS,
]  # fmt: skip
REQUIRED_CARD_FIELDS = (
    "intended_use",
    "fingerprint.source",
    "fingerprint.sha256",
    "features",
    "metrics",
    "business",
    "fairness_attributes",
    "top_features",
    "gates.checks",
    "limitations",
    "code_version",
    "threshold",
)
"""Model-card fields (keys of :func:`registry.model_card.card_context`; ``a.b`` is nested)
that must be filled in: each is the evidence behind one section of the card."""
PLACEHOLDERS = frozenset({"", "?", "unknown", "–", "-", "n/a", "none", "null", "tbd", "todo"})
"""Text that fills a field without saying anything (the card's defaults for missing files)."""


# ---------------------------------------------------------------------------------------
# fairness of live decisions


def fairness_over_time(
    obs: pd.DataFrame,
    *,
    attribute: str,
    window: str = "1D",
    adverse: str,
    as_of: pd.Timestamp | None = None,
    min_rows: int = 50,
    min_group_rows: int = MIN_GROUP_ROWS,
) -> pd.DataFrame:
    """Per window, the fairness metrics of the live decisions for ``attribute``.

    Columns: ``window_start``, ``window_end``, ``attribute``, ``n`` (decided rows),
    ``n_labelled`` (decided rows with a label known at ``as_of``), ``groups`` /
    ``groups_labelled`` (groups kept in each row set), then
    :data:`validation.fairness.FAIRNESS_METRICS` (conventions in the module docstring).
    """
    if min_rows < 1 or min_group_rows < 1:
        raise ValueError("min_rows and min_group_rows must be at least 1")
    require_columns(obs, [TIMESTAMP, DECISION, LABEL, LABEL_TIME, attribute], "fairness_over_time")
    windows = time_windows(obs[TIMESTAMP], window)
    decisions = obs[DECISION].astype(object)
    decided = decisions.notna().to_numpy()
    _check_adverse(decisions[decided], adverse)
    is_adverse = (decisions == adverse).to_numpy(dtype=bool) & decided
    y, resolved = known_labels(obs, as_of)
    labelled = decided & ~np.isnan(y)
    codes, names = pd.factorize(pd.Series(group_labels(obs[attribute]), dtype=object), sort=True)
    size, n_groups = len(windows), max(len(names), 1)

    def cells(rows: np.ndarray, target: np.ndarray) -> np.ndarray:
        """counts[window, group, target, decision] of the rows, small groups zeroed."""
        cell = ((windows.codes * n_groups + codes) * 2 + target) * 2 + is_adverse
        counts = np.bincount(cell[rows], minlength=size * n_groups * 4)
        counts = counts.reshape(size, n_groups, 2, 2)
        counts[counts.sum(axis=(-2, -1)) < min_group_rows] = 0
        return counts

    everyone = cells(decided, np.zeros(len(obs), dtype=np.int64))
    known = cells(labelled, np.nan_to_num(y).astype(np.int64))
    table: dict[str, Any] = {
        "window_start": windows.starts,
        "window_end": windows.ends,
        "attribute": attribute,
        "n": np.bincount(windows.codes[decided], minlength=size),
        "n_labelled": np.bincount(windows.codes[labelled], minlength=size),
        "groups": (everyone.sum(axis=(-2, -1)) > 0).sum(axis=-1),
        "groups_labelled": (known.sum(axis=(-2, -1)) > 0).sum(axis=-1),
    }
    for metrics, rows, kept, names_ in (
        (metrics_from_counts(everyone), table["n"], table["groups"], SELECTION_METRICS),
        (metrics_from_counts(known), table["n_labelled"], table["groups_labelled"], LABEL_METRICS),
    ):
        valid = (rows >= min_rows) & (kept >= 2)
        for name in names_:
            table[name] = np.where(valid, metrics[name], np.nan)
    frame = pd.DataFrame(table)[FAIRNESS_COLUMNS]
    frame.attrs["as_of"] = resolved
    return frame


def _check_adverse(decisions: pd.Series, adverse: str) -> None:
    """The decisions are ``adverse`` and at most one favourable value (catches typos)."""
    others = sorted({str(v) for v in pd.unique(decisions)} - {adverse})
    if len(others) > 1:
        raise DataValidationError(
            f"{DECISION}: adverse decision {adverse!r} leaves several favourable values "
            f"{others[:5]}; expected the adverse value and one favourable value"
        )


# ---------------------------------------------------------------------------------------
# adverse-action reasons


def top_adverse_factors(contributions: np.ndarray, n_features: int, k: int) -> np.ndarray:
    """Per row, the feature indices of :func:`pipelines.reasons.reason_codes`, -1 padded.

    The same rule, vectorised: the up to ``k`` largest strictly positive contributions,
    ties by feature name (``contributions``' columns must already be in name order for
    that; :func:`decline_reason_coverage` arranges it). Shape ``(rows, min(k, features))``.
    """
    values = np.asarray(contributions, dtype=np.float64)[:, :n_features]
    width = min(k, n_features)
    keys = np.where(np.isnan(values), np.inf, -values)
    top = np.argsort(keys, axis=1, kind="stable")[:, :width]
    positive = np.take_along_axis(values, top, axis=1) > 0
    return np.where(positive, top, -1)


def decline_reason_coverage(
    contributions: np.ndarray,
    feature_names: list[str],
    reason_labels: Mapping[str, str],
    adverse_mask: np.ndarray,
    top_k: int = DEFAULT_REASONS,
) -> dict[str, Any]:
    """How many adverse decisions get a complete adverse-action notice.

    The factors of a decision are its top ``top_k`` positive SHAP contributions, chosen
    exactly as :func:`pipelines.reasons.reason_codes` chooses them (vectorised here).
    A notice is complete when the decision has at least one factor and every factor
    has a non-empty label in ``reason_labels``. Returns ``adverse``, ``complete``,
    ``incomplete`` (a factor without a label), ``without_factors`` (no positive
    contribution: no reason to give), ``share_complete`` (None without adverse
    decisions) and ``unlabelled_features``: each feature that left a notice
    incomplete with the number of decisions it appears in, most frequent first.
    """
    values = np.asarray(contributions, dtype=np.float64)
    mask = np.asarray(adverse_mask)
    n_features = len(feature_names)
    if values.ndim != 2 or values.shape[1] not in (n_features, n_features + 1):
        raise DataValidationError(
            f"contributions: expected shape (rows, {n_features}) or (rows, {n_features + 1}) "
            f"for {n_features} feature names, got {values.shape}"
        )
    if mask.dtype != bool or mask.shape != (values.shape[0],):
        raise DataValidationError(
            f"adverse_mask: expected {values.shape[0]} booleans, got {mask.dtype} {mask.shape}"
        )
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    by_name = np.argsort(np.asarray(feature_names, dtype=object), kind="stable")
    rows = values[mask][:, :n_features][:, by_name]
    top = top_adverse_factors(rows, n_features, top_k)
    has_factor = top >= 0
    labelled = np.array(
        [bool(str(reason_labels.get(feature_names[j], "")).strip()) for j in by_name] + [True]
    )
    missing = has_factor & ~labelled[top]  # index -1 reads the padding's True
    incomplete_rows = missing.any(axis=1)
    without = ~has_factor.any(axis=1)
    complete = int((~incomplete_rows & ~without).sum())
    per_feature = np.bincount(top[missing], minlength=n_features)  # once per row: no repeats
    unlabelled = sorted(
        ((feature_names[by_name[j]], int(c)) for j, c in enumerate(per_feature) if c),
        key=lambda fc: (-fc[1], fc[0]),
    )
    adverse = int(mask.sum())
    return {
        "adverse": adverse,
        "complete": complete,
        "incomplete": int(incomplete_rows.sum()),
        "without_factors": int(without.sum()),
        "share_complete": complete / adverse if adverse else None,
        "top_k": top_k,
        "unlabelled_features": [{"feature": f, "decisions": c} for f, c in unlabelled],
    }


# ---------------------------------------------------------------------------------------
# documents and approvals


def model_card_completeness(
    card: Mapping[str, Any], required: Sequence[str] = REQUIRED_CARD_FIELDS
) -> dict[str, Any]:
    """Share of the ``required`` fields that the card fills in, and the missing ones.

    ``card`` is the context :func:`registry.model_card.card_context` renders; a required
    name ``a.b`` reads ``card["a"]["b"]`` (or an attribute). A field is missing when it
    is absent, None, empty, placeholder text (:data:`PLACEHOLDERS`, which the card uses
    for a missing input file) or a container whose every value is missing.
    """
    missing = [name for name in required if not _filled(_lookup(card, name))]
    total = len(required)
    return {
        "required": total,
        "present": total - len(missing),
        "share": (total - len(missing)) / total if total else 1.0,
        "missing": missing,
    }


_ABSENT = object()


def _lookup(card: Mapping[str, Any], name: str) -> Any:
    value: Any = card
    for part in name.split("."):
        if isinstance(value, Mapping):
            value = value.get(part, _ABSENT)
        else:
            value = getattr(value, part, _ABSENT)
        if value is _ABSENT:
            return _ABSENT
    return value


def _filled(value: Any) -> bool:
    if value is _ABSENT or value is None:
        return False
    if isinstance(value, str):
        return value.strip().lower() not in PLACEHOLDERS
    if isinstance(value, float):
        return not np.isnan(value)
    if isinstance(value, Mapping):
        return any(_filled(v) for v in value.values())
    if isinstance(value, list | tuple | set | frozenset):
        return any(_filled(v) for v in value)
    return True


def approvals_validity(
    approvals: Sequence[Mapping[str, Any] | Any], now: dt.datetime
) -> dict[str, Any]:
    """Which approvals can still authorise a deployment at ``now``.

    ``approvals`` are :class:`registry.approvals.ApprovalState` objects or their
    ``to_dict()``: ``status``, ``valid_until`` (set when granted: decision time plus the
    spec's ``approval.expires_after``), ``consumed_at`` (used by a deployment),
    ``respond_by``. As :func:`registry.approvals.authorise_deploy` decides: *valid* =
    approved, unused, ``now < valid_until``; *expired* = approved and unused but past
    ``valid_until``; *used* = approved and consumed. ``overdue`` counts pending
    requests past ``respond_by`` (they should have been expired). ``earliest_expiry``
    is the soonest ``valid_until`` among the valid ones (ISO text, None without any).
    Naive times are UTC, as the governance store returns them.
    """
    at = _utc(now, "now")
    valid = expired = used = overdue = 0
    by_status: dict[str, int] = {}
    earliest: tuple[dt.datetime, Any] | None = None
    for item in approvals:
        record = item.to_dict() if hasattr(item, "to_dict") else item
        status = str(record.get("status", ""))
        by_status[status] = by_status.get(status, 0) + 1
        if status == "pending":
            deadline = _utc(record.get("respond_by"), "respond_by")
            overdue += deadline is not None and deadline <= at
            continue
        if status != "approved":
            continue
        if record.get("consumed_at"):
            used += 1
            continue
        until = _utc(record.get("valid_until"), "valid_until")
        if until is None or until <= at:
            expired += 1
            continue
        valid += 1
        if earliest is None or until < earliest[0]:
            earliest = (until, record.get("id"))
    return {
        "total": len(approvals),
        "valid": valid,
        "expired": expired,
        "used": used,
        "overdue": int(overdue),
        "by_status": dict(sorted(by_status.items())),
        "earliest_expiry": earliest[0].isoformat() if earliest else None,
        "earliest_expiry_request": earliest[1] if earliest else None,
    }


def _utc(value: Any, name: str) -> dt.datetime | None:
    if value is None or value == "":
        return None
    try:
        stamp = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise DataValidationError(f"{name}: {value!r} is not an ISO-8601 time") from None
    return stamp.replace(tzinfo=dt.UTC) if stamp.tzinfo is None else stamp.astimezone(dt.UTC)
