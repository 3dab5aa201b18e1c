"""A/B tests from the orchestration side: the CLI and the daily A/B DAG call these.

* :func:`design` sizes a test from the spec's ``abtest`` section: the baseline (the
  spec's, else measured from the champion's prediction log and labels) and the duration
  at the champion's observed traffic;
* :func:`start` fixes the plan (the design is recorded before any data is seen), puts
  the model's gateway route in A/B mode (champion = control, the deployed version =
  treatment, a fixed split, a new random salt, the exposure caps) and records
  ``abtest_started`` in the audit trail;
* :func:`analyse` is one look: it joins the gateway's A/B logs to the prediction logs
  and labels (:mod:`ops.abtest_data`), computes the effects, the sequential boundary,
  the guardrails, the sample-ratio check and the segments
  (:mod:`pipelines.abtest`), writes the report (JSON and HTML), records
  ``abtest_analysed`` with the decision, and acts on it: on ``stop`` or ``ship`` the
  route goes back to the champion alone (within the gateway's reload interval) and
  ``abtest_stopped`` / ``abtest_concluded`` is recorded. ``ship`` is evidence, not a
  promotion: the version reaches 100 % through ``govml rollout`` with its approvals;
* :func:`stop` ends a test by hand (with the person's identity and reason).

Files: the test's state ``<serving dir>/abtests/<model>.json``; the gateway's logs under
``<serving dir>/gateway/abtests/<test id>/``; reports under
``<GOVML_VAR_DIR>/abtests/<model>/<test id>/look-<n>/`` (and ``latest.*``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import os
import secrets
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines import abtest as stats
from pipelines.config import Settings
from pipelines.errors import GovMLError
from pipelines.spec import AB_AMOUNT_FEATURE, AbTest, ModelSpec
from serving.control.routes import (
    RUNNING,
    abtest_state_path,
    active_rollout,
    endpoint_of,
    gateway_dir,
    read_routes,
    routes_path,
    write_route,
)

log = logging.getLogger(__name__)
ANALYST = "abtest-analyst"
MEASURE_DAYS = 7  # the champion's traffic and baseline are measured over this many days


class AbTestError(GovMLError):
    """An A/B test action that does not fit the spec or the test's state."""

    exit_code = 2


@dataclass
class TestState:
    id: str
    model: str
    champion: dict[str, str]  # {"url", "version"}
    challenger: dict[str, str]
    salt: str
    started: float
    started_by: str
    design: dict[str, Any]
    plan: dict[str, Any]  # the spec's abtest section when the test started
    status: str = RUNNING  # running | shipped | stopped
    looks: list[dict[str, Any]] = field(default_factory=list)
    ended: float | None = None
    outcome: dict[str, Any] | None = None


# --------------------------------------------------------------------------- files
def abtest_logs(settings: Settings, test_id: str) -> Path:
    """The gateway's A/B log folder of a test (the gateway's ``--abtest_dir`` default)."""
    return gateway_dir(settings) / "abtests" / test_id


def report_dir(settings: Settings, model: str, test_id: str) -> Path:
    return settings.var_dir / "abtests" / model / test_id


def load_state(settings: Settings, model: str) -> TestState | None:
    path = abtest_state_path(settings, model)
    try:
        return TestState(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        raise AbTestError(f"A/B test state {path}: {exc}") from None


def _save(settings: Settings, state: TestState) -> None:
    path = abtest_state_path(settings, state.model)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2, default=_json_default))
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _section(spec: ModelSpec) -> AbTest:
    if spec.abtest is None:
        raise AbTestError(
            f"{spec.name} has no abtest section in its spec: add one (hypothesis, "
            "primary_metric, minimum_detectable_effect, ...) to run an A/B test"
        )
    return spec.abtest


def _running(settings: Settings, spec: ModelSpec) -> TestState:
    state = load_state(settings, spec.name)
    if state is None or state.status != RUNNING:
        raise AbTestError(f"{spec.name}: no A/B test running")
    return state


