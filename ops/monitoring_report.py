"""The monitoring report: ``report.json`` for machines, ``report.html`` (plots) for people.

Plots (PNG, embedded): PSI per feature; PSI heat-map by segment; performance over time
(ROC-AUC, PR-AUC, recall at FPR, label coverage); business KPIs over time; fairness on
live decisions over time; latency percentiles per hour; the market indicator series
with its change points.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.figures import img_tag, png_base64
from pipelines.formatting import html_grid, html_pairs
from pipelines.spec import ModelSpec

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
.alarm{background:#fdd}.warn{background:#ffe9b3}.ok{background:#dfd}
img{max-width:100%}
"""


def _json_ready(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, pd.DataFrame):
        return _json_ready(obj.to_dict(orient="records"))
    if isinstance(obj, (pd.Timestamp, np.datetime64)):
        return None if pd.isna(obj) else pd.Timestamp(obj).isoformat()
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is pd.NaT:
        return None
    return obj


def _embedded(fig: Any) -> str:
    """A pyplot figure as an ``<img>`` element (the figure is closed)."""
    import matplotlib.pyplot as plt

    data = png_base64(fig, dpi=90, bbox_inches="tight", software_tag=True)
    plt.close(fig)
    return img_tag(data, "plot")


def _plt():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def psi_bars(table: pd.DataFrame, warn: float, alarm: float) -> str:
    plt = _plt()
    whole = table[table["segment"] == "all"].sort_values("psi")
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(whole) + 1.2))
    colors = [
        "#c0392b" if s == "alarm" else "#e67e22" if s == "warn" else "#5b8def"
        for s in whole["severity"]
    ]
    ax.barh(whole["feature"], whole["psi"].fillna(0), color=colors)
    ax.axvline(warn, ls="--", color="#e67e22", label=f"warn {warn}")
    ax.axvline(alarm, ls="--", color="#c0392b", label=f"alarm {alarm}")
    ax.set_xlabel("PSI (whole population)")
    ax.legend(loc="lower right")
    return _embedded(fig)


def psi_heatmap(table: pd.DataFrame) -> str:
    plt = _plt()
    seg = table[table["segment"] != "all"].copy()
    if seg.empty:
        return "<p>No segments.</p>"
    seg["where"] = seg["segment"] + "=" + seg["value"]
    grid = seg.pivot_table(index="where", columns="feature", values="psi", aggfunc="first")
    fig, ax = plt.subplots(figsize=(0.6 * grid.shape[1] + 3, 0.3 * grid.shape[0] + 1.5))
    image = ax.imshow(grid.to_numpy(dtype=float), aspect="auto", cmap="Reds", vmin=0, vmax=0.5)
    ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=60, ha="right")
    ax.set_yticks(range(grid.shape[0]), grid.index)
    fig.colorbar(image, ax=ax, label="PSI (grey: skipped)")
    ax.set_facecolor("#ddd")
    return _embedded(fig)


def timeline(frame: pd.DataFrame, columns: list[str], title: str, ylabel: str = "") -> str:
    plt = _plt()
    cols = [c for c in columns if c in frame.columns and frame[c].notna().any()]
    if frame.empty or not cols:
        return f"<p>{html.escape(title)}: no data yet.</p>"
    fig, ax = plt.subplots(figsize=(8, 3))
    x = pd.to_datetime(frame["window_start"])
    for c in cols:
        ax.plot(x, frame[c].astype(float), marker="o", ms=3, label=c)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    fig.autofmt_xdate()
    return _embedded(fig)


def market_plot(frame: pd.DataFrame, market: dict[str, Any]) -> str:
    plt = _plt()
    columns = [c for c in frame.columns if c not in ("time", "equity_index")]
    fig, axes = plt.subplots(len(columns), 1, figsize=(8, 1.6 * len(columns)), sharex=True)
    axes = np.atleast_1d(axes)
    times = pd.to_datetime(frame["time"])
    changes = market.get("change_points", [])
    for ax, col in zip(axes, columns, strict=True):
        ax.plot(times, frame[col], lw=0.8)
        ax.set_ylabel(col, fontsize=7)
        for cp in changes:
            if cp.get("indicator") == col:
                ax.axvline(pd.Timestamp(cp["time"]), color="#c0392b", ls="--")
    axes[0].set_title("Market indicators (dashed: change points detected)")
    return _embedded(fig)


def _table(frame: pd.DataFrame, columns: list[str], limit: int = 60) -> str:
    cols = [c for c in columns if c in frame.columns]
    if frame.empty:
        return "<p>None.</p>"
    rows = []
    for _, row in frame[cols].head(limit).iterrows():
        cells: list[str | tuple[str, str]] = []
        for c in cols:
            v = row[c]
            text = html.escape(f"{v:.4g}" if isinstance(v, float) else str(v))
            cells.append((text, str(v)) if c == "severity" else text)
        rows.append(cells)
    return html_grid(cols, rows)


def _kv(data: dict[str, Any]) -> str:
    return html_pairs(
        (str(k), html.escape(json.dumps(_json_ready(v), default=str))) for k, v in data.items()
    )


