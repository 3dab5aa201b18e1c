"""The evidence pack of one model version: what put it in production, and proof of it.

``export_evidence`` writes a self-contained folder a model validator (SR 11-7) can
open from disk with no server: ``index.html`` (inline CSS, relative links only),
``evidence.json`` with every structured fact, the separate ``lineage.json``,
``gates.json``, ``approvals.json``, ``deployments.json`` and ``audit_segment.json``,
the version's report folders copied from MLflow (``data_validation/``, ``evaluate/``,
``fairness/``, ``explain/``, ``gates/``, ``model_card/``, ``train/``; the lifecycle
run folder is the fallback for a folder MLflow lacks), and last ``manifest.json``:
every file's SHA-256 and size, and ``pack_sha256`` over them.

The version's audit segment is every event of the model that names this version or
the lifecycle run that made it (data validation and gate results happen before the
version exists). Each event keeps its ``seq``, ``prev_hash`` and ``hash`` so a reader
can recompute ``sha256(prev_hash + "\\n" + canonical_json(body))``; the whole chain is
verified at export time and a broken chain is written into the pack, prominently.

The pack is built in a hidden folder beside ``out_dir`` and moved into place at the
end, so a failed export leaves no half-written pack. The export itself is audited
(``evidence_exported``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from pipelines.artifacts import sha256_file, write_bytes_atomic, write_json
from pipelines.config import Settings
from pipelines.errors import RegistryError
from pipelines.formatting import cell
from pipelines.runs import safe_run_id
from registry.audit import event_hash, events, iso_utc
from registry.audit_verify import verify_chain

log = logging.getLogger(__name__)

_TEMPLATES = Path(__file__).resolve().parent / "templates"
INDEX_HTML = "index.html"
EVIDENCE_JSON = "evidence.json"
MANIFEST_JSON = "manifest.json"
DATA_DOCS_INDEX = "data_validation/data_docs/index.html"
SHAP_PNG = "explain/shap_summary.png"
# (MLflow artifact folder / run folder stage, folder in the pack)
REPORT_FOLDERS: tuple[tuple[str, str], ...] = (
    ("validate_data", "data_validation"),
    ("evaluate", "evaluate"),
    ("fairness", "fairness"),
    ("explain", "explain"),
    ("gates", "gates"),
    ("model_card", "model_card"),
    ("train", "train"),
)
# never copied from a run folder (MLflow does not keep them either): data and model files
_SKIP_SUFFIXES = (".parquet", ".joblib", ".tmp")
_SKIP_NAMES = ("model.txt",)
_ALIAS_ORDER = ("champion", "challenger", "candidate")
PACK_HASH_METHOD = (
    'sha256 of the UTF-8 text of the sorted lines "PATH SHA256" (one per file in '
    "files, POSIX paths relative to the pack, each line ending in a newline); "
    "manifest.json is not listed in itself"
)
AUDIT_HASH_METHOD = (
    'hash = sha256(prev_hash + "\\n" + canonical_json(body)), body = {seq, occurred_at, '
    "kind, actor, model_name, model_version, run_id, payload}; canonical JSON has sorted "
    "keys, no spaces, UTF-8 kept; each event's prev_hash is the hash of event seq - 1 "
    "(64 zeros for seq 1); mac = HMAC-SHA-256(audit key, 'govml-audit-v1\\n' + hash) "
    "with the key named by key_id, which is not in the pack: `govml audit verify` checks "
    "the MACs and the signed checkpoints where the key is held"
)


@dataclass(frozen=True)
class EvidenceResult:
    out_dir: Path
    index_html: Path
    manifest: Path
    files: int
    chain_ok: bool
    pack_sha256: str
    first_bad_seq: int | None = None
    chain_problem: str | None = None


# --------------------------------------------------------------------------- small helpers
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _ms_iso(ms: int | None) -> str | None:
    if not ms:
        return None
    return iso_utc(dt.datetime.fromtimestamp(ms / 1000, dt.UTC))


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _files(root: Path, exclude: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Every file under ``root`` (sorted POSIX paths) with its SHA-256 and size."""
    out = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = _rel(path, root)
        if rel in exclude:
            continue
        out.append({"path": rel, "sha256": sha256_file(path), "size": path.stat().st_size})
    return sorted(out, key=lambda f: f["path"])


