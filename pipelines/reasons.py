"""Per-row feature contributions (TreeSHAP) and adverse-action reason codes.

Used by the explain stage (``reason_codes.parquet``) and by the model server, so both
give the same codes for the same row and model.

* :func:`contributions` runs LightGBM's built-in TreeSHAP (``pred_contrib=True``) on
  the booster's own feature columns. Categorical features are re-typed from the
  booster's ``pandas_categorical`` exactly as scoring does (a value outside the
  training categories becomes missing), so contributions always add up to the raw
  (log-odds) score that :func:`pipelines.training.score` turns into a probability.
  The result has one column per booster feature plus the bias (expected value) last.
* :func:`reason_codes` picks, per row, the up to ``k`` features with the largest
  **positive** contributions: the factors that raised the bad-outcome score (fraud,
  default) the most. Ties are broken by feature name, so the codes are deterministic.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import lightgbm as lgb
import numpy as np
import pandas as pd

from pipelines.errors import DataValidationError

log = logging.getLogger(__name__)

DEFAULT_REASONS = 4
# LightGBM's names for the categorical-feature parameter (after loading: categorical_feature)
_CATEGORICAL_KEYS = (
    "categorical_feature",
    "categorical_column",
    "cat_feature",
    "cat_column",
    "categorical_features",
)


class Reason(NamedTuple):
    """One adverse factor: the feature, its human-readable label, its contribution."""

    feature: str
    label: str
    contribution: float


def categorical_features(
    booster: lgb.Booster, frame: pd.DataFrame | None = None
) -> dict[str, list]:
    """The booster's categorical features and their training categories, in feature order.

    The indices come from the booster's parameters (``categorical_feature`` after loading
    a model file, ``categorical_column`` on a freshly trained booster) and are paired in
    order with ``booster.pandas_categorical``, which LightGBM stores for the pandas
    ``category`` columns of the training frame in column order. When the parameters do
    not say (or disagree with ``pandas_categorical``), the ``category`` columns of
    ``frame`` among the booster's features are used, as LightGBM itself does.
    """
    names = list(booster.feature_name())
    pandas_cats = list(getattr(booster, "pandas_categorical", None) or [])
    if not pandas_cats:
        return {}
    params = booster.params or {}
    raw = next((params[k] for k in _CATEGORICAL_KEYS if params.get(k) not in (None, "", [])), None)
    indices = _indices(raw, names)
    if len(indices) != len(pandas_cats) and frame is not None:
        indices = [
            i
            for i, name in enumerate(names)
            if name in frame.columns and isinstance(frame[name].dtype, pd.CategoricalDtype)
        ]
    if len(indices) != len(pandas_cats):
        raise DataValidationError(
            f"cannot match the booster's {len(pandas_cats)} pandas categorical feature(s) "
            f"to its features (categorical indices {indices})"
        )
    return {names[i]: list(cats) for i, cats in zip(indices, pandas_cats, strict=True)}


def _indices(raw: Any, names: Sequence[str]) -> list[int]:
    """Categorical feature indices from a LightGBM parameter (list, int or '1,3' string)."""
    if raw is None or raw == "" or raw == "auto":
        return []
    if isinstance(raw, str):
        items: list[Any] = [p.strip() for p in raw.split(",") if p.strip()]
    elif isinstance(raw, int | np.integer):
        items = [int(raw)]
    else:
        items = list(raw)
    out: list[int] = []
    for item in items:
        if isinstance(item, str) and not item.lstrip("-").isdigit():
            name = item[len("name:") :] if item.startswith("name:") else item
            if name in names:
                out.append(names.index(name))
        else:
            out.append(int(item))
    return sorted(set(out))


def model_frame(booster: lgb.Booster, frame: pd.DataFrame) -> pd.DataFrame:
    """The booster's feature columns of ``frame``, categoricals typed as in training.

    Extra columns are dropped; a missing feature column is a :class:`DataValidationError`.
    """
    names = list(booster.feature_name())
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise DataValidationError(f"the frame lacks the model's feature column(s) {missing}")
    cats = categorical_features(booster, frame)
    out: dict[str, Any] = {}
    for name in names:
        col = frame[name]
        if name in cats:
            out[name] = pd.Categorical(col, categories=cats[name])
        elif isinstance(col.dtype, pd.CategoricalDtype):
            raise DataValidationError(
                f"{name}: a category column, but the model treats it as numeric"
            )
        else:
            try:
                out[name] = col.to_numpy(dtype=np.float64, na_value=np.nan)
            except (TypeError, ValueError):
                raise DataValidationError(f"{name}: expected a numeric column") from None
    return pd.DataFrame(out, index=frame.index)


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