def _deployment_folder(settings: Settings, model: str, version: str) -> Path:
    from serving.control.deployers import Release

    return settings.serving_dir / Release(model, str(version), "", "").name / "predictions"


# --------------------------------------------------------------------------- routes
def current_champion(settings: Settings, model: str) -> dict[str, str]:
    """The champion the gateway serves now (the test's control)."""
    route = (read_routes(settings).get("models") or {}).get(model)
    if not isinstance(route, dict) or not isinstance(route.get("champion"), dict):
        raise AbTestError(
            f"the gateway has no route for {model} ({routes_path(settings)}): promote a "
            f"champion first (`govml rollout promote {model} --version N`)"
        )
    if route.get("abtest"):
        raise AbTestError(f"{model}: the gateway route is already in an A/B test")
    if route.get("shadow") or route.get("challenger_percent"):
        raise AbTestError(
            f"{model}: a rollout is using the gateway route (shadow or canary): finish or roll "
            "it back before an A/B test"
        )
    champion = route["champion"]
    return {"url": str(champion["url"]), "version": str(champion.get("version", ""))}


# --------------------------------------------------------------------------- design
@dataclass(frozen=True)
class Measured:
    """What the champion's prediction log (and labels) show over the last days."""

    rows: int
    days: float
    baseline: float | None
    baseline_sd: float | None
    eligible_share: float | None  # eligible rows of the metric per scored row

    @property
    def daily_rows(self) -> float | None:
        return self.rows / self.days if self.rows else None


def measure(settings: Settings, spec: ModelSpec, version: str, now: float) -> Measured:
    """The champion's traffic and the primary metric's baseline from its log."""
    from serving.control.rollout_windows import log_rows, read_labels

    ab = _section(spec)
    rows = log_rows(_deployment_folder(settings, spec.name, version), now - MEASURE_DAYS * 86_400)
    scored = [r for r in rows if r.get("score") is not None]
    if not scored:
        return Measured(0, 1.0, None, None, None)
    earliest = min(r["timestamp"].timestamp() for r in scored)
    days = max((now - earliest) / 86_400, 1.0)
    labels = read_labels(settings.var_dir / "labels" / spec.name)
    amount = ab.amount_feature or AB_AMOUNT_FEATURE[spec.use_case]
    eligible, values = stats.metric_values(
        ab.primary_metric.value,
        np.array([r["score"] for r in scored], np.float64),
        np.array([labels.get(str(r.get("request_id")), np.nan) for r in scored], np.float64),
        np.array([_number((r.get("features") or {}).get(amount)) for r in scored]),
        spec.gates.decision_threshold,
    )
    picked = values[eligible]
    if len(picked) < 2:
        return Measured(len(scored), days, None, None, None)
    return Measured(
        len(scored),
        days,
        float(picked.mean()),
        float(picked.std(ddof=1)) or None,
        len(picked) / len(scored),
    )


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def design(
    settings: Settings,
    spec: ModelSpec,
    daily_requests: float | None = None,
    now: float | None = None,
    eligible_share: float | None = None,
) -> stats.Design:
    """The test's plan from the spec, measured where the spec leaves values open.

    ``daily_requests`` overrides the observed traffic (scoring requests per day),
    ``eligible_share`` the share of requests the metric counts (for a fraud capture
    rate: the labelled fraud rate)."""
    ab = _section(spec)
    now = time.time() if now is None else now
    metric = ab.primary_metric.value
    info = stats.metric_info(metric)
    try:
        version = current_champion(settings, spec.name)["version"]
        measured = measure(settings, spec, version, now)
    except AbTestError:
        measured = Measured(0, 1.0, None, None, None)
    baseline = ab.baseline if ab.baseline is not None else measured.baseline
    if baseline is None:
        raise AbTestError(
            f"{spec.name}: abtest.baseline is not set and the champion's prediction log has no "
            f"{'labelled ' if info.needs_labels else ''}rows to measure {metric}: set "
            "abtest.baseline"
        )
    sd = ab.baseline_sd if ab.baseline_sd is not None else measured.baseline_sd
    if info.kind == "continuous" and sd is None:
        raise AbTestError(
            f"{spec.name}: {metric} is continuous: set abtest.baseline_sd (nothing to measure "
            "it from in the champion's log)"
        )
    requests = daily_requests if daily_requests is not None else measured.daily_rows
    share = eligible_share or (1.0 if not info.needs_labels else measured.eligible_share)
    daily_units = requests * share if requests and share else None
    try:
        plan = stats.design_test(
            metric,
            baseline,
            ab.minimum_detectable_effect,
            alpha=ab.alpha,
            power=ab.power,
            treatment_share=ab.treatment_share,
            baseline_sd=sd,
            method=ab.sequential.method,
            spending=ab.sequential.spending,
            daily_units=daily_units,
            max_days=ab.max_days,
        )
    except ValueError as exc:
        raise AbTestError(f"{spec.name}: abtest: {exc}") from None
    notes = list(plan.warnings)
    if daily_units is None:
        notes.append(
            "duration unknown: no traffic"
            + (" or labelled rows" if info.needs_labels else "")
            + " observed in the champion's prediction log (pass the daily traffic"
            + (" and the eligible share" if info.needs_labels else "")
            + ")"
        )
    if info.needs_labels:
        notes.append(
            f"{metric} counts labelled rows only: the label delay (chargebacks, defaults) "
            "adds to the duration"
        )
    if ab.sequential.method == "msprt":
        notes.append(
            "mSPRT: the sample size is the fixed-horizon one; mSPRT may stop at any look but "
            "has less power at that size (the price of always-valid inference)"
        )
    return stats.Design(**{**asdict(plan), "warnings": notes})