def pack_hash(files: list[dict[str, Any]]) -> str:
    """``pack_sha256`` of a manifest's file list (see :data:`PACK_HASH_METHOD`)."""
    lines = sorted(f"{f['path']} {f['sha256']}\n" for f in files)
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- out dir
def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise RegistryError(f"{out_dir} exists and is not a folder; choose another --out")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise RegistryError(
            f"{out_dir} is not empty; refusing to overwrite it (choose a new or empty folder)"
        )


def _staging_dir(out_dir: Path) -> Path:
    """A hidden folder beside ``out_dir`` (same file system, so the final move is a rename)."""
    staging = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
    except OSError as exc:
        raise RegistryError(f"cannot write the evidence pack beside {out_dir}: {exc}") from None
    return staging


def _move_into_place(staging: Path, out_dir: Path) -> None:
    """Move the finished pack to ``out_dir``.

    A new ``out_dir`` is the renamed staging folder; an existing empty one (perhaps
    made with its own permissions, or the current folder) is kept and filled.
    """
    _check_out_dir(out_dir)  # someone may have written there meanwhile
    try:
        if out_dir.is_dir():
            for item in sorted(staging.iterdir()):
                os.replace(item, out_dir / item.name)
            staging.rmdir()
        else:
            os.replace(staging, out_dir)
    except OSError as exc:
        raise RegistryError(f"cannot move the evidence pack into {out_dir}: {exc}") from None


# --------------------------------------------------------------------------- reports
def _copy_run_folder(source: Path, dest: Path) -> bool:
    if not source.is_dir():
        return False

    def ignore(_folder: str, names: list[str]) -> set[str]:
        return {n for n in names if n.endswith(_SKIP_SUFFIXES) or n in _SKIP_NAMES}

    shutil.copytree(source, dest, ignore=ignore)
    if not any(p.is_file() for p in dest.rglob("*")):
        shutil.rmtree(dest)
        return False
    return True


def _collect_reports(
    tracking_uri: str, mlflow_run_id: str | None, run_folder: Path | None, staging: Path
) -> dict[str, dict[str, Any]]:
    """Copy each report folder from MLflow, else from the lifecycle run folder."""
    from registry.mlflow_registry import download_run_folder

    sources: dict[str, dict[str, Any]] = {}
    for stage, folder in REPORT_FOLDERS:
        dest = staging / folder
        source = None
        if mlflow_run_id and download_run_folder(tracking_uri, mlflow_run_id, stage, dest):
            source = "mlflow"
        elif run_folder is not None and _copy_run_folder(run_folder / stage, dest):
            source = "run folder"
            log.warning("%s: not in MLflow, copied from the run folder %s", stage, run_folder)
        files = sorted(_rel(p, staging) for p in dest.rglob("*") if p.is_file())
        sources[folder] = {"stage": stage, "source": source, "files": len(files)}
        if source is None:
            log.warning("no %s reports in MLflow or the run folder", stage)
    return sources


def _model_card(staging: Path, description: str) -> dict[str, Any]:
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
def _lineage(url: str, run_id: str | None, staging: Path, run_folder: Path | None) -> dict:
    from registry.lineage import lineage_for_run

    entries = [dataclasses.asdict(e) for e in lineage_for_run(url, run_id)] if run_id else []
    source = "governance store"
    if not entries and run_folder is not None:
        stored = _read_json(run_folder / "lineage" / "lineage.json") or {}
        entries, source = list(stored.get("entries") or []), "run folder lineage.json"
    if not entries:
        source = None

    def of(kind: str) -> list[dict[str, Any]]:
        return [e for e in entries if e.get("kind") == kind]

    code = of("code")
    params = of("parameters")
    training = _read_json(staging / "train" / "training.json") or {}
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


def _data_validation(staging: Path) -> dict[str, Any]:
    folder = staging / "data_validation"
    result = _read_json(folder / "result.json")
    validation = _read_json(folder / "validation.json") or {}
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


def _gates(staging: Path, tags: dict[str, str]) -> dict[str, Any]:
    gates = _read_json(staging / "gates" / "gates.json")
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


def _fairness(staging: Path) -> dict[str, Any]:
    report = _read_json(staging / "fairness" / "fairness.json")
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
    files = sorted(_rel(p, staging) for p in (staging / "fairness").rglob("*") if p.is_file())
    return {
        "available": True,
        "favourable_outcome": report.get("favourable_outcome"),
        "key_figures": key_figures,
        "flagged_proxies": flagged,
        "files": files,
    }


