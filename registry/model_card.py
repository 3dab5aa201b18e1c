"""The model card (Markdown and HTML) built from a lifecycle run folder.

Sections: intended use, data, training, metrics (candidate vs baseline vs champion),
business metrics, fairness, explainability, gates, lineage, limitations. The Markdown
is also the MLflow model version's description, so the MLflow UI shows it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from pipelines.formatting import cell
from pipelines.spec import ModelSpec

_LIMITATIONS = {
    "fraud": [
        "Trained on labelled history: fraud patterns not seen before may score low until "
        "they appear in labels (chargebacks arrive days to months later).",
        "Scores are for ranking alerts within an alert budget, not a probability of loss.",
        "Performance and drift must be monitored per channel, region and merchant segment.",
    ],
    "credit": [
        "Estimates the probability of default within 12 months for applications similar "
        "to the training population; not valid for other products or populations.",
        "Protected attributes are never model inputs; they are used only to test fairness. "
        "Proxy effects are checked but cannot be ruled out entirely.",
        "Declines must carry the adverse-action reason codes produced with each score.",
    ],
}

_TEMPLATES = Path(__file__).resolve().parent / "templates"


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def _fmtv(value: Any) -> str:
    return cell(value, bools=False)


def _fmt(section: dict[str, Any] | None, name: str) -> str:
    if not section:
        return "–"
    value: Any = section
    for part in name.split("@"):
        value = value.get(part) if isinstance(value, dict) else None
    return _fmtv(value)


def card_context(spec: ModelSpec, run_dir: Path, run_id: str, version: str | None) -> dict:
    metrics = _read(run_dir / "evaluate" / "metrics.json")
    fairness = _read(run_dir / "fairness" / "fairness.json")
    shap = _read(run_dir / "explain" / "shap_importance.json")
    gates = _read(run_dir / "gates" / "gates.json") or {"checks": [], "high_risk": False}
    lineage = _read(run_dir / "lineage" / "lineage.json")
    code = next(
        (e["details"].get("version") for e in lineage.get("entries", []) if e["kind"] == "code"),
        "unknown",
    )
    names = ["roc_auc", "pr_auc", "ks", "brier", "log_loss"]
    for key in ("recall_at_fpr", "precision_at_recall"):
        for at in (metrics.get("candidate") or {}).get(key) or {}:
            names.append(f"{key}@{at}")
    business = metrics.get("business") or {}
    business_names = sorted((business.get("candidate") or {}).keys())
    mean_abs = shap.get("mean_abs_shap", {})
    top = sorted(mean_abs.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    fairness_attributes = {
        attr: {m: f"{v:.3f}" for m, v in values.items() if isinstance(v, int | float)}
        for attr, values in (fairness.get("gate_metrics") or {}).items()
    }
    flagged = [p for p in fairness.get("proxy_check", []) if p.get("flagged")]
    proxies = sorted({f"{p['feature']}→{p['attribute']}" for p in flagged})
    bad = "fraud" if spec.use_case == "fraud" else "default"
    intended = (
        "Score card transactions at authorisation; alerts above the threshold go to fraud "
        "operations for review. Not for automated account closure."
        if spec.use_case == "fraud"
        else "Estimate the probability of default of personal-loan applications to support "
        "the credit decision; declines carry adverse-action reasons. Human review of "
        "borderline cases remains the bank's policy."
    )
    return {
        "spec": spec,
        "version": version,
        "run_id": run_id,
        "code_version": code,
        "threshold": metrics.get("threshold", spec.gates.decision_threshold),
        "bad_outcome": bad,
        "high_risk": gates.get("high_risk", False),
        "intended_use": intended,
        "fingerprint": _read(run_dir / "ingest" / "fingerprint.json")
        or {"source": "?", "sha256": "?", "rows": 0},
        "features": _read(run_dir / "features" / "features.json"),
        "metrics": metrics,
        "metric_names": names,
        "business": business,
        "business_names": business_names,
        "fairness_attributes": fairness_attributes,
        "proxies": proxies,
        "top_features": top,
        "gates": gates,
        "limitations": _LIMITATIONS[spec.use_case],
        "fmt": _fmt,
        "fmtv": _fmtv,
    }


def render_model_card(
    spec: ModelSpec, run_dir: Path, run_id: str, version: str | None = None
) -> tuple[str, str]:
    """(markdown, html) of the model card for a run folder."""
    context = card_context(spec, run_dir, run_id, version)
    loader = FileSystemLoader(_TEMPLATES)
    md_env = Environment(loader=loader, undefined=StrictUndefined, autoescape=False)
    html_env = Environment(loader=loader, undefined=StrictUndefined, autoescape=True)
    markdown = md_env.get_template("model_card.md.j2").render(**context)
    html = html_env.get_template("model_card.html.j2").render(**context)
    return markdown, html
