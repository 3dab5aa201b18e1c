"""The Celery configuration of the stack's CeleryExecutor: Airflow's own, plus the
preload of :mod:`dags.govml_airflow.executor` in each Celery worker.

A Celery worker forks its pool processes at start, and each pool process forks one
process per task; the worker imports the lifecycle's libraries once, before its pool
starts (Celery's ``worker_init`` signal), so no task process imports them again. The
scheduler and the API server import this module too; the signal never fires there.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG
from celery.signals import worker_init

from dags.govml_airflow.executor import preload

CELERY_CONFIG: dict[str, Any] = dict(DEFAULT_CELERY_CONFIG)


@worker_init.connect(weak=False)
def _preload_before_the_pool_forks(**_: Any) -> None:
    preload()
