"""The spec schema: the shipped specs load; bad specs get one clear message."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from pipelines.errors import SpecError
from pipelines.spec import discover_specs, load_spec, parse_spec, spec_hash

SPECS = Path(__file__).resolve().parents[2] / "specs"


def _raw(name: str) -> dict:
    return yaml.safe_load((SPECS / f"{name}.yaml").read_text())


def _write(tmp_path: Path, data: dict, name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize("name", ["fraud", "credit", "german_credit"])
def test_shipped_specs_are_valid(name: str) -> None:
    spec = load_spec(SPECS / f"{name}.yaml")
    assert spec.name == name
    protected = set(spec.protected_attributes)
    assert protected, "every shipped spec names its protected attributes"
    assert not protected & set(spec.features.names)
    assert spec.rollout.canary_steps[-1] == 100


def test_discover_specs_finds_every_yaml() -> None:
    assert {"fraud", "credit", "german_credit"} <= set(discover_specs(SPECS))


def test_fraud_spec_details() -> None:
    spec = load_spec(SPECS / "fraud.yaml")
    assert spec.data.split.method == "time"
    agg = {a.name: a for a in spec.features.aggregates}
    assert agg["card_tx_count_1h"].window_seconds == 3600
    assert agg["card_online_count_24h"].where == {"channel": "online"}
    assert spec.personal_data_columns == ["customer_id", "card_id"]


def test_wrong_type_is_refused_with_file_and_field(tmp_path: Path) -> None:
    data = _raw("fraud")
    data["data"]["columns"]["amount"]["type"] = "money"
    path = _write(tmp_path, data)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    message = str(err.value)
    assert "\n" not in message
    assert str(path) in message
    assert "data.columns.amount.type" in message
    assert "'money'" in message


def test_wrong_value_type_names_the_field(tmp_path: Path) -> None:
    data = _raw("credit")
    data["gates"]["decision_threshold"] = "high"
    with pytest.raises(SpecError, match=r"gates\.decision_threshold: .*number"):
        load_spec(_write(tmp_path, data))


def test_unknown_field_is_refused(tmp_path: Path) -> None:
    data = _raw("fraud")
    data["rollout"]["canary_stepz"] = [1, 100]
    with pytest.raises(SpecError) as err:
        load_spec(_write(tmp_path, data))
    assert "rollout.canary_stepz: unknown field" in str(err.value)


def test_unknown_top_level_field_is_refused(tmp_path: Path) -> None:
    data = _raw("credit")
    data["colour"] = "blue"
    with pytest.raises(SpecError, match=r"colour: unknown field"):
        load_spec(_write(tmp_path, data))


def test_protected_attribute_as_feature_is_refused(tmp_path: Path) -> None:
    data = _raw("credit")
    data["features"]["raw"].append("race_ethnicity")
    with pytest.raises(SpecError) as err:
        load_spec(_write(tmp_path, data))
    message = str(err.value)
    assert "\n" not in message
    assert "features.raw[12]" in message
    assert "'race_ethnicity' is a protected attribute and may never be a feature" in message


def test_protected_attribute_inside_an_aggregate_is_refused() -> None:
    data = _raw("fraud")
    data["features"]["aggregates"].append(
        {
            "name": "x",
            "entity": "card_id",
            "window": "1h",
            "agg": "nunique",
            "column": "customer_age_band",
        }
    )
    with pytest.raises(SpecError, match="customer_age_band.*protected attribute"):
        parse_spec(data, "fraud.yaml")


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["features"]["raw"].append("nope"), "'nope' is not a column"),
        (lambda d: d["features"]["raw"].append("is_fraud"), "leakage"),
        (lambda d: d["rollout"].update(canary_steps=[5, 50]), "must end at 100"),
        (lambda d: d["rollout"].update(canary_steps=[50, 25, 100]), "must increase"),
        (lambda d: d.update(schedule="every night"), "schedule"),
        (lambda d: d["data"]["columns"]["amount"].update(min=10, max=1), "greater than max"),
        (lambda d: d["data"]["columns"]["channel"].pop("categories"), "categories"),
        (lambda d: d["gates"]["metrics"][2].pop("at"), "needs 'at'"),
        (lambda d: d["gates"]["fairness"][0].update(attribute="region"), "protected_attributes"),
        (lambda d: d["features"]["aggregates"][0].update(window="an hour"), "window"),
        (lambda d: d["data"].pop("target"), "data.target: required field is missing"),
        (lambda d: d["drift"].update(psi_warn=0.3), "psi_warn must be below psi_alarm"),
        (lambda d: d["data"]["source"].pop("generator"), "needs 'generator'"),
    ],
)
def test_bad_specs_name_what_is_wrong(mutate, expected: str) -> None:  # noqa: ANN001
    data = copy.deepcopy(_raw("fraud"))
    mutate(data)
    with pytest.raises(SpecError) as err:
        parse_spec(data, "specs/fraud.yaml")
    assert expected in str(err.value)
    assert str(err.value).startswith("specs/fraud.yaml: ")


def test_several_problems_are_reported_at_once(tmp_path: Path) -> None:
    data = _raw("fraud")
    data["owner"] = None
    data["features"]["raw"].append("customer_age_band")
    data["rollout"]["bogus"] = 1
    with pytest.raises(SpecError) as err:
        load_spec(_write(tmp_path, data))
    message = str(err.value)
    assert "owner" in message and "rollout.bogus" in message


def test_invalid_yaml_reports_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: fraud\nfeatures: [a, b\nowner: x\n")
    with pytest.raises(SpecError, match=r"broken.yaml: not valid YAML at line \d+"):
        load_spec(path)


def test_missing_file_and_non_mapping(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path / "absent.yaml")
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(SpecError, match="mapping at the top level"):
        load_spec(path)


def test_spec_hash_changes_with_content(tmp_path: Path) -> None:
    a = _write(tmp_path, _raw("credit"), "a.yaml")
    data = _raw("credit")
    data["owner"] = "someone-else"
    b = _write(tmp_path, data, "b.yaml")
    assert spec_hash(a) != spec_hash(b)
    assert len(spec_hash(a)) == 64
