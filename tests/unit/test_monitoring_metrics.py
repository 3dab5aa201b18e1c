"""Monitoring metrics per window against sklearn, numpy and hand-computed sums."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from pipelines.errors import DataValidationError
from pipelines.evaluation import recall_at_fpr
from pipelines.monitoring import performance_by_window, time_windows
from pipelines.monitoring_kpis import business_kpis, server_error_rates, technical_metrics
from pipelines.rollout import calibration_error
from pipelines.spec_features import Segment

START = pd.Timestamp("2024-03-01", tz="UTC")
DAY = pd.Timedelta(days=1)
SEGMENTS = [
    Segment(name="channel", column="channel"),
    Segment(name="region", column="region"),
    Segment(name="amount_band", column="amount", bins=[0, 50, 200, 1000]),
]


def observations(
    n: int = 6000, *, days: int = 3, seed: int = 0, delay_days: float = 3.0
) -> pd.DataFrame:
    """Scored transactions over ``days`` days; labels arrive up to ``delay_days`` later."""
    rng = np.random.default_rng(seed)
    ts = START + pd.to_timedelta(np.sort(rng.uniform(0, days * 86400, n)), unit="s")
    y = (rng.random(n) < 0.08).astype(np.float64)
    # rounded scores: many ties, as a real model's scores have
    score = np.round(np.clip(0.1 + 0.35 * y + rng.normal(0, 0.18, n), 0, 1), 2)
    arrival = ts + pd.to_timedelta(rng.uniform(0.5, delay_days, n), unit="D")
    label = np.where(rng.random(n) < 0.9, y, np.nan)  # some never labelled
    region = rng.choice(np.array(["north", "south", "east", None], dtype=object), n)
    return pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(n)],
            "timestamp": ts,
            "model_version": "7",
            "score": score,
            "decision": np.where(score >= 0.4, "flag", "pass"),
            "latency_ms": rng.gamma(2.0, 4.0, n),
            "amount": rng.lognormal(4.0, 1.0, n),
            "channel": pd.Categorical(rng.choice(["web", "pos", "atm"], n)),
            "region": region,
            "label": label,
            "label_time": arrival.where(~np.isnan(label)),
        }
    )


def known_as_of(obs: pd.DataFrame, as_of: pd.Timestamp) -> pd.Series:
    return obs["label"].notna() & (obs["label_time"] <= as_of)


def segment_mask(obs: pd.DataFrame, segment: str, value: str) -> pd.Series:
    if segment == "all":
        return pd.Series(True, index=obs.index)
    if segment == "amount_band":
        lo, hi = {"[0, 50)": (0, 50), "[50, 200)": (50, 200), "[200, 1000)": (200, 1000)}[value]
        return (obs["amount"] >= lo) & (obs["amount"] < hi)
    if value == "(missing)":
        return obs[segment].isna()
    return obs[segment].astype(object) == value


def expected_metrics(rows: pd.DataFrame, known: pd.Series) -> dict[str, float]:
    y = rows.loc[known, "label"].to_numpy().astype(int)
    s = rows.loc[known, "score"].to_numpy()
    return {
        "n": len(rows),
        "n_labelled": len(y),
        "positives": int(y.sum()),
        "roc_auc": roc_auc_score(y, s),
        "pr_auc": average_precision_score(y, s),
        "recall_at_fpr": recall_at_fpr(y, s, 0.01),
        "brier": brier_score_loss(y, s),
        "calibration_error": calibration_error(s, y.astype(float), 10),
        "mean_score": rows["score"].mean(),
        "positive_rate": y.mean(),
    }


def test_window_and_segment_metrics_equal_sklearn_on_the_same_rows() -> None:
    obs = observations()
    as_of = START + 30 * DAY  # every label has arrived
    table = performance_by_window(obs, window="1D", segments=SEGMENTS, as_of=as_of, min_labels=20)
    known = known_as_of(obs, as_of)
    assert list(table["segment"].unique()) == ["all", "channel", "region", "amount_band"]
    assert set(table.loc[table["segment"] == "region", "value"]) == {
        "(missing)", "east", "north", "south",
    }  # fmt: skip
    assert set(table.loc[table["segment"] == "amount_band", "value"]) == {
        "[0, 50)", "[50, 200)", "[200, 1000)",
    }  # fmt: skip
    assert len(table) == 3 * (1 + 3 + 4 + 3)
    assert table["window_start"].is_monotonic_increasing
    for row in table.itertuples():
        in_window = (obs["timestamp"] >= row.window_start) & (obs["timestamp"] < row.window_end)
        mask = in_window & segment_mask(obs, row.segment, row.value)
        expected = expected_metrics(obs[mask], known[mask])
        for name, value in expected.items():
            assert getattr(row, name) == pytest.approx(value, rel=1e-9, abs=1e-12), (
                row.segment, row.value, name,
            )  # fmt: skip
        assert row.label_coverage == pytest.approx(expected["n_labelled"] / expected["n"])
    assert (table["window_end"] - table["window_start"] == DAY).all()
    assert table.attrs["as_of"] == as_of


def test_delayed_labels_count_as_unlabelled_until_they_arrive() -> None:
    obs = observations(days=3, delay_days=1.0)
    late = obs["timestamp"] >= START + 2 * DAY  # the third day's labels arrive 9 days late
    obs.loc[late, "label_time"] += pd.Timedelta(days=9)
    early_as_of = START + 4 * DAY
    before = performance_by_window(obs, as_of=early_as_of, min_labels=20)
    third = before.iloc[2]
    assert third["window_start"] == START + 2 * DAY
    assert third["n"] == late.sum() and third["n_labelled"] == 0
    assert third["label_coverage"] == 0
    metrics = ["roc_auc", "pr_auc", "recall_at_fpr", "brier", "calibration_error", "positive_rate"]
    assert before.loc[2, metrics].isna().all()
    assert not np.isnan(before.iloc[0]["roc_auc"])  # earlier days already labelled

    after = performance_by_window(obs, as_of=START + 13 * DAY, min_labels=20)
    latest = performance_by_window(obs, min_labels=20)  # default: the latest label_time
    rows = obs[late]
    expected = expected_metrics(rows, rows["label"].notna())
    for table in (after, latest):
        for name, value in expected.items():
            assert table.iloc[2][name] == pytest.approx(value, rel=1e-9), name
    pd.testing.assert_frame_equal(after, latest)

    # half-way: only the labels known at that time count, and the metrics are theirs
    middle = START + 12.25 * DAY
    partial = performance_by_window(obs, as_of=middle, min_labels=20).iloc[2]
    known = known_as_of(rows, middle)
    assert 0 < partial["n_labelled"] == known.sum() < rows["label"].notna().sum()
    assert partial["roc_auc"] == pytest.approx(expected_metrics(rows, known)["roc_auc"], rel=1e-9)


def test_too_few_labels_or_one_class_give_nan_metrics_not_errors() -> None:
    obs = observations(n=3000, days=2)
    obs.loc[obs["timestamp"] >= START + DAY, "label"] = 0.0  # day two: only good outcomes
    obs["label_time"] = obs["timestamp"] + DAY
    table = performance_by_window(obs, min_labels=20)
    day_two = table.iloc[1]
    assert np.isnan(day_two["roc_auc"]) and np.isnan(day_two["pr_auc"])
    assert day_two["positives"] == 0
    second = obs[obs["timestamp"] >= START + DAY]
    assert day_two["n_labelled"] == len(second)  # every label known, all of them 0
    assert day_two["brier"] == pytest.approx(np.mean(second["score"] ** 2), rel=1e-12)
    strict = performance_by_window(obs, min_labels=10_000)
    assert strict[["roc_auc", "brier", "calibration_error"]].isna().all().all()
    assert (strict["n_labelled"] == table["n_labelled"]).all()


def test_empty_windows_are_reported_for_the_population() -> None:
    obs = observations(n=2000, days=3)
    obs = obs[(obs["timestamp"] < START + DAY) | (obs["timestamp"] >= START + 2 * DAY)]
    table = performance_by_window(obs, segments=SEGMENTS[:1], as_of=START + 30 * DAY)
    population = table[table["segment"] == "all"]
    assert list(population["n"] > 0) == [True, False, True]
    assert population.iloc[1]["n_labelled"] == 0 and np.isnan(population.iloc[1]["mean_score"])
    assert set(table.loc[table["segment"] == "channel", "window_start"]) == {
        START, START + 2 * DAY,
    }  # fmt: skip


def test_windows_align_on_the_epoch_and_on_calendar_anchors() -> None:
    stamps = pd.Series(pd.to_datetime(["2024-03-06 13:00", "2024-03-13 01:00"], utc=True))
    weekly = time_windows(stamps, "7D")
    floor = stamps.dt.floor("7D")
    assert list(weekly.starts[weekly.codes]) == list(floor)
    mondays = time_windows(stamps, "W-MON")
    assert [s.day_name() for s in mondays.starts] == ["Monday", "Monday"]
    assert list(mondays.starts) == list(pd.to_datetime(["2024-03-04", "2024-03-11"], utc=True))
    assert list(mondays.codes) == [0, 1]


def test_fraud_kpis_equal_hand_computed_sums() -> None:
    obs = observations(n=4000, days=2)
    as_of = START + 3 * DAY
    kpis = business_kpis(obs, window="1D", use_case="fraud", as_of=as_of)
    assert len(kpis) == 2
    for row, start in zip(kpis.itertuples(), (START, START + DAY), strict=True):
        day = obs[(obs["timestamp"] >= start) & (obs["timestamp"] < start + DAY)]
        known = known_as_of(day, as_of)
        flag = day["decision"] == "flag"
        fraud, good = known & (day["label"] == 1), known & (day["label"] == 0)
        caught = day.loc[fraud & flag, "amount"].sum()
        missed = day.loc[fraud & ~flag, "amount"].sum()
        assert row.n == len(day) and row.n_labelled == known.sum()
        assert row.alert_volume == flag.sum()
        assert row.adverse_rate == pytest.approx(flag.mean())
        assert row.false_positive_rate == pytest.approx((good & flag).sum() / good.sum())
        assert row.precision == pytest.approx((fraud & flag).sum() / (known & flag).sum())
        assert row.frauds_caught == (fraud & flag).sum()
        assert row.frauds_missed == (fraud & ~flag).sum()
        assert row.fraud_amount_caught == pytest.approx(caught)
        assert row.fraud_amount_missed == pytest.approx(missed)
        assert row.caught_ratio == pytest.approx(caught / (caught + missed))
    # the second day's labels are not all in at as_of: fewer labelled rows than the first
    assert kpis["n_labelled"].iloc[1] < known_as_of(obs, START + 30 * DAY).sum() / 2


def test_credit_kpis_and_missing_amount_column() -> None:
    obs = observations(n=2000, days=1)
    obs["decision"] = np.where(obs["score"] >= 0.3, "decline", "approve")
    kpis = business_kpis(obs, use_case="credit", amount_column=None).iloc[0]
    known = obs["label"].notna()  # default as_of: every label that has arrived
    approved = obs["decision"] == "approve"
    assert kpis["approvals"] == approved.sum()
    assert kpis["approval_rate"] == pytest.approx(approved.mean())
    assert kpis["adverse_rate"] == pytest.approx(1 - approved.mean())
    expected = obs.loc[approved & known, "label"].mean()
    assert kpis["default_rate_approved"] == pytest.approx(expected)
    fraud = business_kpis(obs.assign(decision="pass"), use_case="fraud", amount_column=None)
    assert fraud["fraud_amount_caught"].isna().all() and fraud["alert_volume"].iloc[0] == 0


def test_latency_percentiles_equal_numpy_and_empty_hours_show() -> None:
    obs = observations(n=3000, days=1)
    obs = obs[(obs["timestamp"].dt.hour != 5)].copy()  # an hour without traffic
    obs.loc[obs.index[::50], "latency_ms"] = np.nan  # a few rows without a latency
    table = technical_metrics(obs, window="1h")
    assert len(table) == 24
    for row in table.itertuples():
        rows = obs[(obs["timestamp"] >= row.window_start) & (obs["timestamp"] < row.window_end)]
        assert row.requests == len(rows)
        assert row.throughput_per_s == pytest.approx(len(rows) / 3600)
        latency = rows["latency_ms"].dropna().to_numpy()
        if len(latency) == 0:
            assert row.window_start.hour == 5 and np.isnan(row.latency_p99_ms)
            continue
        p50, p95, p99 = np.percentile(latency, [50, 95, 99])
        assert (row.latency_p50_ms, row.latency_p95_ms, row.latency_p99_ms) == (p50, p95, p99)


def _server_metrics(counts: dict[tuple[str, str], int]) -> str:
    """The exposition text of a registry shaped like serving/http.py's."""
    registry = CollectorRegistry()
    requests = Counter(
        "govml_requests_total",
        "HTTP requests by kind and status code",
        ["kind", "code"],
        registry=registry,
    )
    latency = Histogram(
        "govml_request_seconds", "HTTP request latency by kind", ["kind"], registry=registry
    )
    decisions = Counter(
        "govml_decisions_total", "Scored rows", ["model", "version", "decision"], registry=registry
    )
    for (kind, code), n in counts.items():
        requests.labels(kind, code).inc(n)
        latency.labels(kind).observe(0.004)
    decisions.labels("fraud", "7", "flag").inc(3)
    return generate_latest(registry).decode()


