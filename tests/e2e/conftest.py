"""One embedded stack for the browser tests (German Credit only, unscheduled): starting a
stack takes a minute or more, and no browser test needs a fresh one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.support import running_stack, single_spec_dir

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="package")
def stack(
    chromium_path: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SimpleNamespace]:
    """``env``, ``settings``, ``api`` and ``up`` of the running stack (after Chromium was
    found: without a browser the tests skip before starting it)."""
    base = tmp_path_factory.mktemp("e2e")
    specs = single_spec_dir(ROOT, base / "specs", "german_credit")
    with running_stack(base / "var", GOVML_SPECS_DIR=str(specs)) as running:
        yield running
