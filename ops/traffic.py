"""Replay a data set as production traffic: the prediction log and the feeds it would leave.

For demos, tests and drills (a new fraud pattern, a shift in one region): each row of a
generated or historical frame is scored by a model version as the model server would
score it, and written where the real server and the bank's feeds write:

* the prediction log (``<serving_dir>/<model>-v<N>/predictions``, the server's own
  :class:`serving.prediction_log.PredictionLog`): request id, time, version, model
  features, score, decision; no latency (nothing was served: technical metrics come
  only from real servers);
* the label feed (``<var>/labels/<model>/``): the target with the time it would have
  become known (fraud: the chargeback time; legitimate rows after ``label_delay``;
  credit: ``label_delay`` after the application);
* the context feed (``<var>/context/<model>/``): the protected attributes and segment
  columns the model does not take.

Times are shifted so the last row lands at ``end``.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ops.monitoring_data import deployment_dir
from pipelines.config import Settings
from pipelines.features import compute_aggregates, passthrough_columns, retype_categories
from pipelines.spec import ModelSpec


def _with_aggregates(
    spec: ModelSpec, frame: pd.DataFrame, history: pd.DataFrame | None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the rows in time order, the rows with their entity aggregates); ``history``, the
    rows before, warms the aggregates up."""
    time_col = spec.data.time_column
    frame = retype_categories(frame.sort_values(time_col).reset_index(drop=True), spec)
    if history is not None and len(history):
        past = retype_categories(history.sort_values(time_col).reset_index(drop=True), spec)
        both = pd.concat([past, frame], ignore_index=True)
        aggregates = compute_aggregates(spec.features.aggregates, both, time_col)
        aggregates = aggregates.iloc[len(past) :].reset_index(drop=True)
    else:
        aggregates = compute_aggregates(spec.features.aggregates, frame, time_col)
    return frame, pd.concat([frame, aggregates], axis=1)


def _feeds(
    spec: ModelSpec,
    frame: pd.DataFrame,
    request_ids: list[str],
    label_time: pd.Series,
    shift: pd.Timedelta,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The label feed (each label known ``label_time``, or at the data's own label time
    moved like the requests) and the context feed of the replayed requests."""
    target = frame[spec.data.target].to_numpy()
    label_col = spec.data.label_time_column
    if label_col and label_col in frame.columns:
        known = pd.to_datetime(frame[label_col], utc=True)
        label_time = label_time.where(known.isna(), known + shift)
    labels = pd.DataFrame(
        {"request_id": request_ids, "label": target.astype(np.int64), "label_time": label_time}
    )
    context_cols = [c for c in passthrough_columns(spec) if c in frame.columns and c != label_col]
    context = pd.DataFrame({"request_id": request_ids})
    for column in context_cols:
        context[column] = frame[column].astype(str).where(frame[column].notna(), None).to_numpy()
    return labels, context


def _log_predictions(
    spec: ModelSpec,
    version: str,
    folder: Path,
    features: pd.DataFrame,
    scores: np.ndarray,
    request_ids: list[str],
    when: pd.Series,
) -> np.ndarray:
    """Write the replayed requests to the prediction log in ``folder``, as the model
    server would have; which of them the model flagged."""
    from serving.prediction_log import PredictionLog
    from serving.prediction_log_files import LogOptions

    flagged = scores >= spec.gates.decision_threshold
    adverse, favourable = ("flag", "pass") if spec.use_case == "fraud" else ("decline", "approve")
    names = spec.features.names
    personal = [c for c in spec.personal_data_columns if c in names]  # ids are not features
    log = PredictionLog(folder, "jsonl", LogOptions(personal_fields=personal))
    records = features[names].astype(object).where(features[names].notna(), None)
    for i, row in enumerate(records.to_dict(orient="records")):
        log.log(
            {
                "request_id": request_ids[i],
                "timestamp": when.iloc[i].to_pydatetime(),
                "model_name": spec.name,
                "model_version": str(version),
                "features": row,
                "score": float(scores[i]),
                "decision": adverse if flagged[i] else favourable,
                "client": "replay",
            }
        )
    log.close()
    return flagged


def replay_traffic(
    spec: ModelSpec,
    frame: pd.DataFrame,
    model_path: Path,
    version: str,
    settings: Settings,
    *,
    end: dt.datetime,
    label_delay: dt.timedelta = dt.timedelta(days=7),
    history: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Score ``frame`` with the model and write the log and the feeds; a summary.

    ``history`` (the rows before ``frame``) warms the entity aggregates up, as the
    online feature state would be: without it the first days' 7- and 30-day aggregates
    see only part of their window.
    """
    from pipelines.training import load_model, score

    time_col = spec.data.time_column
    frame, features = _with_aggregates(spec, frame, history)
    scores = score(load_model(Path(model_path)), features)
    times = pd.to_datetime(frame[time_col], utc=True)
    shift = pd.Timestamp(end) - times.max()
    when = times + shift
    request_ids = [f"{spec.name}-{v}" for v in frame[spec.data.id_column]]

    folder = deployment_dir(settings, spec.name, version) / "predictions"
    flagged = _log_predictions(spec, version, folder, features, scores, request_ids, when)

    target = frame[spec.data.target].to_numpy()
    labels, context = _feeds(spec, frame, request_ids, when + label_delay, shift)
    stamp = pd.Timestamp(end).strftime("%Y%m%dT%H%M%S")
    for kind, table in (("labels", labels), ("context", context)):
        out = settings.var_dir / kind / spec.name
        out.mkdir(parents=True, exist_ok=True)
        table.to_parquet(out / f"replay-{version}-{stamp}.parquet", index=False)
    return {
        "rows": len(frame),
        "log_dir": str(folder),
        "flagged": int(flagged.sum()),
        "positives": int(target.sum()),
        "first": when.min().isoformat(),
        "last": when.max().isoformat(),
    }