def test_server_error_rates_from_prometheus_text() -> None:
    counts = {
        ("predict", "200"): 960,
        ("predict", "400"): 25,
        ("predict", "503"): 10,
        ("infer", "200"): 4,
        ("infer", "500"): 1,
        ("health", "200"): 5000,
    }
    text = _server_metrics(counts)
    assert "govml_requests_created" in text  # the parser must skip these samples
    rates = server_error_rates(text)
    assert rates["requests"] == 1000
    assert rates["by_code"] == {"200": 964, "400": 25, "500": 1, "503": 10}
    assert rates["by_kind"] == {"infer": 5, "predict": 995}
    assert rates["client_error_rate"] == pytest.approx(0.025)
    assert rates["server_error_rate"] == pytest.approx(0.011)
    assert rates["error_rate"] == pytest.approx(0.036)
    everything = server_error_rates(text, kinds=None)
    assert everything["requests"] == 6000 and everything["by_kind"]["health"] == 5000

    # the same server later: 100 more answered, 20 more refused with 503
    later = _server_metrics({**counts, ("predict", "200"): 1060, ("predict", "503"): 30})
    delta = server_error_rates(later, previous=text)
    assert delta["by_code"] == {"200": 100, "400": 0, "500": 0, "503": 20}
    assert delta["server_error_rate"] == pytest.approx(20 / 120)
    restarted = _server_metrics({("predict", "200"): 50})  # counters reset to zero
    assert server_error_rates(restarted, previous=text)["by_code"]["200"] == 50

    handwritten = (
        "# HELP govml_requests_total HTTP requests by kind and status code\n"
        "# TYPE govml_requests_total counter\n"
        'govml_requests_total{kind="predict",code="200"} 7.0\n'
        'govml_requests_total{kind="predict",code="413"} 1.0\n'
    )
    assert server_error_rates(handwritten)["client_error_rate"] == pytest.approx(1 / 8)
    idle = server_error_rates("# TYPE govml_requests_total counter\n")
    assert idle["requests"] == 0 and idle["error_rate"] is None
    with pytest.raises(DataValidationError, match="govml_requests_total"):
        server_error_rates("# TYPE other_total counter\nother_total 3\n")


