"""The human approval gate of a lifecycle DAG: an Airflow human-in-the-loop task.

The task writes a Required Action ("Approve" / "Reject" with a mandatory reason)
and parks in the ``awaiting_input`` state: it holds no worker slot and needs no
triggerer while it waits. Each answer, from the Airflow UI (Browse -> Required
Actions), from REST, or from ``govml approve``/``reject`` (which answer the same
action over the REST API as the reviewer), is checked against the four-eyes rules by
:func:`registry.approvals.decide` and recorded in the governance store, then mirrored
as MLflow model-version tags. An approval is checked against the artifact as the
registry holds it *at the time of the answer* (downloaded and hashed again), not
against the hash the request stored.

* An answer that breaks a rule (self-approval, no approver role, no reason, a
  changed artifact, ...) is refused and recorded; the task asks again.
* An approval that is not yet enough (a high-risk change needs two people) is
  recorded; the task asks again for the next approver.
* A rejection fails the task with the reviewer's reason; so does no answer before
  the spec's ``approval.timeout`` (the scheduler's timeout sweep resumes the task
  with a timeout event).
* Enough valid approvals: the task succeeds and returns the approval, and the
  deploy step may use it.

Asking again clears the answer of the same Required Action; Airflow keeps its subject
and text, so what happened since (who was refused and why, approvals so far) is read
from the audit trail and shown above the form by :mod:`ops.approval_notes`.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from airflow.providers.standard.operators.hitl import HITLOperator

from ops.approval_form import APPROVE, OPTIONS, REJECT, form_params, reason_of
from ops.approval_notes import as_markdown, escape, notes, progress_note

log = logging.getLogger(__name__)

REQUEST_TASK = "request_approval"


def _body(request: dict[str, Any], mlflow_url: str | None, lines: list[str]) -> str:
    version = request["model_version"]
    text = [
        f"Model **{request['model_name']}** version **{version}** passed every automatic "
        f"gate and waits for approval before deployment.",
        "",
        f"* artifact SHA-256: `{request['artifact_sha256']}` (hashed again when you approve)",
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
        text += ["", "**High-risk change**, needs two approvers:"]
        text += [f"* {escape(reason)}" for reason in request["risk_reasons"]]
    if mlflow_url:
        text += [
            "",
            f"Review the model card, gate results and reports in MLflow: "
            f"{mlflow_url.rstrip('/')}/#/models/{request['model_name']}/versions/{version}",
        ]
    text += ["", "Give the reason for your decision in the **Reason** field."]
    return as_markdown(lines) + "\n".join(text)


def _subject(request: dict[str, Any], refused: str | None) -> str:
    subject = f"Approve {request['model_name']} version {request['model_version']} for deployment?"
    return f"{subject} ({refused})" if refused else subject


class GovernedApprovalOperator(HITLOperator):
    """Approve / Reject a registered version under the spec's four-eyes rules."""

    def __init__(self, *, response_timeout: dt.timedelta, **kwargs: Any) -> None:
        # inside a DAG, Airflow passes the DAG's params: the form has its own (form_params)
        kwargs.pop("params", None)
        super().__init__(
            subject="Approve a model version for deployment",
            options=list(OPTIONS),
            response_timeout=response_timeout,
            retries=0,
            **kwargs,
        )

    @property
    def serialized_params(self) -> dict[str, dict[str, Any]]:
        """The form, always built fresh: never the run-time (conf-overlaid) parameters."""
        return form_params()

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

    def _artifact_sha256(self, request: dict[str, Any]) -> str:
        """The registered version's artifact hashed now (raises RegistryError)."""
        from registry.mlflow_registry import artifact_sha256_of

        return artifact_sha256_of(
            self._settings().mlflow_tracking_uri, request["model_name"], request["model_version"]
        )

    def _rehashed(self, request: dict[str, Any], user: str, label: str) -> str | None:
        """The artifact as the registry holds it now, not the hash the request stored;
        None when it cannot be hashed now (the registry is down): ``user``'s approval is
        then refused (and shown), to be asked again."""
        from pipelines.errors import RegistryError
        from registry.approvals import refuse

        try:
            return self._artifact_sha256(request)
        except RegistryError as exc:
            why = f"cannot hash the registered artifact again: {exc}"
            log.warning("%s: %s's approval refused: %s", label, user, why)
            refuse(
                self._settings().governance_url,
                request["model_name"],
                request["model_version"],
                user=user,
                decision="approve",
                why=why,
                channel="ui",
                run_id=request["run_id"],
            )
            return None

    def _ask(self, context: Any, request: dict[str, Any]) -> None:
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
        settings = self._settings()
        refused, lines = notes(settings.governance_url, _current(settings.governance_url, request))
        self.subject = _subject(request, refused)
        self.body = _body(request, settings.mlflow_url, lines)
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
            "waiting for a decision on %s v%s%s",
            request["model_name"],
            request["model_version"],
            "".join(f"; {line}" for line in lines),
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

    def _settled(self, state: Any, label: str) -> dict[str, Any]:
        """The result of a request that no longer waits: its approval, or a failed task."""
        from airflow.sdk.exceptions import AirflowFailException

        from registry.approval_state import ApprovalStatus

        self._mirror(state)
        if state.status == ApprovalStatus.APPROVED:
            log.info("%s approved by %s", label, ", ".join(state.approvers))
            return state.to_dict()
        last = state.decisions[-1] if state.decisions else None
        why = f" by {last.user}: {last.reason}" if last else ""
        raise AirflowFailException(f"{label}: {state.status}{why}")

    # ------------------------------------------------------------------ operator
    def execute(self, context: Any) -> Any:
        from registry.approval_state import ApprovalStatus

        request = self._request(context)
        current = _current(self._settings().governance_url, request)
        if current.status != ApprovalStatus.PENDING:
            # decided elsewhere (the CLI) before this try started (a cleared task)
            return self._settled(current, f"{request['model_name']} v{request['model_version']}")
        self._ask(context, request)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        from airflow.sdk.exceptions import AirflowFailException

        from pipelines.errors import ApprovalError
        from registry.approval_state import ApprovalStatus
        from registry.approvals import Review, decide

        request = self._request(context)
        label = f"{request['model_name']} v{request['model_version']}"
        settings = self._settings()
        current = _current(settings.governance_url, request)
        if current.status == ApprovalStatus.APPROVED:
            # enough approvals were recorded elsewhere (the CLI) before this answer
            return self._settled(current, label)
        if event.get("error_type") == "timeout" or event.get("timedout"):
            self._expire(request)
            raise AirflowFailException(
                f"{label}: no decision before {request['respond_by']}: counts as a rejection"
            )
        if "error" in event:
            raise AirflowFailException(f"{label}: approval task error: {event['error']}")
        chosen = list(event.get("chosen_options") or [])
        responder = event.get("responded_by_user") or {}
        user = str(responder.get("name") or responder.get("id") or "")
        if chosen not in ([APPROVE], [REJECT]) or not user:
            log.warning("%s: ignored an invalid answer %s by %r", label, chosen, user)
            return self._ask(context, request)
        decision = "approve" if chosen == [APPROVE] else "reject"
        sha = None
        if decision == "approve":
            sha = self._rehashed(request, user, label)
            if sha is None:
                return self._ask(context, request)
        try:
            state = decide(
                settings.governance_url,
                request["model_name"],
                request["model_version"],
                Review(
                    user=user,
                    decision=decision,
                    reason=reason_of(event.get("params_input")),
                    channel="ui",
                ),
                run_id=request["run_id"],
                artifact_sha256=sha,
            )
        except ApprovalError as exc:
            log.warning("%s", exc)
            current = _current(settings.governance_url, request)
            if current.status != ApprovalStatus.PENDING:
                self._mirror(current)
                raise AirflowFailException(str(exc)) from None
            log.info("refused, asking again: %s", exc)
            return self._ask(context, request)
        if state.status == ApprovalStatus.PENDING:
            self._mirror(state)
            log.info("%s: %s", label, progress_note(state.approvers, state.required_approvers))
            return self._ask(context, request)
        return self._settled(state, label)


def _current(url: str, request: dict[str, Any]):  # noqa: ANN202
    from registry.approvals import get_request

    return get_request(url, request["model_name"], request["model_version"], request["run_id"])
