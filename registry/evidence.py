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

import datetime as dt
import hashlib
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
from registry.audit import iso_utc
from registry.evidence_audit import audit_segment, chain_state, chain_state_line, cross_checks
from registry.evidence_sections import (
    data_validation,
    explainability,
    fairness,
    gates_section,
    lineage_section,
    model_card,
    relative_path,
)
from registry.mlflow_registry import RUN_TAG

log = logging.getLogger(__name__)

_TEMPLATES = Path(__file__).resolve().parent / "templates"
INDEX_HTML = "index.html"
EVIDENCE_JSON = "evidence.json"
MANIFEST_JSON = "manifest.json"
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


@dataclass(frozen=True)
class EvidenceResult:
    """Where the pack went, how many files it holds, its digest, and its ``chain``
    section (:func:`_chain_section`: ``ok``, ``state``, ``first_bad_seq``, ``problem``,
    ``events``, ``head_seq``, ``head_hash``)."""

    out_dir: Path
    index_html: Path
    manifest: Path
    files: int
    pack_sha256: str
    chain: dict[str, Any]

    @property
    def chain_ok(self) -> bool:
        return bool(self.chain["ok"])


def _ms_iso(ms: int | None) -> str | None:
    if not ms:
        return None
    return iso_utc(dt.datetime.fromtimestamp(ms / 1000, dt.UTC))


def _files(root: Path, exclude: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Every file under ``root`` (sorted POSIX paths) with its SHA-256 and size."""
    out = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = relative_path(path, root)
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
    from registry.mlflow_evidence import download_run_folder

    sources: dict[str, dict[str, Any]] = {}
    for stage, folder in REPORT_FOLDERS:
        dest = staging / folder
        source = None
        if mlflow_run_id and download_run_folder(tracking_uri, mlflow_run_id, stage, dest):
            source = "mlflow"
        elif run_folder is not None and _copy_run_folder(run_folder / stage, dest):
            source = "run folder"
            log.warning("%s: not in MLflow, copied from the run folder %s", stage, run_folder)
        files = sorted(relative_path(p, staging) for p in dest.rglob("*") if p.is_file())
        sources[folder] = {"stage": stage, "source": source, "files": len(files)}
        if source is None:
            log.warning("no %s reports in MLflow or the run folder", stage)
    return sources


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
def _model_section(record: dict[str, Any], run_id: str | None) -> dict[str, Any]:
    """The pack's ``model``: the registered version, its runs and its tags."""
    tags = record["tags"]
    return {
        "name": record["name"],
        "version": record["version"],
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
    }


def _chain_section(chain: dict[str, Any]) -> dict[str, Any]:
    """The pack's ``chain``: whether the audit chain verifies, and its head."""
    return {
        "ok": bool(chain["ok"]),
        "state": chain_state_line(chain),
        "first_bad_seq": chain["first_bad_seq"],
        "problem": chain["problem"],
        "events": chain["events"],
        "head_seq": chain["head_seq"],
        "head_hash": chain["head_hash"],
    }


def _run_folder(settings: Settings, model: str, run_id: str | None) -> Path | None:
    """The lifecycle run's folder, when the run is known and its folder still there."""
    run_folder = settings.runs_dir / model / safe_run_id(run_id) if run_id else None
    return run_folder if run_folder is not None and run_folder.is_dir() else None


def _build(
    settings: Settings,
    record: dict[str, Any],
    staging: Path,
    *,
    actor: str,
    out_dir: Path,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Write everything but the manifest into ``staging``; (evidence, files) for it."""
    model, version = record["name"], record["version"]
    url, tracking = settings.governance_url, settings.mlflow_tracking_uri
    tags = record["tags"]
    run_id = tags.get(RUN_TAG)
    run_folder = _run_folder(settings, model, run_id)
    reports = _collect_reports(tracking, record["run_id"], run_folder, staging)
    card = model_card(staging, record["description"])
    reports["model_card"]["files"] = sum(p.is_file() for p in (staging / "model_card").rglob("*"))
    lineage = lineage_section(url, run_id, staging, run_folder)
    gates = gates_section(staging, tags)
    states, deployments, chain_error = chain_state(url, model, version)
    approvals = [state.to_dict() for state in states]
    segment = audit_segment(url, model, version, run_id)
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
        "model": _model_section(record, run_id),
        "status": _status(record, approvals),
        "chain": _chain_section(segment["chain"]),
        "cross_checks": cross_checks(
            tracking, model, version, tags, states, deployments, segment, chain_error
        ),
        "reports": reports,
        "lineage": lineage,
        "data_validation": data_validation(staging),
        "gates": gates,
        "fairness": fairness(staging),
        "explainability": explainability(staging),
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
    from registry.mlflow_evidence import version_record

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
    append_event(
        settings.governance_url,
        "evidence_exported",
        actor=actor,
        payload={
            "out_dir": str(out_dir),
            "pack_sha256": digest,
            "files": count,
            "chain_ok": evidence["chain"]["ok"],
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
        pack_sha256=digest,
        chain=evidence["chain"],
    )
