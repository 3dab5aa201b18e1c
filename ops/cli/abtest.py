"""``govml abtest``: design, start, status, report, stop.

``design`` sizes the test from the spec's ``abtest`` section at the champion's observed
traffic (or ``--daily-traffic``). ``start`` and ``stop`` change what customers are
served: they are recorded in the audit trail with the person's identity, proven like
``govml approve`` proves it. ``report`` runs one analysis look now, as the daily DAG
does (as ``abtest-analyst``): it writes the report, records the decision and acts on a
stop or ship (the champion takes all traffic again). Every look counts: the alpha
spending accounts for it.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ops.cli.common import (
    Commands,
    acting_user,
    add_identity_arguments,
    load_model_spec,
    positive_int,
)
from pipelines.config import Settings


def _share(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not 0 < number <= 1:
        raise argparse.ArgumentTypeError(f"{value!r} must be a share in (0, 1]")
    return number


def _design_lines(spec: Any, plan: Any) -> list[str]:
    ab = spec.abtest
    days = f"{plan.days} days" if plan.days is not None else "unknown"
    traffic = f"{plan.daily_units:,.0f}/day" if plan.daily_units else "not observed"
    lines = [
        f"{spec.name}: {ab.hypothesis}",
        f"  primary metric    {plan.metric} ({plan.kind}, {plan.better} is better), "
        f"baseline {plan.baseline:.4g}"
        + (f", sd {plan.baseline_sd:.4g}" if plan.baseline_sd else ""),
        f"  detect            {plan.minimum_detectable_effect:g} (absolute) at alpha "
        f"{plan.alpha:g}, power {plan.power:g}, {plan.treatment_share:.0%} to the treatment",
        f"  fixed horizon     {plan.fixed_control:,} control + {plan.fixed_treatment:,} "
        "treatment units",
        f"  sequential        {plan.method} ({plan.spending}), {plan.looks} daily looks: up to "
        f"{plan.max_control:,} + {plan.max_treatment:,} units (x{plan.inflation:.3f})",
        f"  eligible traffic  {traffic}; duration {days} (at most {plan.max_days})",
    ]
    guards = ", ".join(f"{g.metric.value} <= +{g.max_worsening:g}" for g in ab.guardrails)
    lines.append(f"  guardrails        {guards or 'none'} (alpha {ab.guardrail_alpha:g})")
    lines += [f"  warning: {w}" for w in plan.warnings]
    return lines


def cmd_design(args: argparse.Namespace, settings: Settings) -> int:
    from ops.abtest import design

    spec = load_model_spec(args.model, settings)
    plan = design(
        settings, spec, daily_requests=args.daily_traffic, eligible_share=args.eligible_share
    )
    if args.json:
        print(json.dumps(plan.as_dict(), indent=2, sort_keys=True))
    else:
        print("\n".join(_design_lines(spec, plan)))
    return 0


def cmd_start(args: argparse.Namespace, settings: Settings) -> int:
    from ops.abtest import start

    spec = load_model_spec(args.model, settings)
    state = start(settings, spec, args.version, acting_user(args, settings))
    print(
        f"{spec.name}: A/B test {state.id} started by {state.started_by}: v{args.version} "
        f"(treatment, {spec.abtest.split_percent:g}%) vs v{state.champion['version']} "
        f"(control); planned {state.design['max_total']:,} units"
    )
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from ops.abtest import status

    spec = load_model_spec(args.model, settings)
    print(json.dumps(status(settings, spec), indent=2, sort_keys=True))
    return 0


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    from ops.abtest import analyse

    spec = load_model_spec(args.model, settings)
    report = analyse(settings, spec)
    look, decision = report["look"], report["decision"]
    print(
        f"{spec.name}: look {look['number']} ({look['fraction']:.0%} of the planned sample, "
        f"day {look['day']:.1f}): {decision['action']}"
    )
    for reason in decision["reasons"]:
        print(f"  - {reason}")
    from ops.abtest_state import report_dir

    folder = report_dir(settings, spec.name, report["test"]["id"])
    print(f"  report: {folder / 'latest.html'} (JSON: {folder / 'latest.json'})")
    return 0


def cmd_stop(args: argparse.Namespace, settings: Settings) -> int:
    from ops.abtest import stop

    spec = load_model_spec(args.model, settings)
    state = stop(settings, spec, acting_user(args, settings), args.reason)
    print(f"{spec.name}: A/B test {state.id} stopped by {args.user}; the champion serves all")
    return 0


def add_abtest_commands(sub: Commands) -> None:
    verbs = sub.group("abtest", "A/B tests: design, start, status, report, stop")
    p = verbs.add("design", cmd_design, "sample size, sequential plan and duration")
    p.add_argument("model")
    p.add_argument(
        "--daily-traffic",
        type=positive_int,
        default=None,
        help="scoring requests per day (default: the champion's observed traffic)",
    )
    p.add_argument(
        "--eligible-share",
        type=_share,
        default=None,
        help="share of requests the metric counts, e.g. the fraud rate for a capture rate "
        "(default: measured from the champion's labelled log)",
    )
    p.add_argument("--json", action="store_true", help="the design as JSON")
    p = verbs.add("start", cmd_start, "A/B test a deployed version against the champion")
    p.add_argument("model")
    p.add_argument("--version", required=True, help="the deployed version to test")
    add_identity_arguments(p)
    p = verbs.add("status", cmd_status, "the running (or last) test: enrolment, last look")
    p.add_argument("model")
    p = verbs.add(
        "report", cmd_report, "analyse now: report (HTML, JSON), decision, and act on stop/ship"
    )
    p.add_argument("model")
    p = verbs.add("stop", cmd_stop, "end the test: the champion serves all traffic")
    p.add_argument("model")
    p.add_argument("--reason", required=True, help="why (recorded in the audit trail)")
    add_identity_arguments(p)
