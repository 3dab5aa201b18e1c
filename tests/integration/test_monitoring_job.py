"""The monitoring job on files (no champion, no stores): drift, decay, market, CLI."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ops.cli import main
from ops.monitoring import MonitoringSteps, MonitoringWindow, run_monitoring
from pipelines.config import load_settings
from pipelines.data.fraud import generate_fraud
from pipelines.data.fraud_config import FraudConfig

ROOT = Path(__file__).resolve().parents[2]
NOW = dt.datetime(2026, 11, 29, 12, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def periods(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("periods")
    frame = generate_fraud(
        FraudConfig(
            n_rows=120_000, days=60, seed=4, fraud_rate=0.01, amount_shift=1.0,
            amount_shift_region="west", drift_from_day=30,
        )
    )  # fmt: skip
    cut = frame["tx_time"].min().normalize() + pd.Timedelta(days=30)
    ref, cur = tmp / "reference.parquet", tmp / "current.parquet"
    frame[frame["tx_time"] < cut].to_parquet(ref)
    frame[frame["tx_time"] >= cut].to_parquet(cur)
    return ref, cur


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    monkeypatch.setenv("GOVML_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.delenv("GOVML_ALERT_WEBHOOK", raising=False)
    return load_settings()


def test_drift_in_one_region_is_an_alarm_with_a_retrain(
    periods: tuple[Path, Path],
    settings,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    ref, cur = periods
    result = run_monitoring(
        ROOT / "specs" / "fraud.yaml", settings=settings, html_path=tmp_path / "r.html",
        window=MonitoringWindow(reference=ref, current=cur, now=NOW),
        steps=MonitoringSteps(record=False, log_mlflow=False, market=False),
    )  # fmt: skip
    assert result["status"] == "alarm" and result["retrain"] is True
    (drift,) = [a for a in result["alerts"] if a["kind"] == "drift"]
    assert "amount in region=west" in drift["message"]
    assert drift["details"]["drifted_segments"]["region=west"] == ["amount"]
    document = json.loads((tmp_path / "r.json").read_text())
    rows = pd.DataFrame(document["drift_rows"])
    west = rows.query("segment == 'region' and value == 'west' and feature == 'amount'")
    assert west["severity"].item() == "alarm"
    assert "<h2>PSI by segment</h2>" in (tmp_path / "r.html").read_text()
    assert result["live"] == {}  # raw data: no scores, so no performance to assess


def test_decay_on_labelled_scores_asks_for_a_retrain(settings, tmp_path: Path) -> None:  # noqa: ANN001
    rng = np.random.default_rng(3)
    n = 20_000

    def frame(noise: float) -> pd.DataFrame:
        y = (rng.random(n) < 0.05).astype(int)
        score = 1 / (1 + np.exp(-(3 * y - 2 + rng.normal(0, noise, n))))
        t = pd.Timestamp("2026-11-20", tz="UTC") + pd.to_timedelta(
            rng.integers(0, 6 * 86400, n), "s"
        )
        return pd.DataFrame({
            "amount": rng.lognormal(3, 1, n), "score": score, "is_fraud": y, "tx_time": t,
            "decision": np.where(score >= 0.85, "flag", "pass"),
        })  # fmt: skip

    frame(0.5).to_parquet(tmp_path / "ref.parquet")
    frame(2.5).to_parquet(tmp_path / "cur.parquet")  # the same rates, far weaker ranking
    result = run_monitoring(
        ROOT / "specs" / "fraud.yaml", settings=settings, out_dir=tmp_path / "out",
        window=MonitoringWindow(tmp_path / "ref.parquet", tmp_path / "cur.parquet", NOW),
        steps=MonitoringSteps(record=False, log_mlflow=False, market=False),
    )  # fmt: skip
    live = result["live"]
    assert live["decay"] == "yes" and live["reference_roc_auc"] - live["roc_auc"] > 0.05
    (decay,) = [a for a in result["alerts"] if a["kind"] == "decay"]
    assert decay["retrain"] and "ROC-AUC" in decay["message"]
    assert any("performance decay" in r for r in result["reasons"])


def test_too_few_rows_are_not_assessed(
    periods: tuple[Path, Path], settings, tmp_path: Path
) -> None:  # noqa: ANN001
    ref, cur = periods
    small = tmp_path / "small.parquet"
    pd.read_parquet(cur).head(100).to_parquet(small)
    result = run_monitoring(
        ROOT / "specs" / "fraud.yaml", settings=settings, out_dir=tmp_path / "out",
        window=MonitoringWindow(reference=ref, current=small, now=NOW),
        steps=MonitoringSteps(record=False, log_mlflow=False, market=False),
    )  # fmt: skip
    assert "not assessed" in result["status"] and result["alerts"] == []
    assert result["retrain"] is False


def test_a_market_shock_raises_an_alert_once(settings, tmp_path: Path, periods) -> None:  # noqa: ANN001
    data = yaml.safe_load((ROOT / "specs" / "fraud.yaml").read_text())
    data["monitoring"] = {
        "market": {"source": "generated", "params": {"periods": 250, "seed": 1, "shock_at": 160}}
    }
    spec_path = tmp_path / "fraud.yaml"
    spec_path.write_text(yaml.safe_dump(data))
    ref, _ = periods  # no drift between a frame and itself: the only alert is the market's
    first = run_monitoring(
        spec_path, settings=settings, window=MonitoringWindow(ref, ref, NOW),
        out_dir=tmp_path / "a", steps=MonitoringSteps(record=False, log_mlflow=False),
    )  # fmt: skip
    (market,) = [a for a in first["alerts"] if a["kind"] == "market"]
    assert market["retrain"] and market["message"].startswith("market shift")
    assert "Market early warning" in (tmp_path / "a" / "report.html").read_text()
    second = run_monitoring(
        spec_path, settings=settings, window=MonitoringWindow(ref, ref, NOW),
        out_dir=tmp_path / "b", steps=MonitoringSteps(record=False, log_mlflow=False),
    )  # fmt: skip
    assert [a for a in second["alerts"] if a["kind"] == "market"] == []  # state carried


def test_drift_report_cli(periods: tuple[Path, Path], settings, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    ref, cur = periods
    out = tmp_path / "report.html"
    code = main(["drift", "report", "--reference", str(ref), "--current", str(cur),
                 "--spec", "fraud", "--out", str(out)])  # fmt: skip
    assert code == 0 and out.is_file() and out.with_suffix(".json").is_file()
    assert "amount in region=west" in capsys.readouterr().out
    assert main(["drift", "report", "--reference", str(tmp_path / "nope.parquet"),
                 "--current", str(cur), "--spec", "fraud", "--out", str(out)]) != 0  # fmt: skip
    assert "nope.parquet: no such file" in capsys.readouterr().err
    assert main(["drift", "report", "--reference", str(ref), "--current", str(cur),
                 "--spec", "fraud", "--out", str(tmp_path / "r.pdf")]) != 0  # fmt: skip
    assert "give an .html path" in capsys.readouterr().err
