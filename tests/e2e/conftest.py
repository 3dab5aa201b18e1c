"""The browser tests run against the shared German Credit stack (tests/conftest.py,
``german_credit_stack``): starting a stack takes a minute or more, and no browser test
needs a fresh one. Each test ends the run it triggers (approved and deployed, or
rejected)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest


@pytest.fixture(scope="package")
def stack(chromium_path: str, german_credit_stack) -> SimpleNamespace:  # noqa: ANN001
    """``env``, ``settings``, ``api`` and ``up`` of the running stack (after Chromium was
    found: without a browser the tests skip before starting it)."""
    return german_credit_stack.running()
