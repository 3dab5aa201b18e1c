"""The backend computation table names real functions with the expected signatures."""

from __future__ import annotations

import inspect

import pytest

from pipelines import backends
from pipelines.backends import Computation

ROWS = {name: value for name, value in vars(backends).items() if isinstance(value, Computation)}


def test_the_table_has_one_row_per_stage_that_can_run_on_dask() -> None:
    assert sorted(ROWS) == ["EVALUATE", "EXPLAIN", "FEATURES", "INGEST", "TRAIN", "VALIDATE_DATA"]


@pytest.mark.parametrize("name", sorted(ROWS))
def test_each_row_names_a_local_function_and_its_dask_twin(name: str) -> None:
    row = ROWS[name]
    local = backends._function(row.local)
    dask = backends._function(row.dask)
    assert list(inspect.signature(local).parameters)[:2] == ["spec", "inputs"]
    assert list(inspect.signature(dask).parameters)[:3] == ["spec", "inputs", "cluster"]
