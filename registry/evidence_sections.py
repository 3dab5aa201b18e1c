"""The sections of an evidence pack read from the lifecycle run's reports: the model card,
lineage, data validation, gates, fairness and explainability."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from pipelines.artifacts import write_bytes_atomic

DATA_DOCS_INDEX = "data_validation/data_docs/index.html"
SHAP_PNG = "explain/shap_summary.png"


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def relative_path(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def model_card(staging: Path, description: str) -> dict[str, Any]:
    """The card files, and the version's description (the registry's card) as Markdown."""
    folder = staging / "model_card"
    folder.mkdir(exist_ok=True)
    if description:
        write_bytes_atomic(folder / "registry_description.md", description.encode("utf-8"))
    html = folder / "model_card.html"
    md = folder / "model_card.md"
    return {
        "html": "model_card/model_card.html" if html.is_file() else None,
        "markdown": "model_card/model_card.md" if md.is_file() else None,
        "registry_description": "model_card/registry_description.md" if description else None,
        "markdown_text": description or (md.read_text(encoding="utf-8") if md.is_file() else ""),
    }


# --------------------------------------------------------------------------- sections
def lineage_section(url: str, run_id: str | None, staging: Path, run_folder: Path | None) -> dict:
    from registry.lineage import lineage_for_run

    entries = [dataclasses.asdict(e) for e in lineage_for_run(url, run_id)] if run_id else []
    source = "governance store"
    if not entries and run_folder is not None:
        stored = read_json(run_folder / "lineage" / "lineage.json") or {}
        entries, source = list(stored.get("entries") or []), "run folder lineage.json"
    if not entries:
        source = None

    def of(kind: str) -> list[dict[str, Any]]:
        return [e for e in entries if e.get("kind") == kind]

    code = of("code")
    params = of("parameters")
    training = read_json(staging / "train" / "training.json") or {}
    return {
        "source": source,
        "lifecycle_run_id": run_id,
        "entries": entries,
        "datasets": [
            {"name": e["name"], "sha256": e.get("sha256"), "rows": e["details"].get("rows")}
            for e in of("dataset")
        ],
        "code_version": code[0]["details"].get("version") if code else None,
        "spec": [{"name": e["name"], "sha256": e.get("sha256")} for e in of("spec")],
        "run_parameters": params[0]["details"] if params else {},
        "training": {
            k: training.get(k)
            for k in (
                "params",
                "seed",
                "num_boost_round",
                "best_iteration",
                "features",
                "train_rows",
                "model_sha256",
                "lightgbm_version",
            )
            if k in training
        },
    }


def data_validation(staging: Path) -> dict[str, Any]:
    folder = staging / "data_validation"
    result = read_json(folder / "result.json")
    validation = read_json(folder / "validation.json") or {}
    if result is None:
        return {"available": False}
    failed_checks = [
        {
            "check": r.get("check"),
            "column": r.get("column"),
            "description": r.get("description"),
            "blocking": r.get("blocking"),
            "observed": r.get("observed"),
        }
        for r in validation.get("expectations", [])
        if not r.get("success")
    ]
    return {
        "available": True,
        "passed": bool(result.get("passed")),
        "suite": result.get("suite"),
        "rows": result.get("rows"),
        "data_sha256": result.get("data_sha256"),
        "label_rate": result.get("label_rate"),
        "expectations": result.get("expectations"),
        "statistics": result.get("checks") or validation.get("statistics") or {},
        "failed": list(result.get("failed") or []),
        "warnings": list(result.get("warnings") or []),
        "failed_checks": failed_checks,
        "reference_profile": result.get("reference_profile"),
        "data_docs": DATA_DOCS_INDEX if (staging / DATA_DOCS_INDEX).is_file() else None,
    }


def _parse_gate_tag(name: str, text: str) -> dict[str, Any]:
    status, _, rest = text.partition(": ")
    parts = rest.split()
    return {
        "name": name,
        "status": status,
        "value": parts[0] if parts else None,
        "op": parts[1] if len(parts) > 1 else None,
        "threshold": parts[2] if len(parts) > 2 else None,
        "message": text,
    }


def gates_section(staging: Path, tags: dict[str, str]) -> dict[str, Any]:
    gates = read_json(staging / "gates" / "gates.json")
    if gates is not None:
        checks = list(gates.get("checks") or [])
        passed, high_risk, source = gates.get("passed"), gates.get("high_risk"), "gates.json"
    else:
        checks = [
            _parse_gate_tag(k.removeprefix("gate."), v)
            for k, v in sorted(tags.items())
            if k.startswith("gate.")
        ]
        passed = tags.get("gates.passed") == "true" if "gates.passed" in tags else None
        high_risk = tags.get("gates.high_risk") == "true" if "gates.high_risk" in tags else None
        source = "model-version tags" if checks else None
    counts: dict[str, int] = {}
    for check in checks:
        counts[str(check.get("status"))] = counts.get(str(check.get("status")), 0) + 1
    return {
        "source": source,
        "passed": passed,
        "high_risk": high_risk,
        "counts": counts,
        "checks": checks,
        "tags": {k: v for k, v in sorted(tags.items()) if k.startswith(("gate.", "gates."))},
    }


def fairness(staging: Path) -> dict[str, Any]:
    report = read_json(staging / "fairness" / "fairness.json")
    if report is None:
        return {"available": False}
    attributes = report.get("attributes") or {}
    key_figures = []
    for attribute, metrics in sorted((report.get("gate_metrics") or {}).items()):
        detail = (attributes.get(attribute) or {}).get("metrics") or {}
        groups = (attributes.get(attribute) or {}).get("by_group") or {}
        key_figures.append(
            {
                "attribute": attribute,
                "groups": len(groups),
                "metrics": [
                    {
                        "metric": metric,
                        "value": value,
                        "ci_low": (detail.get(metric) or {}).get("ci_low"),
                        "ci_high": (detail.get(metric) or {}).get("ci_high"),
                    }
                    for metric, value in sorted(metrics.items())
                ],
            }
        )
    flagged = [p for p in report.get("proxy_check") or [] if p.get("flagged")]
    files = sorted(
        relative_path(p, staging) for p in (staging / "fairness").rglob("*") if p.is_file()
    )
    return {
        "available": True,
        "favourable_outcome": report.get("favourable_outcome"),
        "key_figures": key_figures,
        "flagged_proxies": flagged,
        "files": files,
    }


def explainability(staging: Path, top: int = 10) -> dict[str, Any]:
    shap = read_json(staging / "explain" / "shap_importance.json")
    result = read_json(staging / "explain" / "result.json") or {}
    if shap is None:
        return {"available": False, "summary_png": None}
    mean_abs = shap.get("mean_abs_shap") or {}
    ranked = sorted(mean_abs.items(), key=lambda kv: (-float(kv[1] or 0.0), kv[0]))
    return {
        "available": True,
        "rows_explained": shap.get("rows_explained"),
        "top_features": [{"feature": k, "mean_abs_shap": v} for k, v in ranked[:top]],
        "features": len(mean_abs),
        "stability": shap.get("stability"),
        "champion_spearman": result.get("champion_spearman"),
        "top10_overlap": result.get("top10_overlap"),
        "summary_png": SHAP_PNG if (staging / SHAP_PNG).is_file() else None,
    }
