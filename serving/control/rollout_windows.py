"""What a rollout step looks at: the live observations of champion and challenger.

* each model server's prediction log (scores, server latency), read live: complete files
  and the JSONL file being written (complete lines only), rows since the step began;
* the gateway's Prometheus counters (requests by route and status: the challenger's
  5xx answers and the failovers they caused), as differences from a snapshot taken when
  the step began;
* the gateway's shadow log: champion and challenger scores of the same mirrored requests,
  and the shadow's failures;
* the label feed, once labels arrive (chargebacks, defaults): files in
  ``<GOVML_VAR_DIR>/labels/<model>/`` (Parquet or JSONL) with ``request_id`` (as in
  the prediction log) and ``label`` (1: fraud / default), joined to the logged rows.
  The amount at stake is the logged feature ``amount``.

And whether an endpoint answers at all (:func:`endpoint_problem`, its ready probe).
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from pipelines.rollout import Window
from serving.prediction_log_files import complete_files, is_explanation, read_records
from serving.prediction_log_records import FILE_PREFIX


def _live_lines(directory: Path) -> Iterator[dict[str, Any]]:
    """Records of the JSONL file(s) still being written (complete lines only)."""
    for tmp in sorted(directory.glob(f".{FILE_PREFIX}*.jsonl.tmp")):
        try:
            data = tmp.read_bytes()
        except OSError:  # finished and renamed meanwhile: read as a complete file
            continue
        for line in data.split(b"\n")[:-1]:  # the last piece may be half a line
            try:
                row = json.loads(line)
            except ValueError:
                continue
            row["timestamp"] = datetime.fromisoformat(row["timestamp"])
            yield row


def log_rows(directory: str | Path, since: float) -> list[dict[str, Any]]:
    """Prediction log rows with a timestamp at or after ``since`` (epoch seconds).

    Rows of ``:explain`` answers are left out: windows compare predictions, and an
    explanation sent with its prediction's request id must not replace it."""
    folder = Path(directory)
    if not folder.is_dir():
        return []
    rows: list[dict[str, Any]] = []
    for path in complete_files(folder):
        if path.stat().st_mtime < since:  # finished before the window began
            continue
        rows.extend(r for r in read_records(path) if r["timestamp"].timestamp() >= since)
    rows.extend(r for r in _live_lines(folder) if r["timestamp"].timestamp() >= since)
    return [r for r in rows if not is_explanation(r)]  # predictions only (not :explain)


def gateway_counts(metrics_text: str, model: str) -> dict[str, float]:
    """``route:code`` → requests, from the gateway's ``/metrics`` text."""
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name != "govml_gateway_requests":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels.get("model") == model:
                key = f"{sample.labels['route']}:{sample.labels['code']}"
                counts[key] = counts.get(key, 0.0) + sample.value
    return counts


def challenger_errors(now: dict[str, float], before: dict[str, float]) -> tuple[int, int]:
    """(answers the challenger owed, how many of them failed) between two snapshots.

    Every request routed to the challenger ends as ``challenger:<code>`` or, when it
    failed (unreachable or 5xx), as ``failover:<code>`` answered by the champion.
    """
    delta = {k: now.get(k, 0.0) - before.get(k, 0.0) for k in set(now) | set(before)}
    owed = sum(v for k, v in delta.items() if k.startswith(("challenger:", "failover:")))
    failed = sum(
        v
        for k, v in delta.items()
        if k.startswith("failover:")
        or (k.startswith("challenger:") and k.split(":", 1)[1].startswith("5"))
    )
    return int(round(owed)), int(round(failed))


def shadow_pairs(
    shadow_log: str | Path, since: float
) -> tuple[np.ndarray, np.ndarray, int, int, np.ndarray]:
    """(champion scores, shadow scores, shadow copies, failed copies, shadow latencies ms)
    of the mirrored requests since ``since``."""
    primary: list[float] = []
    shadow: list[float] = []
    latencies: list[float] = []
    copies = failed = 0
    path = Path(shadow_log)
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("time", 0) < since:
                continue
            copies += 1
            if record.get("shadow_outcome") != "ok":
                failed += 1
                continue
            latencies.append(float(record.get("shadow_ms", 0.0)))
            a, b = record.get("primary_scores"), record.get("shadow_scores")
            if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
                primary.extend(a)
                shadow.extend(b)
    return np.asarray(primary), np.asarray(shadow), copies, failed, np.asarray(latencies)


def read_labels(directory: str | Path) -> dict[str, float]:
    """``request_id`` → label from every Parquet/JSONL file of a label feed folder."""
    folder = Path(directory)
    labels: dict[str, float] = {}
    if not folder.is_dir():
        return labels
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        try:
            if path.suffix == ".parquet":
                import pyarrow.parquet as pq

                table = pq.read_table(path, columns=["request_id", "label"]).to_pydict()
                pairs = zip(table["request_id"], table["label"], strict=True)
            elif path.suffix == ".jsonl":
                records = [json.loads(line) for line in path.read_text().splitlines() if line]
                pairs = ((r["request_id"], r["label"]) for r in records)
            else:
                continue
            for request_id, label in pairs:
                if request_id is not None and label is not None:
                    labels[str(request_id)] = float(label)
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"label feed {path}: {exc}") from None
    return labels


def window_of(
    rows: list[dict[str, Any]],
    requests: int | None = None,
    errors: int = 0,
    labels: dict[str, float] | None = None,
) -> Window:
    """A :class:`~pipelines.rollout.Window` from prediction log rows (and labels so far)."""
    scored = [r for r in rows if r.get("score") is not None]
    scores = np.asarray([r["score"] for r in scored], np.float64)
    latencies = np.asarray(
        [r["latency_ms"] for r in rows if r.get("latency_ms") is not None], np.float64
    )
    count = len(rows) if requests is None else max(requests, errors)
    known = None
    amounts = None
    if labels:
        known = np.asarray([labels.get(str(r.get("request_id")), np.nan) for r in scored])
        amounts = np.asarray([logged_feature(r, "amount") for r in scored], np.float64)
    return Window(
        requests=count,
        errors=min(errors, count),
        latencies_ms=latencies,
        scores=scores,
        labels=known,
        amounts=amounts,
    )


def logged_feature(row: Mapping[str, Any], name: str | None) -> float:
    """A prediction log row's feature ``name`` as a number; NaN when missing or not one."""
    try:
        return float((row.get("features") or {}).get(name))
    except (TypeError, ValueError):
        return float("nan")


def endpoint_problem(
    model: str, endpoint: Mapping[str, Any], timeout: float = 3.0, attempts: int = 2
) -> str | None:
    """None when the endpoint answers its ready probe, else why it does not.

    The probe is KServe's V2 model readiness, ``GET <url>/v2/models/<model>/ready``
    (200: loaded and serving; open to probes without a token), the same the deployers
    wait for. A recorded endpoint can be dead (its server stopped, its port reused by
    something else): a rollout never routes traffic to one that does not answer.
    """
    url = f"{str(endpoint.get('url') or '').rstrip('/')}/v2/models/{model}/ready"
    why = "no URL recorded"
    for attempt in range(attempts):
        if not endpoint.get("url"):
            break
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310
                if resp.status == 200:
                    return None
                why = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            why = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, TimeoutError | socket.timeout):
                why = f"no answer within {timeout:g} s"
            elif isinstance(reason, ConnectionRefusedError):
                why = "connection refused"
            else:
                why = str(reason).strip() or type(reason).__name__
        if attempt + 1 < attempts:
            time.sleep(0.5)
    return why
