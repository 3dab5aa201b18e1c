"""One look at a running A/B test: the primary effect on the sequential schedule, the
guardrails, the segments, and the report (JSON and HTML) of what was found."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import shutil
from dataclasses import asdict, dataclass
from typing import Any

from ops.abtest_state import TestState, iso_time, json_default, report_dir
from pipelines import abtest as stats
from pipelines import abtest_effects
from pipelines.config import Settings
from pipelines.spec import ModelSpec
from pipelines.spec_abtest import AbTest


def look_schedule(state: TestState, key: str, fraction: float) -> tuple[list[float], bool]:
    """The information fractions of the earlier looks (``key``: ``fraction`` for the
    primary metric, ``guard_fraction`` for the guardrails) with this one; False when it
    adds no information (the previous look is repeated: its boundary, no alpha spent)."""
    previous = [look[key] for look in state.looks if look.get(key)]
    if previous and fraction <= previous[-1] + 1e-9:
        return previous, False
    return [*previous, fraction], True


def arm_effect_of(
    metric: str, frame: Any, spec: ModelSpec, alpha: float, **options: Any
) -> tuple[Any, abtest_effects.Effect | None, abtest_effects.Cuped | None]:
    """``(eligible rows mask, effect, CUPED adjustment)`` of ``metric`` over ``frame``'s
    rows; ``options`` go to :func:`pipelines.abtest.arm_effect` (``covariate``,
    ``covariate_name``, ``min_units``), ``covariate`` as a column of the eligible rows."""
    eligible, values = stats.metric_values(
        metric,
        frame["score"].to_numpy(),
        frame["label"].to_numpy(),
        frame["amount"].to_numpy(),
        spec.gates.decision_threshold,
    )
    rows = frame[eligible]
    if options.get("covariate") is not None:
        options["covariate"] = rows[options["covariate"]].to_numpy()
    effect, cuped = stats.arm_effect(
        values[eligible],
        rows["arm"].to_numpy(),
        rows["entity"].to_numpy(),
        stats.metric_info(metric).kind,
        alpha,
        **options,
    )
    return eligible, effect, cuped


def primary_effect(
    ab: AbTest,
    state: TestState,
    spec: ModelSpec,
    frame: Any,
    final: bool,
) -> tuple[
    abtest_effects.Effect | None,
    abtest_effects.Cuped | None,
    stats.Monitor | None,
    list[float],
    bool,
]:
    metric = ab.primary_metric.value
    eligible, effect, info = arm_effect_of(
        metric,
        frame,
        spec,
        ab.alpha,
        covariate="covariate" if ab.cuped_covariate else None,
        covariate_name=ab.cuped_covariate or "covariate",
    )
    if effect is None:
        return None, info, None, [], False
    fraction = 1.0 if final else min(1.0, int(eligible.sum()) / state.design["max_total"])
    fractions, new = look_schedule(state, "fraction", fraction)
    better = stats.metric_info(metric).better
    if ab.sequential.method == "msprt":
        last = next((x for x in reversed(state.looks) if x.get("pvalue") is not None), {})
        monitor = stats.msprt_look(
            len(fractions),
            fractions[-1],
            effect,
            better,
            ab.alpha,
            tau=float(state.design["minimum_detectable_effect"]),
            previous_p=float(last.get("pvalue", 1.0)),
            previous_ci=(_or(last.get("ci_low"), -math.inf), _or(last.get("ci_high"), math.inf)),
        )
    else:
        monitor = stats.group_sequential_look(
            fractions, effect, better, ab.alpha, ab.sequential.spending
        )
    return effect, info, monitor, fractions, new


def _or(value: float | None, default: float) -> float:
    return default if value is None else float(value)


def segment_effects(ab: AbTest, spec: ModelSpec, frame: Any) -> list[stats.SegmentEffect]:
    metric = ab.primary_metric.value
    info = stats.metric_info(metric)
    effects: list[tuple[str, str, abtest_effects.Effect | None]] = []
    for name in ab.segments:
        for value in sorted(v for v in frame[name].dropna().unique()):
            part = frame[frame[name] == value]
            _, effect, _ = arm_effect_of(
                metric, part, spec, ab.alpha, min_units=stats.MIN_SEGMENT_UNITS
            )
            effects.append((name, str(value), effect))
    return stats.segment_effects(effects, info.better, ab.segment_correction, ab.alpha)


def guardrail_results(
    ab: AbTest, spec: ModelSpec, frame: Any, schedule: list[float]
) -> list[stats.GuardrailResult]:
    out = []
    for guard in ab.guardrails:
        metric = guard.metric.value
        _, effect, _ = arm_effect_of(metric, frame, spec, ab.alpha)
        out.append(
            stats.guardrail_check(
                metric,
                effect,
                guard.max_worsening,
                schedule,
                ab.guardrail_alpha,
                ab.guardrail_spending,
            )
        )
    return out


def clean_look(look: dict[str, Any]) -> dict[str, Any]:
    return abtest_effects.json_safe(look)


@dataclass(frozen=True)
class Findings:
    """What one look found: the effect (and its CUPED adjustment), the sequential
    monitor, the guardrails, the sample-ratio check, the segments and the decision."""

    effect: abtest_effects.Effect | None
    cuped: abtest_effects.Cuped | None
    monitor: stats.Monitor | None
    guardrails: list[stats.GuardrailResult]
    srm: stats.SampleRatio
    segments: list[stats.SegmentEffect]
    decision: stats.Decision


def _test_section(state: TestState, ab: AbTest) -> dict[str, Any]:
    """The report's ``test``: what is tested, since when, by whom, on which plan."""
    return {
        "id": state.id,
        "model": state.model,
        "hypothesis": ab.hypothesis,
        "primary_metric": ab.primary_metric.value,
        "champion": state.champion,
        "challenger": state.challenger,
        "started": iso_time(state.started),
        "started_by": state.started_by,
        "split_percent": ab.split_percent,
        "exposure_cap": ab.exposure_cap.model_dump(),
        "design": state.design,
    }


