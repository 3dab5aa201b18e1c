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
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.config import Settings, load_settings
from pipelines.errors import DataValidationError
from pipelines.spec import ModelSpec, Segment, load_spec

log = logging.getLogger(__name__)

RECENT_LABELLED = "recent_labelled.parquet"
MARKET_STATE = "market_state.json"


@dataclass
class Alert:
    """One threshold crossed."""

    kind: str  # drift, decay, technical, compliance, market
    severity: str  # warn or alarm
    message: str
    retrain: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Inputs:
    """What one monitoring run looks at."""

    reference: pd.DataFrame
    current: pd.DataFrame
    version: str | None
    reference_metrics: dict[str, Any]
    source: dict[str, str]
    metrics_text: str | None = None
    booster_path: Path | None = None
    card: dict[str, Any] | None = None


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
        ref_metrics = _metrics_of(spec, ref)
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


def _metrics_of(spec: ModelSpec, frame: pd.DataFrame) -> dict[str, Any]:
    """ROC-AUC and recall at the monitoring FPR of a reference file with scores and labels."""
    from sklearn.metrics import roc_auc_score

    from pipelines.evaluation import recall_at_fpr

    target = spec.data.target
    if "score" not in frame.columns or target not in frame.columns:
        return {}
    rows = frame[["score", target]].dropna()
    y, s = rows[target].to_numpy().astype(int), rows["score"].to_numpy(np.float64)
    if len(np.unique(y)) < 2:
        return {}
    fpr = spec.monitoring.recall_fpr
    return {
        "roc_auc": float(roc_auc_score(y, s)),
        "recall_at_fpr": {str(float(fpr)): recall_at_fpr(y, s, fpr)},
    }


# ---------------------------------------------------------------------------------------
# the parts


def feature_kinds(
    spec: ModelSpec, reference: pd.DataFrame, current: pd.DataFrame
) -> tuple[list[str], list[str]]:
    """(numeric, categorical) model features present on both sides, plus the score."""
    from pipelines.features import categorical_features

    categorical_all = set(categorical_features(spec))
    present = [f for f in spec.features.names if f in reference.columns and f in current.columns]
    numeric = [f for f in present if f not in categorical_all]
    categorical = [f for f in present if f in categorical_all]
    if "score" in reference.columns and "score" in current.columns:
        numeric.append("score")
    return numeric, categorical


def available_segments(
    spec: ModelSpec, reference: pd.DataFrame, current: pd.DataFrame
) -> tuple[list[Segment], list[str]]:
    """Segments whose column both sides carry, and the names of the others."""
    usable = [
        s for s in spec.segments if s.column in reference.columns and s.column in current.columns
    ]
    missing = [s.name for s in spec.segments if s not in usable]
    return usable, missing


def drift_part(spec: ModelSpec, inputs: Inputs) -> tuple[Any, list[Alert], list[str]]:
    """The drift report, its alerts and the segments that could not be assessed."""
    from pipelines.drift import compare

    numeric, categorical = feature_kinds(spec, inputs.reference, inputs.current)
    segments, missing = available_segments(spec, inputs.reference, inputs.current)
    report = compare(
        inputs.reference,
        inputs.current,
        numeric=numeric,
        categorical=categorical,
        segments=segments,
        policy=spec.drift,
    )
    alerts = []
    summary = report.summary()
    alarm_rows = report.table[report.table["severity"] == "alarm"]
    if len(report.drifted):
        where = [f"{f} (whole population)" for f in summary["drifted_features"]]
        where += [f"{', '.join(fs)} in {seg}" for seg, fs in summary["segment_only_drift"].items()]
        severity = "alarm" if len(alarm_rows) else "warn"
        alerts.append(
            Alert(
                kind="drift",
                severity=severity,
                message=f"drift ({severity}): {'; '.join(where)}",
                retrain=severity == "alarm" and "drift" in spec.monitoring.retrain_on,
                details={
                    "drifted_features": summary["drifted_features"],
                    "drifted_segments": summary["drifted_segments"],
                    "max_psi": summary["max_psi"],
                    "max_psi_at": summary["max_psi_at"],
                },
            )
        )
    return report, alerts, missing


