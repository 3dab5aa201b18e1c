"""Evaluation stage: candidate vs baseline vs champion on the held-out test rows.

``evaluate(spec, features_dir, train_dir, champion_model=None)`` scores the test rows
and computes every metric (:class:`ScoredTest`); the stage
(:mod:`pipelines.stages.evaluate`) writes ``metrics.json``, ``scores.parquet``,
``roc.png``, ``pr.png``, ``calibration.png`` and ``result.json`` (see
``docs/lifecycle.md``).

Definitions (score = probability of the bad outcome; flagged/declined when
``score >= spec.gates.decision_threshold``):

* ``recall_at_fpr[a]``: the largest TPR on the ROC curve among points with FPR <= a
  (no linear interpolation between points);
* ``precision_at_recall[r]``: the largest precision on the PR curve with recall >= r;
* ``ks``: max(TPR - FPR); ``pr_auc``: average precision;
* ``positive_rate``: share of rows flagged/declined at the decision threshold;
* metrics that need both classes (ROC-AUC, PR-AUC, KS, recall@FPR, precision@recall)
  are null, with a warning, when the test rows hold only one class; Brier and
  log-loss are always computed (log-loss with labels {0, 1}).

Business metrics, fraud: the alert budget is the top 0.5 % of test rows by score
(``alert_budget`` = number of alerts, ties broken by row order); ``fraud_amount_caught``
is the ``amount`` of the frauds inside the budget, ``fraud_amount_total`` that of all
frauds (null without an ``amount`` column); ``alert_rate`` and
``false_positive_rate`` are at the decision threshold (the same decisions as
``scores.parquet``). Credit: ``approval_rate`` / ``decline_rate`` at the threshold,
``expected_default_rate_approved`` (mean score of approved rows),
``observed_default_rate_approved`` (their default rate).

Segments (candidate scores): a category column gives one entry per category (spec
order, plus ``(missing)`` when there are nulls); ``bins`` give labelled intervals
``[a, b)`` (the last one closed, ``[a, b]``, plus ``(out of range)`` / ``(missing)``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    log_loss,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from pipelines.errors import DataValidationError
from pipelines.features import read_features_json, read_split
from pipelines.figures import png
from pipelines.spec import ModelSpec
from pipelines.spec_gates import Metric
from pipelines.training import (
    BASELINE_FILE,
    MODEL_FILE,
    load_baseline,
    load_model,
    score,
    score_baseline,
)

log = logging.getLogger(__name__)

METRICS_JSON = "metrics.json"
SCORES_FILE = "scores.parquet"
PLOTS = ("roc.png", "pr.png", "calibration.png")
ALERT_BUDGET = 0.005
FRAUD_RECALL_AT_FPR = (0.01,)
FRAUD_PRECISION_AT_RECALL = (0.5,)
CALIBRATION_BINS = 10
AMOUNT_COLUMN = "amount"
MISSING_LABEL = "(missing)"
OUT_OF_RANGE_LABEL = "(out of range)"
MODELS = ("candidate", "baseline", "champion")


# ----------------------------------------------------------------------------- metrics


def _key(at: float) -> str:
    return str(float(at))


def _both_classes(y: np.ndarray) -> bool:
    return bool(len(y) and 0 < int(y.sum()) < len(y))


def recall_at_fpr(y: np.ndarray, s: np.ndarray, at: float) -> float | None:
    """Largest TPR among ROC points with FPR <= ``at`` (None with one class)."""
    if not _both_classes(y):
        return None
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    ok = fpr <= at + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def precision_at_recall(y: np.ndarray, s: np.ndarray, at: float) -> float | None:
    """Largest precision among PR points with recall >= ``at`` (None with one class)."""
    if not _both_classes(y):
        return None
    precision, recall, _ = precision_recall_curve(y, s)
    ok = recall >= at - 1e-12
    return float(precision[ok].max()) if ok.any() else 0.0


def ks_statistic(y: np.ndarray, s: np.ndarray) -> float | None:
    """Kolmogorov-Smirnov separation: max(TPR - FPR) (None with one class)."""
    if not _both_classes(y):
        return None
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return float(np.max(tpr - fpr))


def _recent_window_metrics(
    spec: ModelSpec, path: Path, candidate: Path, champion: Path, threshold: float
) -> dict[str, Any] | None:
    """Candidate and champion metrics on the recent labelled window (None without it)."""
    from pipelines.features import retype_categories

    if not path.is_file():
        return None
    frame = retype_categories(pd.read_parquet(path), spec)
    target = spec.data.target
    if target not in frame.columns or len(frame) == 0:
        log.warning("recent window %s has no %r labels: not compared", path, target)
        return None
    y = frame[target].to_numpy().astype(np.int64)
    fprs, recalls = metric_points(spec)
    out: dict[str, Any] = {"path": str(path), "rows": len(frame), "positives": int(y.sum())}
    for name, model_path in (("candidate", candidate), ("champion", champion)):
        s = score(load_model(model_path), frame)
        out[name] = classification_metrics(y, s, threshold, fprs, recalls)
    return out


def classification_metrics(
    y: np.ndarray,
    s: np.ndarray,
    threshold: float,
    recall_fprs: tuple[float, ...] = (),
    precision_recalls: tuple[float, ...] = (),
) -> dict[str, Any]:
    """ROC-AUC, PR-AUC, KS, Brier, log-loss, recall@FPR, precision@recall, rates."""
    y = np.asarray(y, dtype=np.int64)
    s = np.asarray(s, dtype=np.float64)
    n = len(y)
    both = _both_classes(y)
    return {
        "roc_auc": float(roc_auc_score(y, s)) if both else None,
        "pr_auc": float(average_precision_score(y, s)) if both else None,
        "ks": ks_statistic(y, s),
        "brier": float(brier_score_loss(y, s, labels=[0, 1])) if n else None,
        "log_loss": float(log_loss(y, s, labels=[0, 1])) if n else None,
        "recall_at_fpr": {_key(a): recall_at_fpr(y, s, a) for a in recall_fprs},
        "precision_at_recall": {_key(a): precision_at_recall(y, s, a) for a in precision_recalls},
        "positive_rate": float(np.mean(s >= threshold)) if n else None,
        "rows": int(n),
        "positives": int(y.sum()),
    }


def calibration(y: np.ndarray, s: np.ndarray, n_bins: int = CALIBRATION_BINS) -> dict[str, Any]:
    """Reliability curve on quantile bins of the score (bins with equal edges merged)."""
    if len(s) == 0:
        return {"bins": [], "mean_predicted": [], "fraction_positive": [], "counts": []}
    edges = np.unique(np.quantile(s, np.linspace(0.0, 1.0, n_bins + 1)))
    idx = np.searchsorted(edges[1:-1], s, side="right") if len(edges) > 1 else np.zeros(len(s))
    bins, mean_pred, frac_pos, counts = [], [], [], []
    for b in range(max(len(edges) - 1, 1)):
        sel = idx == b
        if not sel.any():
            continue
        low = float(edges[b])
        high = float(edges[b + 1]) if len(edges) > 1 else low
        bins.append([low, high])
        mean_pred.append(float(s[sel].mean()))
        frac_pos.append(float(y[sel].mean()))
        counts.append(int(sel.sum()))
    return {
        "bins": bins,
        "mean_predicted": mean_pred,
        "fraction_positive": frac_pos,
        "counts": counts,
    }


def fraud_business(
    y: np.ndarray, s: np.ndarray, amount: np.ndarray | None, threshold: float
) -> dict[str, Any]:
    """Alert-budget and threshold metrics for a fraud model."""
    n = len(y)
    k = int(math.ceil(ALERT_BUDGET * n)) if n else 0
    order = np.argsort(-s, kind="stable")
    alerted = np.zeros(n, dtype=bool)
    alerted[order[:k]] = True
    flagged = s >= threshold
    negatives = int((y == 0).sum())
    fraud = y == 1
    caught = total = ratio = None
    if amount is not None:
        caught = float(amount[alerted & fraud].sum())
        total = float(amount[fraud].sum())
        ratio = caught / total if total > 0 else None
    return {
        "alert_budget": k,
        "alert_budget_fraction": ALERT_BUDGET,
        "alert_score_cutoff": float(s[order[k - 1]]) if k else None,
        "frauds_caught": int((alerted & fraud).sum()),
        "frauds_total": int(fraud.sum()),
        "fraud_amount_caught": caught,
        "fraud_amount_total": total,
        "fraud_amount_caught_ratio": ratio,
        "alert_rate": float(flagged.mean()) if n else None,
        "false_positive_rate": float((flagged & ~fraud).sum() / negatives) if negatives else None,
    }


def credit_business(y: np.ndarray, s: np.ndarray, threshold: float) -> dict[str, Any]:
    """Approval/decline rates and default rates of the approved applications."""
    n = len(y)
    approved = s < threshold
    n_approved = int(approved.sum())
    approval = n_approved / n if n else None
    return {
        "approval_rate": approval,
        "decline_rate": (n - n_approved) / n if n else None,
        "approved": n_approved,
        "declined": n - n_approved,
        "expected_default_rate_approved": float(s[approved].mean()) if n_approved else None,
        "observed_default_rate_approved": float(y[approved].mean()) if n_approved else None,
    }


# ----------------------------------------------------------------------------- segments


def _edge(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def bin_labels(bins: list[float]) -> list[str]:
    """``[a, b)`` for each bin, the last one closed: ``[a, b]``."""
    labels = [f"[{_edge(a)}, {_edge(b)})" for a, b in zip(bins[:-1], bins[1:], strict=True)]
    labels[-1] = labels[-1][:-1] + "]"
    return labels


def segment_labels(series: pd.Series, bins: list[float] | None) -> tuple[np.ndarray, list[str]]:
    """A label per row and the labels in report order."""
    labels = np.full(len(series), MISSING_LABEL, dtype=object)
    notna = series.notna().to_numpy()
    if bins is not None:
        names = bin_labels(bins)
        values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64)
        idx = np.searchsorted(np.asarray(bins, dtype=np.float64), values, side="right") - 1
        idx = np.where(values == bins[-1], len(names) - 1, idx)
        inside = notna & (idx >= 0) & (idx < len(names))
        labels[notna & ~inside] = OUT_OF_RANGE_LABEL
        labels[inside] = np.asarray(names, dtype=object)[idx[inside]]
        order = names + [x for x in (OUT_OF_RANGE_LABEL, MISSING_LABEL) if x in set(labels)]
        return labels, order
    if isinstance(series.dtype, pd.CategoricalDtype):
        names = [str(c) for c in series.cat.categories]
    else:
        names = [str(v) for v in sorted(series.dropna().unique())]
    labels[notna] = series[notna].astype(str).to_numpy(dtype=object)
    if not notna.all():
        names.append(MISSING_LABEL)
    return labels, names


def segment_metrics(
    spec: ModelSpec, test: pd.DataFrame, y: np.ndarray, s: np.ndarray, threshold: float
) -> dict[str, dict[str, dict[str, Any]]]:
    """Per spec segment and segment value: rows, positives, ROC-AUC, PR-AUC, flag rate."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for seg in spec.segments:
        if seg.column not in test.columns:
            log.warning("segment %s: column %s not in the test table", seg.name, seg.column)
            continue
        labels, order = segment_labels(test[seg.column], seg.bins)
        entries: dict[str, dict[str, Any]] = {}
        for label in order:
            sel = labels == label
            ys, ss = y[sel], s[sel]
            both = _both_classes(ys)
            entries[label] = {
                "rows": int(sel.sum()),
                "positives": int(ys.sum()),
                "roc_auc": float(roc_auc_score(ys, ss)) if both else None,
                "pr_auc": float(average_precision_score(ys, ss)) if both else None,
                "flag_rate": float(np.mean(ss >= threshold)) if len(ss) else None,
            }
        out[seg.name] = entries
    return out


