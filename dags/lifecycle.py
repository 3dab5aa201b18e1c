"""One governed lifecycle DAG per model spec in ``specs/`` (``<name>_lifecycle``).

Wiring only: who triggered the run, then one task per row of the stage table
(:data:`pipelines.stages.LIFECYCLE`: ingest, champion, validate_data, lineage,
features, train, evaluate, fairness, explain, gates, register), then the human part:
the approval request, the four-eyes approval and the deployment. Each task resolves the
run (spec, run id, parameters, run folder) and calls one function; heavy imports
happen inside the tasks, and tasks exchange paths (XCom), never DataFrames. Parsing
reads the YAML specs and touches no database or network.

Deterministic failures (bad data, failed gates) fail the task without retries and
keep the reason in the task log and in the stage's files in the run folder.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

from airflow.sdk import Param, dag, task

from dags.govml_airflow.approval_gate import GovernedApprovalOperator
from dags.govml_airflow.assets import lifecycle_schedule
from dags.govml_airflow.factory import (
    dag_arguments,
    dags_per_spec,
    no_retry,
    run_context,
    stage_tasks,
)
from dags.govml_airflow.run_dag import dag_spec_paths
from pipelines.config import load_settings
from pipelines.spec import ModelSpec
from pipelines.stages import LIFECYCLE

log = logging.getLogger(__name__)
SETTINGS = load_settings()


def _trigger() -> tuple[str | None, bool]:
    """Who triggered the run, and whether that is proven.

    A run triggered in Airflow (UI, REST API, ``govml run`` with the stack up) names the
    user Airflow authenticated; a scheduled or asset-triggered run is the system's
    (None). ``dag.test()`` names nobody ("dag_test"): its trigger is the user recorded
    in the audit chain before the run started (:func:`ops.local_run.authenticated_trigger`),
    else it is unauthenticated. Never a name from the environment.
    """
    import os

    from airflow.sdk import get_current_context

    from ops.local_run import TRIGGER_NONCE_ENV, authenticated_trigger

    context = get_current_context()
    user = context["dag_run"].triggering_user_name
    if user != "dag_test":
        return user, True
    found = authenticated_trigger(
        load_settings().governance_url,
        context["dag"].dag_id,
        context["run_id"],
        os.environ.get(TRIGGER_NONCE_ENV),
    )
    return found, found is not None


# run parameter -> (JSON type besides null, its bounds, the trigger form's description)
RUN_PARAMS: dict[str, tuple[str, dict[str, float], str]] = {
    "data_path": ("string", {}, "Parquet/CSV file instead of the spec's source"),
    "n_rows": ("integer", {"minimum": 100}, "rows to generate (generated sources)"),
    "seed": ("integer", {}, "generator seed"),
    "bias": ("number", {"minimum": 0, "maximum": 1}, "credit generator bias knob"),
    "fraud_rate": (
        "number",
        {"minimum": 0.001, "maximum": 0.01},
        "fraud generator target fraud rate",
    ),
    "tuning_trials": ("integer", {"minimum": 0}, "LightGBM tuning budget"),
    "reason": ("string", {}, "why this run (recorded in the audit trail)"),
    "author": ("string", {}, "who developed this model change (may not approve it)"),
}


def _run_params() -> dict[str, Param]:
    """The run parameters a user may set when triggering (:data:`pipelines.runs.PARAMS`),
    each optional (null by default)."""
    return {
        name: Param(None, type=["null", kind], description=text, **bounds)
        for name, (kind, bounds, text) in RUN_PARAMS.items()
    }


def _trigger_task(spec_path: Path):  # noqa: ANN202
    """The first task: why this run, recorded in the audit trail."""

    @task
    def trigger(**context: Any) -> dict[str, Any]:
        """Why this run: the schedule, a retrain asset event (its reason), a person."""
        from dags.govml_airflow.assets import trigger_reason
        from ops.local_run import UNAUTHENTICATED
        from ops.retrain import record_trigger

        run = run_context(spec_path)
        why = trigger_reason(context)
        user, proven = _trigger()
        actor = "airflow"
        if why["trigger"] == "manual":
            actor = (user or "airflow") if proven else UNAUTHENTICATED
            why["trigger_authenticated"] = proven
        record_trigger(run.settings.governance_url, run.spec.name, run.run_id, why, actor)
        log.info("%s run %s: %s", run.spec.name, run.run_id, why["reason"])
        return why

    return trigger


def _request_approval_task(spec: ModelSpec, spec_path: Path):  # noqa: ANN202
    """The task that opens the four-eyes approval of the registered version."""

    @task
    @no_retry("request_approval")
    def request_approval(registered: dict[str, Any], champ: dict[str, str]) -> dict[str, Any]:
        from registry.approvals import RunOrigin
        from registry.governance import open_approval

        run = run_context(spec_path)
        triggered_by, proven = _trigger()
        if not proven:
            log.warning(
                "%s: the run's trigger is not authenticated; this version cannot be "
                "approved for deployment (run it with `govml run --as USER`)",
                run.run_id,
            )
        return open_approval(
            run.settings.governance_url,
            run.settings.mlflow_tracking_uri,
            run.spec,
            run.run_dir,
            registered,
            origin=RunOrigin(
                run_id=run.run_id,
                dag_id=spec.name + "_lifecycle",
                triggered_by=triggered_by,
                author=run.params.get("author"),
                trigger_authenticated=proven,
            ),
            champion_model=Path(champ["model"]) if champ.get("model") else None,
            out_dir=run.stage_dir("approval"),
        )

    return request_approval


def _deploy_task(spec_path: Path):  # noqa: ANN202
    """The task that releases an approved version."""

    @task
    @no_retry("deploy")
    def deploy(registered: dict[str, Any]) -> dict[str, Any]:
        """Release the version this run registered, if the keyed audit chain holds a
        valid approval of it: the approval task's state and XCom are never trusted
        (a forced or cleared task changes neither the chain nor this check)."""
        from ops.deploy import serve_release
        from registry.governance import release_approved

        run = run_context(spec_path)
        return release_approved(
            run.settings.governance_url,
            run.settings.mlflow_tracking_uri,
            registered["model_name"],
            str(registered["version"]),
            actor="govml-lifecycle",
            run_id=run.run_id,
            out_dir=run.stage_dir("deploy"),
            serve=lambda state: serve_release(
                run.settings, run.run_dir, state, spec_path=run.spec_path
            ),
        )

    return deploy


def build_lifecycle_dag(spec: ModelSpec, spec_path: Path):  # noqa: ANN201
    """The lifecycle DAG for one spec."""

    @dag(
        description=f"Governed training lifecycle for {spec.name} ({spec.use_case})",
        doc_md=__doc__ + f"\n\n**Spec**: `{spec_path}`\n\n{spec.description}",
        schedule=lifecycle_schedule(spec.name, spec.schedule),
        params=_run_params(),
        **dag_arguments(spec, "lifecycle", retries=1, retry_delay=dt.timedelta(seconds=30)),
    )
    def lifecycle() -> None:
        trigger = _trigger_task(spec_path)
        request_approval = _request_approval_task(spec, spec_path)
        approval = GovernedApprovalOperator(
            task_id="approval",
            response_timeout=dt.timedelta(seconds=spec.approval.timeout_seconds),
            doc_md="Four-eyes approval: answer under Browse -> Required Actions.",
        )
        deploy = _deploy_task(spec_path)

        why = trigger()
        stages = stage_tasks(LIFECYCLE, spec_path)  # ingest ... gates, register
        why >> stages[LIFECYCLE[0].task_id]
        registered = stages["register"]
        requested = request_approval(registered, stages["champion"])
        requested >> approval
        approval >> deploy(registered)

    return lifecycle()


def _build_all() -> dict[str, Any]:
    return dags_per_spec(dag_spec_paths(SETTINGS.specs_dir), "lifecycle", build_lifecycle_dag, log)


globals().update(_build_all())
