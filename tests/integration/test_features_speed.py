"""The point-in-time aggregates on 200,000 generated transactions: fast enough."""

from __future__ import annotations

import time

from pipelines.data.fraud import generate_fraud
from pipelines.data.fraud_config import FraudConfig
from pipelines.features import compute_aggregates
from tests.datasets import spec_of, typed_frame


def test_aggregates_are_fast_enough() -> None:
    spec = spec_of("fraud")
    frame = typed_frame(spec, generate_fraud(FraudConfig(n_rows=200_000, seed=7)))
    start = time.perf_counter()
    out = compute_aggregates(spec.features.aggregates, frame, "tx_time")
    elapsed = time.perf_counter() - start
    assert out.shape == (200_000, 11)
    assert elapsed < 15, f"11 aggregates on 200k rows took {elapsed:.1f} s"