# ----------------------------------------------------------------------------- plots


def _figure() -> tuple[Figure, Any]:
    """A figure without pyplot: no GUI backend, no global state (Agg renders the PNG)."""
    fig = Figure(figsize=(5.5, 5))
    return fig, fig.subplots()


def plots(
    spec: ModelSpec, y: np.ndarray, scores: dict[str, np.ndarray], calib: dict[str, Any]
) -> dict[str, bytes]:
    both = _both_classes(y)
    roc_fig, roc_ax = _figure()
    pr_fig, pr_ax = _figure()
    for name, s in scores.items():
        if not both:
            break
        fpr, tpr, _ = roc_curve(y, s)
        roc_ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y, s):.3f})")
        precision, recall, _ = precision_recall_curve(y, s)
        pr_ax.step(
            recall,
            precision,
            where="post",
            label=f"{name} (AP {average_precision_score(y, s):.3f})",
        )
    roc_ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"{spec.name}: ROC")
    pr_ax.set(xlabel="recall", ylabel="precision", title=f"{spec.name}: precision-recall")
    for ax in (roc_ax, pr_ax):
        if both:
            ax.legend(loc="best", fontsize=8)
        else:
            ax.text(0.5, 0.5, "test rows hold one class only", ha="center")
    cal_fig, cal_ax = _figure()
    cal_ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
    cal_ax.plot(calib["mean_predicted"], calib["fraction_positive"], marker="o", label="candidate")
    cal_ax.set(
        xlabel="mean predicted score (quantile bins)",
        ylabel="observed positive rate",
        title=f"{spec.name}: calibration",
    )
    cal_ax.legend(loc="best", fontsize=8)
    return {"roc.png": png(roc_fig), "pr.png": png(pr_fig), "calibration.png": png(cal_fig)}