def _explainability(staging: Path, top: int = 10) -> dict[str, Any]:
    shap = _read_json(staging / "explain" / "shap_importance.json")
    result = _read_json(staging / "explain" / "result.json") or {}
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


def _chain_state(
    url: str, model: str, version: str
) -> tuple[list[Any], list[dict[str, Any]], str | None]:
    """(approval states, deployments) of the version from the verified chain, or why not."""
    from registry.approvals import list_requests
    from registry.audit import AuditError
    from registry.governance import deployments

    try:
        states = [s for s in list_requests(url, model) if s.model_version == str(version)]
        return states, deployments(url, model, version), None
    except AuditError as exc:
        log.error("%s", exc)
        return [], [], str(exc)


def _audit_segment(url: str, model: str, version: str, run_id: str | None) -> dict[str, Any]:
    try:
        stored = events(url, model_name=model)
        unreadable = None
    except ValueError as exc:  # a payload rewritten into something that is not JSON
        stored, unreadable = [], f"the audit events cannot be read: {exc}"
        log.error("%s", unreadable)
    records = [
        r
        for r in stored
        if r.model_version == str(version) or (run_id is not None and r.run_id == run_id)
    ]
    chain = verify_chain(url)  # after reading: the verified head covers every listed event
    by_seq = {r.seq: r for r in records}
    rows = []
    for r in records:
        body = {
            "seq": r.seq,
            "occurred_at": iso_utc(r.occurred_at),
            "kind": r.kind,
            "actor": r.actor,
            "model_name": r.model_name,
            "model_version": r.model_version,
            "run_id": r.run_id,
            "payload": r.payload,
        }
        before = by_seq.get(r.seq - 1)
        row = r.as_dict()
        row["hash_ok"] = event_hash(r.prev_hash, body) == r.hash
        # the link to the previous event, when that event is in the segment too
        row["link_ok"] = None if before is None else r.prev_hash == before.hash
        rows.append(row)
    bad = [r["seq"] for r in rows if not r["hash_ok"] or r["link_ok"] is False]
    return {
        "model_name": model,
        "model_version": str(version),
        "lifecycle_run_id": run_id,
        "hash_method": AUDIT_HASH_METHOD,
        "chain": dataclasses.asdict(chain),
        "events": rows,
        "segment_bad_seqs": bad,
        "unreadable": unreadable,
    }


def _cross_checks(
    tracking_uri: str,
    model: str,
    version: str,
    tags: dict[str, str],
    states: list[Any],
    deployments: list[dict[str, Any]],
    segment: dict[str, Any],
    chain_error: str | None,
) -> list[dict[str, Any]]:
    """Facts a validator would check by hand, checked once at export time."""
    from registry.mlflow_registry import artifact_sha256_of
    from registry.reconcile import tag_claims_without_chain

    approvals = [s.to_dict() for s in states]
    tagged = tags.get("artifact_sha256")
    checks: list[dict[str, Any]] = []

    def add(name: str, ok: bool | None, detail: str) -> None:
        checks.append({"check": name, "ok": ok, "detail": detail})

    try:
        now = artifact_sha256_of(tracking_uri, model, version)
        add(
            "registry artifact hashes to the tagged artifact_sha256",
            now == tagged,
            f"now {now}, tag {tagged}",
        )
    except RegistryError as exc:
        add("registry artifact hashes to the tagged artifact_sha256", None, str(exc))
    registered = [e for e in segment["events"] if e["kind"] == "model_registered"]
    if registered:
        logged = registered[-1]["payload"].get("artifact_sha256")
        add(
            "audit trail registered the tagged artifact",
            logged == tagged,
            f"model_registered event seq {registered[-1]['seq']}: {logged}",
        )
    add(
        "approvals and deployments are derived from the verified audit chain",
        chain_error is None,
        chain_error or f"{len(approvals)} request(s), {len(deployments)} deployment action(s)",
    )
    claims = tag_claims_without_chain(tags, states) if chain_error is None else []
    add(
        "the version's approval tags claim nothing the audit chain does not hold",
        None if chain_error else not claims,
        "; ".join(claims) or "tags agree with the chain",
    )
    for request in approvals:
        add(
            f"approval request {request['id']} is for the tagged artifact",
            request.get("artifact_sha256") == tagged,
            str(request.get("artifact_sha256")),
        )
    for row in deployments:
        add(
            f"{row['action']} ({row['environment']}) at {row['occurred_at']} used the tagged "
            "artifact",
            row.get("artifact_sha256") == tagged,
            str(row.get("artifact_sha256")),
        )
    chain = segment["chain"]
    add(
        "audit chain verifies end to end (links, hashes, MACs, checkpoints, index rows)",
        bool(chain["ok"]),
        _chain_detail(chain),
    )
    bad = segment["segment_bad_seqs"]
    add(
        "every event of this version's segment re-hashes to its stored hash",
        not bad and not segment["unreadable"],
        segment["unreadable"]
        or ("bad seqs: " + ", ".join(map(str, bad)) if bad else f"{len(segment['events'])} events"),
    )
    return checks


