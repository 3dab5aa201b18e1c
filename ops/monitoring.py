"""The monitoring job: one pass over a model's live window, its verdict and its alerts.

:func:`run_monitoring` (the monitoring DAG's task, ``govml monitor``; ``govml drift
report`` runs its drift part on two files):

1. **Reference**: the champion's test split with its scores (or ``--reference``).
2. **Current**: the champion's prediction log over the spec's ``monitoring.lookback``
   (or ``--current``), joined with the label and context feeds by request id.
3. **Drift** on every feature and the score, whole population and each segment the
   spec defines (:func:`pipelines.drift.compare`).
4. **Performance with delayed labels**: per window and segment, from the labels known
   now; **decay** when the labelled window's ROC-AUC or recall at the spec's FPR falls
   below the champion's own test figures by more than the spec allows.
5. **Technical metrics** (latency percentiles and throughput from the log, error
   rates from the server's ``/metrics``), **business KPIs**, **compliance** (fairness on
   live decisions over time, declines with complete reason codes, model-card
   completeness, approvals still valid).
6. **Market early warning** (specs with ``monitoring.market``): the indicator series
   is watched by an online CUSUM whose state persists between runs.
7. **Alerts** for each threshold crossed: recorded in the audit trail (``drift_alarm``,
   ``monitoring_alert``) and sent through the notifier (a webhook or the log).
8. **Report**: ``report.json`` and ``report.html`` (plots) in
   ``<var>/monitoring/<model>/<stamp>/``, logged to MLflow against the serving version.
9. **Retrain?** A drift alarm, decay or a market shift (as ``monitoring.retrain_on``
   allows) sets ``retrain`` with its reasons: the DAG turns that into an Asset event.

The labelled recent window is also kept as ``<var>/monitoring/<model>/recent_labelled
.parquet``: the lifecycle scores a retrained candidate and the champion on it before the
candidate can go further.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ops.monitoring_checks import (
    Alert,
    Inputs,
    available_segments,
    compliance_part,
    drift_part,
    kpi_part,
    market_part,
    metrics_of,
    performance_part,
    technical_part,
)
from pipelines.config import Settings, load_settings
from pipelines.errors import DataValidationError
from pipelines.spec import ModelSpec, load_spec

log = logging.getLogger(__name__)

RECENT_LABELLED = "recent_labelled.parquet"


# ---------------------------------------------------------------------------------------
# inputs


def _champion(settings: Settings, spec: ModelSpec) -> tuple[str, str] | None:
    """(version, lifecycle run id) of the champion, or None."""
    from registry.mlflow_registry import CHAMPION, RUN_TAG, version_by_alias

    version = version_by_alias(settings.mlflow_tracking_uri, spec.name, CHAMPION)
    if version is None:
        return None
    return str(version.version), (version.tags or {}).get(RUN_TAG, "")


def _server_metrics(settings: Settings, spec: ModelSpec, version: str) -> str | None:
    import urllib.request

    from serving.control.routes import endpoint_of

    try:
        url = endpoint_of(settings, spec.name, version)["url"]
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:  # noqa: S310
            return resp.read().decode()
    except Exception as exc:  # noqa: BLE001 (no server: technical metrics from the log only)
        log.info("no /metrics from %s v%s: %s", spec.name, version, exc)
        return None


def _current_rows(
    spec: ModelSpec, settings: Settings, now: dt.datetime, current: Path | None, version: Any
) -> tuple[pd.DataFrame, str]:
    """The current rows (the given file, else the champion's prediction log over the
    lookback) joined with the label and context feeds; and where they came from."""
    from ops import monitoring_data as data

    if current is not None:
        cur = data.current_from_file(current, spec)
        cur_source = str(current)
    else:
        since = now - dt.timedelta(seconds=spec.monitoring.lookback_seconds)
        folder = data.deployment_dir(settings, spec.name, str(version)) / "predictions"
        cur = data.read_log(folder, since, now)
        cur_source = f"prediction log {folder} since {since:%Y-%m-%d %H:%M} UTC"
    if current is None or "request_id" in cur.columns:  # feeds join on the request id
        labels = data.read_feed(settings.var_dir / "labels" / spec.name)
        context = data.read_feed(settings.var_dir / "context" / spec.name)
        cur = data.join_feeds(cur, labels, context)
    return cur, cur_source


def gather_inputs(
    spec: ModelSpec,
    settings: Settings,
    now: dt.datetime,
    reference: Path | None = None,
    current: Path | None = None,
) -> Inputs | None:
    """The reference and current frames; None when there is nothing to monitor yet."""
    from ops import monitoring_data as data

    champion = None if reference is not None and current is not None else _champion(settings, spec)
    if champion is None and (reference is None or current is None):
        return None
    version, run_id = champion if champion else (None, "")
    run_dir = data.champion_run_dir(settings, spec, run_id) if run_id else None
    if reference is not None:
        ref = data.read_table(reference)
        ref_source = str(reference)
    elif run_dir is not None and (run_dir / "features").is_dir():
        ref = data.reference_from_run(spec, run_dir)
        ref_source = f"champion v{version} test split ({run_dir})"
    else:
        raise DataValidationError(
            f"{spec.name}: the champion v{version}'s run folder {run_dir} is not on this "
            "machine; give the reference data with --reference"
        )
    cur, cur_source = _current_rows(spec, settings, now, current, version)
    ref_metrics: dict[str, Any] = {}
    card = None
    booster = None
    if run_dir is not None:
        metrics_file = run_dir / "evaluate" / "metrics.json"
        if metrics_file.is_file():
            ref_metrics = json.loads(metrics_file.read_text()).get("candidate", {})
        if (run_dir / "train" / "model.txt").is_file():
            booster = run_dir / "train" / "model.txt"
        from registry.model_card import card_context

        card = card_context(spec, run_dir, run_id, version)
    if not ref_metrics:
        ref_metrics = metrics_of(spec, ref)
    return Inputs(
        reference=ref,
        current=cur,
        version=version,
        reference_metrics=ref_metrics,
        source={"reference": ref_source, "current": cur_source},
        metrics_text=_server_metrics(settings, spec, version)
        if version and current is None
        else None,
        booster_path=booster,
        card=card,
    )


# ---------------------------------------------------------------------------------------
# the job


@dataclass(frozen=True)
class MonitoringWindow:
    """What one run assesses: the reference and current data (parquet files; by default
    the champion's training data and the recent prediction log) as of ``now``."""

    reference: Path | None = None
    current: Path | None = None
    now: dt.datetime | None = None


@dataclass(frozen=True)
class MonitoringSteps:
    """The optional steps of a run: record the alerts (audit, state, registry check),
    log to MLflow, watch the market."""

    record: bool = True
    log_mlflow: bool = True
    market: bool = True


def run_monitoring(
    spec_path: str | Path,
    *,
    settings: Settings | None = None,
    window: MonitoringWindow = MonitoringWindow(),
    out_dir: Path | None = None,
    html_path: Path | None = None,
    steps: MonitoringSteps = MonitoringSteps(),
    actor: str = "monitoring",
) -> dict[str, Any]:
    """Run every check once; write the report; record and send the alerts."""
    from ops.monitoring_report import write_report

    settings = settings or load_settings()
    spec = load_spec(spec_path)
    reference, current = window.reference, window.current
    record, log_mlflow, market = steps.record, steps.log_mlflow, steps.market
    now = window.now or dt.datetime.now(dt.UTC)
    as_of = pd.Timestamp(now)
    if html_path is not None:
        out_dir = Path(html_path).parent
    out_dir = Path(out_dir) if out_dir else _run_folder(settings, spec, now)
    inputs = gather_inputs(spec, settings, now, reference, current)
    market_frame, market_summary, market_alerts = (
        market_part(spec, settings) if market else (None, {}, [])
    )
    result: dict[str, Any] = {
        "model": spec.name, "version": None, "as_of": now.isoformat(), "out_dir": str(out_dir),
        "alerts": [], "retrain": False, "reasons": [],
    }  # fmt: skip
    sections: dict[str, Any] = {"market": market_summary, "market_frame": market_frame}
    alerts = list(market_alerts)
    if inputs is None:
        result["status"] = "no champion to monitor"
    elif len(inputs.current) < spec.monitoring.min_rows:
        result.update(version=inputs.version, status=(
            f"{len(inputs.current)} current rows, fewer than monitoring.min_rows "
            f"({spec.monitoring.min_rows}): not assessed"
        ))  # fmt: skip
    else:
        found, raised = _assess(spec, settings, inputs, now)
        alerts += raised
        sections.update(found)
        result.update(version=inputs.version, status=_status(alerts))
        result.update(drift=found["drift"].summary(), live=found["live"])
    _conclude(result, alerts, assessed=inputs is not None)
    html, json_path = write_report(spec, result, sections, out_dir, html_path)
    result["report_html"], result["report_json"] = str(html), str(json_path)
    if record:
        _record(spec, settings, result, alerts, actor)
        if inputs is not None and current is None:
            _keep_recent_labelled(spec, settings, inputs.current, as_of)
        result["registry"] = _registry_check(spec, settings, actor)
    if log_mlflow and result.get("version"):
        _log_mlflow(spec, settings, result, out_dir)
    return result


def _status(alerts: list[Alert]) -> str:
    return "alarm" if any(a.severity == "alarm" for a in alerts) else ("warn" if alerts else "ok")


def _conclude(result: dict[str, Any], alerts: list[Alert], *, assessed: bool) -> None:
    """The run's alerts into its result, with the retrain reasons they give; an alert
    when there was nothing to assess (the market) still makes it an alarm."""
    if not assessed and alerts:
        result["status"] = "alarm"
    result["alerts"] = [a.to_dict() for a in alerts]
    result["reasons"] = [a.message for a in alerts if a.retrain]
    result["retrain"] = bool(result["reasons"])


def _run_folder(settings: Settings, spec: ModelSpec, now: dt.datetime) -> Path:
    """This run's report folder: ``<var>/monitoring/<model>/<UTC stamp>``."""
    return settings.var_dir / "monitoring" / spec.name / now.strftime("%Y%m%dT%H%M%SZ")


def _assess(
    spec: ModelSpec, settings: Settings, inputs: Inputs, now: dt.datetime
) -> tuple[dict[str, Any], list[Alert]]:
    """Every check on a window with enough rows: the report's sections and the alerts
    (drift, decay, technical, compliance)."""
    as_of = pd.Timestamp(now)
    drift, drift_alerts, missing = drift_part(spec, inputs)
    segments, _ = available_segments(spec, inputs.reference, inputs.current)
    performance, live, decay_alerts = performance_part(spec, inputs, as_of, segments)
    technical, tech_summary, tech_alerts = technical_part(spec, inputs)
    kpis = kpi_part(spec, inputs, as_of)
    fairness, compliance, compliance_alerts = compliance_part(spec, inputs, settings, now, as_of)
    sections = dict(
        drift=drift, segments_unavailable=missing, performance=performance, live=live,
        technical=technical, technical_summary=tech_summary, kpis=kpis,
        fairness=fairness, compliance=compliance, source=inputs.source,
    )  # fmt: skip
    return sections, drift_alerts + decay_alerts + tech_alerts + compliance_alerts


def _keep_recent_labelled(
    spec: ModelSpec, settings: Settings, obs: pd.DataFrame, as_of: pd.Timestamp
) -> None:
    """The labelled rows of the window, for the champion-vs-candidate check."""
    from pipelines.monitoring import known_labels

    if "label" not in obs.columns:
        return
    labels, _ = known_labels(obs, as_of)
    mask = ~np.isnan(labels)
    names = [f for f in spec.features.names if f in obs.columns]
    if mask.sum() == 0 or len(names) != len(spec.features.names):
        return
    frame = obs.loc[mask, ["request_id", "timestamp", *names]].copy()
    frame[spec.data.target] = labels[mask].astype(np.int64)
    folder = settings.var_dir / "monitoring" / spec.name
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{RECENT_LABELLED}.tmp"
    frame.to_parquet(tmp, index=False)
    tmp.replace(folder / RECENT_LABELLED)


def _registry_check(spec: ModelSpec, settings: Settings, actor: str) -> dict[str, Any]:
    """The registry reconciler for this model: aliases and artifacts against the audit
    chain; a drift is recorded (``registry_drift``) and alerted once (docs/security.md)."""
    from ops.endpoints import reconcile_registry
    from registry.databases import normalise_url

    if settings.mlflow_tracking_uri == normalise_url(settings.mlflow_backend_url):
        # the stack is down (ops.cli.monitoring reads the store directly): the artifacts
        # behind the tracking server cannot be checked now; the next run with it will
        return {"skipped": "the MLflow server does not answer"}
    try:
        (report,) = reconcile_registry(settings, [spec.name], actor=actor)
    except Exception as exc:  # noqa: BLE001 (MLflow may be down: the report says so)
        log.error("registry check of %s failed: %s", spec.name, exc)
        return {"error": str(exc)}
    return report.to_dict()


def _record(
    spec: ModelSpec, settings: Settings, result: dict[str, Any], alerts: list[Alert], actor: str
) -> None:
    from ops.notify import notify
    from registry.audit import append_event

    for alert in alerts:
        payload = {**alert.to_dict(), "report": result["report_html"]}
        append_event(
            settings.governance_url,
            "drift_alarm" if alert.kind == "drift" else "monitoring_alert",
            actor=actor,
            payload=json.loads(json.dumps(payload, default=str)),
            model_name=spec.name,
            model_version=result.get("version"),
        )
        notify({
            "model": spec.name, "version": result.get("version"), "kind": alert.kind,
            "severity": alert.severity, "message": alert.message, "details": alert.details,
            "raised_at": result["as_of"], "report": result["report_html"],
        })  # fmt: skip


def _log_mlflow(spec: ModelSpec, settings: Settings, result: dict[str, Any], out_dir: Path) -> None:
    from registry.mlflow_monitoring import log_monitoring
    from registry.mlflow_registry import artifact_location_for

    drift = result.get("drift") or {}
    live = result.get("live") or {}
    metrics = {
        "max_psi": drift.get("max_psi"),
        "drifted_features": float(len(drift.get("drifted_features", []))),
        "drifted_segments": float(len(drift.get("drifted_segments", {}))),
        "alerts": float(len(result["alerts"])),
        "live_roc_auc": live.get("roc_auc"),
        "live_recall_at_fpr": live.get("recall_at_fpr"),
        "labelled_rows": float(live.get("n_labelled", 0)),
    }
    try:
        result["mlflow_run_id"] = log_monitoring(
            settings.mlflow_tracking_uri, spec.name, result["version"], out_dir,
            {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
            {"govml.monitoring.status": str(result.get("status", ""))},
            artifact_location=artifact_location_for(
                settings.mlflow_tracking_uri, settings.mlflow_artifacts
            ),
        )  # fmt: skip
    except Exception as exc:  # noqa: BLE001 (the report is on disk; MLflow may be down)
        log.error("could not log the monitoring run to MLflow: %s", exc)
        result["mlflow_error"] = str(exc)
