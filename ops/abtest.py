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
import logging
import os
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ops.abtest_look import (
    Findings,
    analysed_payload,
    build_report,
    clean_look,
    guardrail_results,
    look_schedule,
    monitor_fields,
    primary_effect,
    segment_effects,
    write_report,
)
from ops.abtest_state import (
    AbTestError,
    TestState,
    abtest_logs,
    iso_time,
    load_state,
    save_state,
)
from pipelines import abtest as stats
from pipelines import abtest_design
from pipelines.config import Settings
from pipelines.spec import ModelSpec
from pipelines.spec_abtest import AB_AMOUNT_FEATURE, AbTest
from serving.control.routes import (
    RUNNING,
    abtest_state_path,
    active_rollout,
    endpoint_of,
    read_routes,
    routes_path,
    write_route,
)

log = logging.getLogger(__name__)
ANALYST = "abtest-analyst"
MEASURE_DAYS = 7  # the champion's traffic and baseline are measured over this many days


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
    from serving.control.rollout_windows import log_rows, logged_feature, read_labels

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
        np.array([logged_feature(r, amount) for r in scored]),
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


def design(
    settings: Settings,
    spec: ModelSpec,
    daily_requests: float | None = None,
    now: float | None = None,
    eligible_share: float | None = None,
) -> abtest_design.Design:
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
        plan = abtest_design.design_test(
            metric,
            baseline,
            ab.minimum_detectable_effect,
            baseline_sd=sd,
            choices=abtest_design.DesignChoices(
                alpha=ab.alpha,
                power=ab.power,
                treatment_share=ab.treatment_share,
                method=ab.sequential.method,
                spending=ab.sequential.spending,
            ),
            daily_units=daily_units,
            max_days=ab.max_days,
        )
    except ValueError as exc:
        raise AbTestError(f"{spec.name}: abtest: {exc}") from None
    notes = [*plan.warnings, *_design_notes(ab, info, daily_units is None)]
    return abtest_design.Design(**{**asdict(plan), "warnings": notes})


def _design_notes(ab: AbTest, info: Any, no_traffic: bool) -> list[str]:
    """What the reader of a design should know beyond the numbers."""
    metric = ab.primary_metric.value
    notes = []
    if no_traffic:
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
    return notes


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


def _startable(settings: Settings, spec: ModelSpec) -> TestState | None:
    """The model's last test (None: never tested), once nothing stands in the way of a new
    one: no test running, no rollout in progress."""
    current = load_state(settings, spec.name)
    if current is not None and current.status == RUNNING:
        raise AbTestError(
            f"{spec.name}: A/B test {current.id} (v{current.challenger['version']}) is running; "
            f"stop it first (`govml abtest stop {spec.name}`)"
        )
    phase = active_rollout(settings, spec)
    if phase is not None:
        raise AbTestError(f"{spec.name}: a rollout is in progress ({phase})")
    return current


def start(settings: Settings, spec: ModelSpec, version: str, actor: str) -> TestState:
    """Put the deployed ``version`` in an A/B test against the gateway's champion."""
    ab = _section(spec)
    current = _startable(settings, spec)
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
    save_state(settings, state)
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
    save_state(settings, state)
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
        "started": iso_time(state.started),
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


def analyse(
    settings: Settings, spec: ModelSpec, actor: str = ANALYST, now: float | None = None
) -> dict[str, Any]:
    """One look at the running test: report, decision, audit, and the action on it.

    Returns the report (as written to ``report.json``)."""
    ab = _section(spec)
    state = _running(settings, spec)
    now = time.time() if now is None else now
    day = (now - state.started) / 86_400
    final = day >= ab.max_days
    observations = _observe(settings, spec, state)
    frame = observations.rows
    effect, info, monitor, fractions, new = primary_effect(ab, state, spec, frame, final)
    # the guardrails' information time: the primary's, or the calendar's when that is
    # further (labels late, or no primary data yet): a harm is caught from the first day
    calendar = 1.0 if final else min(1.0, day / ab.max_days)
    guard_fraction = max(monitor.fraction if monitor else 0.0, calendar, 1e-6)
    guard_schedule, guard_new = look_schedule(state, "guard_fraction", guard_fraction)
    guardrails = guardrail_results(ab, spec, frame, guard_schedule)
    srm = stats.srm_check(
        observations.enrolled["control"],
        observations.enrolled["treatment"],
        ab.treatment_share,
        ab.srm_pvalue,
    )
    segments = segment_effects(ab, spec, frame) if effect is not None else []
    decision = stats.decide(monitor, guardrails, srm, segments, final, ab.primary_metric.value)
    look = {
        "look": len(fractions) if monitor else 0,
        "new_information": new,
        "guard_fraction": guard_schedule[-1] if guard_new else None,
        "time": iso_time(now),
        "day": round(day, 3),
        **monitor_fields(monitor, final),
        "action": decision.action,
        "reasons": decision.reasons,
    }
    findings = Findings(effect, info, monitor, guardrails, srm, segments, decision)
    report = build_report(state, ab, observations, findings, look)
    paths = write_report(settings, state, report, look["look"], now)
    look["report"] = str(paths["html"])
    if (monitor is not None and new) or guard_new:  # a repeat spends nothing: not recorded
        state.looks.append(clean_look({**look, "fraction": look["fraction"] if new else None}))
    save_state(settings, state)
    _audit(settings, "abtest_analysed", state, actor, analysed_payload(look, findings, paths))
    if decision.action in ("ship", "stop"):
        _conclude(settings, state, actor, look, paths)
    return report


def _observe(settings: Settings, spec: ModelSpec, state: TestState) -> Any:
    """The test's observations: the gateway's A/B logs joined to both arms' prediction
    logs and the labels (:func:`ops.abtest_data.collect`)."""
    from ops.abtest_data import collect
    from serving.control.rollout_windows import read_labels

    return collect(
        spec,
        abtest_logs(settings, state.id),
        [
            _deployment_folder(settings, spec.name, v["version"])
            for v in (state.champion, state.challenger)
        ],
        read_labels(settings.var_dir / "labels" / spec.name),
        state.started,
    )


def _conclude(
    settings: Settings,
    state: TestState,
    actor: str,
    look: dict[str, Any],
    paths: dict[str, Any],
) -> None:
    """A ``ship`` or ``stop`` decision ends the test: the champion serves alone again."""
    action, reasons = look["action"], look["reasons"]
    _end(
        settings,
        state,
        "shipped" if action == "ship" else "stopped",
        actor,
        {
            "decision": action,
            "reasons": reasons,
            "look": look["look"],
            "report": str(paths["html"]),
            "report_sha256": paths["sha256"],
        },
    )
    log.warning("%s: A/B test %s %s: %s", state.model, state.id, action, "; ".join(reasons))
