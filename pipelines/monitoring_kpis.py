"""Live monitoring: business KPIs and technical metrics per time window.

On the observations frame of :mod:`pipelines.monitoring` (one row per scored transaction
or application, labels delayed): the use case's business KPIs per window
(:func:`business_kpis`), latency percentiles and throughput per window
(:func:`technical_metrics`), and the server error rates read off the model server's
Prometheus text (:func:`server_error_rates`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np
import pandas as pd

from pipelines.errors import DataValidationError
from pipelines.monitoring import (
    DECISION,
    LABEL,
    LABEL_TIME,
    TIMESTAMP,
    check_use_case,
    column_numbers,
    decisions,
    known_labels,
    ratio,
    require_columns,
    time_windows,
)

LATENCY = "latency_ms"
SCORING_KINDS = ("predict", "infer", "explain")
"""Request kinds of ``govml_requests_total`` that are scoring traffic (see serving/http.py)."""
REQUESTS_SAMPLE = "govml_requests_total"

KPI_COLUMNS = {
    "fraud": [
        "window_start", "window_end", "n", "n_labelled", "adverse_rate", "alert_volume",
        "false_positive_rate", "precision", "frauds_caught", "frauds_missed",
        "fraud_amount_caught", "fraud_amount_missed", "caught_ratio",
    ],
    "credit": [
        "window_start", "window_end", "n", "n_labelled", "adverse_rate", "approvals",
        "approval_rate", "false_positive_rate", "precision", "default_rate_approved",
    ],
}  # fmt: skip
TECHNICAL_COLUMNS = [
    "window_start", "window_end", "requests", "throughput_per_s", "latency_p50_ms",
    "latency_p95_ms", "latency_p99_ms",
]  # fmt: skip


# ---------------------------------------------------------------------------------------
# business KPIs


def business_kpis(
    obs: pd.DataFrame,
    *,
    window: str = "1D",
    use_case: str,
    amount_column: str | None = "amount",
    as_of: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """Business KPIs of the live decisions per window.

    Both use cases: ``n``, ``n_labelled`` (labels known at ``as_of``), ``adverse_rate``
    (share flagged / declined), ``false_positive_rate`` (labelled good rows given the
    adverse decision, over labelled good rows) and ``precision`` (labelled adverse rows
    that are bad, over labelled adverse rows). Fraud: ``alert_volume`` (flags),
    ``frauds_caught`` / ``frauds_missed`` (labelled frauds flagged / passed) and their
    ``amount_column`` sums ``fraud_amount_caught`` / ``fraud_amount_missed`` (a missing
    amount counts 0; NaN without an amount column), ``caught_ratio`` = caught amount
    over the frauds' total. Credit: ``approvals``, ``approval_rate`` and
    ``default_rate_approved`` (labelled approved applications that defaulted; the
    amount column is not used). A ratio with a zero denominator is NaN. Every row needs
    one of the use case's two decisions (see :data:`ADVERSE`, :data:`FAVOURABLE`).
    """
    check_use_case(use_case)
    amount_needed = use_case == "fraud" and amount_column is not None
    required = [TIMESTAMP, DECISION, LABEL, LABEL_TIME]
    if amount_needed:
        required.append(str(amount_column))
    require_columns(obs, required, "business_kpis")
    windows = time_windows(obs[TIMESTAMP], window)
    adverse = decisions(obs, use_case)
    y, resolved = known_labels(obs, as_of)
    w, size = windows.codes, len(windows)

    def count(mask: np.ndarray) -> np.ndarray:
        return np.bincount(w[mask], minlength=size).astype(np.int64)

    known = ~np.isnan(y)
    bad, good = known & (y == 1), known & (y == 0)
    n, n_adverse = count(np.ones(len(w), dtype=bool)), count(adverse)
    table: dict[str, Any] = {
        "window_start": windows.starts,
        "window_end": windows.ends,
        "n": n,
        "n_labelled": count(known),
        "adverse_rate": ratio(n_adverse, n),
        "false_positive_rate": ratio(count(good & adverse), count(good)),
        "precision": ratio(count(bad & adverse), count(known & adverse)),
    }
    if use_case == "fraud":
        amounts = column_numbers(obs, str(amount_column)) if amount_needed else None
        table.update(_fraud_kpis(count, bad, adverse, n_adverse, amounts, w))
    else:
        approved = ~adverse
        table["approvals"] = count(approved)
        table["approval_rate"] = ratio(table["approvals"], n)
        table["default_rate_approved"] = ratio(count(bad & approved), count(known & approved))
    frame = pd.DataFrame(table)[KPI_COLUMNS[use_case]]
    frame.attrs["as_of"] = resolved
    return frame


def _fraud_kpis(
    count: Callable[[np.ndarray], np.ndarray],
    bad: np.ndarray,
    adverse: np.ndarray,
    n_adverse: np.ndarray,
    amounts: np.ndarray | None,
    w: np.ndarray,
) -> dict[str, np.ndarray]:
    """Alerts, frauds caught and missed, and their amounts (NaN without amounts)."""
    size = len(n_adverse)
    if amounts is not None:
        amount = np.nan_to_num(amounts, nan=0.0)
        caught = np.bincount(w, weights=np.where(bad & adverse, amount, 0.0), minlength=size)
        missed = np.bincount(w, weights=np.where(bad & ~adverse, amount, 0.0), minlength=size)
    else:
        caught = missed = np.full(size, np.nan)
    return {
        "alert_volume": n_adverse,
        "frauds_caught": count(bad & adverse),
        "frauds_missed": count(bad & ~adverse),
        "fraud_amount_caught": caught,
        "fraud_amount_missed": missed,
        "caught_ratio": ratio(caught, caught + missed),
    }


# ---------------------------------------------------------------------------------------
# technical metrics


def technical_metrics(obs: pd.DataFrame, *, window: str = "1h") -> pd.DataFrame:
    """Requests, throughput and latency percentiles per window.

    ``throughput_per_s`` is requests over the window's full length (a first or last
    window the data covers only in part reads low). Latency percentiles are numpy's
    (linear interpolation) over the rows with a latency; NaN in a window without any.
    """
    require_columns(obs, [TIMESTAMP, LATENCY], "technical_metrics")
    windows = time_windows(obs[TIMESTAMP], window)
    latency = column_numbers(obs, LATENCY)
    size = len(windows)
    requests = np.bincount(windows.codes, minlength=size).astype(np.int64)
    has = ~np.isnan(latency)
    p50, p95, p99 = _grouped_percentiles(windows.codes[has], latency[has], size, (50, 95, 99))
    return pd.DataFrame(
        {
            "window_start": windows.starts,
            "window_end": windows.ends,
            "requests": requests,
            "throughput_per_s": ratio(requests, windows.seconds),
            "latency_p50_ms": p50,
            "latency_p95_ms": p95,
            "latency_p99_ms": p99,
        }
    )[TECHNICAL_COLUMNS]


def _grouped_percentiles(
    g: np.ndarray, v: np.ndarray, n_groups: int, percentiles: Sequence[float]
) -> list[np.ndarray]:
    """``np.percentile(v[g == k], q)`` for every group k and q (linear method), NaN if empty."""
    order = np.lexsort((v, g))
    v = v[order]
    counts = np.bincount(g, minlength=n_groups)
    present = np.flatnonzero(counts)
    size = counts[present]
    offset = (np.cumsum(counts) - counts)[present]
    out = []
    for q in percentiles:
        virtual = (size - 1) * (np.float64(q) / 100.0)  # as numpy's "linear" method
        below = np.floor(virtual)
        above = np.minimum(below + 1, size - 1)
        gamma = virtual - below
        a = v[offset + below.astype(np.int64)]
        b = v[offset + above.astype(np.int64)]
        diff = b - a
        value = np.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)
        result = np.full(n_groups, np.nan)
        result[present] = value
        out.append(result)
    return out


def server_error_rates(
    metrics_text: str,
    *,
    previous: str | None = None,
    kinds: Collection[str] | None = SCORING_KINDS,
) -> dict[str, Any]:
    """Request counts and error rates from the model server's ``/metrics`` text.

    Reads ``govml_requests_total{kind, code}`` (serving/http.py). ``kinds`` keeps the
    scoring traffic by default (health probes and scrapes would dilute the rates;
    ``None`` keeps every kind). With ``previous`` (an earlier scrape of the same
    server) the counts are the increase between the two, a counter that went down
    (the server restarted) counting from zero, as Prometheus' ``increase()`` does.
    Returns ``requests``, ``by_code``, ``by_kind``, ``client_errors`` (4xx),
    ``server_errors`` (5xx), their rates and ``error_rate`` (4xx + 5xx over all
    requests); rates are None without requests.
    """
    now = _request_counts(metrics_text)
    if previous is not None:
        before = _request_counts(previous)
        now = {
            key: value - before.get(key, 0.0) if value >= before.get(key, 0.0) else value
            for key, value in now.items()
        }
    wanted = None if kinds is None else set(kinds)
    by_code: dict[str, float] = {}
    by_kind: dict[str, float] = {}
    for (kind, code), value in now.items():
        if wanted is None or kind in wanted:
            by_code[code] = by_code.get(code, 0.0) + value
            by_kind[kind] = by_kind.get(kind, 0.0) + value
    total = sum(by_code.values())
    client = sum(v for c, v in by_code.items() if c.startswith("4"))
    server = sum(v for c, v in by_code.items() if c.startswith("5"))

    def rate(value: float) -> float | None:
        return value / total if total > 0 else None

    return {
        "requests": int(round(total)),
        "by_code": {c: int(round(v)) for c, v in sorted(by_code.items())},
        "by_kind": {k: int(round(v)) for k, v in sorted(by_kind.items())},
        "client_errors": int(round(client)),
        "server_errors": int(round(server)),
        "client_error_rate": rate(client),
        "server_error_rate": rate(server),
        "error_rate": rate(client + server),
        "kinds": None if wanted is None else sorted(wanted),
    }


def _request_counts(metrics_text: str) -> dict[tuple[str, str], float]:
    """``(kind, code)`` → requests of ``govml_requests_total`` in an exposition text."""
    from prometheus_client.parser import text_string_to_metric_families

    counts: dict[tuple[str, str], float] = {}
    found = False
    try:
        for family in text_string_to_metric_families(metrics_text):
            if family.name not in ("govml_requests", REQUESTS_SAMPLE):
                continue
            found = True
            for sample in family.samples:
                if sample.name != REQUESTS_SAMPLE:
                    continue  # _created
                key = (sample.labels.get("kind", ""), sample.labels.get("code", ""))
                counts[key] = counts.get(key, 0.0) + float(sample.value)
    except ValueError as exc:
        raise DataValidationError(f"metrics: not Prometheus exposition text ({exc})") from None
    if not found:
        raise DataValidationError(
            f"metrics: no {REQUESTS_SAMPLE} in the text (is this the model server's /metrics?)"
        )
    return {k: v for k, v in counts.items() if math.isfinite(v)}