# ----------------------------------------------------------------------------- stage


def metric_points(spec: ModelSpec) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The ``at`` values of recall@FPR and precision@recall to report."""
    fprs = {g.at for g in spec.gates.metrics if g.metric == Metric.RECALL_AT_FPR and g.at}
    recalls = {g.at for g in spec.gates.metrics if g.metric == Metric.PRECISION_AT_RECALL and g.at}
    if spec.use_case == "fraud":
        fprs |= set(FRAUD_RECALL_AT_FPR)
        recalls |= set(FRAUD_PRECISION_AT_RECALL)
    return tuple(sorted(float(a) for a in fprs)), tuple(sorted(float(a) for a in recalls))


@dataclass(frozen=True)
class EvaluateInputs:
    """The evaluation's inputs: the ``features`` and ``train`` folders, the champion's
    model and the monitoring job's latest labelled rows (each None when there is none)."""

    features_dir: Path
    train_dir: Path
    champion_model: Path | None = None
    recent_window: Path | None = None


def evaluate(spec: ModelSpec, inputs: EvaluateInputs) -> ScoredTest:
    """Score the test rows with candidate, baseline and champion, and their metrics
    (:data:`pipelines.backends.EVALUATE`).

    With a champion and ``recent_window`` (the monitoring job's latest labelled rows,
    model features and the target), both are also scored on those rows:
    ``metrics["recent_window"]`` holds their metrics, which the champion-relative gates
    then check as well (a retrained model must beat the champion on what the bank saw
    last, not only on its own test split).
    """
    features_dir, train_dir = inputs.features_dir, inputs.train_dir
    champion_model = inputs.champion_model
    meta = read_features_json(features_dir)
    features = list(meta.get("features") or spec.features.names)
    test = read_split(spec, features_dir, "test")
    target = spec.data.target
    y = test[target].to_numpy().astype(np.int64)

    scores: dict[str, np.ndarray] = {
        "candidate": score(load_model(train_dir / MODEL_FILE), test),
        "baseline": score_baseline(load_baseline(train_dir / BASELINE_FILE), test, features),
    }
    if champion_model is not None:
        try:
            scores["champion"] = score(load_model(champion_model), test)
        except DataValidationError as exc:
            raise DataValidationError(f"champion {champion_model}: {exc}") from None
    return score_test(spec, test, y, scores, inputs)