DRIFT_COLUMNS = [
    "segment",
    "value",
    "feature",
    "psi",
    "js_distance",
    "ks_statistic",
    "chi2_statistic",
    "wasserstein_norm",
    "pvalue_adjusted",
    "severity",
]
PERFORMANCE_COLUMNS = ["roc_auc", "pr_auc", "recall_at_fpr", "label_coverage"]
KPI_COLUMNS = [
    "adverse_rate",
    "approval_rate",
    "false_positive_rate",
    "caught_ratio",
    "default_rate_approved",
]
FAIRNESS_COLUMNS = [
    "demographic_parity_ratio",
    "demographic_parity_difference",
    "false_positive_rate_difference",
    "equalized_odds_difference",
]
LATENCY_COLUMNS = [
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
]


def _frame(sections: dict[str, Any], name: str) -> pd.DataFrame | None:
    """The section ``name`` when it is a non-empty table, else None."""
    value = sections.get(name)
    return value if isinstance(value, pd.DataFrame) and not value.empty else None


def _drift_parts(spec: ModelSpec, sections: dict[str, Any]) -> list[str]:
    drift = sections.get("drift")
    if drift is None:
        return []
    table = drift.table
    parts = [
        "<h2>Drift per feature</h2>" + psi_bars(table, spec.drift.psi_warn, spec.drift.psi_alarm),
        "<h2>PSI by segment</h2>" + psi_heatmap(table),
    ]
    if sections.get("segments_unavailable"):
        parts.append(
            "<p>Segments not in the data (no context feed): "
            + html.escape(", ".join(sections["segments_unavailable"]))
            + "</p>"
        )
    drifted = table[table["significant"]].sort_values("psi", ascending=False)
    parts.append(
        "<h2>Significant changes (after Benjamini-Hochberg)</h2>" + _table(drifted, DRIFT_COLUMNS)
    )
    return parts


def _window_parts(sections: dict[str, Any]) -> list[str]:
    """Performance, business KPIs, compliance, technical metrics and the market."""
    parts = []
    if (performance := _frame(sections, "performance")) is not None:
        whole = performance[performance["segment"] == "all"]
        parts.append(
            "<h2>Performance (labels known so far)</h2>"
            + _kv(sections.get("live", {}))
            + timeline(whole, PERFORMANCE_COLUMNS, "Performance per window (whole population)")
        )
    if (kpis := _frame(sections, "kpis")) is not None:
        parts.append(
            "<h2>Business KPIs</h2>" + timeline(kpis, KPI_COLUMNS, "Business KPIs per window")
        )
    fairness = sections.get("fairness") or {}
    if fairness or sections.get("compliance"):
        parts.append("<h2>Compliance</h2>")
        for attribute, table in fairness.items():
            parts.append(
                timeline(table, FAIRNESS_COLUMNS, f"Fairness on live decisions: {attribute}")
            )
        parts.append(_kv(sections.get("compliance") or {}))
    if (technical := _frame(sections, "technical")) is not None:
        parts.append(
            "<h2>Technical</h2>"
            + _kv(sections.get("technical_summary") or {})
            + timeline(technical, LATENCY_COLUMNS, "Server latency per hour", "ms")
        )
    if (market_frame := _frame(sections, "market_frame")) is not None:
        parts.append("<h2>Market early warning</h2>" + _kv(sections.get("market") or {}))
        parts.append(market_plot(market_frame, sections.get("market") or {}))
    return parts


def render_html(spec: ModelSpec, result: dict[str, Any], sections: dict[str, Any]) -> str:
    status = html.escape(str(result.get("status")))
    parts = [
        f"<h1>Monitoring: {html.escape(spec.name)} v{html.escape(str(result.get('version')))}</h1>",
        f"<p>As of {html.escape(result['as_of'])} &middot; status "
        f'<b class="{status}">{status}</b>'
        f" &middot; retrain: <b>{'yes' if result['retrain'] else 'no'}</b></p>",
    ]
    if sections.get("source"):
        parts.append(_kv(sections["source"]))
    alerts = pd.DataFrame(result["alerts"])
    parts.append("<h2>Alerts</h2>" + _table(alerts, ["kind", "severity", "message", "retrain"]))
    parts += _drift_parts(spec, sections)
    parts += _window_parts(sections)
    body = "\n".join(parts)
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>Monitoring {html.escape(spec.name)}</title><style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>"
    )


def write_report(
    spec: ModelSpec,
    result: dict[str, Any],
    sections: dict[str, Any],
    out_dir: Path,
    html_path: Path | None = None,
) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.json`` (or ``html_path`` and the JSON beside it)."""
    html_path = Path(html_path) if html_path else out_dir / "report.html"
    out_dir = html_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    drift = sections.get("drift")
    document = {
        **result,
        "drift_rows": drift.to_dict()["rows"] if drift is not None else [],
        "segments_unavailable": sections.get("segments_unavailable", []),
        "performance": sections.get("performance"),
        "kpis": sections.get("kpis"),
        "technical": sections.get("technical"),
        "technical_summary": sections.get("technical_summary"),
        "fairness": sections.get("fairness"),
        "compliance": sections.get("compliance"),
        "market": sections.get("market"),
        "source": sections.get("source"),
    }
    json_path = html_path.with_suffix(".json")
    json_path.write_text(json.dumps(_json_ready(document), indent=2, default=str))
    html_path.write_text(render_html(spec, result, sections))
    return html_path, json_path