def build_report(
    state: TestState, ab: AbTest, observations: Any, findings: Findings, look: dict[str, Any]
) -> dict[str, Any]:
    effect, info, monitor = findings.effect, findings.cuped, findings.monitor
    guardrails, srm, segments = findings.guardrails, findings.srm, findings.segments
    decision = findings.decision
    frame = observations.rows
    history = [h for h in state.looks if h.get("fraction") is not None]
    if monitor is not None and look["new_information"]:
        history = [*history, clean_look(look)]
    report = {
        "test": _test_section(state, ab),
        "look": {
            "number": look["look"],
            "time": look["time"],
            "day": look["day"],
            "fraction": look["fraction"],
            "final": look["final"],
            "new_information": look["new_information"],
        },
        "decision": asdict(decision),
        "primary": {
            "effect": effect.as_dict() if effect else None,
            "monitor": asdict(monitor)
            if monitor
            else {
                "method": ab.sequential.method,
                "ci_low": None,
                "ci_high": None,
                "z": 0.0,
                "boundary": None,
                "pvalue": None,
            },
            "cuped": asdict(info) if info else None,
        },
        "guardrails": [
            {**g.as_dict(), "better": stats.metric_info(g.metric).better} for g in guardrails
        ],
        "srm": asdict(srm),
        "segments": [s.as_dict() for s in segments],
        "segment_correction": ab.segment_correction,
        "history": history,
        "data": {
            "requests": observations.requests,
            "enrolled": observations.enrolled,
            "rows": len(frame),
            "labelled": int(frame["label"].notna().sum()) if len(frame) else 0,
            "unmatched": observations.unmatched,
            "failed": observations.failed,
        },
    }
    return abtest_effects.json_safe(report)


def write_report(
    settings: Settings, state: TestState, report: dict[str, Any], look: int, now: float
) -> dict[str, Any]:
    """``look-<n>-<UTC time>/report.{json,html}`` (never overwritten: the audit event
    holds the JSON's SHA-256) and copies as ``latest.*``."""
    from pipelines.abtest_report import render_html

    stamp = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    folder = report_dir(settings, state.model, state.id) / f"look-{look:03d}-{stamp}"
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2, sort_keys=True, default=json_default)
    (folder / "report.json").write_text(text)
    page = render_html(report)
    (folder / "report.html").write_text(page)
    for name in ("report.json", "report.html"):
        shutil.copyfile(folder / name, folder.parent / f"latest.{name.split('.')[1]}")
    return {
        "html": folder / "report.html",
        "json": folder / "report.json",
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
    }


def monitor_fields(monitor: Any, final: bool) -> dict[str, Any]:
    """The sequential monitor's numbers of a look (none before the primary has data)."""
    return {
        "fraction": monitor.fraction if monitor else 0.0,
        "z": monitor.z if monitor else None,
        "boundary": monitor.boundary if monitor else None,
        "pvalue": monitor.pvalue if monitor else None,
        "ci_low": monitor.ci_low if monitor else None,
        "ci_high": monitor.ci_high if monitor else None,
        "final": bool(monitor.final) if monitor else final,
    }


def analysed_payload(
    look: dict[str, Any], findings: Findings, paths: dict[str, Any]
) -> dict[str, Any]:
    """The ``abtest_analysed`` event's payload."""
    effect, decision = findings.effect, findings.decision
    return {
        "look": look["look"],
        "fraction": look["fraction"],
        "day": look["day"],
        "action": decision.action,
        "reasons": decision.reasons,
        "primary": {
            "difference": effect.difference if effect else None,
            "z": look["z"],
            "boundary": look["boundary"],
            "pvalue": look["pvalue"],
        },
        "guardrails_breached": [g.metric for g in findings.guardrails if g.breached],
        "srm_pvalue": findings.srm.pvalue,
        "report_sha256": paths["sha256"],
    }
