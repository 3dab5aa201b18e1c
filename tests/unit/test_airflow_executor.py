"""The stack's executor: Airflow's LocalExecutor with the lifecycle's libraries imported
before its workers fork (dags/govml_airflow/executor.py)."""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

import pytest

from ops.stack import LOCAL_EXECUTOR, airflow_env
from pipelines.config import load_settings


def _configured(env: dict[str, str]) -> str:
    return airflow_env(load_settings(env))["AIRFLOW__CORE__EXECUTOR"]


def test_the_stack_runs_the_preloading_local_executor(tmp_path: Path) -> None:
    from airflow.executors.local_executor import LocalExecutor

    path = _configured({"GOVML_VAR_DIR": str(tmp_path)})
    assert path == LOCAL_EXECUTOR
    module, name = path.rsplit(".", 1)
    executor = getattr(importlib.import_module(module), name)
    assert issubclass(executor, LocalExecutor) and executor.is_local


def test_the_celery_executor_is_airflows_own_its_workers_preload(tmp_path: Path) -> None:
    env = {
        "GOVML_VAR_DIR": str(tmp_path),
        "GOVML_AIRFLOW_EXECUTOR": "CeleryExecutor",
        "GOVML_AIRFLOW_DB_URL": "postgresql+psycopg://airflow@127.0.0.1:5432/airflow",
    }
    assert _configured(env) == "CeleryExecutor"
    options = airflow_env(load_settings(env))["AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS"]
    module, name = options.rsplit(".", 1)
    from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG

    assert getattr(importlib.import_module(module), name) == DEFAULT_CELERY_CONFIG


def test_preload_imports_the_modules_and_names_those_that_failed(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dags.govml_airflow.executor import preload

    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    with caplog.at_level(logging.INFO, logger="dags.govml_airflow.executor"):
        failed = preload(("colorsys", "no_such_module_for_govml"))
    assert failed == ["no_such_module_for_govml"]
    assert "colorsys" in sys.modules
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("not preloaded for the task processes: no_such_module_for_govml")
               for m in messages)  # fmt: skip
    assert any(m.startswith("preloaded 1 module(s) for the task processes in ") for m in messages)


def test_every_preloaded_module_is_installed() -> None:
    """A name in the list that does not import would only be logged by the scheduler:
    the list is checked here instead."""
    from importlib.util import find_spec

    from dags.govml_airflow.executor import PRELOADED_MODULES

    assert [name for name in PRELOADED_MODULES if find_spec(name) is None] == []


def test_the_celery_executor_on_sqlite_is_refused_in_one_line(tmp_path: Path) -> None:
    from pipelines.errors import StackError

    env = {"GOVML_VAR_DIR": str(tmp_path), "GOVML_AIRFLOW_EXECUTOR": "CeleryExecutor"}
    with pytest.raises(StackError, match="^GOVML_AIRFLOW_EXECUTOR=CeleryExecutor needs a Postgre"):
        _configured(env)
