"""What a pending Required Action shows above its form: refusals and approvals so far.

Airflow writes a Required Action's subject and text once per task instance and never
changes them (a re-ask only clears the previous answer; even a retry keeps the row),
so the approval task cannot rewrite them after an answer. The notes are therefore read
from the audit trail (the one record of refusals and decisions, whichever channel they
came through) when the Required Action is *read*: :class:`ApprovalNotesMiddleware`
sits in Airflow's API server and puts them at the top of the text of every pending
``GovernedApprovalOperator`` Required Action it serves, and a short form in its
subject, for example::

    Refused: operator's approve: operator triggered this run and cannot approve or
    reject it (four-eyes)

The middleware only adds text to successful ``GET .../hitlDetails`` answers; any
problem leaves Airflow's answer as it was (and is logged). It is registered by the
stack's auth manager (:mod:`dags.govml_airflow.auth`); with another auth manager, register it
from an Airflow plugin's ``fastapi_root_middlewares``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

log = logging.getLogger(__name__)

OPERATOR = "GovernedApprovalOperator"
# the audit events that say where a request stands after an answer
ANSWER_KINDS = ("approval_granted", "approval_refused")
HITL_PATH = re.compile(
    r"^/api/v2/dags/(?P<dag>[^/]+)/dagRuns/(?P<run>[^/]+)/"
    r"(?:taskInstances/[^/]+/-?\d+/)?hitlDetails(?:/tries/\d+)?/?$"
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


# --------------------------------------------------------------------------- the notes


def escape(text: str) -> str:
    """Markdown-escape free text (feature names like ``__all__`` are not emphasis)."""
    return "".join("\\" + c if c in "\\`*_{}[]<>#|" else c for c in text)


def refusal_note(actor: str, payload: dict[str, Any]) -> str:
    """``Refused: validator's approve: <why>`` for an ``approval_refused`` event."""
    decision = payload.get("decision") or "answer"
    return f"Refused: {actor}'s {decision}: {payload.get('reason') or 'no reason given'}"


def progress_note(approvers: list[str], required: int) -> str:
    return (
        f"{len(approvers)} of {required} approvals so far ({', '.join(approvers)}): "
        "a second, different approver is needed."
    )


def notes(url: str, state: Any) -> tuple[str | None, list[str]]:
    """The notes for a pending request: its last refusal (when no approval came after
    it) and the approvals so far. Also a short form of the refusal for the subject
    (``operator's approve refused``), or None."""
    from registry.audit import events

    found = events(
        url,
        model_name=state.model_name,
        model_version=state.model_version,
        run_id=state.run_id,
        kinds=ANSWER_KINDS,
    )
    lines, short = [], None
    if found and found[-1].kind == "approval_refused":
        last = found[-1]
        lines.append(refusal_note(last.actor, last.payload))
        short = f"{last.actor}'s {last.payload.get('decision') or 'answer'} refused"
    if state.approvers:
        lines.append(progress_note(state.approvers, state.required_approvers))
    return short, lines


def as_markdown(lines: list[str]) -> str:
    """The notes as the top of a Required Action's text (quoted, bold)."""
    return "".join(f"> **{escape(line)}**\n\n" for line in lines)


# --------------------------------------------------------------------------- Required Actions


def _state_of(url: str, dag_id: str, run_id: str) -> Any:
    """The pending approval request of a lifecycle run, or None."""
    from registry.approval_state import ApprovalStatus
    from registry.approvals import list_requests

    model = dag_id.removesuffix("_lifecycle") if dag_id.endswith("_lifecycle") else None
    for state in list_requests(url, model, ApprovalStatus.PENDING):
        if state.run_id == run_id and state.dag_id in (None, dag_id):
            return state
    return None


def decorate(detail: dict[str, Any], url: str) -> dict[str, Any]:
    """A pending approval task's Required Action (Airflow's JSON) with the notes on top."""
    ti = detail.get("task_instance") or {}
    if detail.get("response_received") or OPERATOR not in (
        ti.get("operator"),
        ti.get("operator_name"),
    ):
        return detail
    state = _state_of(url, str(ti.get("dag_id")), str(ti.get("dag_run_id")))
    if state is None:
        return detail
    short, lines = notes(url, state)
    if lines:
        detail = dict(detail)
        detail["body"] = as_markdown(lines) + (detail.get("body") or "")
        if short:
            detail["subject"] = f"{detail.get('subject', '')} ({short})"
    return detail


def decorate_answer(data: Any, url: str) -> Any:
    """One Required Action or a collection (``hitl_details``), decorated."""
    if isinstance(data, dict) and isinstance(data.get("hitl_details"), list):
        return data | {"hitl_details": [decorate(d, url) for d in data["hitl_details"]]}
    if isinstance(data, dict) and "task_instance" in data:
        return decorate(data, url)
    return data


class ApprovalNotesMiddleware:
    """ASGI middleware: pending approval Required Actions served with their notes."""

    def __init__(self, app: Callable[..., Awaitable[None]], governance_url: str | None = None):
        self.app = app
        self._url = governance_url

    def governance_url(self) -> str:
        if self._url is None:
            from pipelines.config import load_settings

            self._url = load_settings().governance_url
        return self._url

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope.get("type") != "http"
            or scope.get("method") != "GET"
            or not HITL_PATH.match(scope.get("path", ""))
        ):
            await self.app(scope, receive, send)
            return
        start: Message = {}
        chunks: list[bytes] = []

        async def buffered(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    await self._send(start, b"".join(chunks), send)
            else:
                await send(message)

        await self.app(scope, receive, buffered)

    async def _send(self, start: Message, body: bytes, send: Send) -> None:
        headers = list(start.get("headers") or [])
        if start.get("status") == 200 and _is_plain_json(headers):
            try:
                changed = await _in_thread(self._decorated, body)
            except Exception:  # noqa: BLE001 (never break Airflow's answer)
                log.exception("could not add the approval notes to a Required Action")
                changed = None
            if changed is not None:
                body = changed
                headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
                headers.append((b"content-length", str(len(body)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    def _decorated(self, body: bytes) -> bytes | None:
        data = json.loads(body)
        new = decorate_answer(data, self.governance_url())
        return None if new == data else json.dumps(new).encode()


def _is_plain_json(headers: list[tuple[bytes, bytes]]) -> bool:
    values = {k.lower(): v.lower() for k, v in headers}
    return b"application/json" in values.get(b"content-type", b"") and not values.get(
        b"content-encoding"
    )


async def _in_thread(func: Callable[[bytes], bytes | None], body: bytes) -> bytes | None:
    """Run the (blocking, database-reading) decoration off the event loop."""
    import asyncio

    return await asyncio.get_running_loop().run_in_executor(None, func, body)
