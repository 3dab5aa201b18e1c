"""Declarative promotion gates: metric, relative, fairness and proxy checks from the spec.

``evaluate_gates(spec, GateInputs(eval_dir, fairness_dir, explain_dir), out_dir)`` evaluates

* every ``spec.gates.metrics`` entry on ``metrics.json``: absolute (the candidate's
  value against ``min``/``max``), ``relative_to: baseline`` or ``relative_to: champion``
  (candidate minus reference against ``min``/``max``; skipped, and recorded as such,
  when there is no champion). ``recall_at_fpr`` / ``precision_at_recall`` are looked up
  under their ``at`` key (``"0.01"``);
* every ``spec.gates.fairness`` entry on ``fairness.json`` ``gate_metrics``;
* the proxy check of ``fairness.json``: each flagged (feature, attribute) is a ``warn``
  check (the change becomes high risk and needs two approvers), never a failure; when
  nothing is flagged, one ``pass`` check summarises it (``gates.json`` stays short: every
  check becomes an MLflow model-version tag at registration).

Check names are MLflow-tag safe (letters, digits, ``_ . - : /`` and spaces:
``roc_auc``, ``recall_at_fpr:0.01 vs baseline``, ``demographic_parity_ratio:sex``,
``proxy:postcode_risk_index:race_ethnicity``); messages use the readable forms
(``recall_at_fpr@0.01 0.45 < min 0.5``, ``demographic_parity_ratio[sex] 0.64 < min 0.8``,
``roc_auc vs champion -0.021 < min -0.005 (candidate 0.912, champion 0.933)``).

A check is ``warn`` when it passes but lies within its ``warn_margin`` of the threshold
(strictly: ``min <= value < min + warn_margin``). A gate that cannot be evaluated (its
metric or input file is missing, or the value is null) fails, with a message naming what
is missing: gates fail closed. ``explain_dir``'s ``shap_importance.json`` is not gated;
its stability figures are copied into ``result.json`` for the reviewers.

It returns a :class:`GateReport` and writes nothing: the gates stage
(:func:`pipelines.stages.gates.check_gates`) writes ``gates.json`` and ``result.json``
first; then, if any check failed, :class:`~pipelines.errors.GateFailedError` lists every
failed check's message.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.artifacts import to_jsonable
from pipelines.formatting import distinct_number
from pipelines.spec import ModelSpec
from pipelines.spec_gates import FairnessGate, Metric, MetricGate

AT_METRICS = (Metric.RECALL_AT_FPR, Metric.PRECISION_AT_RECALL)
PROXY_METRIC = "proxy_auc"


@dataclass(frozen=True)
class GateCheck:
    """One row of ``gates.json`` ``checks``."""

    name: str
    kind: str  # metric | relative | fairness | proxy
    metric: str
    attribute: str | None
    value: float | None
    threshold: float | None
    op: str  # ">=" | "<="
    status: str  # pass | warn | fail | skipped
    message: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class GateReport:
    """All checks of one candidate (``result.json``; ``gates.json`` is its core)."""

    out_dir: str
    passed: bool
    high_risk: bool
    checks: tuple[GateCheck, ...]
    explain: dict[str, Any] | None = None
    notes: tuple[str, ...] = ()
    files: tuple[str, ...] = ("gates.json", "result.json")
    stage: str = field(default="gates")

    @property
    def failures(self) -> list[str]:
        return [c.message for c in self.checks if c.status == "fail"]

    @property
    def warnings(self) -> list[str]:
        return [c.message for c in self.checks if c.status == "warn"]

    def gates_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "high_risk": self.high_risk,
            "checks": [c.to_dict() for c in self.checks],
        }

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["checks"] = [c.to_dict() for c in self.checks]
        out["failures"] = self.failures
        out["warnings"] = self.warnings
        out["counts"] = {
            s: sum(c.status == s for c in self.checks) for s in ("pass", "warn", "fail", "skipped")
        }
        return to_jsonable(out)


class _Unavailable(Exception):
    """A gate's input is missing; the message says which (the gate then fails)."""


