"""Per-row feature contributions (TreeSHAP) and adverse-action reason codes.

Used by the explain stage (``reason_codes.parquet``) and by the model server, so both
give the same codes for the same row and model.

* :func:`contributions` runs LightGBM's built-in TreeSHAP (``pred_contrib=True``) on
  the booster's own feature columns, laid out by :mod:`pipelines.booster_layout`
  exactly as scoring does (a value outside the training categories becomes
  missing), so contributions always add up to the raw
  (log-odds) score that :func:`pipelines.training.score` turns into a probability.
  The result has one column per booster feature plus the bias (expected value) last.
* :func:`reason_codes` picks, per row, the up to ``k`` features with the largest
  **positive** contributions: the factors that raised the bad-outcome score (fraud,
  default) the most. Ties are broken by feature name, so the codes are deterministic.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import NamedTuple

import lightgbm as lgb
import numpy as np
import pandas as pd

from pipelines.booster_layout import model_frame
from pipelines.errors import DataValidationError

log = logging.getLogger(__name__)

DEFAULT_REASONS = 4


class Reason(NamedTuple):
    """One adverse factor: the feature, its human-readable label, its contribution."""

    feature: str
    label: str
    contribution: float


def contributions(booster: lgb.Booster, frame: pd.DataFrame) -> np.ndarray:
    """TreeSHAP contributions, shape ``(n, k + 1)``: the k booster features, then the bias.

    Values are on the raw (log-odds) scale: each row sums to the raw score.
    """
    typed = model_frame(booster, frame)
    if len(typed) == 0:
        return np.zeros((0, len(typed.columns) + 1), dtype=np.float64)
    out = np.asarray(booster.predict(typed, pred_contrib=True), dtype=np.float64)
    if out.ndim != 2 or out.shape[1] != typed.shape[1] + 1:
        raise DataValidationError(
            f"unexpected contribution shape {out.shape} for {typed.shape[1]} features "
            "(only binary and regression boosters are supported)"
        )
    return out


def reason_codes(
    contribs: np.ndarray,
    feature_names: list[str],
    labels: Mapping[str, str],
    k: int = DEFAULT_REASONS,
) -> list[list[Reason]]:
    """Per row, the up to ``k`` adverse factors, largest positive contribution first.

    ``contribs`` has one column per feature, optionally followed by the bias column
    (as :func:`contributions` returns it). Only strictly positive contributions count;
    equal contributions are ordered by feature name. Each factor is a :class:`Reason`
    ``(feature, label, contribution)`` (a ``tuple[str, str, float]``), the label taken
    from ``labels`` or else the feature name.
    """
    values = np.asarray(contribs, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"contribs must be a 2-d array, got shape {values.shape}")
    n_features = len(feature_names)
    if values.shape[1] == n_features + 1:
        values = values[:, :n_features]
    elif values.shape[1] != n_features:
        raise ValueError(
            f"contribs has {values.shape[1]} columns for {n_features} feature names "
            "(expected one per feature, optionally plus the bias column)"
        )
    if k < 1 or n_features == 0 or values.shape[0] == 0:
        return [[] for _ in range(values.shape[0])]
    # Columns in name order, then a stable sort on the negated contribution: equal
    # contributions keep name order.
    by_name = np.argsort(np.asarray(feature_names, dtype=object), kind="stable")
    ordered = values[:, by_name]
    keys = np.where(np.isnan(ordered), np.inf, -ordered)
    top = np.argsort(keys, axis=1, kind="stable")[:, : min(k, n_features)]
    top_values = np.take_along_axis(ordered, top, axis=1)
    top_features = by_name[top]
    positive = top_values > 0
    names = [str(f) for f in feature_names]
    label_of = [str(labels.get(f, f)) for f in names]
    out: list[list[Reason]] = []
    for feats, vals, keep in zip(top_features, top_values, positive, strict=True):
        out.append(
            [
                Reason(names[j], label_of[j], float(v))
                for j, v, ok in zip(feats, vals, keep, strict=True)
                if ok
            ]
        )
    return out