# --------------------------------------------------------------------------- audit
def _audit(
    settings: Settings, kind: str, state: TestState, actor: str, payload: dict[str, Any]
) -> None:
    from registry import audit

    audit.append_event(
        settings.governance_url,
        kind,
        actor=actor,
        payload={"test_id": state.id, **payload},
        model_name=state.model,
        model_version=str(state.challenger["version"]),
    )


# --------------------------------------------------------------------------- start / stop
def new_salt() -> str:
    """A fresh assignment salt for each test: entities are re-randomised between tests."""
    return secrets.token_hex(16)


def start(settings: Settings, spec: ModelSpec, version: str, actor: str) -> TestState:
    """Put the deployed ``version`` in an A/B test against the gateway's champion."""
    ab = _section(spec)
    current = load_state(settings, spec.name)
    if current is not None and current.status == RUNNING:
        raise AbTestError(
            f"{spec.name}: A/B test {current.id} (v{current.challenger['version']}) is running; "
            f"stop it first (`govml abtest stop {spec.name}`)"
        )
    phase = active_rollout(settings, spec)
    if phase is not None:
        raise AbTestError(f"{spec.name}: a rollout is in progress ({phase})")
    champion = current_champion(settings, spec.name)
    if champion["version"] == str(version):
        raise AbTestError(f"{spec.name} v{version} is the champion: nothing to test against")
    challenger = endpoint_of(settings, spec.name, str(version))
    now = time.time()
    plan = design(settings, spec, now=now)
    stamp = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    state = TestState(
        id=f"{spec.name}-{stamp}-{secrets.token_hex(3)}",
        model=spec.name,
        champion=champion,
        challenger=challenger,
        salt=new_salt(),
        started=now,
        started_by=actor,
        design=plan.as_dict(),
        plan=ab.model_dump(mode="json"),
    )
    if current is not None:  # an ended test's state is kept beside, by its id
        os.replace(
            abtest_state_path(settings, spec.name),
            abtest_state_path(settings, spec.name).with_name(f"{current.id}.json"),
        )
    caps = {k: v for k, v in ab.exposure_cap.model_dump().items() if v is not None}
    write_route(
        settings,
        spec.name,
        {
            "champion": champion,
            "challenger": challenger,
            "challenger_percent": ab.split_percent,
            "salt": state.salt,
            "abtest": {"id": state.id, **caps},
        },
    )
    _save(settings, state)
    _audit(
        settings,
        "abtest_started",
        state,
        actor,
        {
            "hypothesis": ab.hypothesis,
            "primary_metric": ab.primary_metric.value,
            "champion_version": champion["version"],
            "split_percent": ab.split_percent,
            "exposure_cap": caps,
            "design": state.design,
            "plan": state.plan,
        },
    )
    return state


