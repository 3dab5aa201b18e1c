"""Approval statuses are one enum whose values are what the chain, tables and JSON hold."""

from __future__ import annotations

import json

from registry.approval_state import ApprovalStatus
from registry.audit import canonical_json


def test_values_and_hashed_form_are_the_plain_names() -> None:
    assert [s.value for s in ApprovalStatus] == [
        "pending",
        "approved",
        "rejected",
        "expired",
        "void",
    ]
    payload = {"status": ApprovalStatus.APPROVED, "seen": [ApprovalStatus.VOID]}
    assert canonical_json(payload) == canonical_json({"status": "approved", "seen": ["void"]})
    assert json.dumps(payload) == '{"status": "approved", "seen": ["void"]}'
    assert f"{ApprovalStatus.PENDING}" == str(ApprovalStatus.PENDING) == "pending"
    assert ApprovalStatus.EXPIRED == "expired"