def _read_json(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(content, None) or (None, why it is unavailable)."""
    if not path.exists():
        return None, f"{path.name} not found in {path.parent}"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return None, f"{path} is unreadable: {exc}"
    if not isinstance(data, dict):
        return None, f"{path} does not hold a JSON object"
    return data, None


# ----------------------------------------------------------------------------- judging


def _judge(
    name: str, value: float, minimum: float | None, maximum: float | None, margin: float
) -> tuple[str, str, float, str]:
    """(status, op, threshold, message) of ``value`` against exactly one of min/max."""
    if minimum is not None:
        op, threshold = ">=", float(minimum)
        v, t = distinct_number(value, threshold), distinct_number(threshold, value)
        if value < threshold:
            return "fail", op, threshold, f"{name} {v} < min {t}"
        message = f"{name} {v} >= min {t}"
        status = "warn" if value < threshold + margin else "pass"
    else:
        assert maximum is not None
        op, threshold = "<=", float(maximum)
        v, t = distinct_number(value, threshold), distinct_number(threshold, value)
        if value > threshold:
            return "fail", op, threshold, f"{name} {v} > max {t}"
        message = f"{name} {v} <= max {t}"
        status = "warn" if value > threshold - margin else "pass"
    if status == "warn":
        message += f" (within warn margin {distinct_number(margin)})"
    return status, op, threshold, message


def _threshold(gate: MetricGate | FairnessGate) -> tuple[str, float]:
    if gate.min is not None:
        return ">=", float(gate.min)
    assert gate.max is not None
    return "<=", float(gate.max)


def _at_value(table: Any, at: float, label: str) -> Any:
    if not isinstance(table, dict):
        raise _Unavailable(f"{label} in metrics.json is not a mapping of 'at' values")
    key = str(at)
    if key in table:
        return table[key]
    for candidate, value in table.items():
        try:
            if math.isclose(float(candidate), at, rel_tol=0.0, abs_tol=1e-12):
                return value
        except ValueError:
            continue
    raise _Unavailable(
        f"{label} at {key!r} is missing from metrics.json (has {sorted(map(str, table))})"
    )


def _metric(metrics: dict[str, Any], section: str, gate: MetricGate) -> float:
    """The gate's metric from ``metrics.json[section]``, or :class:`_Unavailable`."""
    block = metrics.get(section)
    if not isinstance(block, dict):
        raise _Unavailable(f"metrics.json has no {section!r} metrics")
    name = gate.metric.value
    label = f"{section} {name}"
    if name not in block:
        raise _Unavailable(f"{label} is missing from metrics.json")
    value = block[name]
    if gate.metric in AT_METRICS:
        assert gate.at is not None
        value = _at_value(value, gate.at, label)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _Unavailable(f"{label} in metrics.json is not a number ({value!r})")
    return float(value)


def _metric_check(gate: MetricGate, metrics: dict[str, Any] | None, why: str | None) -> GateCheck:
    metric = gate.metric.value
    name, label = metric, metric
    if gate.at is not None:
        name += f":{gate.at:g}"
        label += f"@{gate.at:g}"
    if gate.relative_to:
        name += f" vs {gate.relative_to}"
        label += f" vs {gate.relative_to}"
    kind = "relative" if gate.relative_to else "metric"
    op, threshold = _threshold(gate)

    def unavailable(reason: str, status: str = "fail") -> GateCheck:
        verb = "skipped" if status == "skipped" else "cannot be checked"
        message = f"{label} {verb}: {reason}"
        return GateCheck(name, kind, metric, None, None, threshold, op, status, message)

    if metrics is None:
        return unavailable(why or "metrics.json is unavailable")
    if gate.relative_to == "champion" and metrics.get("champion") is None:
        return unavailable("no champion", status="skipped")
    try:
        value = _metric(metrics, "candidate", gate)
        context = ""
        if gate.relative_to:
            reference = _metric(metrics, gate.relative_to, gate)
            context = (
                f" (candidate {distinct_number(value)}, "
                f"{gate.relative_to} {distinct_number(reference)})"
            )
            value = value - reference
    except _Unavailable as exc:
        return unavailable(str(exc))
    status, op, threshold, message = _judge(label, value, gate.min, gate.max, gate.warn_margin)
    return GateCheck(name, kind, metric, None, value, threshold, op, status, message + context)


def _recent_window_checks(spec: ModelSpec, metrics: dict[str, Any] | None) -> list[GateCheck]:
    """The champion-relative gates again, on the monitoring job's recent labelled window."""
    window = (metrics or {}).get("recent_window")
    if not window or window.get("champion") is None:
        return []
    checks = []
    for gate in spec.gates.metrics:
        if gate.relative_to != "champion":
            continue
        check = _metric_check(gate, window, None)
        where = f" on the recent labelled window ({window.get('rows')} rows)"
        checks.append(
            dataclasses.replace(
                check, name=check.name + " (recent window)", message=check.message + where
            )
        )
    return checks


def _fairness_check(
    gate: FairnessGate, fairness: dict[str, Any] | None, why: str | None
) -> GateCheck:
    metric = gate.metric.value
    name, label = f"{metric}:{gate.attribute}", f"{metric}[{gate.attribute}]"
    op, threshold = _threshold(gate)
    reason = None
    value: Any = None
    if fairness is None:
        reason = why or "fairness.json is unavailable"
    else:
        by_attribute = fairness.get("gate_metrics") or {}
        if gate.attribute not in by_attribute:
            reason = f"fairness.json gate_metrics has no attribute {gate.attribute!r}"
        elif metric not in (by_attribute[gate.attribute] or {}):
            reason = f"fairness.json gate_metrics[{gate.attribute!r}] has no {metric!r}"
        else:
            value = by_attribute[gate.attribute][metric]
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
            ):
                reason = f"{metric} for {gate.attribute!r} is not a number ({value!r})"
    if reason is not None:
        message = f"{label} cannot be checked: {reason}"
        return GateCheck(
            name, "fairness", metric, gate.attribute, None, threshold, op, "fail", message
        )
    status, op, threshold, message = _judge(
        label, float(value), gate.min, gate.max, gate.warn_margin
    )
    return GateCheck(
        name, "fairness", metric, gate.attribute, float(value), threshold, op, status, message
    )


