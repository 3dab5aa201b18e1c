"""The `approver` role of the stack's Airflow auth manager: read, answer Required
Actions, nothing else. Checked through the auth manager's own interface, the one every
Airflow API route calls; tests/security/test_airflow_privileges.py checks the same
against a running API server."""

from __future__ import annotations

import pytest
from airflow.api_fastapi.auth.managers.models.resource_details import (
    AccessView,
    DagAccessEntity,
    DagDetails,
)
from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

from dags.govml_airflow.auth import GovmlAuthManager

DAG = DagDetails(id="german_credit_lifecycle")


@pytest.fixture(scope="module")
def manager() -> GovmlAuthManager:
    return GovmlAuthManager()


def _user(role: str) -> SimpleAuthManagerUser:
    return SimpleAuthManagerUser(username=f"a-{role}", role=role)


@pytest.mark.parametrize(
    "entity",
    [
        None,
        DagAccessEntity.RUN,
        DagAccessEntity.TASK_INSTANCE,
        DagAccessEntity.TASK_LOGS,
        DagAccessEntity.XCOM,
        DagAccessEntity.HITL_DETAIL,
    ],
)
def test_an_approver_reads_what_a_viewer_reads(manager, entity) -> None:  # noqa: ANN001
    approver = _user("approver")
    assert manager.is_authorized_dag(method="GET", user=approver, access_entity=entity, details=DAG)
    assert manager.is_authorized_view(access_view=AccessView.DOCS, user=approver)


def test_an_approver_answers_required_actions(manager) -> None:  # noqa: ANN001
    assert manager.is_authorized_dag(
        method="PUT", user=_user("approver"), access_entity=DagAccessEntity.HITL_DETAIL, details=DAG
    )
    # a viewer cannot: the role adds exactly this
    assert not manager.is_authorized_dag(
        method="PUT", user=_user("viewer"), access_entity=DagAccessEntity.HITL_DETAIL, details=DAG
    )


@pytest.mark.parametrize(
    ("method", "entity"),
    [
        ("POST", DagAccessEntity.RUN),  # trigger a run
        ("PUT", DagAccessEntity.RUN),  # mark a run, clear it
        ("DELETE", DagAccessEntity.RUN),
        ("PUT", DagAccessEntity.TASK_INSTANCE),  # mark a task's state, clear tasks
        ("POST", DagAccessEntity.XCOM),
        ("PUT", DagAccessEntity.XCOM),
        ("POST", DagAccessEntity.HITL_DETAIL),
        ("DELETE", DagAccessEntity.HITL_DETAIL),
        ("PUT", None),  # pause, edit the Dag
        ("DELETE", None),
    ],
)
def test_an_approver_changes_nothing_else_in_a_dag(manager, method, entity) -> None:  # noqa: ANN001
    assert not manager.is_authorized_dag(
        method=method, user=_user("approver"), access_entity=entity, details=DAG
    )
    # (what the simple auth manager's `user` role may do, for contrast)
    assert manager.is_authorized_dag(
        method=method, user=_user("user"), access_entity=entity, details=DAG
    )


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE"])
def test_an_approver_has_no_variables_connections_or_pools_to_change(manager, method) -> None:  # noqa: ANN001
    approver = _user("approver")
    assert not manager.is_authorized_variable(method=method, user=approver)
    assert not manager.is_authorized_connection(method=method, user=approver)
    if method != "GET":
        assert not manager.is_authorized_pool(method=method, user=approver)
        assert not manager.is_authorized_configuration(method=method, user=approver)
        assert not manager.is_authorized_asset(method=method, user=approver)


def test_the_other_roles_keep_their_simple_auth_manager_meaning(manager) -> None:  # noqa: ANN001
    assert manager.is_authorized_variable(method="POST", user=_user("op"))
    assert not manager.is_authorized_variable(method="POST", user=_user("user"))
    assert manager.is_authorized_dag(
        method="POST", user=_user("op"), access_entity=DagAccessEntity.RUN
    )
    assert manager.is_authorized_connection(method="DELETE", user=_user("admin"))
    assert not manager.is_authorized_dag(
        method="GET", user=SimpleAuthManagerUser(username="x", role=None)
    )


def test_by_default_approvers_are_not_airflow_admins() -> None:
    from pipelines.config import load_settings

    roles = dict(load_settings({}).airflow_users)
    assert roles == {
        "admin": "admin",
        "reviewer": "approver",
        "validator": "approver",
        "operator": "op",
    }


def test_the_stack_configures_this_auth_manager(tmp_path) -> None:  # noqa: ANN001
    from ops.stack import airflow_env
    from pipelines.config import load_settings

    env = airflow_env(load_settings({"GOVML_VAR_DIR": str(tmp_path)}))
    assert env["AIRFLOW__CORE__AUTH_MANAGER"] == "dags.govml_airflow.auth.GovmlAuthManager"
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] == "False"
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(",")[1] == "reviewer:approver"