def _end(
    settings: Settings, state: TestState, status: str, actor: str, detail: dict[str, Any]
) -> TestState:
    """Champion alone on the route first, then the state and the audit event."""
    write_route(settings, state.model, {"champion": state.champion})
    state.status, state.ended = status, time.time()
    state.outcome = {"status": status, "actor": actor, **detail}
    _save(settings, state)
    kind = "abtest_concluded" if status == "shipped" else "abtest_stopped"
    _audit(settings, kind, state, actor, {"traffic": "champion 100%", **detail})
    return state


def stop(settings: Settings, spec: ModelSpec, actor: str, reason: str) -> TestState:
    """End the running test by hand: the champion takes all traffic again."""
    if not reason.strip():
        raise AbTestError("a reason is required: the audit trail records why")
    state = _running(settings, spec)
    return _end(settings, state, "stopped", actor, {"reasons": [reason], "manual": True})


# --------------------------------------------------------------------------- status
def status(settings: Settings, spec: ModelSpec) -> dict[str, Any]:
    from ops.abtest_data import enrolled

    state = load_state(settings, spec.name)
    if state is None:
        return {"model": spec.name, "status": None}
    out: dict[str, Any] = {
        "model": state.model,
        "test_id": state.id,
        "status": state.status,
        "champion": state.champion,
        "challenger": state.challenger,
        "started": _iso(state.started),
        "started_by": state.started_by,
        "days": round((time.time() - state.started) / 86_400, 2),
        "enrolled": enrolled(abtest_logs(settings, state.id)),
        "planned_units": state.design["max_total"],
        "looks": len(state.looks),
    }
    if state.looks:
        last = state.looks[-1]
        out["last_look"] = {k: last[k] for k in ("look", "time", "fraction", "action", "report")}
        out["last_look"]["reasons"] = last["reasons"]
    if state.outcome:
        out["outcome"] = state.outcome
    return out


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- analysis
def _schedule(state: TestState, key: str, fraction: float) -> tuple[list[float], bool]:
    """The information fractions of the earlier looks (``key``: ``fraction`` for the
    primary metric, ``guard_fraction`` for the guardrails) with this one; False when it
    adds no information (the previous look is repeated: its boundary, no alpha spent)."""
    previous = [look[key] for look in state.looks if look.get(key)]
    if previous and fraction <= previous[-1] + 1e-9:
        return previous, False
    return [*previous, fraction], True


def _primary(
    ab: AbTest,
    state: TestState,
    spec: ModelSpec,
    frame: Any,
    final: bool,
) -> tuple[stats.Effect | None, stats.Cuped | None, stats.Monitor | None, list[float], bool]:
    metric = ab.primary_metric.value
    eligible, values = stats.metric_values(
        metric,
        frame["score"].to_numpy(),
        frame["label"].to_numpy(),
        frame["amount"].to_numpy(),
        spec.gates.decision_threshold,
    )
    rows = frame[eligible]
    effect, info = stats.arm_effect(
        values[eligible],
        rows["arm"].to_numpy(),
        rows["entity"].to_numpy(),
        stats.metric_info(metric).kind,
        ab.alpha,
        rows["covariate"].to_numpy() if ab.cuped_covariate else None,
        ab.cuped_covariate or "covariate",
    )
    if effect is None:
        return None, info, None, [], False
    fraction = 1.0 if final else min(1.0, int(eligible.sum()) / state.design["max_total"])
    fractions, new = _schedule(state, "fraction", fraction)
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


