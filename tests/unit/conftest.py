"""Feature tables the stage tests share: built once per session from the generated data.

Tests only read them; a test that changes a table copies it to its own ``tmp_path``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pipelines.spec import ModelSpec
from pipelines.stages.features import build_features
from tests.datasets import credit_data, fraud_data, spec_of


def _features_of(
    name: str, write_data: Callable[[Path], Path], factory: pytest.TempPathFactory
) -> tuple[ModelSpec, Path]:
    root = factory.mktemp(name)
    spec = spec_of(name)
    build_features(spec, write_data(root / "ingest"), root / "features")
    return spec, root / "features"


@pytest.fixture(scope="session")
def fraud_features(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelSpec, Path]:
    """The fraud spec and its feature tables (``FRAUD_ROWS`` generated rows)."""
    return _features_of("fraud", fraud_data, tmp_path_factory)


@pytest.fixture(scope="session")
def credit_features(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelSpec, Path]:
    """The credit spec and its feature tables (``CREDIT_ROWS`` generated rows)."""
    return _features_of("credit", credit_data, tmp_path_factory)
