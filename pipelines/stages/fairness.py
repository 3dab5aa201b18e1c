"""Stage ``fairness``: group metrics of the candidate's decisions (local only).

Inputs: the ``features`` and ``evaluate`` folders. Output, in ``<run>/fairness/``:
``fairness.json`` (the report of :func:`validation.fairness.check_fairness`),
``fairness.md`` (:func:`render_markdown`) and ``result.json`` (:class:`FairnessResult`),
written by :func:`write_fairness`; :func:`assess_fairness` is the check and the files in
one call.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.artifacts import to_jsonable, write_bytes_atomic, write_json
from pipelines.runs import RunContext
from pipelines.spec import ModelSpec
from validation.fairness_summary import FairnessSummary

if TYPE_CHECKING:
    from validation.fairness import FairnessAssessment, FairnessInputs

log = logging.getLogger(__name__)

NAME = "fairness"
OUTPUTS: tuple[str, ...] = ("fairness.json", "fairness.md", "result.json")


@dataclass(frozen=True)
class FairnessResult(FairnessSummary):
    """What the fairness stage wrote and found (``result.json``): the check's summary and
    where it is."""

    out_dir: str = field(kw_only=True)
    files: tuple[str, ...] = OUTPUTS
    stage: str = field(default="fairness")

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(dataclasses.asdict(self))


def _section(title: str, block: dict[str, Any], favourable: str) -> list[str]:
    from pipelines.formatting import cell, markdown_table

    lines = [f"### {title}", ""]
    groups = block["by_group"]
    lines += markdown_table(
        ["group", "rows", f"selection rate ({favourable})", "TPR", "FPR"],
        [
            [
                g,
                cell(r["rows"], 3, none="n/a"),
                cell(r["selection_rate"], 3, none="n/a"),
                cell(r["tpr"], 3, none="n/a"),
                cell(r["fpr"], 3, none="n/a"),
            ]
            for g, r in groups.items()
        ],
    )
    lines.append("")
    lines += markdown_table(
        ["metric", "value", "95 % CI"],
        [
            [
                m,
                cell(v["value"], 3, none="n/a"),
                f"[{cell(v['ci_low'], 3, none='n/a')}, {cell(v['ci_high'], 3, none='n/a')}]",
            ]
            for m, v in block["metrics"].items()
        ],
    )
    lines.append("")
    return lines


def _proxy_lines(proxies: list[dict[str, Any]]) -> list[str]:
    from pipelines.formatting import cell, markdown_table
    from validation.fairness import ALL_FEATURES, PROXY_AUC_THRESHOLD

    lines = [
        "## Proxy check",
        "",
        f"Holdout ROC-AUC of predicting each protected attribute from each feature "
        f"({ALL_FEATURES} = all features together); score = the best-predicted group "
        f"(one-vs-rest), flagged above {PROXY_AUC_THRESHOLD}.",
        "",
    ]
    lines += markdown_table(
        ["attribute", "feature", "score", "best-predicted group", "macro AUC", "flagged"],
        [
            [
                p["attribute"],
                p["feature"],
                cell(p["score"], 3, none="n/a"),
                p["group"],
                cell(p["macro_auc"], 3, none="n/a"),
                "**yes**" if p["flagged"] else "no",
            ]
            for p in proxies
        ],
    )
    return lines


def render_markdown(spec: ModelSpec, report: dict[str, Any], result: FairnessResult) -> str:
    """A readable fairness report (``fairness.md``)."""
    from validation.fairness import MIN_INTERSECTION_GROUP_ROWS
    from validation.group_fairness import MIN_GROUP_ROWS

    fav = report["favourable_outcome"].replace("_", " ")
    lines = [
        f"# Fairness report: {spec.name}",
        "",
        f"- test rows: {result.rows}; decision threshold {result.decision_threshold} "
        f"(score >= threshold is {'declined' if spec.use_case == 'credit' else 'flagged'})",
        f"- favourable outcome: **{fav}**; selection rates and demographic parity are on it "
        "(four-fifths rule: ratio >= 0.8)",
        "- TPR / FPR: share of bad / good outcomes that the model flags or declines",
        f"- 95 % confidence intervals: percentile bootstrap, {result.n_bootstrap} resamples, "
        f"seed {result.seed}",
        "",
        "## Protected attributes",
        "",
    ]
    if not report["attributes"]:
        lines += ["The spec lists no protected attributes.", ""]
    for name, block in report["attributes"].items():
        lines += _section(name, block, fav)
        if name in result.excluded_groups:
            small = ", ".join(f"{g} ({n})" for g, n in result.excluded_groups[name].items())
            lines += [f"Left out, fewer than {MIN_GROUP_ROWS} test rows: {small}", ""]
    lines += [
        "## Intersections",
        "",
        f"Groups with fewer than {MIN_INTERSECTION_GROUP_ROWS} test rows are left out.",
        "",
    ]
    for name, block in report["intersections"].items():
        lines += _section(name, block, fav)
        if name in result.excluded_groups:
            small = ", ".join(f"{g} ({n})" for g, n in result.excluded_groups[name].items())
            lines += [f"Left out (rows): {small}", ""]
    for name, reason in result.skipped_intersections.items():
        lines += [f"- {name}: skipped, {reason}", ""]
    lines += _proxy_lines(report["proxy_check"])
    lines.append("")
    if result.warnings:
        lines += ["## Notes", ""] + [f"- {w}" for w in result.warnings] + [""]
    return "\n".join(lines)


def write_fairness(spec: ModelSpec, out_dir: Path, found: FairnessAssessment) -> FairnessResult:
    """The stage's files: ``fairness.json``, ``fairness.md`` and ``result.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {f.name: getattr(found, f.name) for f in dataclasses.fields(found)}
    report = summary.pop("report")
    result = FairnessResult(out_dir=str(out_dir), **summary)
    write_json(out_dir / "fairness.json", report)
    markdown = render_markdown(spec, report, result)
    write_bytes_atomic(out_dir / "fairness.md", markdown.encode("utf-8"))
    write_json(out_dir / "result.json", result.to_dict())
    for note in result.warnings:
        log.warning("%s: %s", spec.name, note)
    log.info(
        "%s: fairness on %d test rows, %d attribute(s), %d intersection(s), %d proxy flag(s)",
        spec.name,
        result.rows,
        len(result.attributes),
        len(result.intersections),
        len(result.proxy_flags),
    )
    return result


def assess_fairness(spec: ModelSpec, inputs: FairnessInputs, out_dir: Path) -> FairnessResult:
    """Check the candidate's fairness (:func:`validation.fairness.check_fairness`) and
    write the stage's files in ``out_dir``."""
    from validation.fairness import check_fairness

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return write_fairness(spec, out_dir, check_fairness(spec, inputs))


def run(run: RunContext, features_dir: str, eval_dir: str) -> str:
    """Check the candidate's fairness; the stage folder."""
    from validation.fairness import FairnessInputs

    folder = run.stage_dir(NAME)
    assess_fairness(run.spec, FairnessInputs(Path(features_dir), Path(eval_dir)), folder)
    return str(folder)
