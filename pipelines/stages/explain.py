"""Stage ``explain``: SHAP importance and reason codes of the candidate.

Inputs: the ``features``, ``train`` and ``evaluate`` folders, the champion's model.
Output, in ``<run>/explain/``: ``shap_importance.json``, ``shap_summary.png``,
``reason_codes.parquet`` and ``result.json`` (:class:`ExplainResult`), written by
:func:`write_explanation` from what the backend found
(:class:`validation.explain.Explanation`). Runs on the spec's compute backend;
:func:`explain` is the local computation and the files in one call.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.artifacts import to_jsonable, write_bytes_atomic, write_json
from pipelines.backends import EXPLAIN, open_backend, resolve_compute
from pipelines.runs import RunContext
from pipelines.spec import ModelSpec

if TYPE_CHECKING:
    from validation.explain import Explanation

log = logging.getLogger(__name__)

NAME = "explain"
SHAP_SUMMARY = "shap_summary.png"
OUTPUTS: tuple[str, ...] = (
    "shap_importance.json",
    SHAP_SUMMARY,
    "reason_codes.parquet",
    "result.json",
)


@dataclass(frozen=True)
class ExplainResult:
    """What the explain stage wrote and found (``result.json``)."""

    out_dir: str
    rows_explained: int
    sample_seed: int
    ranking: tuple[str, ...]
    reason_rows: int
    champion_spearman: float | None
    top10_overlap: float | None
    warnings: tuple[str, ...] = ()
    files: tuple[str, ...] = OUTPUTS
    stage: str = field(default="explain")

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(dataclasses.asdict(self))


def write_explanation(spec: ModelSpec, out_dir: Path, found: Explanation) -> ExplainResult:
    """The stage's files, once whatever the backend: ``shap_summary.png``,
    ``reason_codes.parquet``, ``shap_importance.json`` and ``result.json``."""
    from validation.explain import summary_png

    seed = spec.training.seed
    out_dir.mkdir(parents=True, exist_ok=True)
    png = summary_png(found.contributions, found.sample, found.features, seed)
    write_bytes_atomic(out_dir / SHAP_SUMMARY, png)
    buffer = io.BytesIO()
    found.reason_codes.to_parquet(buffer, index=False)
    write_bytes_atomic(out_dir / "reason_codes.parquet", buffer.getvalue())
    rho, overlap = found.stability
    write_json(
        out_dir / "shap_importance.json",
        {
            "mean_abs_shap": found.importance,
            "ranking": found.ranking,
            "stability": {"champion_spearman": rho, "top10_overlap": overlap},
            "rows_explained": len(found.sample),
        },
    )
    result = ExplainResult(
        out_dir=str(out_dir),
        rows_explained=len(found.sample),
        sample_seed=seed,
        ranking=tuple(found.ranking),
        reason_rows=len(found.reason_codes),
        champion_spearman=rho,
        top10_overlap=overlap,
        warnings=tuple(found.notes),
    )
    write_json(out_dir / "result.json", {**result.to_dict(), **found.marker})
    for note in found.notes:
        log.warning("%s: %s", spec.name, note)
    log.info(
        "%s: explained %d rows (top features %s), reason codes for %d flagged rows",
        spec.name,
        len(found.sample),
        found.ranking[:3],
        len(found.reason_codes),
    )
    return result


def explain(
    spec: ModelSpec,
    features_dir: str | os.PathLike[str],
    train_dir: str | os.PathLike[str],
    eval_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    champion_model: Path | None = None,
    max_rows: int = 2000,
) -> ExplainResult:
    """Explain the candidate locally (:func:`validation.explain.explain_candidate`) and
    write the stage's files in ``out_dir``."""
    from validation.explain import ExplainInputs, explain_candidate

    folders = (Path(features_dir), Path(train_dir), Path(eval_dir))
    model = None if champion_model is None else Path(champion_model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    found = explain_candidate(spec, ExplainInputs(*folders, model, max_rows))
    return write_explanation(spec, out_dir, found)


def run(
    run: RunContext, features_dir: str, train_dir: str, eval_dir: str, champ: dict[str, str]
) -> str:
    """Explain the candidate (and its stability against the champion's model, if any);
    the stage folder."""
    from validation.explain import ExplainInputs

    folder = run.stage_dir(NAME)
    model = Path(champ["model"]) if champ.get("model") else None
    inputs = ExplainInputs(Path(features_dir), Path(train_dir), Path(eval_dir), model)
    with open_backend(resolve_compute(run.spec, run.settings)) as backend:
        found = backend.run(EXPLAIN, run.spec, inputs)
    write_explanation(run.spec, folder, found)
    return str(folder)
