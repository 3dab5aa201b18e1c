"""The spec's monitoring section: defaults, and one clear message per bad value."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipelines.errors import SpecError
from pipelines.spec import load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_and_the_credit_market_watch() -> None:
    fraud = load_spec(ROOT / "specs" / "fraud.yaml").monitoring
    assert fraud.schedule == "@hourly" and fraud.lookback_seconds == 7 * 86400
    assert fraud.retrain_on == ["drift", "decay", "market"] and fraud.market is None
    credit = load_spec(ROOT / "specs" / "credit.yaml").monitoring
    assert credit.market is not None and credit.market.params["shock_at"] == 400


@pytest.mark.parametrize(
    ("monitoring", "needle"),
    [
        ({"schedule": "often"}, "monitoring.schedule: 'often' is neither a cron expression"),
        ({"lookback": "7 days"}, "monitoring.lookback: '7 days' is not a duration"),
        ({"max_auc_drop": 2}, "monitoring.max_auc_drop"),
        ({"retrain_on": ["drift", "mood"]}, "monitoring.retrain_on"),
        ({"market": {"params": {"shock": 3}}}, "monitoring.market: .*unknown \\['shock'\\]"),
        ({"market": {"watch": {"hh": 3}}}, "monitoring.market: .*unknown \\['hh'\\]"),
        ({"market": {"source": "x.parquet", "params": {"seed": 1}}}, "generated only"),
        ({"surprise": 1}, "monitoring.surprise"),
    ],
)
def test_bad_monitoring_values_are_named(monitoring: dict, needle: str) -> None:
    data = yaml.safe_load((ROOT / "specs" / "fraud.yaml").read_text())
    data["monitoring"] = monitoring
    with pytest.raises(SpecError, match=needle):
        parse_spec(data)