def _segments(ab: AbTest, spec: ModelSpec, frame: Any) -> list[stats.SegmentEffect]:
    metric = ab.primary_metric.value
    info = stats.metric_info(metric)
    effects: list[tuple[str, str, stats.Effect | None]] = []
    for name in ab.segments:
        for value in sorted(v for v in frame[name].dropna().unique()):
            part = frame[frame[name] == value]
            eligible, values = stats.metric_values(
                metric,
                part["score"].to_numpy(),
                part["label"].to_numpy(),
                part["amount"].to_numpy(),
                spec.gates.decision_threshold,
            )
            rows = part[eligible]
            effect, _ = stats.arm_effect(
                values[eligible],
                rows["arm"].to_numpy(),
                rows["entity"].to_numpy(),
                info.kind,
                ab.alpha,
                min_units=stats.MIN_SEGMENT_UNITS,
            )
            effects.append((name, str(value), effect))
    return stats.segment_effects(effects, info.better, ab.segment_correction, ab.alpha)


def _guardrails(
    ab: AbTest, spec: ModelSpec, frame: Any, schedule: list[float]
) -> list[stats.GuardrailResult]:
    out = []
    for guard in ab.guardrails:
        metric = guard.metric.value
        eligible, values = stats.metric_values(
            metric,
            frame["score"].to_numpy(),
            frame["label"].to_numpy(),
            frame["amount"].to_numpy(),
            spec.gates.decision_threshold,
        )
        rows = frame[eligible]
        effect, _ = stats.arm_effect(
            values[eligible],
            rows["arm"].to_numpy(),
            rows["entity"].to_numpy(),
            stats.metric_info(metric).kind,
            ab.alpha,
        )
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


