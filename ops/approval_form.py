"""The Required Action's form: its options and its one field, shared by everyone who answers.

The approval task (:mod:`dags.govml_airflow.approval_gate`) writes the form; the Airflow
UI, ``govml approve``/``reject`` and REST clients answer it with ``chosen_options`` and
``params_input``. This module holds the contract without importing Airflow, so the CLI
can use it cheaply.

The reason field has a name no lifecycle DAG parameter uses (a DAG's ``reason`` is why
the run was triggered) and the form is built fresh every time it is written, never from
the task's parameters: Airflow overlays the run's conf onto the task's parameter
objects at run time, which would otherwise pre-fill the reviewer's reason with the
trigger's text.
"""

from __future__ import annotations

from typing import Any

APPROVE, REJECT = "Approve", "Reject"
OPTIONS = [APPROVE, REJECT]
REASON_FIELD = "decision_reason"


def form_params() -> dict[str, dict[str, Any]]:
    """The form's fields as Airflow stores them (serialised ``Param`` objects): one
    required, initially empty text field."""
    return {
        REASON_FIELD: {
            "value": "",
            "description": "why you approve or reject (recorded in the audit trail)",
            "schema": {"type": "string", "minLength": 1, "title": "Reason"},
            "source": "task",
        }
    }


def answer_body(option: str, reason: str) -> dict[str, Any]:
    """The ``PATCH .../hitlDetails`` body answering the form with ``option`` and ``reason``."""
    if option not in OPTIONS:
        raise ValueError(f"option must be one of {OPTIONS}, not {option!r}")
    return {"chosen_options": [option], "params_input": {REASON_FIELD: reason}}


def reason_of(params_input: Any) -> str:
    """The reason given in an answer's ``params_input`` (empty when missing or not text)."""
    if not isinstance(params_input, dict):
        return ""
    value = params_input.get(REASON_FIELD)
    return value.strip() if isinstance(value, str) else ""
