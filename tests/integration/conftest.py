"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="package")
def dask_client() -> Iterator[object]:
    """One Dask LocalCluster of 2 worker processes for every Dask test (a cluster takes
    seconds to start; no test changes it)."""
    dask_core = pytest.importorskip("pipelines.backends.dask_core")
    from pipelines.spec import Compute

    with dask_core.dask_client(Compute(backend="dask", workers=2)) as client:
        yield client
