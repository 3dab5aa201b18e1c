"""Each model's retrain Asset, the lifecycle's schedule on it, and why a run started.

The asset is ``govml://models/<name>/retrain`` (:func:`ops.retrain.retrain_uri`). The
lifecycle DAG runs on "its nightly schedule **or** that asset" (:func:`lifecycle_schedule`);
the monitoring DAG updates the asset when drift, decay or a market shift crosses its
threshold, with the reason in the event's ``extra``; ``govml retrain`` posts the same
event through the REST API (:func:`ops.retrain.post_retrain_event`). The lifecycle's first
task turns the run's context into one reason (:func:`trigger_reason`) and records it
(:func:`ops.retrain.record_trigger`).
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable

from ops.retrain import retrain_uri

PRESETS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@nightly": "0 2 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
}


def retrain_asset(model: str) -> Asset:
    return Asset(name=f"{model}_retrain", uri=retrain_uri(model), group="govml-retrain")


def lifecycle_schedule(model: str, schedule: str) -> list[Asset] | AssetOrTimeSchedule:
    """The cron schedule OR the model's retrain asset (the asset alone for ``none``)."""
    asset = retrain_asset(model)
    if schedule in ("none", "@once"):
        return [asset]
    cron = PRESETS.get(schedule, schedule)
    return AssetOrTimeSchedule(timetable=CronTriggerTimetable(cron, timezone="UTC"), assets=[asset])


def trigger_reason(context: dict[str, Any]) -> dict[str, Any]:
    """Why this lifecycle run exists: schedule, asset event(s) with reasons, or a person."""
    dag_run = context["dag_run"]
    run_type = str(getattr(dag_run, "run_type", "") or "")
    params = context.get("params") or {}
    events: list[dict[str, Any]] = []
    triggering = context.get("triggering_asset_events") or {}
    for asset, asset_events in dict(triggering).items():
        for event in asset_events:
            extra = dict(getattr(event, "extra", None) or {})
            events.append(
                {
                    "asset": getattr(asset, "uri", str(asset)),
                    "reason": extra.get("reason") or "asset updated (no reason given)",
                    "source": extra.get("source") or getattr(event, "source_dag_id", None),
                    "timestamp": str(getattr(event, "timestamp", "")),
                }
            )
    if events:
        trigger = "asset"
        reason = "; ".join(dict.fromkeys(e["reason"] for e in events))
    elif "scheduled" in run_type:
        trigger, reason = "schedule", "nightly retraining (schedule)"
    else:
        trigger = "manual"
        reason = params.get("reason") or "manual run (no reason given)"
    return {"trigger": trigger, "reason": reason, "run_type": run_type, "events": events}