def _live_metrics(obs: pd.DataFrame, as_of: pd.Timestamp, fpr: float) -> dict[str, Any]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    from pipelines.evaluation import recall_at_fpr
    from pipelines.monitoring import known_labels

    labels, _ = known_labels(obs, as_of)
    mask = ~np.isnan(labels)
    y, s = labels[mask].astype(int), obs["score"].to_numpy(np.float64)[mask]
    out: dict[str, Any] = {"n_labelled": int(mask.sum()), "positives": int(y.sum())}
    if len(np.unique(y)) == 2:
        out["roc_auc"] = float(roc_auc_score(y, s))
        out["pr_auc"] = float(average_precision_score(y, s))
        out["recall_at_fpr"] = recall_at_fpr(y, s, fpr)
    return out


def performance_part(
    spec: ModelSpec, inputs: Inputs, as_of: pd.Timestamp, segments: list[Segment]
) -> tuple[pd.DataFrame, dict[str, Any], list[Alert]]:
    """Per-window performance, the labelled window's headline and the decay alert."""
    from pipelines.monitoring import performance_by_window

    m = spec.monitoring
    obs = inputs.current
    if obs.empty or "score" not in obs.columns:
        return pd.DataFrame(), {}, []
    by_window = performance_by_window(
        obs, window=m.window, segments=segments, as_of=as_of, fpr=m.recall_fpr,
        min_labels=min(m.min_labels, 50),
    )  # fmt: skip
    live = _live_metrics(obs, as_of, m.recall_fpr)
    ref = inputs.reference_metrics
    ref_recall = (ref.get("recall_at_fpr") or {}).get(str(float(m.recall_fpr)))
    live["reference_roc_auc"] = ref.get("roc_auc")
    live["reference_recall_at_fpr"] = ref_recall
    alerts: list[Alert] = []
    if live["n_labelled"] < m.min_labels or "roc_auc" not in live:
        live["decay"] = f"not assessed (fewer than {m.min_labels} labelled rows)"
        return by_window, live, alerts
    drops = []
    if ref.get("roc_auc") is not None and ref["roc_auc"] - live["roc_auc"] > m.max_auc_drop:
        drops.append(f"ROC-AUC {live['roc_auc']:.3f} vs {ref['roc_auc']:.3f} at release")
    if (
        ref_recall is not None
        and live.get("recall_at_fpr") is not None
        and ref_recall - live["recall_at_fpr"] > m.max_recall_drop
    ):
        drops.append(
            f"recall at {m.recall_fpr:.0%} FPR {live['recall_at_fpr']:.3f} vs {ref_recall:.3f}"
        )
    live["decay"] = "yes" if drops else "no"
    if drops:
        worst = _worst_segments(by_window)
        alerts.append(
            Alert(
                kind="decay",
                severity="alarm",
                message=f"performance decay on {live['n_labelled']} labelled rows: "
                + "; ".join(drops)
                + (f" (worst segments: {', '.join(worst)})" if worst else ""),
                retrain="decay" in m.retrain_on,
                details={**live, "worst_segments": worst},
            )
        )
    return by_window, live, alerts


def _worst_segments(by_window: pd.DataFrame, k: int = 3) -> list[str]:
    """Segment values with the lowest recall over the labelled windows."""
    if by_window.empty:
        return []
    seg = by_window[(by_window["segment"] != "all") & by_window["recall_at_fpr"].notna()]
    if seg.empty:
        return []
    mean = seg.groupby(["segment", "value"])["recall_at_fpr"].mean().sort_values()
    return [f"{s}={v}" for s, v in mean.index[:k]]


def technical_part(
    spec: ModelSpec, inputs: Inputs
) -> tuple[pd.DataFrame, dict[str, Any], list[Alert]]:
    from pipelines.monitoring import server_error_rates, technical_metrics

    obs = inputs.current
    if obs.empty or "latency_ms" not in obs.columns or obs["latency_ms"].isna().all():
        return pd.DataFrame(), {}, []
    table = technical_metrics(obs.dropna(subset=["latency_ms"]), window="1h")
    latency = obs["latency_ms"].dropna().to_numpy(np.float64)
    summary: dict[str, Any] = {
        "requests": int(len(obs)),
        "latency_p50_ms": float(np.percentile(latency, 50)),
        "latency_p99_ms": float(np.percentile(latency, 99)),
    }
    alerts = []
    if summary["latency_p99_ms"] > spec.monitoring.max_p99_latency_ms:
        alerts.append(
            Alert(
                kind="technical",
                severity="warn",
                message=f"p99 latency {summary['latency_p99_ms']:.1f} ms above "
                f"{spec.monitoring.max_p99_latency_ms:g} ms",
                details=summary,
            )
        )
    if inputs.metrics_text:
        errors = server_error_rates(inputs.metrics_text)
        summary["server"] = errors
        rate = errors.get("error_rate")
        if rate is not None and not math.isnan(rate) and rate > spec.monitoring.max_error_rate:
            alerts.append(
                Alert(
                    kind="technical",
                    severity="alarm",
                    message=f"server error rate {rate:.2%} above "
                    f"{spec.monitoring.max_error_rate:.2%}",
                    details=errors,
                )
            )
    return table, summary, alerts


