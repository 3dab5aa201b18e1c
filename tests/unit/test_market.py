"""Market-shift watch: the generator, detection delay, false alarms, online use, bad input."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from pipelines.errors import DataValidationError
from pipelines.market import (
    COLUMNS,
    DEFAULT_INDICATORS,
    ChangePoint,
    MarketConfig,
    MarketWatchConfig,
    generate_market,
    resolve_shock_index,
    summarize_changes,
)
from pipelines.market_watch import MarketWatcher, detect_changes, watch_market

SHOCK = 160  # of 250 business days: a 100-day baseline, 59 calm days, then the new regime
MAX_ALERT_DELAY = 10  # business days from the regime change to the first alert
# what the default shock does: equity vol x2.5 and drift -30 %/yr, the volatility index and
# the spread jump, yields trend down
EXPECTED_AFTER_SHOCK = {
    ("equity_return", "volatility", "up"),
    ("equity_return", "mean", "down"),
    ("volatility_index", "volatility", "up"),
    ("volatility_index", "mean", "up"),
    ("credit_spread_bp", "volatility", "up"),
    ("credit_spread_bp", "mean", "up"),
    ("rate_2y_pct", "mean", "down"),
}


def _series(seed: int, **params: Any) -> pd.DataFrame:
    return generate_market(MarketConfig(periods=250, seed=seed, **params))


def _first(change_points: list[ChangePoint], indicator: str | None = None) -> int | None:
    """Delay of the first detection at or after the shock (of one indicator, or any)."""
    hits = [
        cp.index
        for cp in change_points
        if cp.index >= SHOCK and (indicator is None or cp.indicator == indicator)
    ]
    return min(hits) - SHOCK if hits else None


# --------------------------------------------------------------------------- generator


def test_generator_is_deterministic_and_consistent() -> None:
    cfg = MarketConfig(periods=300, seed=11, shock_at=150)
    frame = generate_market(cfg)
    pd.testing.assert_frame_equal(frame, generate_market(cfg))
    assert not frame.equals(generate_market(MarketConfig(periods=300, seed=12, shock_at=150)))
    assert tuple(frame.columns) == COLUMNS
    assert frame["time"].iloc[0] == pd.Timestamp("2024-01-02")
    assert (frame["time"].dt.dayofweek < 5).all() and frame["time"].is_monotonic_increasing
    assert frame.drop(columns="time").notna().all().all()
    rebuilt = 4_000.0 * np.exp(np.cumsum(frame["equity_return"]))
    np.testing.assert_allclose(frame["equity_index"], rebuilt, rtol=1e-12)
    assert (frame["volatility_index"] > 0).all() and (frame["credit_spread_bp"] > 0).all()


def test_the_regime_change_moves_every_indicator_the_configured_way() -> None:
    frame = generate_market(MarketConfig(periods=2_000, seed=5, shock_at=1_000))
    before, after = frame.iloc[200:1_000], frame.iloc[1_200:]
    vol_ratio = after["equity_return"].std() / before["equity_return"].std()
    assert 2.2 < vol_ratio < 2.8  # vol_multiplier 2.5
    assert after["volatility_index"].mean() / before["volatility_index"].mean() == pytest.approx(
        2.5, rel=0.15
    )
    spread_jump = after["credit_spread_bp"].mean() - before["credit_spread_bp"].mean()
    assert spread_jump == pytest.approx(150.0, abs=25.0)
    rate_move = after["rate_2y_pct"].mean() - before["rate_2y_pct"].mean()
    assert rate_move == pytest.approx(-0.5, abs=0.25)
    # the spread jumps half-way at the shock itself
    assert frame["credit_spread_bp"].iloc[1_000] - frame["credit_spread_bp"].iloc[999] > 50.0


def test_without_a_shock_the_shock_parameters_change_nothing() -> None:
    calm = generate_market(MarketConfig(periods=120, seed=2))
    other = generate_market(
        MarketConfig(periods=120, seed=2, vol_multiplier=5.0, spread_jump_bp=900.0)
    )
    pd.testing.assert_frame_equal(calm, other)
    assert resolve_shock_index(MarketConfig(periods=120, seed=2)) is None


def test_shock_at_a_date_is_the_first_period_at_or_after_it() -> None:
    by_date = MarketConfig(periods=100, seed=1, shock_at="2024-02-03")  # a Saturday
    assert resolve_shock_index(by_date) == 24  # Monday 2024-02-05
    by_index = MarketConfig(periods=100, seed=1, shock_at=24)
    pd.testing.assert_frame_equal(generate_market(by_date), generate_market(by_index))
    hourly = MarketConfig(periods=240, freq="h", start="2024-03-01", shock_at="2024-03-03T10:30")
    assert resolve_shock_index(hourly) == 59  # 2024-03-03 11:00
    assert generate_market(hourly)["time"].diff().dropna().eq(pd.Timedelta(hours=1)).all()


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"periods": 5}, "periods"),
        ({"periods": 100.0}, "periods"),
        ({"freq": "W"}, "freq"),
        ({"start": "yesterday"}, "start"),
        ({"seed": -1}, "seed"),
        ({"shock_at": 0}, "shock_at"),
        ({"shock_at": 100}, "shock_at"),
        ({"shock_at": 1.5}, "shock_at"),
        ({"shock_at": "2031-01-01"}, "shock_at"),
        ({"shock_at": "soon"}, "shock_at"),
        ({"vol_multiplier": 0.0}, "vol_multiplier"),
        ({"vol_multiplier": float("nan")}, "vol_multiplier"),
        ({"vol_multiplier": True}, "vol_multiplier"),
        ({"drift_change": float("inf")}, "drift_change"),
        ({"spread_jump_bp": -500.0}, "spread_jump_bp"),
        ({"rate_change_bp": "50"}, "rate_change_bp"),
        ({"annual_volatility": 0.0}, "annual_volatility"),
    ],
)
def test_generator_parameters_are_validated(params: dict[str, Any], field: str) -> None:
    with pytest.raises(DataValidationError, match=rf"MarketConfig\.{field}\b"):
        MarketConfig(**{"periods": 100, **params})


# --------------------------------------------------------------------------- detection


def test_a_regime_change_raises_an_alert_within_days_naming_the_right_indicators() -> None:
    alert_delays, equity_delays, vix_at_shock = [], [], 0
    spread_starts: list[int] = []
    equity_starts: list[int] = []
    for seed in range(40):
        frame = _series(1_000 + seed, shock_at=SHOCK)
        watch = watch_market(frame)
        assert watch.alert
        found = list(watch.change_points)
        alert_delays.append(_first(found))
        equity_delays.append(_first(found, "equity_return"))
        at_shock = {(cp.indicator, cp.kind, cp.direction) for cp in found if cp.index == SHOCK}
        assert ("credit_spread_bp", "mean", "up") in at_shock  # a 75 bp jump, 30 daily sd
        vix_at_shock += ("volatility_index", "volatility", "up") in at_shock
        after = {(cp.indicator, cp.kind, cp.direction) for cp in found if cp.index >= SHOCK}
        assert after <= EXPECTED_AFTER_SHOCK, after - EXPECTED_AFTER_SHOCK
        starts = {(cp.indicator, cp.start_index) for cp in found if cp.index >= SHOCK}
        spread_starts += [start for name, start in starts if name == "credit_spread_bp"]
        equity_starts += [start for name, start in starts if name == "equity_return"]
    assert max(alert_delays) <= MAX_ALERT_DELAY  # measured: 0 in every series
    # the volatility index jumps ~5-7 sd on the day; the jump alone crosses the threshold in
    # most series (measured 86 % of 300), the trend after it is too slow to count on
    assert vix_at_shock >= 30
    # equity returns alone (vol x2.5, a 1.7-nat/day signal) take longer: measured median 7,
    # 90th percentile 14 days
    assert None not in equity_delays
    assert np.median(equity_delays) <= 10 and np.percentile(equity_delays, 90) <= 25
    # the estimated start: a jump on its day, a volatility change within days
    assert spread_starts == [SHOCK] * 40  # its mean and volatility charts agree
    assert np.median(np.abs(np.array(equity_starts) - SHOCK)) <= 2


def test_a_volatility_only_shock_is_caught_by_the_volatility_charts() -> None:
    alert_delays, equity_delays, volatility_first = [], [], 0
    for seed in range(40):
        frame = _series(
            2_000 + seed, shock_at=SHOCK, spread_jump_bp=0.0, rate_change_bp=0.0, drift_change=0.0
        )
        found = detect_changes(frame)
        alert_delays.append(_first(found))
        equity_delays.append(_first(found, "equity_return"))
        equity = [cp for cp in found if cp.indicator == "equity_return" and cp.index >= SHOCK]
        assert equity, f"seed {2_000 + seed}: equity_return never flagged"
        volatility_first += (equity[0].kind, equity[0].direction) == ("volatility", "up")
    assert None not in alert_delays and np.median(alert_delays) <= 2
    assert np.percentile(alert_delays, 90) <= MAX_ALERT_DELAY
    assert np.median(equity_delays) <= 10
    # a wider spread of returns can also push a mean chart over first (measured 3 % of 300)
    assert volatility_first >= 36


def test_the_false_alarm_rate_without_a_change_is_below_five_percent() -> None:
    alarms = sum(bool(detect_changes(_series(seed))) for seed in range(200))
    assert alarms / 200 <= 0.05  # measured: 5 of 200 (2.5 %); 13 of 1,000 seeds


def test_the_volatility_down_chart_sees_a_calmer_market() -> None:
    frame = generate_market(
        MarketConfig(
            periods=300,
            seed=8,
            shock_at=150,
            vol_multiplier=0.4,
            spread_jump_bp=0.0,
            rate_change_bp=0.0,
            drift_change=0.0,
        )
    )
    found = detect_changes(frame, ["equity_return"])
    assert [(cp.kind, cp.direction) for cp in found] == [("volatility", "down")]
    assert 150 <= found[0].index <= 150 + 40


def test_a_mean_shift_is_a_mean_change_point() -> None:
    rng = np.random.default_rng(3)
    values = rng.normal(0.0, 1.0, 300)
    values[200:] += 1.5
    frame = pd.DataFrame({"time": pd.date_range("2024-01-01", periods=300), "x": values})
    found = detect_changes(frame, ["x"])
    assert [(cp.indicator, cp.kind, cp.direction) for cp in found] == [("x", "mean", "up")]
    assert 200 <= found[0].index <= 215 and 195 <= found[0].start_index <= 205
    assert found[0].reference_mean == pytest.approx(values[:100].mean())
    assert found[0].reference_scale == pytest.approx(values[:100].std(ddof=1))


# --------------------------------------------------------------------------- online use


def _chunks(n: int, seed: int) -> list[slice]:
    rng = np.random.default_rng(seed)
    bounds, at = [0], 0
    while at < n:
        at = min(n, at + int(rng.choice([0, 1, 1, 3, 7, 24, 60])))
        bounds.append(at)
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


@pytest.mark.parametrize("tz", [None, "Europe/London"])
def test_feeding_chunks_with_carried_state_equals_one_pass(tz: str | None) -> None:
    frame = generate_market(MarketConfig(periods=24 * 40, freq="h", seed=17, shock_at=600))
    frame = frame.assign(time=frame["time"].dt.tz_localize(tz)) if tz else frame
    config = MarketWatchConfig(reference_periods=48)
    whole = detect_changes(frame, config=config)
    # the shock, then shifts within the new regime after the indicators re-baselined
    assert [cp.index for cp in whole if cp.indicator == "volatility_index"] == [600, 600, 694]
    assert [cp.index for cp in whole if cp.indicator == "credit_spread_bp"] == [600, 600, 938]
    watcher = MarketWatcher(config=config)
    online: list[ChangePoint] = []
    for part in _chunks(len(frame), seed=1):
        online += watcher.update(frame.iloc[part])
        state = json.loads(json.dumps(watcher.state_dict()))  # as a scheduled task stores it
        watcher = MarketWatcher.from_state(state)
    assert watcher.rows == len(frame)
    assert online == whole
    if tz:
        assert str(whole[0].time.tz) == tz


def test_a_failed_update_leaves_the_state_as_it_was() -> None:
    frame = _series(4, shock_at=SHOCK)
    watcher = MarketWatcher()
    watcher.update(frame.iloc[:150])
    before = watcher.state_dict()
    broken = frame.iloc[150:].copy()
    broken.loc[broken.index[20], "credit_spread_bp"] = np.nan
    with pytest.raises(DataValidationError, match="credit_spread_bp"):
        watcher.update(broken)
    assert watcher.state_dict() == before
    assert watcher.update(frame.iloc[150:]) == detect_changes(frame)


def test_summary_is_an_alert_message_and_an_event() -> None:
    frame = _series(1_003, shock_at=SHOCK)
    watch = watch_market(frame)
    assert watch.alert and watch.indicators[:2] == ("credit_spread_bp", "volatility_index")
    assert watch.reason.startswith("market regime change in ")
    assert "credit_spread_bp mean up from " in watch.reason
    event = json.loads(json.dumps(watch.to_event()))
    assert event["type"] == "market_shift" and event["alert"] is True
    assert event["change_points"][0]["time"].startswith(str(frame["time"].iloc[SHOCK].date()))
    calm = summarize_changes([])
    assert not calm.alert and calm.reason == "no market change point detected"


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_clear_errors() -> None:
    frame = _series(6)
    with_nan = frame.copy()
    with_nan.loc[130, "volatility_index"] = np.nan
    with pytest.raises(DataValidationError, match=r"'volatility_index'.*first at row 130"):
        detect_changes(with_nan)
    with pytest.raises(DataValidationError, match=r"unknown indicator 'gold_price'"):
        detect_changes(frame, ["equity_return", "gold_price"])
    with pytest.raises(DataValidationError, match=r"has 80 rows; reference_periods=100"):
        detect_changes(frame.iloc[:80])
    with pytest.raises(DataValidationError, match="strictly increasing"):
        detect_changes(frame.iloc[::-1].reset_index(drop=True))
    with pytest.raises(DataValidationError, match="no 'time' column"):
        detect_changes(frame.drop(columns="time"))
    constant = frame.assign(policy_rate=4.0)
    with pytest.raises(DataValidationError, match=r"'policy_rate' is constant"):
        detect_changes(constant, ["policy_rate"])
    negative = frame.assign(volatility_index=-frame["volatility_index"])
    with pytest.raises(DataValidationError, match="positive values for log_diff"):
        detect_changes(negative)
    watcher = MarketWatcher()
    watcher.update(frame.iloc[:50])
    with pytest.raises(DataValidationError, match="strictly increasing"):
        watcher.update(frame.iloc[40:60])  # rows already seen


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"reference_periods": 10}, "reference_periods"),
        ({"h": 0}, "h"),
        ({"k": -1}, "k"),
        ({"volatility_ratio": 1.0}, "volatility_ratio"),
        ({"indicators": []}, "indicators"),
        ({"indicators": ["equity_return", "equity_return"]}, "indicators"),
        ({"transforms": {"equity_return": "square"}}, "transforms"),
        ({"threshold": 5}, "threshold"),
    ],
)
def test_watch_config_is_validated(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        MarketWatchConfig(**fields)


def test_watch_config_defaults_and_transforms() -> None:
    config = MarketWatchConfig()
    assert config.indicators == DEFAULT_INDICATORS
    assert config.transform_of("credit_spread_bp") == "diff"
    assert config.transform_of("anything_else") == "level"
    custom = MarketWatchConfig(transforms={"credit_spread_bp": "level"})
    assert custom.transform_of("credit_spread_bp") == "level"
    with pytest.raises(DataValidationError, match="version"):
        MarketWatcher.from_state({"version": 0})


def test_the_spec_knows_the_market_fields() -> None:
    import dataclasses

    from pipelines.spec_operations import MARKET_PARAMS, MARKET_WATCH_FIELDS

    assert set(MARKET_PARAMS) == {f.name for f in dataclasses.fields(MarketConfig)}
    assert set(MARKET_WATCH_FIELDS) == set(MarketWatchConfig.model_fields)