def test_bad_input_raises_data_validation_error_naming_it() -> None:
    obs = observations(n=300, days=1)
    with pytest.raises(DataValidationError, match="label_time"):
        performance_by_window(obs.drop(columns="label_time"))
    with pytest.raises(DataValidationError, match="'no_such_column'"):
        performance_by_window(obs, segments=[Segment(name="x", column="no_such_column")])
    with pytest.raises(DataValidationError, match="'1fortnight'"):
        performance_by_window(obs, window="1fortnight")
    with pytest.raises(DataValidationError, match="'-1h'"):
        technical_metrics(obs, window="-1h")
    with pytest.raises(DataValidationError, match="'1ms'.*windows"):
        technical_metrics(obs, window="1ms")
    with pytest.raises(DataValidationError, match="latency_ms"):
        technical_metrics(obs.drop(columns="latency_ms"))
    with pytest.raises(DataValidationError, match="amount"):
        business_kpis(obs.drop(columns="amount"), use_case="fraud")
    with pytest.raises(DataValidationError, match="timestamp: timezone-naive"):
        technical_metrics(obs.assign(timestamp=obs["timestamp"].dt.tz_localize(None)))
    with pytest.raises(DataValidationError, match="label: 1 value"):
        performance_by_window(obs.assign(label=obs["label"].where(obs.index != 3, 2.0)))
    with pytest.raises(DataValidationError, match="score: 1 value"):
        performance_by_window(obs.assign(score=obs["score"].where(obs.index != 3, 1.5)))
    with pytest.raises(DataValidationError, match="decision.*'declined'"):
        business_kpis(obs.assign(decision="declined"), use_case="fraud")
    with pytest.raises(DataValidationError, match="use_case"):
        business_kpis(obs, use_case="pfm")
    with pytest.raises(DataValidationError, match="as_of"):
        performance_by_window(obs, as_of=pd.Timestamp("2024-03-02"))