def _chain_detail(chain: dict[str, Any]) -> str:
    if chain["problem"]:
        return f"BROKEN at seq {chain['first_bad_seq']}: {chain['problem']}"
    if chain["unbacked"]:
        return f"{len(chain['unbacked'])} table row(s) not backed: {chain['unbacked'][0]}"
    return f"{chain['events']} events, head seq {chain['head_seq']}"


def _chain_state_line(chain: dict[str, Any]) -> str:
    if chain["ok"]:
        return "OK"
    if chain["problem"]:
        return f"BROKEN at seq {chain['first_bad_seq']}"
    return "ROWS NOT BACKED by the chain"


def _status(record: dict[str, Any], approvals: list[dict[str, Any]]) -> dict[str, Any]:
    aliases = list(record["aliases"])
    ranked = [a for a in _ALIAS_ORDER if a in aliases]
    latest = approvals[-1] if approvals else None
    return {
        "aliases": aliases,
        "stage": ranked[0] if ranked else "registered (no alias)",
        "approval": latest["status"] if latest else "not requested",
        "approval_request_id": latest["id"] if latest else None,
    }


# --------------------------------------------------------------------------- render
def _render_index(evidence: dict[str, Any], files: list[dict[str, Any]]) -> str:
    env = Environment(
        loader=FileSystemLoader(_TEMPLATES), undefined=StrictUndefined, autoescape=True
    )
    env.filters["fmt"] = partial(cell, containers=True)
    template = env.get_template("evidence_index.html.j2")
    return template.render(e=evidence, files=files)