def kpi_part(spec: ModelSpec, inputs: Inputs, as_of: pd.Timestamp) -> pd.DataFrame:
    from pipelines.monitoring import business_kpis

    obs = inputs.current
    if obs.empty or "decision" not in obs.columns or obs["decision"].isna().all():
        return pd.DataFrame()
    amount = {"fraud": "amount", "credit": "loan_amount"}[spec.use_case]
    return business_kpis(
        obs, window=spec.monitoring.window, use_case=spec.use_case,
        amount_column=amount if amount in obs.columns else None, as_of=as_of,
    )  # fmt: skip


def compliance_part(
    spec: ModelSpec, inputs: Inputs, settings: Settings, now: dt.datetime, as_of: pd.Timestamp
) -> tuple[dict[str, pd.DataFrame], dict[str, Any], list[Alert]]:
    from pipelines.monitoring import ADVERSE
    from validation.compliance import (
        approvals_validity,
        fairness_over_time,
        model_card_completeness,
    )

    obs = inputs.current
    tables: dict[str, pd.DataFrame] = {}
    summary: dict[str, Any] = {}
    alerts: list[Alert] = []
    m = spec.monitoring
    if not obs.empty and "decision" in obs.columns:
        for attribute in spec.protected_attributes:
            if attribute not in obs.columns or obs[attribute].isna().all():
                summary.setdefault("fairness_unavailable", []).append(attribute)
                continue
            table = fairness_over_time(
                obs, attribute=attribute, window=m.window, adverse=ADVERSE[spec.use_case],
                as_of=as_of,
            )  # fmt: skip
            tables[attribute] = table
            for gate in spec.gates.fairness:
                if gate.attribute != attribute or gate.metric.value not in table.columns:
                    continue
                values = table[gate.metric.value].dropna()
                if values.empty:
                    continue
                latest = float(values.iloc[-1])
                breach = (gate.max is not None and latest > gate.max) or (
                    gate.min is not None and latest < gate.min
                )
                summary.setdefault("fairness_latest", {})[f"{gate.metric.value}[{attribute}]"] = (
                    latest
                )
                if breach:
                    bound = f"max {gate.max}" if gate.max is not None else f"min {gate.min}"
                    alerts.append(
                        Alert(
                            kind="compliance",
                            severity="alarm",
                            message=f"live {gate.metric.value} for {attribute} is {latest:.3f} "
                            f"({bound}) in the latest window",
                            details={"attribute": attribute, "metric": gate.metric.value},
                        )
                    )
    coverage = _reason_coverage(spec, inputs)
    if coverage is not None:
        summary["decline_reason_coverage"] = coverage
        share = coverage.get("share_complete")
        unlabelled = coverage.get("unlabelled_features") or []
        if share is not None and not math.isnan(share) and share < m.min_reason_coverage:
            alerts.append(
                Alert(
                    kind="compliance",
                    severity="alarm",
                    message=f"only {share:.1%} of adverse decisions get a complete reason-code "
                    f"notice (minimum {m.min_reason_coverage:.0%}); unlabelled factors: "
                    f"{', '.join(u['feature'] for u in unlabelled) or 'none'}",
                    details=coverage,
                )
            )
    if inputs.card is not None:
        summary["model_card"] = model_card_completeness(inputs.card)
    if inputs.version:
        from registry.approvals import list_requests

        states = [
            s for s in list_requests(settings.governance_url, spec.name)
            if str(getattr(s, "model_version", "")) == str(inputs.version)
        ]  # fmt: skip
        summary["approvals"] = approvals_validity(states, now)
    return tables, summary, alerts


