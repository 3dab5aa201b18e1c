"""The embedded stack's Airflow auth manager: Airflow's simple auth manager plus ``approver``.

Airflow's simple auth manager has four nested roles: ``viewer`` reads, ``user`` also
changes Dags (trigger runs, clear and mark task instances, write XComs, answer
Required Actions), ``op`` also edits connections, pools and variables, ``admin`` may
do everything. A model reviewer needs less than ``user`` and more than ``viewer``:
read everything a viewer reads (Dags, runs, task logs) and answer a Required Action,
which is a ``PUT`` on a Dag's ``HITL_DETAIL``. The ``approver`` role is exactly that,
and nothing else that changes state.

Whether an approver's answer counts is not decided here but by the approval task
(:mod:`dags.govml_airflow.approval_gate`): four-eyes rules and the approver roles granted with
``govml roles grant``. This class only keeps approvers from everything else (and
registers the middleware that shows the task's verdicts above the form).

Configured by the stack (:func:`ops.stack.airflow_env`) as
``AIRFLOW__CORE__AUTH_MANAGER=dags.govml_airflow.auth.GovmlAuthManager``; users and roles
come from ``GOVML_AIRFLOW_USERS`` (``reviewer:approver,...``). The API server imports it
by that dotted path, so ``dags`` is an installed package (setup.cfg) and not only the
folder that the DAG processor and the task runner put on ``sys.path``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager
from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

if TYPE_CHECKING:
    from airflow.api_fastapi.auth.managers.base_auth_manager import ResourceMethod
    from airflow.api_fastapi.auth.managers.models.resource_details import AccessView

APPROVER = "approver"
VIEWER = "viewer"


def is_approver(user: SimpleAuthManagerUser) -> bool:
    return (user.role or "").lower() == APPROVER


def _effective(user: SimpleAuthManagerUser) -> SimpleAuthManagerUser:
    """An approver is checked as a viewer everywhere but on Required Actions."""
    if not is_approver(user):
        return user
    return SimpleAuthManagerUser(username=user.username, role=VIEWER, teams=user.teams)


class GovmlAuthManager(SimpleAuthManager):
    """Simple auth manager users and roles, plus ``approver`` = viewer + answer Required Actions.

    Also puts :class:`ops.approval_notes.ApprovalNotesMiddleware` in the API server:
    pending approval Required Actions are served with the refusals and approvals so far
    on top (Airflow itself never rewrites a Required Action's text).
    """

    def get_fastapi_middlewares(self) -> list[tuple[Any, dict[str, Any]]]:
        from ops.approval_notes import ApprovalNotesMiddleware

        return [*super().get_fastapi_middlewares(), (ApprovalNotesMiddleware, {})]

    def is_authorized_dag(
        self,
        *,
        method: ResourceMethod,
        user: SimpleAuthManagerUser,
        access_entity: DagAccessEntity | None = None,
        details: Any = None,
    ) -> bool:
        if is_approver(user) and method == "PUT" and access_entity == DagAccessEntity.HITL_DETAIL:
            # answering a Required Action: allowed where the approver may read the Dag
            method = "GET"
        return super().is_authorized_dag(
            method=method, user=_effective(user), access_entity=access_entity, details=details
        )

    def is_authorized_configuration(
        self, *, method: ResourceMethod, user: SimpleAuthManagerUser, details: Any = None
    ) -> bool:
        return super().is_authorized_configuration(
            method=method, user=_effective(user), details=details
        )

    def is_authorized_connection(
        self, *, method: ResourceMethod, user: SimpleAuthManagerUser, details: Any = None
    ) -> bool:
        return super().is_authorized_connection(
            method=method, user=_effective(user), details=details
        )

    def is_authorized_asset(
        self, *, method: ResourceMethod, user: SimpleAuthManagerUser, details: Any = None
    ) -> bool:
        return super().is_authorized_asset(method=method, user=_effective(user), details=details)

    def is_authorized_asset_alias(
        self, *, method: ResourceMethod, user: SimpleAuthManagerUser, details: Any = None
    ) -> bool:
        return super().is_authorized_asset_alias(
            method=method, user=_effective(user), details=details
        )

    def is_authorized_pool(
        self, *, method: ResourceMethod, user: SimpleAuthManagerUser, details: Any = None
    ) -> bool:
        return super().is_authorized_pool(method=method, user=_effective(user), details=details)

    def is_authorized_team(
        self, *, method: ResourceMethod, user: SimpleAuthManagerUser, details: Any = None
    ) -> bool:
        return super().is_authorized_team(method=method, user=_effective(user), details=details)

    def is_authorized_variable(
        self, *, method: ResourceMethod, user: SimpleAuthManagerUser, details: Any = None
    ) -> bool:
        return super().is_authorized_variable(method=method, user=_effective(user), details=details)

    def is_authorized_view(self, *, access_view: AccessView, user: SimpleAuthManagerUser) -> bool:
        return super().is_authorized_view(access_view=access_view, user=_effective(user))

    def is_authorized_custom_view(
        self, *, method: ResourceMethod, resource_name: str, user: SimpleAuthManagerUser
    ) -> bool:
        return super().is_authorized_custom_view(
            method=method, resource_name=resource_name, user=_effective(user)
        )
