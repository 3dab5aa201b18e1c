"""One rollout DAG per model spec (``<name>_rollout``): shadow, canary steps, the go for
100 %, promotion, for the deployed version given as the ``version`` parameter.

Wiring only. ``start`` puts the version in shadow behind the champion
(:func:`ops.rollout.start`); then one sensor per phase of the spec's rollout policy. A
sensor waits in ``reschedule`` mode (no worker slot between pokes); each poke runs one
controller evaluation (:func:`ops.rollout.evaluate`: the live prediction logs, the
gateway's counters and shadow log against the spec's guardrails). It succeeds once the
rollout has moved past its phase, and fails without retries when the controller rolled
back (the guardrail that tripped is in the task log and the audit trail). When the spec
asks for a human go before 100 %, ``await_go`` waits for ``govml rollout approve``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from airflow.sdk import BaseSensorOperator, Param, dag, task

from dags.govml_airflow.factory import dag_arguments, dags_per_spec
from dags.govml_airflow.run_dag import dag_spec_paths
from pipelines.config import load_settings
from pipelines.errors import GovMLError
from pipelines.spec import ModelSpec, load_spec

log = logging.getLogger(__name__)
SETTINGS = load_settings()
POKE_SECONDS = float(os.environ.get("GOVML_ROLLOUT_POKE_SECONDS", "30"))


def _past(phase: str, percent: int) -> Any:
    """The predicate 'the rollout has moved past this phase' for a rollout state."""

    def predicate(state: Any) -> bool:
        if state.phase == "promoted":
            return True
        if phase == "shadow":
            return state.phase in ("canary", "approval")
        if phase == "go":
            return state.phase == "canary" and state.percent >= 100
        return state.percent > percent or (state.phase == "approval" and state.percent >= percent)

    return predicate


class RolloutPhaseSensor(BaseSensorOperator):
    """Pokes the rollout controller until the rollout has moved past one phase."""

    def __init__(self, *, spec_path: str, phase: str, percent: int = 0, **kwargs: Any) -> None:
        kwargs.setdefault("mode", "reschedule")
        kwargs.setdefault("poke_interval", POKE_SECONDS)
        kwargs.setdefault("retries", 0)
        super().__init__(**kwargs)
        self.spec_path = spec_path
        self.phase = phase
        self.percent = percent

    def poke(self, context: Any) -> bool:
        from airflow.sdk.exceptions import AirflowFailException

        from ops.rollout import evaluate
        from serving.control.routes import controller

        settings = load_settings()
        spec = load_spec(self.spec_path)
        done = _past(self.phase, self.percent)
        state = controller(settings, spec).load()
        if state is None or state.phase == "rolled_back":
            raise AirflowFailException(f"{spec.name}: the rollout was rolled back or never began")
        if done(state):
            return True
        try:
            event = evaluate(settings, spec)
        except GovMLError as exc:
            raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
        log.info("%s: %s at %s%% %s", spec.name, event.kind, event.percent, event.detail or "")
        if event.kind == "rollout_rolled_back":
            raise AirflowFailException(
                f"{spec.name} v{event.version} rolled back: {'; '.join(event.detail['reasons'])}"
            )
        state = controller(settings, spec).load()
        return state is not None and done(state)


def _actor() -> str:
    """Who starts the rollout: the user Airflow authenticated, or for ``dag.test()`` the
    user recorded in the audit chain before the run (:mod:`ops.local_run`). A rollout
    moves live traffic: one whose trigger is not proven does not start."""
    from airflow.sdk import get_current_context
    from airflow.sdk.exceptions import AirflowFailException

    from ops.local_run import TRIGGER_NONCE_ENV, authenticated_trigger

    context = get_current_context()
    user = context["dag_run"].triggering_user_name
    if user and user != "dag_test":
        return user
    if user == "dag_test":
        found = authenticated_trigger(
            load_settings().governance_url,
            context["dag"].dag_id,
            context["run_id"],
            os.environ.get(TRIGGER_NONCE_ENV),
        )
        if found:
            return found
    raise AirflowFailException(
        f"{context['dag'].dag_id}: the rollout's trigger is not authenticated; trigger it in "
        "Airflow, or run it with "
        "`python -m dags.govml_airflow.run_dag SPEC --dag rollout --as USER`"
    )


def build_rollout_dag(spec: ModelSpec, spec_path: str):  # noqa: ANN201
    policy = spec.rollout

    @dag(
        description=f"Shadow, canary steps and promotion for {spec.name}",
        doc_md=__doc__,
        schedule=None,
        params={
            "version": Param("", type="string", minLength=1, description="version to roll out")
        },
        **dag_arguments(spec, "rollout", retries=0),
    )
    def rollout() -> None:
        @task(task_id="start")
        def start_rollout(**context: Any) -> dict[str, Any]:
            from airflow.sdk.exceptions import AirflowFailException

            from ops.rollout import start

            try:
                event = start(
                    load_settings(), load_spec(spec_path), context["params"]["version"], _actor()
                )
            except GovMLError as exc:
                raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
            return {"version": event.version, "kind": event.kind}

        previous: Any = start_rollout()
        steps = [("shadow", 0)] + [(f"canary_{p}", p) for p in policy.canary_steps[:-1]]
        for task_id, percent in steps:
            sensor = RolloutPhaseSensor(
                task_id=task_id, spec_path=spec_path, phase="shadow" if percent == 0 else "canary",
                percent=percent,
            )  # fmt: skip
            previous >> sensor
            previous = sensor
        if policy.approval_before_full:
            go = RolloutPhaseSensor(task_id="await_go", spec_path=spec_path, phase="go")
            previous >> go
            previous = go
        final = RolloutPhaseSensor(
            task_id="canary_100", spec_path=spec_path, phase="canary", percent=100
        )
        previous >> final

    return rollout()


def _build_all() -> dict[str, Any]:
    return dags_per_spec(
        dag_spec_paths(SETTINGS.specs_dir),
        "rollout",
        lambda spec, path: build_rollout_dag(spec, str(path)),
        log,
    )


globals().update(_build_all())
