"""One embedded stack for the browser tests (German Credit only, unscheduled): starting a
stack takes a minute or more, and no browser test needs a fresh one."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from tests.airflow_api import running_stack
from tests.support import german_credit_stack_env


@pytest.fixture(scope="package")
def stack(
    chromium_path: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SimpleNamespace]:
    """``env``, ``settings``, ``api`` and ``up`` of the running stack (after Chromium was
    found: without a browser the tests skip before starting it)."""
    with running_stack(german_credit_stack_env(tmp_path_factory.mktemp("e2e"))) as running:
        yield running
