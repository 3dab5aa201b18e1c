"""The human approval gate of a lifecycle DAG: an Airflow human-in-the-loop task.

The task writes a Required Action ("Approve" / "Reject" with a mandatory reason)
and parks in the ``awaiting_input`` state: it holds no worker slot and needs no
triggerer while it waits. Each answer, from the Airflow UI (Browse -> Required
Actions) or from ``govml approve``/``reject`` (which answer the same action over
the REST API as the reviewer), is checked against the four-eyes rules by
:func:`registry.approvals.decide` and recorded in the governance store, then mirrored
as MLflow model-version tags.

* An answer that breaks a rule (self-approval, no approver role, ...) is refused
  and recorded; the task asks again.
* An approval that is not yet enough (a high-risk change needs two people) is
  recorded; the task asks again for the next approver.
* A rejection fails the task with the reviewer's reason; so does no answer before
  the spec's ``approval.timeout`` (the scheduler's timeout sweep resumes the task
  with a timeout event).
* Enough valid approvals: the task succeeds and returns the approval, and the
  deploy step may use it.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import Param

log = logging.getLogger(__name__)

APPROVE, REJECT = "Approve", "Reject"
REQUEST_TASK = "request_approval"


def _escape(text: str) -> str:
    """Markdown-escape free text (feature names like ``__all__`` are not emphasis)."""
    return "".join("\\" + c if c in "\\`*_{}[]<>#|" else c for c in text)


def _body(request: dict[str, Any], mlflow_url: str | None, note: str | None) -> str:
    lines = []
    if note:
        lines += [f"**{note}**", ""]
    version = request["model_version"]
    lines += [
        f"Model **{request['model_name']}** version **{version}** passed every automatic "
        f"gate and waits for approval before deployment.",
        "",
        f"* artifact SHA-256: `{request['artifact_sha256']}`",
        f"* lifecycle run: `{request['run_id']}`",
        f"* approvals needed: **{request['required_approvers']}** distinct approver(s) "
        f"holding one of the roles {', '.join(request['approver_roles'])}",
        "* decisions so far: `govml approvals list` or the version's `govml.approval.*` "
        "tags in MLflow (this form stays open until enough distinct approvers agreed)",
        f"* answer before: {request['respond_by']} (no answer counts as a rejection)",
        f"* triggered by: {request.get('triggered_by') or 'the schedule'}; "
        f"author: {request.get('author') or '-'} (neither may decide)",
    ]
    if request.get("risk_reasons"):
        lines += ["", "**High-risk change**, needs two approvers:"]
        lines += [f"* {_escape(reason)}" for reason in request["risk_reasons"]]
    if mlflow_url:
        lines += [
            "",
            f"Review the model card, gate results and reports in MLflow: "
            f"{mlflow_url.rstrip('/')}/#/models/{request['model_name']}/versions/{version}",
        ]
    lines += ["", "Give the reason for your decision in the **reason** field."]
    return "\n".join(lines)


class GovernedApprovalOperator(HITLOperator):
    """Approve / Reject a registered version under the spec's four-eyes rules."""

    def __init__(self, *, response_timeout: dt.timedelta, **kwargs: Any) -> None:
        # inside a DAG, Airflow passes the DAG's params; the form only shows ours
        kwargs.pop("params", None)
        super().__init__(
            subject="Approve a model version for deployment",
            options=[APPROVE, REJECT],
            params={
                "reason": Param(
                    "",
                    type="string",
                    title="Reason",
                    description="why you approve or reject (recorded in the audit trail)",
                )
            },
            response_timeout=response_timeout,
            retries=0,
            **kwargs,
        )

    # ------------------------------------------------------------------ helpers
    def _request(self, context: Any) -> dict[str, Any]:
        request = context["ti"].xcom_pull(task_ids=REQUEST_TASK)
        if not request:
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(f"no approval request from task {REQUEST_TASK!r}")
        return dict(request)

    def _settings(self):  # noqa: ANN202
        from pipelines.config import load_settings

        return load_settings()

    def _ask(self, context: Any, request: dict[str, Any], note: str | None = None) -> None:
        """Write (or re-open) the Required Action and park the task until it is answered."""
        from airflow.sdk.exceptions import AirflowFailException, TaskAwaitingInput
        from airflow.sdk.execution_time.hitl import upsert_hitl_detail

        respond_by = dt.datetime.fromisoformat(request["respond_by"])
        remaining = respond_by - dt.datetime.now(dt.UTC)
        if remaining.total_seconds() <= 0:
            self._expire(request)
            raise AirflowFailException(
                f"{request['model_name']} v{request['model_version']}: no approval before "
                f"{request['respond_by']}: counts as a rejection"
            )
        self.subject = (
            f"Approve {request['model_name']} version {request['model_version']} for deployment?"
        )
        self.body = _body(request, self._settings().mlflow_url, note)
        upsert_hitl_detail(
            ti_id=context["task_instance"].id,
            options=self.options,
            subject=self.subject,
            body=self.body,
            defaults=None,
            multiple=False,
            params=self.serialized_params,
            assigned_users=self.assigned_users,
        )
        log.info(
            "waiting for a decision on %s v%s", request["model_name"], request["model_version"]
        )
        raise TaskAwaitingInput(method_name="execute_complete", timeout=remaining)

    def _mirror(self, state: Any) -> None:
        from registry.mlflow_registry import tag_version

        tag_version(
            self._settings().mlflow_tracking_uri,
            state.model_name,
            state.model_version,
            state.mlflow_tags(),
        )

    def _expire(self, request: dict[str, Any]) -> None:
        from registry.approvals import expire

        state = expire(
            self._settings().governance_url,
            request["model_name"],
            request["model_version"],
            request["run_id"],
        )
        self._mirror(state)

    # ------------------------------------------------------------------ operator
    def execute(self, context: Any) -> Any:
        self._ask(context, self._request(context))

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        from airflow.sdk.exceptions import AirflowFailException

        from pipelines.errors import ApprovalError
        from registry.approvals import APPROVED, PENDING, decide

        request = self._request(context)
        label = f"{request['model_name']} v{request['model_version']}"
        settings = self._settings()
        current = _current(settings.governance_url, request)
        if current.status == APPROVED:
            # enough approvals were recorded elsewhere (the CLI) before this answer
            self._mirror(current)
            log.info("%s approved by %s", label, ", ".join(current.approvers))
            return current.to_dict()
        if event.get("error_type") == "timeout" or event.get("timedout"):
            self._expire(request)
            raise AirflowFailException(
                f"{label}: no decision before {request['respond_by']}: counts as a rejection"
            )
        if "error" in event:
            raise AirflowFailException(f"{label}: approval task error: {event['error']}")
        chosen = list(event.get("chosen_options") or [])
        params = dict(event.get("params_input") or {})
        responder = event.get("responded_by_user") or {}
        user = str(responder.get("name") or responder.get("id") or "")
        if chosen not in ([APPROVE], [REJECT]) or not user:
            return self._ask(context, request, f"Ignored an invalid answer {chosen} by {user!r}.")
        try:
            state = decide(
                settings.governance_url,
                request["model_name"],
                request["model_version"],
                user=user,
                decision="approve" if chosen == [APPROVE] else "reject",
                reason=str(params.get("reason") or ""),
                channel="ui",
                run_id=request["run_id"],
                artifact_sha256=request["artifact_sha256"],
            )
        except ApprovalError as exc:
            log.warning("%s", exc)
            current = _current(settings.governance_url, request)
            if current.status != PENDING:
                self._mirror(current)
                raise AirflowFailException(str(exc)) from None
            return self._ask(context, current.to_dict(), f"Refused: {exc}")
        self._mirror(state)
        if state.status == APPROVED:
            log.info("%s approved by %s", label, ", ".join(state.approvers))
            return state.to_dict()
        if state.status == PENDING:
            return self._ask(
                context,
                state.to_dict(),
                f"{len(state.approvers)} of {state.required_approvers} approvals so far "
                f"({', '.join(state.approvers)}): a second, different approver is needed.",
            )
        reason = next((d.reason for d in reversed(state.decisions)), "")
        raise AirflowFailException(f"{label}: {state.status} by {user}: {reason}")


def _current(url: str, request: dict[str, Any]):  # noqa: ANN202
    from registry.approvals import get_request

    return get_request(url, request["model_name"], request["model_version"], request["run_id"])