@dataclass(frozen=True)
class ScoredTest:
    """The test rows' ids, labels and every model's scores, with their metrics: what an
    evaluation computation (local or on Dask) hands to the stage's writer
    (:func:`pipelines.stages.evaluate.write_evaluation`; ``marker``: what a backend adds
    to ``result.json``)."""

    ids: np.ndarray
    y: np.ndarray
    scores: dict[str, np.ndarray]
    metrics: dict[str, Any]
    champion_model: Path | None = None
    marker: dict[str, Any] = field(default_factory=dict)


def _business(
    spec: ModelSpec, test: pd.DataFrame, y: np.ndarray, scores: dict[str, np.ndarray]
) -> dict[str, Any]:
    threshold = float(spec.gates.decision_threshold)
    amount: np.ndarray | None = None
    if spec.use_case == "fraud":
        if AMOUNT_COLUMN in test.columns:
            amount = test[AMOUNT_COLUMN].to_numpy(dtype=np.float64)
        else:
            log.warning(
                "no %r column in the test table: fraud amount metrics are null", AMOUNT_COLUMN
            )
    business: dict[str, Any] = {}
    for name in MODELS:
        s = scores.get(name)
        if s is None:
            business[name] = None
        elif spec.use_case == "fraud":
            business[name] = fraud_business(y, s, amount, threshold)
        else:
            business[name] = credit_business(y, s, threshold)
    return business


def score_test(
    spec: ModelSpec,
    test: pd.DataFrame,
    y: np.ndarray,
    scores: dict[str, np.ndarray],
    inputs: EvaluateInputs,
) -> ScoredTest:
    """Every metric of ``metrics.json`` from the test rows' labels and scores, once
    whatever the backend.

    ``test`` needs the id column and the columns the business metrics and segments read
    (``amount``, the segment columns), in the order of ``y`` and the scores.
    """
    threshold = float(spec.gates.decision_threshold)
    if not _both_classes(y):
        log.warning(
            "test rows of %s hold %d positive(s) in %d rows: ranking metrics are null",
            spec.name,
            int(y.sum()),
            len(y),
        )
    fprs, recalls = metric_points(spec)
    metrics: dict[str, Any] = {"threshold": threshold}
    for name in MODELS:
        s = scores.get(name)
        metrics[name] = (
            None if s is None else classification_metrics(y, s, threshold, fprs, recalls)
        )

    champion_model, recent_window = inputs.champion_model, inputs.recent_window
    if champion_model is not None and recent_window is not None:
        metrics["recent_window"] = _recent_window_metrics(
            spec, recent_window, inputs.train_dir / MODEL_FILE, champion_model, threshold
        )
    metrics["business"] = _business(spec, test, y, scores)
    metrics["segments"] = segment_metrics(spec, test, y, scores["candidate"], threshold)
    metrics["calibration"] = calibration(y, scores["candidate"])
    return ScoredTest(
        ids=test[spec.data.id_column].to_numpy(),
        y=y,
        scores=scores,
        metrics=metrics,
        champion_model=champion_model,
    )
