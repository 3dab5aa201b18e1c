"""A DAG run outside the scheduler: ``dag.test()`` in a child process.

The runner (``python -m dags.govml_airflow.run_dag``) and its callers (``govml run``,
the demo, the tests) agree here on the run id, the default last task and the exit code
of a refused run; and on who triggered the run.

Who triggered it (:func:`record_run_trigger`, :func:`authenticated_trigger`):
``dag.test()`` records every run as triggered by ``"dag_test"``, so the trigger is
proven through the audit chain instead. Before the run starts, the authenticated user
is recorded as a ``run_triggered`` event for the DAG and run id, with the SHA-256 of a
one-time secret that only the run's process holds (``GOVML_RUN_TRIGGER_NONCE``); the
DAG's tasks take the trigger from the event whose secret matches. A run without such
an event has an unauthenticated trigger, and the version it registers cannot be
approved for deployment. A name in the environment is never taken as the trigger.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets

from ops.identity import Identity
from pipelines.config import Settings

DEFAULT_UNTIL = "request_approval"
TRIGGER_NONCE_ENV = "GOVML_RUN_TRIGGER_NONCE"
UNAUTHENTICATED = "unauthenticated"
EXIT_REFUSED = 3


def lifecycle_run_id(run_after: dt.datetime) -> str:
    """The run id ``dag.test`` gives a manual run at ``run_after`` (its logical date)."""
    return f"manual__{run_after.isoformat()}"


def _digest(nonce: str) -> str:
    return hashlib.sha256(nonce.encode()).hexdigest()


def record_run_trigger(
    settings: Settings, identity: Identity, dag_id: str, run_id: str, model: str | None = None
) -> str:
    """Record the authenticated ``identity`` as the trigger of a ``dag.test()`` run, before
    it starts; returns the one-time secret the run's process must hold."""
    from registry.audit import append_event

    nonce = secrets.token_urlsafe(32)
    append_event(
        settings.governance_url,
        "run_triggered",
        actor=identity.user,
        payload={
            "dag_id": dag_id,
            "run_id": run_id,
            "authenticated_by": identity.method,
            "runner": "dag.test",
            "nonce_sha256": _digest(nonce),
        },
        model_name=model,
        run_id=run_id,
    )
    return nonce


def authenticated_trigger(
    governance_url: str, dag_id: str, run_id: str, nonce: str | None
) -> str | None:
    """The user recorded as the trigger of this ``dag.test()`` run, or None.

    Only a ``run_triggered`` event for this DAG and run whose secret's digest matches
    ``nonce`` counts: an event recorded for another process (a replayed run id) does not.
    """
    if not nonce:
        return None
    from registry.audit import events

    digest = _digest(nonce)
    for event in events(governance_url, run_id=run_id, kinds=["run_triggered"]):
        payload = event.payload or {}
        if payload.get("dag_id") == dag_id and hmac.compare_digest(
            str(payload.get("nonce_sha256") or ""), digest
        ):
            return event.actor
    return None
