"""The spec's ``abtest`` section: the shipped specs carry one; bad values are refused with
one line naming the file and the field; the CLI says so without a traceback."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import pytest
import yaml

from pipelines.errors import SpecError
from pipelines.spec import load_spec
from pipelines.spec_abtest import AbMetric

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "specs"
GOVML = ROOT / ".venv" / "bin" / "govml"


def _raw(name: str) -> dict:
    return yaml.safe_load((SPECS / f"{name}.yaml").read_text())


def _refused(tmp_path: Path, data: dict) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(SpecError) as err:
        load_spec(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    return message


def test_the_shipped_specs_carry_a_valid_abtest_section() -> None:
    fraud = load_spec(SPECS / "fraud.yaml").abtest
    assert fraud is not None and fraud.primary_metric == AbMetric.FRAUD_CAPTURE_RATE
    assert {g.metric for g in fraud.guardrails} == {
        AbMetric.FALSE_POSITIVE_RATE,
        AbMetric.LOSS_AMOUNT,
    }
    assert fraud.max_days == 28 and fraud.treatment_share == 0.5
    credit = load_spec(SPECS / "credit.yaml").abtest
    assert credit is not None and credit.primary_metric == AbMetric.APPROVAL_RATE
    assert credit.split_percent == 20 and credit.exposure_cap.max_entities == 60_000
    assert load_spec(SPECS / "german_credit.yaml").abtest is None  # the section is optional


@pytest.mark.parametrize(
    ("spec", "change", "needles"),
    [
        ("fraud", {"alpha": 0.5}, ["abtest.alpha", "0.2"]),
        ("fraud", {"power": 1.0}, ["abtest.power"]),
        ("fraud", {"split_percent": 100}, ["abtest.split_percent"]),
        ("fraud", {"minimum_detectable_effect": 0}, ["abtest.minimum_detectable_effect"]),
        ("fraud", {"minimum_detectable_effect": 5}, ["absolute change", "below 1"]),
        ("fraud", {"baseline": 1.3}, ["baseline 1.3", "(0, 1)"]),
        ("fraud", {"primary_metric": "revenue"}, ["abtest.primary_metric", "'revenue'"]),
        ("fraud", {"primary_metric": "approval_rate"}, ["abtest.primary_metric", "credit"]),
        ("credit", {"primary_metric": "fraud_capture_rate"}, ["does not apply to a credit"]),
        ("fraud", {"max_duration": "12h"}, ["max_duration", "whole days"]),
        ("fraud", {"max_duration": "two weeks"}, ["max_duration"]),
        ("fraud", {"segments": ["region"]}, ["abtest.segments[0]", "'region'", "not a raw"]),
        ("fraud", {"segments": ["postcode"]}, ["abtest.segments[0]", "not a segment"]),
        ("fraud", {"segments": ["channel", "channel"]}, ["segments", "at most once"]),
        ("fraud", {"cuped_covariate": "channel"}, ["abtest.cuped_covariate", "numeric"]),
        ("fraud", {"cuped_covariate": "customer_age_band"}, ["abtest.cuped_covariate"]),
        ("fraud", {"exposure_cap": {"max_entities": 0}}, ["abtest.exposure_cap.max_entities"]),
        ("fraud", {"exposure_cap": {"per_week": 5}}, ["exposure_cap.per_week", "unknown field"]),
        (
            "fraud",
            {"guardrails": [{"metric": "false_positive_rate", "max_worsening": -1}]},
            ["abtest.guardrails[0].max_worsening"],
        ),
        (
            "fraud",
            {"guardrails": [{"metric": "fraud_capture_rate", "max_worsening": 0.1}]},
            ["guardrails", "primary metric"],
        ),
        (
            "credit",
            {"guardrails": [{"metric": "false_positive_rate", "max_worsening": 0.01}] * 2},
            ["guardrails", "at most once"],
        ),
        ("fraud", {"sequential": {"method": "bayesian"}}, ["abtest.sequential.method"]),
        ("fraud", {"segment_correction": "bonferroni"}, ["abtest.segment_correction"]),
        ("fraud", {"hypothesis": "better"}, ["abtest.hypothesis"]),
        ("fraud", {"amount_feature": "amount_eur"}, ["abtest.amount_feature", "numeric raw"]),
    ],
)
def test_bad_abtest_values_are_named(
    tmp_path: Path, spec: str, change: dict, needles: list[str]
) -> None:
    data = _raw(spec)
    data["abtest"] = {**copy.deepcopy(data["abtest"]), **change}
    message = _refused(tmp_path, data)
    for needle in needles:
        assert needle in message, message


def test_a_missing_required_field_is_named(tmp_path: Path) -> None:
    data = _raw("fraud")
    del data["abtest"]["primary_metric"]
    assert "abtest.primary_metric: required field is missing" in _refused(tmp_path, data)


def test_loss_amount_needs_an_amount_feature(tmp_path: Path) -> None:
    data = _raw("credit")
    data["features"]["raw"].remove("loan_amount")
    data["reason_codes"].pop("loan_amount")
    message = _refused(tmp_path, data)
    assert "abtest.amount_feature" in message and "'loan_amount'" in message


def test_the_cli_refuses_a_bad_abtest_section_in_one_line(tmp_path: Path) -> None:
    data = _raw("fraud")
    data["abtest"]["split_percent"] = 0
    path = tmp_path / "fraud.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    result = subprocess.run(
        [str(GOVML), "abtest", "design", str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "abtest.split_percent" in lines[0], result.stderr
