"""``govml monitor``, ``govml drift report`` and ``govml retrain``.

* ``monitor MODEL``: run the monitoring job once now (what the hourly DAG runs):
  report, alerts (audit trail + notifier), MLflow run against the champion.
* ``drift report --reference A --current B --spec S --out R.html``: drift (and, when the
  files carry scores, decisions and labels, performance and KPIs) of two files; writes
  ``R.html`` and ``R.json``; records nothing.
* ``retrain MODEL --reason TEXT --as USER``: an external event (a market-shock notice,
  a regulator's request). With Airflow up it posts the model's retrain Asset event
  (the lifecycle DAG runs on it and records the reason); without Airflow it runs the
  lifecycle here with the reason (``govml run``'s path).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ops.cli.common import (
    Commands,
    add_identity_arguments,
    authenticate,
    spec_path,
)
from pipelines.config import Settings


def _existing(path: str, flag: str) -> Path:
    from pipelines.errors import ConfigError

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{flag} {path}: no such file")
    return p


def _print_result(result: dict[str, Any]) -> None:
    print(f"{result['model']} v{result.get('version')}: {result.get('status')}")
    for alert in result["alerts"]:
        flag = " (retrain)" if alert["retrain"] else ""
        print(f"  [{alert['severity']}] {alert['kind']}: {alert['message']}{flag}")
    print(f"report: {result['report_html']}")


def cmd_monitor(args: argparse.Namespace, settings: Settings) -> int:
    import dataclasses

    from ops.lifecycle_runner import tracking_uri
    from ops.monitoring import MonitoringSteps, MonitoringWindow, run_monitoring

    # the tracking server when it answers, else its backend store (stack not up)
    settings = dataclasses.replace(settings, mlflow_tracking_uri=tracking_uri(settings))
    result = run_monitoring(
        spec_path(args.model, settings),
        settings=settings,
        window=MonitoringWindow(
            reference=_existing(args.reference, "--reference") if args.reference else None,
            current=_existing(args.current, "--current") if args.current else None,
        ),
        steps=MonitoringSteps(record=not args.no_record, log_mlflow=not args.no_record),
    )
    if args.json:
        json.dump(result, sys.stdout, indent=2, default=str)
        print()
    else:
        _print_result(result)
    return 0


def cmd_drift_report(args: argparse.Namespace, settings: Settings) -> int:
    from ops.monitoring import MonitoringSteps, MonitoringWindow, run_monitoring

    out = Path(args.out)
    if out.suffix != ".html":
        from pipelines.errors import ConfigError

        raise ConfigError(f"--out {args.out}: give an .html path (the JSON goes beside it)")
    result = run_monitoring(
        spec_path(args.spec, settings),
        settings=settings,
        window=MonitoringWindow(
            reference=_existing(args.reference, "--reference"),
            current=_existing(args.current, "--current"),
        ),
        html_path=out,
        steps=MonitoringSteps(record=False, log_mlflow=False, market=False),
    )
    _print_result(result)
    return 0


def cmd_retrain(args: argparse.Namespace, settings: Settings) -> int:
    from ops.retrain import post_retrain_event
    from pipelines.errors import ConfigError
    from pipelines.spec import load_spec

    reason = (args.reason or "").strip()
    if not reason:
        raise ConfigError("--reason must say why (it is recorded in the audit trail)")
    path = spec_path(args.model, settings)
    spec = load_spec(path)
    identity = authenticate(args, settings, args.user)
    if identity.token is not None:
        event = post_retrain_event(
            settings.airflow_url,
            identity.token,
            spec.name,
            reason,
            source=f"govml retrain by {identity.user}",
        )
        print(
            f"{spec.name}: retrain event {event.get('id')} posted; the {spec.name}_lifecycle "
            f"DAG runs on it (reason: {reason})"
        )
        return 0
    from ops.lifecycle_runner import LifecycleRequest, run_lifecycle

    print(f"Airflow is not running: running the {spec.name} lifecycle here (reason: {reason})")
    return run_lifecycle(
        settings, LifecycleRequest(spec, path, {"reason": reason}, identity=identity)
    )


def add_monitoring_commands(sub: Commands) -> None:
    p = sub.add("monitor", cmd_monitor, "run a model's monitoring job now (drift, decay, KPIs)")
    p.add_argument("model", help="spec name or path")
    p.add_argument("--reference", help="reference data file instead of the champion's test split")
    p.add_argument("--current", help="current data file instead of the prediction log")
    p.add_argument("--no-record", action="store_true", help="no audit events, no MLflow run")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    verbs = sub.group("drift", "drift reports", metavar=None)
    p = verbs.add("report", cmd_drift_report, "drift of CURRENT against REFERENCE, as HTML + JSON")
    p.add_argument("--reference", required=True, help="reference data (Parquet/CSV/JSONL)")
    p.add_argument("--current", required=True, help="current data (Parquet/CSV/JSONL)")
    p.add_argument("--spec", required=True, help="spec name or path (features, segments)")
    p.add_argument("--out", required=True, help="report path (.html; the .json goes beside)")
    p = sub.add("retrain", cmd_retrain, "trigger a retrain with a recorded reason")
    p.add_argument("model", help="spec name or path")
    p.add_argument("--reason", required=True, help="why (recorded in the audit trail)")
    add_identity_arguments(p)