# --------------------------------------------------------------------------- export
def _build(
    settings: Settings,
    record: dict[str, Any],
    staging: Path,
    *,
    actor: str,
    out_dir: Path,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Write everything but the manifest into ``staging``; (evidence, files) for it."""
    from registry.mlflow_registry import RUN_TAG

    model, version = record["name"], record["version"]
    url, tracking = settings.governance_url, settings.mlflow_tracking_uri
    tags = record["tags"]
    run_id = tags.get(RUN_TAG)
    run_folder = settings.runs_dir / model / safe_run_id(run_id) if run_id else None
    if run_folder is not None and not run_folder.is_dir():
        run_folder = None

    reports = _collect_reports(tracking, record["run_id"], run_folder, staging)
    card = _model_card(staging, record["description"])
    reports["model_card"]["files"] = sum(
        1 for p in (staging / "model_card").rglob("*") if p.is_file()
    )
    lineage = _lineage(url, run_id, staging, run_folder)
    gates = _gates(staging, tags)
    states, deployments, chain_error = _chain_state(url, model, version)
    approvals = [state.to_dict() for state in states]
    segment = _audit_segment(url, model, version, run_id)
    chain = segment["chain"]
    approval_tags = {k: v for k, v in sorted(tags.items()) if k.startswith("govml.approval.")}

    write_json(staging / "lineage.json", lineage)
    write_json(staging / "gates.json", gates)
    write_json(staging / "approvals.json", {"requests": approvals, "tags": approval_tags})
    write_json(staging / "deployments.json", {"deployments": deployments})
    write_json(staging / "audit_segment.json", segment)

    evidence = {
        "format": "govml-evidence-pack/1",
        "exported_at": iso_utc(dt.datetime.now(dt.UTC)),
        "exported_by": actor,
        "out_dir": str(out_dir),
        "model": {
            "name": model,
            "version": version,
            "mlflow_run_id": record["run_id"],
            "lifecycle_run_id": run_id,
            "artifact_sha256": tags.get("artifact_sha256"),
            "source": record["source"],
            "registered_at": _ms_iso(record["created_ms"]),
            "updated_at": _ms_iso(record["updated_ms"]),
            "registered_by": record["user_id"],
            "use_case": tags.get("use_case"),
            "owner": tags.get("owner"),
            "tags": dict(sorted(tags.items())),
        },
        "status": _status(record, approvals),
        "chain": {
            "ok": bool(chain["ok"]),
            "state": _chain_state_line(chain),
            "first_bad_seq": chain["first_bad_seq"],
            "problem": chain["problem"],
            "events": chain["events"],
            "head_seq": chain["head_seq"],
            "head_hash": chain["head_hash"],
        },
        "cross_checks": _cross_checks(
            tracking, model, version, tags, states, deployments, segment, chain_error
        ),
        "reports": reports,
        "lineage": lineage,
        "data_validation": _data_validation(staging),
        "gates": gates,
        "fairness": _fairness(staging),
        "explainability": _explainability(staging),
        "model_card": card,
        "approvals": approvals,
        "approval_tags": approval_tags,
        "deployments": deployments,
        "audit_segment": segment,
    }
    write_json(staging / EVIDENCE_JSON, evidence)
    files = _files(staging, exclude=(INDEX_HTML, MANIFEST_JSON))
    html = _render_index(evidence, files)
    write_bytes_atomic(staging / INDEX_HTML, html.encode("utf-8"))
    return evidence, files


def _write_manifest(staging: Path, evidence: dict[str, Any]) -> tuple[str, int]:
    files = _files(staging, exclude=(MANIFEST_JSON,))
    digest = pack_hash(files)
    write_json(
        staging / MANIFEST_JSON,
        {
            "format": "govml-evidence-manifest/1",
            "model_name": evidence["model"]["name"],
            "model_version": evidence["model"]["version"],
            "exported_at": evidence["exported_at"],
            "exported_by": evidence["exported_by"],
            "chain_ok": evidence["chain"]["ok"],
            "audit_head_seq": evidence["chain"]["head_seq"],
            "audit_head_hash": evidence["chain"]["head_hash"],
            "files": {f["path"]: {"sha256": f["sha256"], "size": f["size"]} for f in files},
            "pack_sha256": digest,
            "pack_sha256_method": PACK_HASH_METHOD,
        },
    )
    return digest, len(files) + 1  # + the manifest itself


def export_evidence(
    settings: Settings, model_name: str, version: str, out_dir: Path, *, actor: str
) -> EvidenceResult:
    """Write the evidence pack of ``model_name`` version ``version`` into ``out_dir``.

    Refuses (``RegistryError``) an unknown model or version and an ``out_dir`` that
    exists and is not empty. A broken audit chain does not stop the export: the pack
    records it and ``EvidenceResult.chain_ok`` is False.
    """
    from registry.audit import append_event
    from registry.mlflow_registry import RUN_TAG, version_record

    if not actor or not actor.strip():
        raise RegistryError("an evidence export needs an actor (--as USER)")
    out_dir = Path(out_dir).expanduser().absolute()
    _check_out_dir(out_dir)
    record = version_record(settings.mlflow_tracking_uri, model_name, str(version))
    staging = _staging_dir(out_dir)
    try:
        evidence, _ = _build(settings, record, staging, actor=actor, out_dir=out_dir)
        digest, count = _write_manifest(staging, evidence)
        _move_into_place(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    chain_ok = bool(evidence["chain"]["ok"])
    append_event(
        settings.governance_url,
        "evidence_exported",
        actor=actor,
        payload={
            "out_dir": str(out_dir),
            "pack_sha256": digest,
            "files": count,
            "chain_ok": chain_ok,
            "audit_head_seq": evidence["chain"]["head_seq"],
        },
        model_name=record["name"],
        model_version=record["version"],
        run_id=record["tags"].get(RUN_TAG),
    )
    log.info(
        "evidence pack of %s v%s: %s (%d files, pack sha256 %s, chain %s)",
        record["name"],
        record["version"],
        out_dir,
        count,
        digest,
        evidence["chain"]["state"],
    )
    return EvidenceResult(
        out_dir=out_dir,
        index_html=out_dir / INDEX_HTML,
        manifest=out_dir / MANIFEST_JSON,
        files=count,
        chain_ok=chain_ok,
        pack_sha256=digest,
        first_bad_seq=evidence["chain"]["first_bad_seq"],
        chain_problem=evidence["chain"]["problem"],
    )
