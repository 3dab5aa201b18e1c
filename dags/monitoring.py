"""One monitoring DAG per model spec (``<name>_monitoring``, hourly by default).

Wiring only. ``monitor`` runs :func:`ops.monitoring.run_monitoring` on the champion's
live window (drift, performance with the labels known so far, technical metrics,
KPIs, compliance, the market watch): it writes the report, logs it to MLflow against
the serving version, records and sends the alerts. When drift, decay or a market shift
asks for a retrain, ``publish_retrain`` updates the model's retrain Asset with the
reason; the lifecycle DAG (scheduled on "its nightly cron or that asset") then runs
and records that reason. Without a retrain, ``publish_retrain`` is skipped and no
event is emitted.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

from airflow.sdk import dag, task

from dags.govml_airflow.assets import PRESETS, retrain_asset
from dags.govml_airflow.factory import dag_arguments, dags_per_spec
from pipelines.config import load_settings
from pipelines.errors import GovMLError
from pipelines.spec import ModelSpec, discover_specs

log = logging.getLogger(__name__)
SETTINGS = load_settings()


def build_monitoring_dag(spec: ModelSpec, spec_path: Path):  # noqa: ANN201
    """The monitoring DAG for one spec."""
    asset = retrain_asset(spec.name)
    schedule = spec.monitoring.schedule

    @dag(
        description=f"Drift, decay, KPIs and compliance of the {spec.name} champion",
        doc_md=__doc__,
        schedule=None if schedule == "none" else PRESETS.get(schedule, schedule),
        **dag_arguments(spec, "monitoring", retries=1, retry_delay=dt.timedelta(minutes=1)),
    )
    def monitoring() -> None:
        @task
        def monitor() -> dict[str, Any]:
            from airflow.sdk.exceptions import AirflowFailException

            from ops.monitoring import run_monitoring

            try:
                result = run_monitoring(spec_path, actor="airflow-monitoring")
            except GovMLError as exc:
                raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
            log.info("%s monitoring: %s (%s)", spec.name, result["status"], result["report_html"])
            keys = ("status", "version", "retrain", "reasons", "report_html", "alerts")
            return {k: result.get(k) for k in keys}

        @task.short_circuit
        def needs_retrain(result: dict[str, Any]) -> bool:
            return bool(result["retrain"])

        @task(outlets=[asset])
        def publish_retrain(result: dict[str, Any]) -> str:
            from airflow.sdk import get_current_context

            reason = "; ".join(result["reasons"])
            get_current_context()["outlet_events"][asset].extra = {
                "reason": reason,
                "source": f"{spec.name}_monitoring",
                "model_version": result.get("version"),
                "report": result.get("report_html"),
            }
            return reason

        result = monitor()
        needs_retrain(result) >> publish_retrain(result)

    return monitoring()


def _build_all() -> dict[str, Any]:
    return dags_per_spec(
        discover_specs(SETTINGS.specs_dir), "monitoring", build_monitoring_dag, log
    )


globals().update(_build_all())
