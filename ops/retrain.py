"""Retraining triggers: the nightly schedule, a monitoring Asset event, or a person.

Each model has one Airflow Asset, ``govml://models/<name>/retrain``. The lifecycle DAG
runs on "its nightly schedule **or** that asset" (:func:`lifecycle_schedule`); the
monitoring DAG updates the asset when drift, decay or a market shift crosses its
threshold, with the reason in the event's ``extra``. Anything else can update it too:

* the Airflow REST API: ``POST /api/v2/assets/events``
  ``{"asset_id": <id>, "extra": {"reason": "market-shock notice ..."}}``;
* ``govml retrain --model fraud --reason "..."`` (which posts that event when Airflow
  is up, or runs the lifecycle itself with the reason when it is not).

The lifecycle's first task (:func:`trigger_reason`) turns the run's context into one
reason and records it in the audit trail (``retrain_triggered``).
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from pipelines.errors import ConfigError, GovMLError

log = logging.getLogger(__name__)

PRESETS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@nightly": "0 2 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
}


def retrain_uri(model: str) -> str:
    return f"govml://models/{model}/retrain"


def retrain_asset(model: str):  # noqa: ANN201 (airflow.sdk.Asset)
    from airflow.sdk import Asset

    return Asset(name=f"{model}_retrain", uri=retrain_uri(model), group="govml-retrain")


def lifecycle_schedule(model: str, schedule: str):  # noqa: ANN201
    """The cron schedule OR the model's retrain asset (the asset alone for ``none``)."""
    from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable

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


def record_trigger(
    governance_url: str, model: str, run_id: str, trigger: dict[str, Any], actor: str
) -> None:
    from registry.audit import append_event

    append_event(
        governance_url,
        "retrain_triggered",
        actor=actor,
        payload=json.loads(json.dumps(trigger, default=str)),
        model_name=model,
        run_id=run_id,
    )


# ---------------------------------------------------------------------------------------
# posting the event from outside Airflow


def _call(base: str, token: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(
        f"{base}{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
        return json.loads(resp.read() or b"null")


def post_retrain_event(
    base_url: str, token: str, model: str, reason: str, source: str
) -> dict[str, Any]:
    """Create a retrain asset event through the Airflow REST API; returns the event."""
    if not reason.strip():
        raise ConfigError("a retrain needs a reason (--reason)")
    try:
        query = urllib.parse.urlencode({"uri_pattern": retrain_uri(model)})
        found = _call(base_url, token, "GET", f"/api/v2/assets?{query}")
        assets = [a for a in found.get("assets", []) if a.get("uri") == retrain_uri(model)]
        if not assets:
            raise GovMLError(
                f"Airflow does not know the asset {retrain_uri(model)}: is the {model}_lifecycle "
                "DAG parsed (and its spec valid)?"
            )
        return _call(
            base_url,
            token,
            "POST",
            "/api/v2/assets/events",
            {"asset_id": assets[0]["id"], "extra": {"reason": reason, "source": source}},
        )
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")[:300]
        raise GovMLError(f"Airflow refused the retrain event ({exc.code}): {detail}") from None