def _reason_coverage(spec: ModelSpec, inputs: Inputs, sample: int = 5_000) -> dict[str, Any] | None:
    """Reason-code coverage of the window's adverse decisions (SHAP from the champion)."""
    import lightgbm as lgb

    from pipelines.monitoring import ADVERSE
    from validation.compliance import decline_reason_coverage

    obs = inputs.current
    if inputs.booster_path is None or obs.empty or "decision" not in obs.columns:
        return None
    adverse = (obs["decision"] == ADVERSE[spec.use_case]).to_numpy()
    if not adverse.any():
        return {"adverse": 0, "share_complete": math.nan}
    booster = lgb.Booster(model_file=str(inputs.booster_path))
    names = booster.feature_name()
    if any(n not in obs.columns for n in names):
        return None
    rows = obs.loc[adverse, names]
    if len(rows) > sample:
        rows = rows.sample(sample, random_state=0)
    from pipelines.features import retype_categories

    rows = retype_categories(rows.copy(), spec)
    contributions = booster.predict(rows, pred_contrib=True)[:, :-1]
    return decline_reason_coverage(
        contributions, names, spec.reason_codes, np.ones(len(rows), dtype=bool)
    )


def market_part(
    spec: ModelSpec, settings: Settings
) -> tuple[pd.DataFrame | None, dict[str, Any], list[Alert]]:
    """Feed the market series' new rows to the persisted CUSUM watcher."""
    from pipelines.market import MarketConfig, MarketWatchConfig, MarketWatcher, generate_market

    market = spec.monitoring.market
    if market is None:
        return None, {}, []
    if market.source == "generated":
        frame = generate_market(MarketConfig(**market.params))  # values checked here
    else:
        from ops.monitoring_data import read_table

        frame = read_table(Path(market.source))
        frame["time"] = pd.to_datetime(frame["time"], utc=True)
    config = MarketWatchConfig(**market.watch)
    state_file = settings.var_dir / "monitoring" / spec.name / MARKET_STATE
    watcher = (
        MarketWatcher.from_state(json.loads(state_file.read_text()))
        if state_file.is_file()
        else MarketWatcher(config=config)
    )
    new = frame.iloc[watcher.rows :]
    result = watcher.watch(new) if len(new) else None
    state_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(watcher.state_dict()))
    tmp.replace(state_file)
    summary: dict[str, Any] = {"rows_seen": watcher.rows, "new_rows": len(new)}
    alerts = []
    if result is not None:
        summary.update(result.to_event())
        if result.alert:
            alerts.append(
                Alert(
                    kind="market",
                    severity="alarm",
                    message=f"market shift: {result.reason}",
                    retrain="market" in spec.monitoring.retrain_on,
                    details=result.to_event(),
                )
            )
    return frame, summary, alerts


# ---------------------------------------------------------------------------------------
# the job


def run_monitoring(
    spec_path: str | Path,
    *,
    settings: Settings | None = None,
    reference: Path | None = None,
    current: Path | None = None,
    out_dir: Path | None = None,
    now: dt.datetime | None = None,
    html_path: Path | None = None,
    record: bool = True,
    log_mlflow: bool = True,
    market: bool = True,
    actor: str = "monitoring",
) -> dict[str, Any]:
    """Run every check once; write the report; record and send the alerts."""
    from ops.monitoring_report import write_report

    settings = settings or load_settings()
    spec = load_spec(spec_path)
    now = now or dt.datetime.now(dt.UTC)
    as_of = pd.Timestamp(now)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    if html_path is not None:
        out_dir = Path(html_path).parent
    out_dir = Path(out_dir) if out_dir else settings.var_dir / "monitoring" / spec.name / stamp
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
        result["version"] = inputs.version
        drift, drift_alerts, missing = drift_part(spec, inputs)
        segments, _ = available_segments(spec, inputs.reference, inputs.current)
        performance, live, decay_alerts = performance_part(spec, inputs, as_of, segments)
        technical, tech_summary, tech_alerts = technical_part(spec, inputs)
        kpis = kpi_part(spec, inputs, as_of)
        fairness, compliance, compliance_alerts = compliance_part(
            spec, inputs, settings, now, as_of
        )
        alerts += drift_alerts + decay_alerts + tech_alerts + compliance_alerts
        sections.update(
            drift=drift, segments_unavailable=missing, performance=performance, live=live,
            technical=technical, technical_summary=tech_summary, kpis=kpis,
            fairness=fairness, compliance=compliance, source=inputs.source,
        )  # fmt: skip
        result["status"] = (
            "alarm" if any(a.severity == "alarm" for a in alerts) else ("warn" if alerts else "ok")
        )
        result["drift"] = drift.summary()
        result["live"] = live
    if inputs is None and alerts:
        result["status"] = "alarm"
    result["alerts"] = [a.to_dict() for a in alerts]
    result["reasons"] = [a.message for a in alerts if a.retrain]
    result["retrain"] = bool(result["reasons"])
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
    from registry.mlflow_registry import artifact_location_for, log_monitoring

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
