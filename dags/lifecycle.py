"""One governed lifecycle DAG per model spec in ``specs/`` (``<name>_lifecycle``).

Wiring only: each task resolves the run (spec, run id, parameters, run folder) and
calls one function from ``pipelines``, ``validation`` or ``registry``; heavy imports
happen inside the tasks, and tasks exchange paths (XCom), never DataFrames. Parsing
reads the YAML specs and touches no database or network.

Deterministic failures (bad data, failed gates) fail the task without retries and
keep the reason in the task log and in the stage's files in the run folder.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

from airflow.sdk import Param, dag, task

from ops.approval_gate import GovernedApprovalOperator
from ops.retrain import lifecycle_schedule
from ops.run_dag import dag_spec_paths
from pipelines.config import load_settings
from pipelines.errors import GovMLError
from pipelines.spec import ModelSpec, load_spec

log = logging.getLogger(__name__)
T = TypeVar("T")
SETTINGS = load_settings()


def _no_retry(func: Callable[..., T]) -> Callable[..., T]:
    """A project error is a decision, not a glitch: fail the task without retries.

    Also records the stage's own time in ``<run folder>/timings/<task>.json``, so the
    orchestration overhead (run time outside the stage functions) can be measured.
    """

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        from airflow.sdk.exceptions import AirflowFailException

        started = time.perf_counter()
        try:
            result = func(*args, **kwargs)
        except GovMLError as exc:
            raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
        _record_timing(func.__name__, time.perf_counter() - started)
        return result

    return wrapper


def _record_timing(task_id: str, seconds: float) -> None:
    from airflow.sdk import get_current_context

    from pipelines.runs import safe_run_id

    context = get_current_context()
    spec_name = context["dag"].dag_id.removesuffix("_lifecycle")
    folder = load_settings().runs_dir / spec_name / safe_run_id(context["run_id"]) / "timings"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{task_id}.json").write_text(json.dumps({"task": task_id, "seconds": seconds}))


def _trigger() -> tuple[str | None, bool]:
    """Who triggered the run, and whether that is proven.

    A run triggered in Airflow (UI, REST API, ``govml run`` with the stack up) names the
    user Airflow authenticated; a scheduled or asset-triggered run is the system's
    (None). ``dag.test()`` names nobody ("dag_test"): its trigger is the user recorded
    in the audit chain before the run started (:func:`ops.run_dag.authenticated_trigger`),
    else it is unauthenticated. Never a name from the environment.
    """
    import os

    from airflow.sdk import get_current_context

    from ops.run_dag import TRIGGER_NONCE_ENV, authenticated_trigger

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


def _run(spec_path: Path):  # noqa: ANN202
    from airflow.sdk import get_current_context

    from pipelines.runs import RunContext

    context = get_current_context()
    return RunContext.create(spec_path, context["run_id"], dict(context["params"]))


def build_lifecycle_dag(spec: ModelSpec, spec_path: Path):  # noqa: ANN201, C901
    """The lifecycle DAG for one spec."""

    @dag(
        dag_id=f"{spec.name}_lifecycle",
        description=f"Governed training lifecycle for {spec.name} ({spec.use_case})",
        doc_md=__doc__ + f"\n\n**Spec**: `{spec_path}`\n\n{spec.description}",
        schedule=lifecycle_schedule(spec.name, spec.schedule),
        start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        catchup=False,
        max_active_runs=1,
        tags=["govml", "lifecycle", spec.use_case],
        default_args={"owner": spec.owner, "retries": 1, "retry_delay": dt.timedelta(seconds=30)},
        params={
            "data_path": Param(
                None,
                type=["null", "string"],
                description="Parquet/CSV file instead of the spec's source",
            ),
            "n_rows": Param(
                None,
                type=["null", "integer"],
                minimum=100,
                description="rows to generate (generated sources)",
            ),
            "seed": Param(None, type=["null", "integer"], description="generator seed"),
            "bias": Param(
                None,
                type=["null", "number"],
                minimum=0,
                maximum=1,
                description="credit generator bias knob",
            ),
            "fraud_rate": Param(
                None,
                type=["null", "number"],
                minimum=0.001,
                maximum=0.01,
                description="fraud generator target fraud rate",
            ),
            "tuning_trials": Param(
                None, type=["null", "integer"], minimum=0, description="LightGBM tuning budget"
            ),
            "reason": Param(
                None,
                type=["null", "string"],
                description="why this run (recorded in the audit trail)",
            ),
            "author": Param(
                None,
                type=["null", "string"],
                description="who developed this model change (may not approve it)",
            ),
        },
    )
    def lifecycle() -> None:
        @task
        def trigger(**context: Any) -> dict[str, Any]:
            """Why this run: the schedule, a retrain asset event (its reason), a person."""
            from ops.retrain import record_trigger, trigger_reason
            from ops.run_dag import UNAUTHENTICATED

            run = _run(spec_path)
            why = trigger_reason(context)
            user, proven = _trigger()
            actor = "airflow"
            if why["trigger"] == "manual":
                actor = (user or "airflow") if proven else UNAUTHENTICATED
                why["trigger_authenticated"] = proven
            record_trigger(run.settings.governance_url, run.spec.name, run.run_id, why, actor)
            log.info("%s run %s: %s", run.spec.name, run.run_id, why["reason"])
            return why

        @task
        @_no_retry
        def ingest() -> str:
            from pipelines.compute import ingest_with, resolve_compute
            from pipelines.runs import resolve_source

            run = _run(spec_path)
            compute = resolve_compute(run.spec, run.settings)
            ingest_with(compute, run.spec, resolve_source(run), run.stage_dir("ingest"))
            return str(run.stage_dir("ingest") / "data.parquet")

        @task
        @_no_retry
        def champion() -> dict[str, str]:
            from registry.mlflow_registry import fetch_champion

            run = _run(spec_path)
            found = fetch_champion(
                run.settings.mlflow_tracking_uri, run.spec.name, run.stage_dir("champion")
            )
            return {k: str(v) for k, v in (found or {}).items()}

        @task
        @_no_retry
        def validate_data(data: str, champ: dict[str, str]) -> str:
            from pipelines.compute import resolve_compute, validate_with
            from registry.governance import record_data_validation

            run = _run(spec_path)
            profile = Path(champ["profile"]) if champ.get("profile") else None
            folder = run.stage_dir("validate_data")
            compute = resolve_compute(run.spec, run.settings)
            try:
                validate_with(compute, run.spec, Path(data), folder, profile)
            finally:
                record_data_validation(run.settings.governance_url, run.spec, run.run_id, folder)
            return str(folder)

        @task
        @_no_retry
        def lineage(data: str) -> str:
            from registry.lineage import capture_run_lineage

            run = _run(spec_path)
            return str(
                capture_run_lineage(
                    run.settings.governance_url,
                    run.spec.name,
                    run.spec_path,
                    run.run_id,
                    Path(data).parent / "fingerprint.json",
                    run.params,
                    run.settings.home,
                    run.stage_dir("lineage"),
                )
            )

        @task
        @_no_retry
        def features(data: str) -> str:
            from pipelines.compute import build_features_with, resolve_compute

            run = _run(spec_path)
            compute = resolve_compute(run.spec, run.settings)
            build_features_with(compute, run.spec, Path(data), run.stage_dir("features"))
            return str(run.stage_dir("features"))

        @task
        @_no_retry
        def train(features_dir: str) -> str:
            from pipelines.compute import resolve_compute, train_with

            run = _run(spec_path)
            train_with(
                resolve_compute(run.spec, run.settings),
                run.spec,
                Path(features_dir),
                run.stage_dir("train"),
                tuning_trials=run.params.get("tuning_trials"),
            )
            return str(run.stage_dir("train"))

        @task
        @_no_retry
        def evaluate(features_dir: str, train_dir: str, champ: dict[str, str]) -> str:
            from pipelines.compute import evaluate_with, resolve_compute

            run = _run(spec_path)
            model = Path(champ["model"]) if champ.get("model") else None
            recent = run.settings.var_dir / "monitoring" / run.spec.name / "recent_labelled.parquet"
            evaluate_with(
                resolve_compute(run.spec, run.settings),
                run.spec,
                Path(features_dir),
                Path(train_dir),
                run.stage_dir("evaluate"),
                champion_model=model,
                recent_window=recent if recent.is_file() else None,
            )
            return str(run.stage_dir("evaluate"))

        @task
        @_no_retry
        def fairness(features_dir: str, eval_dir: str) -> str:
            from validation.fairness import assess_fairness

            run = _run(spec_path)
            assess_fairness(run.spec, Path(features_dir), Path(eval_dir), run.stage_dir("fairness"))
            return str(run.stage_dir("fairness"))

        @task
        @_no_retry
        def explain(features_dir: str, train_dir: str, eval_dir: str, champ: dict[str, str]) -> str:
            from pipelines.compute import explain_with, resolve_compute

            run = _run(spec_path)
            model = Path(champ["model"]) if champ.get("model") else None
            explain_with(
                resolve_compute(run.spec, run.settings),
                run.spec,
                Path(features_dir),
                Path(train_dir),
                Path(eval_dir),
                run.stage_dir("explain"),
                champion_model=model,
            )
            return str(run.stage_dir("explain"))

        @task
        @_no_retry
        def gates(
            eval_dir: str, fairness_dir: str, explain_dir: str, _lineage: str, _validated: str
        ) -> str:
            from registry.governance import record_gate_results
            from validation.gates import check_gates

            run = _run(spec_path)
            folder = run.stage_dir("gates")
            try:
                check_gates(run.spec, Path(eval_dir), Path(fairness_dir), Path(explain_dir), folder)
            finally:
                record_gate_results(run.settings.governance_url, run.spec, run.run_id, folder)
            return str(folder)

        @task
        @_no_retry
        def register(_gates: str) -> dict[str, Any]:
            from pipelines.spec import spec_hash
            from registry.governance import record_registration
            from registry.mlflow_registry import artifact_location_for
            from registry.mlflow_registry import register as run_register

            run = _run(spec_path)
            uri = run.settings.mlflow_tracking_uri
            result = run_register(
                run.spec,
                run.run_dir,
                run.run_id,
                uri,
                run.stage_dir("register"),
                spec_sha256=spec_hash(run.spec_path),
                artifact_location=artifact_location_for(uri, run.settings.mlflow_artifacts),
            ).to_dict()
            record_registration(run.settings.governance_url, run.run_id, result)
            return result

        @task
        @_no_retry
        def request_approval(registered: dict[str, Any], champ: dict[str, str]) -> dict[str, Any]:
            from registry.governance import open_approval

            run = _run(spec_path)
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
                run_id=run.run_id,
                dag_id=spec.name + "_lifecycle",
                triggered_by=triggered_by,
                trigger_authenticated=proven,
                author=run.params.get("author"),
                champion_model=Path(champ["model"]) if champ.get("model") else None,
                out_dir=run.stage_dir("approval"),
            )

        approval = GovernedApprovalOperator(
            task_id="approval",
            response_timeout=dt.timedelta(seconds=spec.approval.timeout_seconds),
            doc_md="Four-eyes approval: answer under Browse -> Required Actions.",
        )

        @task
        @_no_retry
        def deploy(registered: dict[str, Any]) -> dict[str, Any]:
            """Release the version this run registered, if the keyed audit chain holds a
            valid approval of it: the approval task's state and XCom are never trusted
            (a forced or cleared task changes neither the chain nor this check)."""
            from ops.deploy import serve_release
            from registry.governance import release_approved

            run = _run(spec_path)
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

        data = ingest()
        trigger() >> data
        champ = champion()
        validated = validate_data(data, champ)
        lineage_path = lineage(data)
        feats = features(data)
        validated >> feats
        model = train(feats)
        evaluated = evaluate(feats, model, champ)
        fair = fairness(feats, evaluated)
        explained = explain(feats, model, evaluated, champ)
        registered = register(gates(evaluated, fair, explained, lineage_path, validated))
        requested = request_approval(registered, champ)
        requested >> approval
        approval >> deploy(registered)

    return lifecycle()


def _build_all() -> dict[str, Any]:
    dags: dict[str, Any] = {}
    for name, path in dag_spec_paths(SETTINGS.specs_dir).items():
        try:
            spec = load_spec(path)
        except GovMLError as exc:
            # A bad spec must not hide the other models' DAGs; `govml spec validate`
            # and the test suite report it.
            log.error("skipping lifecycle DAG for %s: %s", name, exc)
            continue
        if f"{spec.name}_lifecycle" not in dags:  # the specs folder's spec of a name wins
            dags[f"{spec.name}_lifecycle"] = build_lifecycle_dag(spec, path)
    return dags


globals().update(_build_all())