def analyse(
    settings: Settings, spec: ModelSpec, actor: str = ANALYST, now: float | None = None
) -> dict[str, Any]:
    """One look at the running test: report, decision, audit, and the action on it.

    Returns the report (as written to ``report.json``)."""
    from ops.abtest_data import collect
    from serving.control.rollout_windows import read_labels

    ab = _section(spec)
    state = _running(settings, spec)
    now = time.time() if now is None else now
    day = (now - state.started) / 86_400
    final = day >= ab.max_days
    observations = collect(
        spec,
        abtest_logs(settings, state.id),
        [
            _deployment_folder(settings, spec.name, v["version"])
            for v in (state.champion, state.challenger)
        ],
        read_labels(settings.var_dir / "labels" / spec.name),
        state.started,
    )
    frame = observations.rows
    effect, info, monitor, fractions, new = _primary(ab, state, spec, frame, final)
    # the guardrails' information time: the primary's, or the calendar's when that is
    # further (labels late, or no primary data yet): a harm is caught from the first day
    calendar = 1.0 if final else min(1.0, day / ab.max_days)
    guard_fraction = max(monitor.fraction if monitor else 0.0, calendar, 1e-6)
    guard_schedule, guard_new = _schedule(state, "guard_fraction", guard_fraction)
    guardrails = _guardrails(ab, spec, frame, guard_schedule)
    srm = stats.srm_check(
        observations.enrolled["control"],
        observations.enrolled["treatment"],
        ab.treatment_share,
        ab.srm_pvalue,
    )
    segments = _segments(ab, spec, frame) if effect is not None else []
    decision = stats.decide(monitor, guardrails, srm, segments, final, ab.primary_metric.value)
    look = {
        "look": len(fractions) if monitor else 0,
        "new_information": new,
        "guard_fraction": guard_schedule[-1] if guard_new else None,
        "time": _iso(now),
        "day": round(day, 3),
        "fraction": monitor.fraction if monitor else 0.0,
        "z": monitor.z if monitor else None,
        "boundary": monitor.boundary if monitor else None,
        "pvalue": monitor.pvalue if monitor else None,
        "ci_low": monitor.ci_low if monitor else None,
        "ci_high": monitor.ci_high if monitor else None,
        "final": bool(monitor.final) if monitor else final,
        "action": decision.action,
        "reasons": decision.reasons,
    }
    findings = Findings(effect, info, monitor, guardrails, srm, segments, decision)
    report = _report(state, ab, observations, findings, look)
    paths = _write_report(settings, state, report, look["look"], now)
    look["report"] = str(paths["html"])
    if (monitor is not None and new) or guard_new:  # a repeat spends nothing: not recorded
        state.looks.append(_clean({**look, "fraction": look["fraction"] if new else None}))
    _save(settings, state)
    _audit(
        settings,
        "abtest_analysed",
        state,
        actor,
        {
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
            "guardrails_breached": [g.metric for g in guardrails if g.breached],
            "srm_pvalue": srm.pvalue,
            "report_sha256": paths["sha256"],
        },
    )
    if decision.action in ("ship", "stop"):
        _end(
            settings,
            state,
            "shipped" if decision.action == "ship" else "stopped",
            actor,
            {
                "decision": decision.action,
                "reasons": decision.reasons,
                "look": look["look"],
                "report": str(paths["html"]),
                "report_sha256": paths["sha256"],
            },
        )
        log.warning(
            "%s: A/B test %s %s: %s",
            spec.name,
            state.id,
            decision.action,
            "; ".join(decision.reasons),
        )
    return report


def _clean(look: dict[str, Any]) -> dict[str, Any]:
    return stats.json_safe(look)


@dataclass(frozen=True)
class Findings:
    """What one look found: the effect (and its CUPED adjustment), the sequential
    monitor, the guardrails, the sample-ratio check, the segments and the decision."""

    effect: stats.Effect | None
    cuped: stats.Cuped | None
    monitor: stats.Monitor | None
    guardrails: list[stats.GuardrailResult]
    srm: stats.SampleRatio
    segments: list[stats.SegmentEffect]
    decision: stats.Decision


def _report(
    state: TestState, ab: AbTest, observations: Any, findings: Findings, look: dict[str, Any]
) -> dict[str, Any]:
    effect, info, monitor = findings.effect, findings.cuped, findings.monitor
    guardrails, srm, segments = findings.guardrails, findings.srm, findings.segments
    decision = findings.decision
    frame = observations.rows
    history = [h for h in state.looks if h.get("fraction") is not None]
    if monitor is not None and look["new_information"]:
        history = [*history, _clean(look)]
    report = {
        "test": {
            "id": state.id,
            "model": state.model,
            "hypothesis": ab.hypothesis,
            "primary_metric": ab.primary_metric.value,
            "champion": state.champion,
            "challenger": state.challenger,
            "started": _iso(state.started),
            "started_by": state.started_by,
            "split_percent": ab.split_percent,
            "exposure_cap": ab.exposure_cap.model_dump(),
            "design": state.design,
        },
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
    return stats.json_safe(report)


def _write_report(
    settings: Settings, state: TestState, report: dict[str, Any], look: int, now: float
) -> dict[str, Any]:
    """``look-<n>-<UTC time>/report.{json,html}`` (never overwritten: the audit event
    holds the JSON's SHA-256) and copies as ``latest.*``."""
    from pipelines.abtest_report import render_html

    stamp = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    folder = report_dir(settings, state.model, state.id) / f"look-{look:03d}-{stamp}"
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2, sort_keys=True, default=_json_default)
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
