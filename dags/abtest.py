"""One A/B test analysis DAG per model spec with an ``abtest`` section (``<name>_abtest``).

Wiring only. Daily: ``running`` skips the run when no A/B test of the model is running
(tests start with ``govml abtest start``); ``analyse`` is one look of the sequential test
(:func:`ops.abtest.analyse`): it joins the gateway's A/B logs to the prediction logs and
labels, writes the report (HTML and JSON), records the decision (ship, stop, continue) in
the audit trail and, on a stop or ship, sends all traffic back to the champion. A stop
fails the task (without retries) so that it is seen; its reasons are in the task log,
the report and the audit trail.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from airflow.sdk import dag, task

from dags.govml_airflow.factory import dag_arguments, dags_per_spec
from pipelines.config import load_settings
from pipelines.errors import GovMLError
from pipelines.spec import ModelSpec, discover_specs, load_spec

log = logging.getLogger(__name__)
SETTINGS = load_settings()


def build_abtest_dag(spec: ModelSpec, spec_path: str):  # noqa: ANN201
    @dag(
        description=f"Daily A/B test analysis for {spec.name}: report, decision, stop rule",
        doc_md=__doc__,
        schedule="@daily",
        **dag_arguments(spec, "abtest", retries=1, retry_delay=dt.timedelta(minutes=5)),
    )
    def abtest() -> None:
        @task.short_circuit(task_id="running")
        def running() -> bool:
            from ops.abtest_state import load_state
            from serving.control.routes import RUNNING

            state = load_state(load_settings(), load_spec(spec_path).name)
            return state is not None and state.status == RUNNING

        @task(task_id="analyse", retries=0)
        def analyse() -> dict[str, Any]:
            from airflow.sdk.exceptions import AirflowFailException

            from ops.abtest import analyse as look

            try:
                report = look(load_settings(), load_spec(spec_path))
            except GovMLError as exc:
                raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
            decision = report["decision"]
            log.info("%s: %s: %s", spec.name, decision["action"], "; ".join(decision["reasons"]))
            if decision["action"] == "stop":
                raise AirflowFailException(
                    f"{spec.name}: A/B test stopped, traffic back to the champion: "
                    + "; ".join(decision["reasons"])
                )
            return {"action": decision["action"], "look": report["look"]["number"]}

        running() >> analyse()

    return abtest()


def _build_all() -> dict[str, Any]:
    return dags_per_spec(
        discover_specs(SETTINGS.specs_dir),
        "abtest",
        lambda spec, path: build_abtest_dag(spec, str(path)) if spec.abtest is not None else None,
        log,
        label="A/B test",
    )


globals().update(_build_all())
