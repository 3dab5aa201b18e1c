"""What an A/B analysis reads: the gateway's A/B logs joined to the prediction logs and
the label feed.

* ``<abtest dir>/<test id>/assignments.jsonl`` (the gateway): each scoring request of an
  enrolled entity with its arm (intention to treat: a treatment request answered by the
  champion on failover stays in the treatment arm) and its request id;
* ``enrolments.jsonl`` (the gateway): the enrolled entities per arm, for the
  sample-ratio check;
* the champion's and the challenger's prediction logs (read live): one row per scored
  row, ``request_id`` ``<request id>:<row>``, with the score and the features;
* the label feed ``<GOVML_VAR_DIR>/labels/<model>/`` (``request_id``, ``label``).

The result is one table with a row per scored row of an enrolled entity.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.spec import ModelSpec
from pipelines.spec_abtest import AB_AMOUNT_FEATURE
from pipelines.spec_features import Segment

COLUMNS = ["request_id", "entity", "arm", "route", "score", "label", "amount", "covariate"]


@dataclass
class Observations:
    rows: pd.DataFrame  # one row per scored row (COLUMNS + one column per A/B segment)
    enrolled: dict[str, int]  # entities enrolled per arm (the gateway's record)
    requests: dict[str, int]  # requests logged per arm
    unmatched: int  # logged requests whose prediction rows were not found (yet)
    failed: int  # requests answered with an error
    notes: list[str] = field(default_factory=list)


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Records of a JSONL file; a line cut by a crash is skipped."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            yield record


def enrolled(folder: Path) -> dict[str, int]:
    """Entities enrolled per arm, from the gateway's ``enrolments.jsonl``."""
    counts = {"control": 0, "treatment": 0}
    seen: set[str] = set()
    for record in _jsonl(folder / "enrolments.jsonl"):
        entity, arm = record.get("entity"), record.get("arm")
        if arm in counts and entity not in seen:
            seen.add(str(entity))
            counts[arm] += 1
    return counts


def assignments(folder: Path) -> pd.DataFrame:
    """The logged requests of enrolled entities: request_id, entity, arm, route, status."""
    records = [
        (
            str(r["request_id"]),
            str(r["entity"]),
            r["arm"],
            r.get("route", r["arm"]),
            int(r.get("status") or 0),
        )
        for r in _jsonl(folder / "assignments.jsonl")
        if r.get("arm") in ("control", "treatment") and r.get("request_id") and r.get("entity")
    ]
    return pd.DataFrame(records, columns=["request_id", "entity", "arm", "route", "status"])


def segment_label(segment: Segment, value: Any) -> str | None:
    """The segment value of a feature value: its category, or its bin ``[a, b)``."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if segment.bins is None:
        return str(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    edges = segment.bins
    if number < edges[0] or number > edges[-1]:
        return f"outside [{edges[0]:g}, {edges[-1]:g}]"
    position = min(int(np.searchsorted(edges, number, side="right")) - 1, len(edges) - 2)
    return f"[{edges[position]:g}, {edges[position + 1]:g})"


def collect(
    spec: ModelSpec,
    test_folder: Path,
    prediction_folders: list[Path],
    labels: dict[str, float],
    since: float,
) -> Observations:
    """Join the test's assignments to prediction rows and labels (see the module doc)."""
    from serving.control.rollout_windows import log_rows, logged_feature

    ab = spec.abtest
    assert ab is not None
    requests = assignments(test_folder)
    failed = int((requests["status"] >= 400).sum())
    requests = requests[(requests["status"] > 0) & (requests["status"] < 400)]
    by_id = {rid: i for i, rid in enumerate(requests["request_id"])}
    amount_feature = ab.amount_feature or AB_AMOUNT_FEATURE[spec.use_case]
    segments = {s.name: s for s in spec.segments if s.name in ab.segments}
    out: list[tuple] = []
    found: set[int] = set()
    for folder in prediction_folders:
        for row in log_rows(folder, since):
            row_id = str(row.get("request_id") or "")
            index = by_id.get(row_id.rsplit(":", 1)[0])
            if index is None or row.get("score") is None:
                continue
            found.add(index)
            features = row.get("features") or {}
            out.append(
                (
                    row_id,
                    index,
                    float(row["score"]),
                    labels.get(row_id, np.nan),
                    logged_feature(row, amount_feature),
                    logged_feature(row, ab.cuped_covariate) if ab.cuped_covariate else np.nan,
                    *(segment_label(s, features.get(s.column)) for s in segments.values()),
                )
            )
    frame = pd.DataFrame(
        out,
        columns=["request_id", "index", "score", "label", "amount", "covariate", *segments],
    )
    picked = requests.iloc[frame["index"].to_numpy()] if len(frame) else requests.iloc[:0]
    frame["entity"] = picked["entity"].to_numpy()
    frame["arm"] = picked["arm"].to_numpy()
    frame["route"] = picked["route"].to_numpy()
    frame = frame.drop(columns="index")[COLUMNS + list(segments)]
    return Observations(
        rows=frame,
        enrolled=enrolled(test_folder),
        requests={arm: int((requests["arm"] == arm).sum()) for arm in ("control", "treatment")},
        unmatched=len(requests) - len(found),
        failed=failed,
    )