def _proxy_checks(fairness: dict[str, Any] | None) -> list[GateCheck]:
    """One ``warn`` per flagged (feature, attribute); one ``pass`` summary when none is."""
    entries = list((fairness or {}).get("proxy_check") or [])
    if not entries:
        return []
    checks = []
    for entry in entries:
        if not entry.get("flagged"):
            continue
        feature, attribute = str(entry.get("feature")), str(entry.get("attribute"))
        score, threshold = entry.get("score"), entry.get("threshold")
        group = f", best predicted group {entry['group']}" if entry.get("group") else ""
        score_text = "n/a" if score is None else distinct_number(float(score))
        message = (
            f"proxy {feature}->{attribute}: {feature} predicts {attribute} with AUC "
            f"{score_text} > {threshold}{group} (possible proxy: high risk)"
        )
        checks.append(
            GateCheck(
                f"proxy:{feature}:{attribute}",
                "proxy",
                PROXY_METRIC,
                attribute,
                None if score is None else float(score),
                None if threshold is None else float(threshold),
                "<=",
                "warn",
                message,
            )
        )
    if not checks:
        scores = [float(e["score"]) for e in entries if e.get("score") is not None]
        threshold = entries[0].get("threshold")
        top = max(scores) if scores else None
        message = (
            f"proxy: no feature predicts a protected attribute with AUC > {threshold} "
            f"({len(entries)} checked"
            + (f", highest {distinct_number(top)})" if top is not None else ")")
        )
        checks.append(
            GateCheck(
                "proxy",
                "proxy",
                PROXY_METRIC,
                None,
                top,
                None if threshold is None else float(threshold),
                "<=",
                "pass",
                message,
            )
        )
    return checks


# ----------------------------------------------------------------------------- the checks


@dataclass(frozen=True)
class GateInputs:
    """The gates' inputs: the ``evaluate``, ``fairness`` and ``explain`` folders."""

    eval_dir: Path
    fairness_dir: Path
    explain_dir: Path


def evaluate_gates(spec: ModelSpec, inputs: GateInputs, out_dir: Path) -> GateReport:
    """Every gate's check on the earlier stages' files, as a report (``out_dir``: where the
    gates stage, :mod:`pipelines.stages.gates`, writes it); writes nothing, raises nothing."""
    metrics, metrics_why = _read_json(inputs.eval_dir / "metrics.json")
    fairness, fairness_why = _read_json(inputs.fairness_dir / "fairness.json")
    shap_info, shap_why = _read_json(inputs.explain_dir / "shap_importance.json")
    notes = [why for why in (shap_why,) if why]
    if fairness is None and spec.protected_attributes:
        notes.append(f"{fairness_why}: no proxy checks")

    checks = [_metric_check(g, metrics, metrics_why) for g in spec.gates.metrics]
    checks += _recent_window_checks(spec, metrics)
    checks += [_fairness_check(g, fairness, fairness_why) for g in spec.gates.fairness]
    checks += _proxy_checks(fairness)

    explain = None
    if shap_info is not None:
        explain = {
            "rows_explained": shap_info.get("rows_explained"),
            "stability": shap_info.get("stability"),
            "top_features": list(shap_info.get("ranking") or [])[:10],
        }
    return GateReport(
        out_dir=str(out_dir),
        passed=not any(c.status == "fail" for c in checks),
        high_risk=any(c.status == "warn" for c in checks),
        checks=tuple(checks),
        explain=explain,
        notes=tuple(notes),
    )
