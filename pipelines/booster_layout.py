"""How a LightGBM booster's input frame is laid out: the one rule for training and scoring.

Training, scoring, reason codes and the model server all hand LightGBM a frame laid out
the same way, so the same row gives the same score everywhere:

* **feature order**: the booster's own ``feature_name()`` order; extra columns dropped;
* **categorical columns**: pandas ``category`` columns whose categories are exactly the
  training categories, in training order (LightGBM maps a value to its position in
  ``pandas_categorical``; a value outside them, like a null, becomes missing);
* **numeric columns**: float64 (nullable, object and category columns converted; a value
  that is not a number is a :class:`DataValidationError` naming the column).

:func:`booster_categories` reads a booster's categorical features and their categories;
:func:`category_lists` is the training rule that fixes them; :func:`typed_frame` lays a
frame out for given features and categories; :func:`model_frame` does it for a booster.
Depends only on numpy, pandas and LightGBM (the model server imports it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from pipelines.errors import DataValidationError

# LightGBM's names for the categorical-feature parameter (after loading: categorical_feature;
# on a freshly trained booster: categorical_column)
CATEGORICAL_KEYS = (
    "categorical_feature",
    "categorical_column",
    "cat_feature",
    "cat_column",
    "categorical_features",
)


def categorical_indices(value: Any, names: Sequence[str]) -> list[int]:
    """Sorted feature indices from a LightGBM categorical parameter.

    Accepts a list (of indices or names), an int, or a string such as ``"1,3"`` or
    ``"name:colour,size"``; ``None``, ``""`` and ``"auto"`` mean none.
    """
    if value is None or (isinstance(value, str) and value.strip() in ("", "auto")):
        return []
    if isinstance(value, str):
        items: list[Any] = value.split(",")
    elif isinstance(value, int | np.integer):
        items = [int(value)]
    else:
        items = list(value)
    out: set[int] = set()
    for item in items:
        text = str(item).strip()
        if text.startswith("name:"):
            text = text[len("name:") :]
        if not text:
            continue
        if text.lstrip("-").isdigit():
            out.add(int(text))
        elif text in names:
            out.add(list(names).index(text))
    return sorted(out)


def booster_categories(
    booster: lgb.Booster, frame: pd.DataFrame | None = None
) -> dict[str, list[Any]]:
    """Categorical feature name -> training categories, in the booster's feature order.

    The indices come from the booster's parameters and are paired in order with
    ``booster.pandas_categorical`` (LightGBM stores it for the training frame's
    ``category`` columns in column order). When the parameters do not say (or disagree
    with ``pandas_categorical``) and ``frame`` is given, the ``category`` columns of
    ``frame`` among the booster's features are used, as LightGBM itself does. Anything
    else that does not match is a :class:`DataValidationError`.
    """
    names = list(booster.feature_name())
    pandas_cats = list(getattr(booster, "pandas_categorical", None) or [])
    params = booster.params or {}
    raw = next((params[k] for k in CATEGORICAL_KEYS if params.get(k) not in (None, "", [])), None)
    indices = categorical_indices(raw, names)
    if len(indices) != len(pandas_cats) and frame is not None:
        indices = [
            i
            for i, name in enumerate(names)
            if name in frame.columns and isinstance(frame[name].dtype, pd.CategoricalDtype)
        ]
    if len(indices) != len(pandas_cats):
        raise DataValidationError(
            f"booster has {len(pandas_cats)} pandas categorical list(s) but "
            f"{len(indices)} categorical feature index(es)"
        )
    return {names[i]: list(cats) for i, cats in zip(indices, pandas_cats, strict=True)}


def category_lists(train: pd.DataFrame, categorical: Sequence[str]) -> dict[str, list[Any]]:
    """The training rule: a category column keeps its categories; a string column gets the
    values seen in training, sorted."""
    out: dict[str, list[Any]] = {}
    for name in categorical:
        col = train[name]
        if isinstance(col.dtype, pd.CategoricalDtype):
            out[name] = list(col.cat.categories)
        else:
            out[name] = sorted({str(v) for v in col.dropna()})
    return out


def numeric_column(col: pd.Series, name: str) -> pd.Series:
    """A numeric feature as float64 (nullable, object and category columns converted)."""
    if col.dtype == np.float64:
        return col
    try:
        if isinstance(col.dtype, pd.CategoricalDtype) or col.dtype == object:
            return pd.to_numeric(col.astype(object), errors="raise").astype("float64")
        return col.astype("float64")
    except (TypeError, ValueError):
        raise DataValidationError(f"{name}: expected a number") from None


def categorical_column(col: pd.Series, categories: Sequence[Any]) -> Any:
    """A categorical feature with exactly ``categories`` (other values become missing)."""
    if isinstance(col.dtype, pd.CategoricalDtype) and list(col.cat.categories) == list(categories):
        return col
    values = col.astype(object)
    return pd.Categorical(values.where(values.notna(), None), categories=list(categories))


def typed_frame(
    frame: pd.DataFrame, features: Sequence[str], categories: Mapping[str, Sequence[Any]]
) -> pd.DataFrame:
    """``frame``'s ``features`` in that order: ``categories``' columns categorical, the rest
    float64. A missing column is a :class:`DataValidationError`."""
    missing = [n for n in features if n not in frame.columns]
    if missing:
        raise DataValidationError(f"the frame lacks the model's feature column(s) {missing}")
    out: dict[str, Any] = {}
    for name in features:
        col = frame[name]
        if name in categories:
            out[name] = categorical_column(col, categories[name])
        else:
            out[name] = numeric_column(col, name)
    return pd.DataFrame(out, index=frame.index, columns=list(features))


def model_frame(booster: lgb.Booster, frame: pd.DataFrame) -> pd.DataFrame:
    """The booster's feature columns of ``frame``, laid out as the booster expects."""
    return typed_frame(frame, booster.feature_name(), booster_categories(booster, frame))
