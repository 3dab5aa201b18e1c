"""Where the monitoring job's data comes from.

* **Current** rows: the champion's prediction log (``<serving_dir>/<model>-v<N>/
  predictions``: complete files and the file being written), or a Parquet/CSV file.
* **Feeds** joined by ``request_id``, as they arrive:

  - labels, ``<var>/labels/<model>/`` (Parquet, JSONL or CSV): ``request_id``, ``label``
    (1: fraud / default), optionally ``label_time`` (when it became known; the file's
    modification time otherwise);
  - context, ``<var>/context/<model>/``: ``request_id`` and attributes the model does not
    take but monitoring slices by (region, age band: the protected attributes are kept
    out of the model and joined here for fairness on live decisions).

* **Reference**: the champion's own test split (``<runs>/<model>/<run>/features/
  test.parquet``) with its scores (``evaluate/scores.parquet``), or a file.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.config import Settings
from pipelines.errors import DataValidationError
from pipelines.monitoring import LABEL, LABEL_TIME
from pipelines.runs import safe_run_id
from pipelines.spec import ModelSpec

log = logging.getLogger(__name__)

LOG_COLUMNS = ["request_id", "timestamp", "model_version", "score", "decision", "latency_ms"]
FEED_SUFFIXES = (".parquet", ".jsonl", ".csv")


def deployment_dir(settings: Settings, model: str, version: str) -> Path:
    """The local deployer's folder of one version (see
    :class:`serving.control.deployers.Release`)."""
    return settings.serving_dir / f"{model.replace('_', '-')}-v{version}"


def read_table(path: Path) -> pd.DataFrame:
    """A Parquet, CSV or JSONL file as a frame; a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise DataValidationError(f"{path}: file not found")
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        if path.suffix == ".csv":
            return pd.read_csv(path)
        if path.suffix == ".jsonl":
            return pd.read_json(path, lines=True)
    except (OSError, ValueError) as exc:
        raise DataValidationError(f"{path}: cannot read it: {exc}") from None
    raise DataValidationError(f"{path}: expected a .parquet, .csv or .jsonl file")


def read_log(directory: Path, since: dt.datetime, until: dt.datetime) -> pd.DataFrame:
    """Prediction log rows with ``since <= timestamp < until``, features as columns."""
    from serving.control.rollout_windows import log_rows

    rows = [r for r in log_rows(directory, since.timestamp()) if r["timestamp"] < until]
    if not rows:
        return pd.DataFrame(columns=LOG_COLUMNS)
    base = pd.DataFrame({c: [r.get(c) for r in rows] for c in LOG_COLUMNS})
    features = pd.DataFrame([r.get("features") or {} for r in rows])
    features = features.drop(columns=[c for c in LOG_COLUMNS if c in features.columns])
    frame = pd.concat([base, features], axis=1)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    frame["request_id"] = frame["request_id"].astype(str)
    frame["model_version"] = frame["model_version"].astype(str)
    frame["score"] = pd.to_numeric(frame["score"], errors="coerce")
    frame["latency_ms"] = pd.to_numeric(frame["latency_ms"], errors="coerce")
    return frame.drop_duplicates("request_id", keep="last").reset_index(drop=True)


def read_feed(directory: Path) -> pd.DataFrame:
    """Every file of a feed folder, with ``request_id`` (text) and ``_file_time`` (UTC)."""
    folder = Path(directory)
    parts = []
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.name.startswith(".") or path.suffix not in FEED_SUFFIXES:
                continue
            part = read_table(path)
            if "request_id" not in part.columns:
                raise DataValidationError(f"feed file {path}: no request_id column")
            mtime = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC)
            part["_file_time"] = pd.Timestamp(mtime)
            parts.append(part)
    if not parts:
        return pd.DataFrame(columns=["request_id", "_file_time"])
    frame = pd.concat(parts, ignore_index=True)
    frame["request_id"] = frame["request_id"].astype(str)
    return frame.drop_duplicates("request_id", keep="last")


def join_feeds(current: pd.DataFrame, labels: pd.DataFrame, context: pd.DataFrame) -> pd.DataFrame:
    """Current rows with ``label``/``label_time`` and the context columns joined."""
    out = current.copy()
    if len(labels) and LABEL not in labels.columns:
        raise DataValidationError("label feed: no 'label' column")
    if len(labels):
        when = labels[LABEL_TIME] if LABEL_TIME in labels.columns else labels["_file_time"]
        feed = pd.DataFrame({
            "request_id": labels["request_id"],
            LABEL: pd.to_numeric(labels[LABEL], errors="coerce"),
            LABEL_TIME: pd.to_datetime(when, utc=True),
        })  # fmt: skip
        out = out.drop(columns=[LABEL, LABEL_TIME], errors="ignore").merge(
            feed, on="request_id", how="left"
        )
    elif LABEL not in out.columns:
        out[LABEL] = np.nan
        out[LABEL_TIME] = pd.NaT
    if len(context):
        extra = [c for c in context.columns if c not in out.columns and c != "_file_time"]
        out = out.merge(context[["request_id", *extra]], on="request_id", how="left")
    return out


def current_from_file(path: Path, spec: ModelSpec) -> pd.DataFrame:
    """A current window from a file: the spec's target and label time become the label."""
    frame = read_table(path)
    if spec.data.target in frame.columns and LABEL not in frame.columns:
        frame[LABEL] = pd.to_numeric(frame[spec.data.target], errors="coerce")
        label_time = spec.data.label_time_column
        if label_time and label_time in frame.columns:
            frame[LABEL_TIME] = pd.to_datetime(frame[label_time], utc=True)
        elif spec.data.time_column and spec.data.time_column in frame.columns:
            frame[LABEL_TIME] = pd.to_datetime(frame[spec.data.time_column], utc=True)
    if "timestamp" not in frame.columns and spec.data.time_column in frame.columns:
        frame["timestamp"] = pd.to_datetime(frame[spec.data.time_column], utc=True)
    return frame


def champion_run_dir(settings: Settings, spec: ModelSpec, lifecycle_run_id: str) -> Path:
    return settings.runs_dir / spec.name / safe_run_id(lifecycle_run_id)


def reference_from_run(spec: ModelSpec, run_dir: Path) -> pd.DataFrame:
    """The run's test split with its candidate's scores (column ``score``)."""
    from pipelines.evaluation import SCORES_FILE
    from pipelines.features import read_split

    test = read_split(spec, run_dir / "features", "test")
    scores_path = run_dir / "evaluate" / SCORES_FILE
    if scores_path.is_file():
        scores = pd.read_parquet(scores_path, columns=["id", "score"])
        test = test.merge(
            scores.rename(columns={"id": spec.data.id_column}), on=spec.data.id_column, how="left"
        )
    return test
