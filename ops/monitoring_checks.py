"""The monitoring job's checks, one function per part of the verdict: drift,
performance with delayed labels, technical metrics, business KPIs, compliance and the
market early warning; each returns its findings and the alerts it raises."""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.config import Settings
from pipelines.spec import ModelSpec
from pipelines.spec_features import Segment

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


def metrics_of(spec: ModelSpec, frame: pd.DataFrame) -> dict[str, Any]:
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
    from pipelines.monitoring_kpis import server_error_rates, technical_metrics

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
    from pipelines.monitoring_kpis import business_kpis

    obs = inputs.current
    if obs.empty or "decision" not in obs.columns or obs["decision"].isna().all():
        return pd.DataFrame()
    amount = {"fraud": "amount", "credit": "loan_amount"}[spec.use_case]
    return business_kpis(
        obs, window=spec.monitoring.window, use_case=spec.use_case,
        amount_column=amount if amount in obs.columns else None, as_of=as_of,
    )  # fmt: skip


def _live_fairness(
    spec: ModelSpec, obs: pd.DataFrame, as_of: pd.Timestamp
) -> tuple[dict[str, pd.DataFrame], dict[str, Any], list[Alert]]:
    """Fairness on live decisions per protected attribute and window, against the spec's
    fairness gates: the tables, the latest values (or the attributes not in the data)
    and an alarm for each gate the latest window breaks."""
    from pipelines.monitoring import ADVERSE
    from validation.compliance import fairness_over_time

    tables: dict[str, pd.DataFrame] = {}
    summary: dict[str, Any] = {}
    alerts: list[Alert] = []
    if obs.empty or "decision" not in obs.columns:
        return tables, summary, alerts
    for attribute in spec.protected_attributes:
        if attribute not in obs.columns or obs[attribute].isna().all():
            summary.setdefault("fairness_unavailable", []).append(attribute)
            continue
        table = fairness_over_time(
            obs, attribute=attribute, window=spec.monitoring.window,
            adverse=ADVERSE[spec.use_case], as_of=as_of,
        )  # fmt: skip
        tables[attribute] = table
        for gate in spec.gates.fairness:
            if gate.attribute != attribute or gate.metric.value not in table.columns:
                continue
            values = table[gate.metric.value].dropna()
            if values.empty:
                continue
            latest = float(values.iloc[-1])
            summary.setdefault("fairness_latest", {})[f"{gate.metric.value}[{attribute}]"] = latest
            if (gate.max is not None and latest > gate.max) or (
                gate.min is not None and latest < gate.min
            ):
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
    return tables, summary, alerts


def compliance_part(
    spec: ModelSpec, inputs: Inputs, settings: Settings, now: dt.datetime, as_of: pd.Timestamp
) -> tuple[dict[str, pd.DataFrame], dict[str, Any], list[Alert]]:
    from validation.compliance import approvals_validity, model_card_completeness

    tables, summary, alerts = _live_fairness(spec, inputs.current, as_of)
    m = spec.monitoring
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
    from pipelines.market import MarketConfig, MarketWatchConfig, generate_market
    from pipelines.market_watch import MarketWatcher

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
