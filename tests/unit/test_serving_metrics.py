"""ScoreHistogram exposes exactly what prometheus_client's Histogram would."""

from __future__ import annotations

import numpy as np
from prometheus_client import REGISTRY, Histogram, generate_latest

from serving.metrics import ScoreHistogram

BUCKETS = (0.01, 0.1, 0.5, 0.9, 0.99)


def _samples(name: str) -> dict[str, float]:
    text = generate_latest(REGISTRY).decode()
    out = {}
    for line in text.splitlines():
        if line.startswith(name) and "_created" not in line:
            key, value = line.rsplit(" ", 1)
            out[key.replace(name, "")] = float(value)
    return out


def test_batch_and_single_observations_equal_prometheus_clients_histogram() -> None:
    rng = np.random.default_rng(5)
    values = np.concatenate([rng.random(2000), np.array(BUCKETS), [0.0, 1.0]])
    reference = Histogram("t_ref_score", "ref", ["model"], buckets=BUCKETS)
    mine = ScoreHistogram("t_my_score", "mine", ["model"], buckets=BUCKETS)
    for v in values:
        reference.labels("fraud").observe(float(v))
    mine.child("fraud").observe_many(values[:1500])
    for v in values[1500:]:
        mine.child("fraud").observe(float(v))
    ref, got = _samples("t_ref_score"), _samples("t_my_score")
    assert set(ref) == set(got)
    for key in ref:
        assert got[key] == ref[key] if "_sum" not in key else abs(got[key] - ref[key]) < 1e-9


def test_nan_scores_are_not_counted_and_series_are_per_label() -> None:
    h = ScoreHistogram("t_nan_score", "x", ["model", "version"], buckets=BUCKETS)
    h.child("fraud", "1").observe_many(np.array([0.2, np.nan, 0.95]))
    h.child("fraud", "2").observe(0.3)
    got = _samples("t_nan_score")
    assert got['_count{model="fraud",version="1"}'] == 2
    assert got['_count{model="fraud",version="2"}'] == 1
    assert got['_bucket{le="0.99",model="fraud",version="1"}'] == 2
