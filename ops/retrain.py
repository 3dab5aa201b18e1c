"""Retraining triggers: the nightly schedule, a monitoring Asset event, or a person.

Each model has one Airflow Asset, ``govml://models/<name>/retrain`` (:func:`retrain_uri`;
the Asset itself and the lifecycle's schedule on it are in :mod:`dags.govml_airflow.assets`).
The lifecycle DAG runs on "its nightly schedule **or** that asset"; the monitoring DAG
updates the asset when drift, decay or a market shift crosses its threshold, with the
reason in the event's ``extra``. Anything else can update it too:

* the Airflow REST API: ``POST /api/v2/assets/events``
  ``{"asset_id": <id>, "extra": {"reason": "market-shock notice ..."}}``;
* ``govml retrain --model fraud --reason "..."`` (which posts that event when Airflow
  is up (:func:`post_retrain_event`), or runs the lifecycle itself with the reason when
  it is not).

The lifecycle's first task turns the run's context into one reason
(:func:`dags.govml_airflow.assets.trigger_reason`) and records it in the audit trail
(:func:`record_trigger`: ``retrain_triggered``).
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


def retrain_uri(model: str) -> str:
    """The URI of the model's retrain Asset (:mod:`dags.govml_airflow.assets`)."""
    return f"govml://models/{model}/retrain"


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
