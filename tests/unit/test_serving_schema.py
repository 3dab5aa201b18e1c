"""Serving input schema: strict checks, the pipeline's exact encoding, JSON Schema agreement.

``hypothesis`` is not installed in ``.venv``, so the property tests use a seeded random
fuzzer (``_mutated_requests``) instead.
"""

from __future__ import annotations

import copy
import json
import math
import random
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pandas as pd
import pytest
from lightgbm.basic import _data_from_pandas

from pipelines.booster_layout import booster_categories, model_frame
from pipelines.data.credit import CreditConfig, generate_credit
from pipelines.data.fraud import generate_fraud
from pipelines.data.fraud_config import FraudConfig
from pipelines.data.german_credit import load_german_credit
from pipelines.errors import SpecError
from pipelines.features import read_split
from pipelines.spec import ModelSpec, parse_spec
from pipelines.stages.features import build_features
from pipelines.stages.train import train
from pipelines.training import load_model, score
from serving import schema as serving_schema
from serving.feature_values import FLOAT_MAX, FeatureKind
from serving.schema import MAX_PROBLEMS, FeatureSchema, InputError, validate_rows
from serving.schema_columns import codes_of_bytes, label_records, validate_columns
from serving.schema_openapi import openapi_schema
from tests.datasets import spec_of, with_training, write_ingest

ROOT = Path(__file__).resolve().parents[2]

# ----------------------------------------------------------------------------- a toy spec

# the customer's aggregates: name, window, aggregation, and the rest of each
TOY_AGGREGATES: list[tuple[str, str, str, dict[str, Any]]] = [
    ("n_1h", "1h", "count", {}),
    ("amount_sum", "1d", "sum", {"column": "amount"}),
    ("items_sum", "1d", "sum", {"column": "items"}),
    ("delta_sum", "1d", "sum", {"column": "delta"}),
    ("amount_mean", "1d", "mean", {"column": "amount"}),
    ("delta_mean", "1d", "mean", {"column": "delta"}),
    ("items_max", "1d", "max", {"column": "items"}),
    ("amount_std", "1d", "std", {"column": "amount"}),
    ("kinds", "1d", "nunique", {"column": "kind", "where": {"flag": True}}),
]

TOY: dict[str, Any] = {
    "name": "toy",
    "use_case": "credit",
    "owner": "tests",
    "data": {
        "source": {"kind": "file", "path": "toy.parquet"},
        "id_column": "row_id",
        "entity_column": "customer",
        "time_column": "ts",
        "target": "y",
        "split": {"method": "stratified"},
        "columns": {
            "row_id": {"type": "int", "unique": True},
            "ts": {"type": "datetime"},
            "customer": {"type": "int", "personal_data": True},
            "amount": {"type": "float", "min": 0, "max": 1000, "description": "in EUR"},
            "items": {"type": "int", "min": 0, "max": 100, "missing": "allow"},
            "flag": {"type": "bool"},
            "flag_opt": {"type": "bool", "missing": "allow"},
            "kind": {"type": "category", "categories": ["a", "b", "c"], "missing": "impute"},
            "colour": {"type": "category", "categories": [f"c{i:02d}" for i in range(14)]},
            "salary": {"type": "float", "min": 0, "max": 1e6, "personal_data": True},
            "delta": {"type": "float", "min": -50, "max": -1},
            "free": {"type": "float"},
            "note": {"type": "string"},
            "y": {"type": "int", "min": 0, "max": 1},
        },
    },
    "features": {
        "raw": ["amount", "items", "flag", "flag_opt", "kind", "colour", "salary", "delta", "free"],
        "aggregates": [
            {"name": name, "entity": "customer", "window": window, "agg": agg, **more}
            for name, window, agg, more in TOY_AGGREGATES
        ],
    },
    "gates": {"metrics": [{"metric": "roc_auc", "min": 0.5}]},
    "approval": {"roles": ["model_risk"]},
}  # fmt: skip


def toy_spec(**raw_changes: Any) -> ModelSpec:
    data = copy.deepcopy(TOY)
    data["data"]["columns"].update(raw_changes)
    return parse_spec(data, "toy")


@pytest.fixture(scope="module")
def toy() -> FeatureSchema:
    return FeatureSchema.from_spec(toy_spec())


def toy_row() -> dict[str, Any]:
    return {
        "amount": 12.5,
        "items": 3,
        "flag": True,
        "flag_opt": None,
        "kind": "b",
        "colour": "c13",
        "salary": 50_000,
        "delta": -2.5,
        "free": -1e300,
        "n_1h": 0,
        "amount_sum": 0.0,
        "items_sum": 7,
        "delta_sum": -4.0,
        "amount_mean": None,
        "delta_mean": -2.0,
        "items_max": 9.0,
        "amount_std": None,
        "kinds": 2,
    }


def problems_of(schema: FeatureSchema, instances: Any, **kwargs: Any) -> list[str]:
    with pytest.raises(InputError) as caught:
        validate_rows(schema, instances, **kwargs)
    assert caught.value.status == 400
    assert str(caught.value).startswith(f"{len(caught.value.problems)} problem(s)")
    return caught.value.problems


# ----------------------------------------------------------------------------- the schema


def test_schema_follows_the_spec(toy: FeatureSchema) -> None:
    f = {x.name: x for x in toy.features}
    assert toy.names == toy_spec().features.names
    assert (f["amount"].kind, f["amount"].minimum, f["amount"].maximum) == ("float", 0, 1000)
    assert f["amount"].description == "in EUR" and not f["amount"].nullable
    assert (f["items"].kind, f["items"].nullable) == (FeatureKind.INT, True)
    assert f["flag"].kind == FeatureKind.BOOL and not f["flag"].nullable
    assert f["flag_opt"].nullable
    assert f["kind"].categories == ("a", "b", "c") and f["kind"].nullable  # impute -> NaN
    assert f["salary"].personal_data
    assert (f["free"].minimum, f["free"].maximum) == (None, None)
    assert (f["free"].lower, f["free"].upper) == (-FLOAT_MAX, FLOAT_MAX)


def test_aggregate_bounds_follow_the_aggregation(toy: FeatureSchema) -> None:
    f = {x.name: x for x in toy.features}

    def info(name: str) -> tuple[Any, ...]:
        x = f[name]
        return x.kind, x.minimum, x.maximum, x.nullable, x.source

    assert info("n_1h") == (FeatureKind.INT, 0, None, False, "aggregate")
    assert info("kinds") == (FeatureKind.INT, 0, None, False, "aggregate")
    assert info("amount_sum") == (FeatureKind.FLOAT, 0, None, False, "aggregate")
    assert info("items_sum") == (FeatureKind.INT, 0, None, False, "aggregate")
    assert info("delta_sum") == (FeatureKind.FLOAT, None, 0, False, "aggregate")
    assert info("items_max") == (FeatureKind.INT, 0, 100, True, "aggregate")
    assert info("amount_std") == (FeatureKind.FLOAT, 0, None, True, "aggregate")
    kind, lo, hi, nullable, _ = info("amount_mean")
    assert (kind, lo, nullable) == (FeatureKind.FLOAT, 0.0, True)
    assert 1000 < hi < 1000.01  # rounding slack of a mean of cumulative-sum differences
    _, lo, hi, _, _ = info("delta_mean")
    assert -50.01 < lo < -50 and -1 < hi < -0.99
    assert "where flag = True" in f["kinds"].description
    assert "null when" in f["amount_mean"].description


def test_string_and_datetime_features() -> None:
    data = copy.deepcopy(TOY)
    data["features"]["raw"].append("note")
    spec = parse_spec(data, "toy")
    with pytest.raises(SpecError, match="note: a string feature needs its category list"):
        FeatureSchema.from_spec(spec)
    schema = FeatureSchema.from_spec(spec, categories={"note": ["x", "y"]})
    assert schema.feature("note").categories == ("x", "y")
    row = toy_row() | {"note": "y"}
    assert validate_rows(schema, [row])[0, schema.names.index("note")] == 1.0

    with pytest.raises(SpecError, match="differ from the spec's"):
        FeatureSchema.from_spec(toy_spec(), categories={"kind": ["c", "b", "a"]})
    data = copy.deepcopy(TOY)
    data["data"]["columns"]["when"] = {"type": "datetime"}
    data["features"]["raw"].append("when")
    with pytest.raises(SpecError, match="when: a datetime column cannot be a served feature"):
        FeatureSchema.from_spec(parse_spec(data, "toy"))


def test_a_valid_row_is_encoded_like_the_pipeline(toy: FeatureSchema) -> None:
    x = validate_rows(toy, [toy_row()])
    assert x.dtype == np.float64 and x.shape == (1, len(toy.features))
    expected = [12.5, 3, 1, np.nan, 1, 13, 50_000, -2.5, -1e300, 0, 0, 7, -4, np.nan, -2, 9]
    expected += [np.nan, 2]
    np.testing.assert_array_equal(x[0], np.array(expected, dtype=np.float64))
    # a single object is one row; integral floats are integers; NaN is null where nullable
    one = validate_rows(toy, toy_row() | {"items": 3.0, "flag_opt": False, "kind": float("nan")})
    assert one.shape == (1, len(toy.features))
    assert one[0, toy.names.index("items")] == 3 and one[0, toy.names.index("flag_opt")] == 0
    assert np.isnan(one[0, toy.names.index("kind")])


def test_numpy_scalars_are_numbers(toy: FeatureSchema) -> None:
    row = toy_row() | {"amount": np.float32(2.5), "items": np.int64(4), "flag": np.bool_(False)}
    x = validate_rows(toy, [row])[0]
    assert (x[0], x[1], x[2]) == (2.5, 4.0, 0.0)
    assert (
        "expected a number, got a boolean"
        in problems_of(toy, [toy_row() | {"amount": np.True_}])[0]
    )


# ----------------------------------------------------------------------------- violations

VIOLATIONS: list[tuple[str, dict[str, Any], str]] = [
    ("unknown field", {"amout": 1.0}, "row 0: unknown field 'amout' (not a model feature)"),
    ("numeric string", {"amount": "12.5"}, "row 0: amount: expected a number, got a string '12.5'"),
    ("bool as number", {"amount": True}, "row 0: amount: expected a number, got a boolean"),
    ("bool as integer", {"items": False}, "row 0: items: expected an integer, got a boolean"),
    ("array", {"amount": [1.0]}, "row 0: amount: expected a number, got an array"),
    ("object", {"amount": {"v": 1}}, "row 0: amount: expected a number, got an object"),
    ("fraction for int", {"items": 2.5}, "row 0: items: expected an integer, got the number 2.5"),
    ("below min", {"amount": -0.01}, "row 0: amount: -0.01 is below the minimum 0"),
    ("above max", {"amount": 1000.5}, "row 0: amount: 1000.5 is above the maximum 1000"),
    ("above max int", {"items": 101}, "row 0: items: 101 is above the maximum 100"),
    ("negative count", {"n_1h": -1}, "row 0: n_1h: -1 is below the minimum 0"),
    ("positive sum of negatives", {"delta_sum": 1.0}, "row 0: delta_sum: 1 is above the maximum 0"),
    ("huge int", {"free": 10**400}, "row 0: free: an integer of 1329 bits is above the maximum"),
    ("null", {"amount": None}, "row 0: amount: null is not allowed"),
    ("null count", {"n_1h": None}, "row 0: n_1h: null is not allowed"),
    ("NaN", {"amount": float("nan")}, "row 0: amount: NaN is not allowed"),
    ("inf", {"amount": float("inf")}, "row 0: amount: infinity is not allowed"),
    ("inf nullable", {"amount_mean": float("-inf")}, "row 0: amount_mean: infinity is not allowed"),
    (
        "unknown category",
        {"kind": "d"},
        "row 0: kind: unknown category 'd'; allowed: 'a', 'b', 'c'",
    ),
    ("category case", {"kind": "A"}, "row 0: kind: unknown category 'A'"),
    (
        "number category",
        {"kind": 1},
        "row 0: kind: expected a string (a category), got the number 1",
    ),
    ("null category", {"colour": None}, "row 0: colour: null is not allowed"),
    ("0/1 for bool", {"flag": 1}, "row 0: flag: expected true or false, got the number 1"),
    ("string bool", {"flag": "true"}, "row 0: flag: expected true or false, got a string 'true'"),
    ("null bool", {"flag": None}, "row 0: flag: null is not allowed"),
]


@pytest.mark.parametrize(
    ("change", "message"), [v[1:] for v in VIOLATIONS], ids=[v[0] for v in VIOLATIONS]
)
def test_each_violation_is_named(toy: FeatureSchema, change: dict[str, Any], message: str) -> None:
    problems = problems_of(toy, [toy_row() | change])
    assert len(problems) == 1
    assert problems[0].startswith(message), problems[0]


def test_missing_field_and_long_category_lists(toy: FeatureSchema) -> None:
    row = toy_row()
    del row["salary"]
    assert problems_of(toy, [row]) == ["row 0: salary: missing field"]
    (problem,) = problems_of(toy, [toy_row() | {"colour": "c99"}])
    assert problem.startswith("row 0: colour: unknown category 'c99'; allowed: 'c00', 'c01'")
    assert problem.endswith("'c09', ... (14 in all)")


def test_personal_data_values_are_never_echoed(toy: FeatureSchema) -> None:
    for value in (2_000_000.5, "123456", -3, float("nan")):
        (problem,) = problems_of(toy, [toy_row() | {"salary": value}])
        assert problem.startswith("row 0: salary: ")
        assert str(value) not in problem and "123456" not in problem and "2000000" not in problem


def test_every_problem_is_reported_at_once(toy: FeatureSchema) -> None:
    rows = [toy_row(), toy_row() | {"amount": "x", "kind": "z"}, toy_row(), toy_row()]
    del rows[3]["flag"]
    rows[3]["extra"] = 1
    problems = problems_of(toy, rows)
    assert problems == [
        "row 1: amount: expected a number, got a string 'x'",
        "row 1: kind: unknown category 'z'; allowed: 'a', 'b', 'c'",
        "row 3: flag: missing field",
        "row 3: unknown field 'extra' (not a model feature)",
    ]


def test_request_shape_problems(toy: FeatureSchema) -> None:
    assert problems_of(toy, []) == ["no instances: send at least one"]
    assert problems_of(toy, [toy_row()] * 3, max_rows=2) == [
        "too many instances: 3 (at most 2 per request)"
    ]
    big = FeatureSchema(model="toy", features=toy.features, max_rows=5)
    assert problems_of(big, [toy_row()] * 6)[0].startswith("too many instances: 6")
    assert problems_of(toy, "rows")[0].startswith("'instances' must be a list of objects")
    assert problems_of(toy, None)[0].startswith("'instances' must be a list of objects")
    assert problems_of(toy, [toy_row(), [1, 2]]) == [
        "row 1: expected an object {feature: value}, got an array"
    ]
    assert FeatureSchema.from_spec(toy_spec()).max_rows == 10_000


class _Untouchable(Mapping[str, Any]):
    """A row that fails the test if validation looks at it."""

    def __getitem__(self, key: str) -> Any:
        raise AssertionError("validation went on after MAX_PROBLEMS")

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("validation went on after MAX_PROBLEMS")

    def __len__(self) -> int:
        raise AssertionError("validation went on after MAX_PROBLEMS")


def test_hostile_requests_stay_bounded(toy: FeatureSchema) -> None:
    junk = "x" * 100_000
    row = {f"junk{i}": junk for i in range(20)} | {"amount": junk}
    rows: list[Any] = [row] * 4999 + [_Untouchable()]
    problems = problems_of(toy, rows, max_rows=5000)
    assert len(problems) == MAX_PROBLEMS + 1
    assert problems[-1] == f"(stopped after {MAX_PROBLEMS} problems)"
    assert max(len(p) for p in problems) < 200
    assert "row 0: amount: expected a number, got a string 'xxxx" in problems[0]
    row = toy_row() | {f"k{i}": 1 for i in range(50)} | {"y" * 10_000: 1}
    problems = problems_of(toy, [row])
    assert len(problems) == 6 and problems[-1] == "row 0: ... and 46 more unknown fields"


# ----------------------------------------------------------------------------- V2 columns


def test_columns_give_the_same_matrix_as_rows(toy: FeatureSchema) -> None:
    rows = [toy_row(), toy_row() | {"amount": 3, "kind": None, "items_max": None}]
    expected = validate_rows(toy, rows)
    columns = {name: [r[name] for r in rows] for name in toy.names}
    np.testing.assert_array_equal(validate_columns(toy, columns), expected)
    as_arrays = dict(columns)
    as_arrays["amount"] = np.array([12.5, 3.0])
    as_arrays["items"] = np.array([[3], [3]], dtype=np.int32)  # shape (n, 1)
    as_arrays["flag"] = np.array([True, True])
    as_arrays["kind"] = np.array([b"b", None], dtype=object)  # V2 BYTES
    as_arrays["items_max"] = np.array([9.0, np.nan])
    np.testing.assert_array_equal(validate_columns(toy, as_arrays), expected)


def _bytes_tensor(labels: list[str]) -> bytes:
    return b"".join(len(v.encode()).to_bytes(4, "little") + v.encode() for v in labels)


def test_bytes_tensors_of_known_labels_map_straight_to_codes(toy: FeatureSchema) -> None:
    pattern, table = label_records(toy, "kind")
    labels = ["b", "a", "b", "b", "a"] * 40
    coded = codes_of_bytes(_bytes_tensor(labels), len(labels), pattern, table)
    assert coded is not None
    columns: dict[str, Any] = {name: [toy_row()[name]] * len(labels) for name in toy.names}
    expected = validate_columns(toy, columns | {"kind": labels})
    np.testing.assert_array_equal(validate_columns(toy, columns | {"kind": coded}), expected)
    # anything else is left to the element-by-element decoder (which names the problem):
    # an unknown label, even one holding a known element inside it; a wrong count; a
    # truncated or padded tensor
    inside = "x" + _bytes_tensor(["a"]).decode("latin-1")
    for bad, count in (
        (_bytes_tensor(["a", "zzz", "b"]), 3),
        (_bytes_tensor(["a", inside, "b"]), 3),
        (_bytes_tensor(["a", "b"]), 3),
        (_bytes_tensor(["a", "b"])[:-1], 2),
        (_bytes_tensor(["a", "b"]) + b"\x00", 2),
    ):
        assert codes_of_bytes(bad, count, pattern, table) is None


def column_problems(
    schema: FeatureSchema, changes: dict[str, Any], missing: tuple[str, ...] = ()
) -> list[str]:
    """The problems ``validate_columns`` reports for two good rows as columns, with
    ``changes`` made and the ``missing`` columns left out."""
    rows = [toy_row(), toy_row()]
    columns: dict[str, Any] = {name: [r[name] for r in rows] for name in schema.names}
    columns.update(changes)
    for name in missing:
        del columns[name]
    with pytest.raises(InputError) as caught:
        validate_columns(schema, columns)
    return caught.value.problems


def test_columns_report_every_problem(toy: FeatureSchema) -> None:
    bad_values = {
        "amount": np.array([1.0, 2000.0]),
        "items": np.array([1.5, np.nan]),
        "n_1h": np.array([-1, 2]),
        "flag": [True, 1],
        "kind": ["a", "q"],
    }
    assert column_problems(toy, bad_values) == [
        "row 1: amount: 2000 is above the maximum 1000",
        "row 0: items: expected an integer, got the number 1.5",
        "row 1: flag: expected true or false, got the number 1",
        "row 1: kind: unknown category 'q'; allowed: 'a', 'b', 'c'",
        "row 0: n_1h: -1 is below the minimum 0",
    ]
    bad_shapes = {
        "amount": np.array([[1.0, 2.0]]),
        "items": [1],
        "extra": [1, 2],
        "salary": "50000",
    }
    assert column_problems(toy, bad_shapes, missing=("flag",)) == [
        "unknown input 'extra' (not a model feature)",
        "input amount: expected a 1-D tensor (one value per row), got shape [1, 2]",
        "input flag: missing",
        "input salary: expected a list of values, got a string",
        "input items: 1 value(s), but the other inputs have 2",
    ]
    empty = {name: [] for name in toy.names}
    with pytest.raises(InputError, match="no rows: send at least one"):
        validate_columns(toy, empty)
    many = {name: [r[name] for r in [toy_row()] * 3] for name in toy.names}
    with pytest.raises(InputError, match="too many rows: 3"):
        validate_columns(toy, many, max_rows=2)
    with pytest.raises(InputError, match="inputs must be named tensors"):
        validate_columns(toy, [1, 2])


# ----------------------------------------------------------------------------- the pipeline


def _fraud_ingest(folder: Path) -> Path:
    frame = generate_fraud(FraudConfig(n_rows=8000, seed=7, fraud_rate=0.01))
    rng = np.random.default_rng(0)
    frame["mcc"] = frame["mcc"].astype(object).where(rng.random(len(frame)) > 0.05, None)
    return write_ingest(spec_of("fraud"), frame, folder)


def _ingest(name: str, folder: Path) -> Path:
    if name == "fraud":
        return _fraud_ingest(folder)
    if name == "credit":
        return write_ingest(spec_of("credit"), generate_credit(CreditConfig(3000, seed=11)), folder)
    return write_ingest(spec_of(name), load_german_credit(), folder)


@pytest.fixture(scope="module", params=["fraud", "credit", "german_credit"])
def trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    name = request.param
    root = tmp_path_factory.mktemp(name)
    spec = with_training(spec_of(name), num_boost_round=40, early_stopping_rounds=40)
    build_features(spec, _ingest(name, root / "ingest"), root / "features")
    train(spec, root / "features", root / "train")
    frame = pd.concat(
        [read_split(spec, root / "features", s) for s in ("train", "validation", "test")],
        ignore_index=True,
    )
    return spec, frame, load_model(root / "train" / "model.txt")


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as a JSON client sends them (NaN -> null), through a JSON round trip."""
    values = frame.astype(object).where(frame.notna(), None)
    text = json.dumps(values.to_dict("records"), default=lambda o: o.item())
    return json.loads(text)


def test_rows_encode_exactly_what_the_pipeline_feeds_lightgbm(trained: Any) -> None:
    spec, frame, booster = trained
    schema = FeatureSchema.from_spec(spec)
    schema.check_model(booster.feature_name(), booster_categories(booster))
    # LightGBM's own pandas -> numpy conversion (what Booster.predict does with the
    # frame that pipelines.training.score builds): the exact matrix the model sees
    model_input = model_frame(booster, frame)
    expected, *_ = _data_from_pandas(model_input, "auto", "auto", booster.pandas_categorical)
    assert expected.dtype == np.float64
    if spec.name == "fraud":  # nulls reach the model: missing mcc, empty-window means
        assert np.isnan(expected[:, schema.names.index("mcc")]).any()
        assert np.isnan(expected[:, schema.names.index("card_amount_mean_7d")]).any()

    rows = validate_rows(schema, _records(frame[spec.features.names]), max_rows=len(frame))
    assert rows.shape == expected.shape
    assert np.array_equal(rows, expected, equal_nan=True)

    columns = {}
    for f in schema.features:
        col = frame[f.name]
        columns[f.name] = (
            col.astype(object).where(col.notna(), None).tolist()
            if f.kind == FeatureKind.CATEGORY
            else col.to_numpy()
        )
    assert np.array_equal(
        validate_columns(schema, columns, max_rows=len(frame)), expected, equal_nan=True
    )

    pipeline_scores = score(booster, frame)
    np.testing.assert_array_equal(booster.predict(rows), pipeline_scores)
    first = validate_rows(schema, _records(frame[spec.features.names].head(1)))
    assert booster.predict(first)[0] == pipeline_scores[0]


def test_check_model_refuses_another_model(trained: Any) -> None:
    spec, _, booster = trained
    schema = FeatureSchema.from_spec(spec)
    cats = booster_categories(booster)
    name = next(iter(cats))
    with pytest.raises(SpecError, match=f"{name}: model categories"):
        schema.check_model(booster.feature_name(), cats | {name: list(reversed(cats[name]))})
    with pytest.raises(SpecError, match="model features"):
        schema.check_model(list(reversed(booster.feature_name())), cats)
    with pytest.raises(SpecError, match=f"{name}: not categorical in the model"):
        schema.check_model(booster.feature_name(), {k: v for k, v in cats.items() if k != name})


def test_imports_neither_pandas_nor_kserve() -> None:
    code = (
        "import sys, serving.schema, serving.auth;"
        "bad = {'pandas', 'kserve', 'lightgbm', 'sklearn'} & set(sys.modules);"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# ----------------------------------------------------------------------------- JSON Schema


def _validator(schema: FeatureSchema) -> jsonschema.Draft202012Validator:
    doc = openapi_schema(schema)
    jsonschema.Draft202012Validator.check_schema(doc)
    json.dumps(doc, allow_nan=False)  # plain JSON
    return jsonschema.Draft202012Validator(doc)


def _accepts(schema: FeatureSchema, body: Any) -> bool:
    try:
        validate_rows(schema, body["instances"])
    except InputError:
        return False
    return True


def test_openapi_schema_describes_the_contract(toy: FeatureSchema) -> None:
    doc = openapi_schema(toy)
    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert doc["additionalProperties"] is False and doc["required"] == ["instances"]
    instances = doc["properties"]["instances"]
    assert (instances["minItems"], instances["maxItems"]) == (1, 10_000)
    row = instances["items"]
    assert row["additionalProperties"] is False and row["required"] == toy.names
    props = row["properties"]
    assert props["amount"] == {
        "description": "in EUR",
        "type": "number",
        "minimum": 0,
        "maximum": 1000,
    }
    assert props["items"]["type"] == ["integer", "null"]
    assert props["flag"] == {"type": "boolean"}
    assert props["kind"] == {"type": ["string", "null"], "enum": ["a", "b", "c", None]}
    assert props["free"]["maximum"] == FLOAT_MAX
    assert "$ref" not in json.dumps(doc)


def test_json_schema_and_validate_rows_agree_on_each_violation(toy: FeatureSchema) -> None:
    validator = _validator(toy)
    good = {"instances": [toy_row(), toy_row() | {"items": 5.0, "kind": None}]}
    assert validator.is_valid(good) and _accepts(toy, good)
    json_violations = [v for v in VIOLATIONS if _json_able(v[1])]
    assert len(json_violations) >= 20
    for label, change, _ in json_violations:
        body = json.loads(json.dumps({"instances": [toy_row() | change]}))
        assert not validator.is_valid(body), label
        assert not _accepts(toy, body), label
    missing = toy_row()
    del missing["amount"]
    for label, body in [
        ("missing", {"instances": [missing]}),
        ("empty", {"instances": []}),
        ("not an object", {"instances": [1]}),
        ("too many", {"instances": [toy_row()] * (toy.max_rows + 1)}),
    ]:
        assert not validator.is_valid(body), label
        assert not _accepts(toy, body), label


def _json_able(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (ValueError, TypeError):
        return False
    return True


# ----------------------------------------------------------------------------- fuzzing

_NASTY: list[Any] = [
    None, True, False, 0, -1, 1, 2, 10**30, -(10**30), 10**400, 0.5, -0.0, 1e-320, 1e308,
    -1e308, FLOAT_MAX, float("nan"), float("inf"), float("-inf"), "", "1", "12.5", "NaN",
    "a", "A", " a", "c13", "true", "x" * 100_000, [], [1], {}, {"a": {"b": {"c": [1]}}},
    [[[[[]]]]], b"a", (1,), 3.0, 100, 100.0, 101, 1000, 1000.0000001,
]  # fmt: skip


def _valid_value(rng: random.Random, f: Any) -> Any:
    if f.nullable and rng.random() < 0.1:
        return None
    if f.kind == FeatureKind.CATEGORY:
        return rng.choice(f.categories)
    if f.kind == FeatureKind.BOOL:
        return rng.random() < 0.5
    lo = max(f.lower, -1e6)
    hi = min(f.upper, 1e6)
    if f.kind == FeatureKind.INT:
        return rng.randint(math.ceil(lo), math.floor(hi))
    return rng.choice([lo, hi, rng.uniform(lo, hi)])


def _mutate(rng: random.Random, schema: FeatureSchema, rows: list[Any]) -> Any:
    names = schema.names
    op = rng.randrange(9)
    i = rng.randrange(len(rows))
    row = rows[i] if isinstance(rows[i], dict) else {}  # a replaced row takes no more edits
    if op <= 2:  # a nasty value
        row[rng.choice(names)] = rng.choice(_NASTY)
    elif op == 3:
        row.pop(rng.choice(names), None)
    elif op == 4:
        key = rng.choice(["extra", "Amount", "amount ", "", "k" * 1000, rng.choice(names).upper()])
        row[key] = rng.choice(_NASTY)
    elif op == 5:
        rows[i] = rng.choice(_NASTY)
    elif op == 6:
        rows.extend(copy.deepcopy(rows[: rng.randrange(1, 8)]) * rng.randrange(1, 4))
    elif op == 7:
        rows.clear()
    else:  # a valid value of another field (wrong type, most of the time)
        other = schema.features[rng.randrange(len(names))]
        row[rng.choice(names)] = _valid_value(rng, other)
    return rows


def _mutated_requests(schema: FeatureSchema, n: int, seed: int) -> list[list[Any]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        rows = [
            {f.name: _valid_value(rng, f) for f in schema.features}
            for _ in range(rng.randint(1, 3))
        ]
        for _ in range(rng.choice([0, 1, 1, 2, 3])):
            if not rows:
                break
            rows = _mutate(rng, schema, rows)
        out.append(rows)
    return out


@pytest.mark.parametrize("spec_name", ["toy", "fraud"])
def test_fuzzed_requests_give_a_matrix_or_an_input_error(spec_name: str) -> None:
    spec = toy_spec() if spec_name == "toy" else spec_of("fraud")
    schema = FeatureSchema(
        model=spec.name, features=FeatureSchema.from_spec(spec).features, max_rows=8
    )
    validator = _validator(schema)
    outcomes = {"ok": 0, "bad": 0, "compared": 0}
    for rows in _mutated_requests(schema, 1200, seed=20240611):
        try:
            x = validate_rows(schema, rows)
        except InputError as exc:
            ok = False
            assert exc.problems and all(isinstance(p, str) for p in exc.problems)
        else:
            ok = True
            assert x.shape == (len(rows), len(schema.features)) and x.dtype == np.float64
            assert not np.isinf(x).any()
        outcomes["ok" if ok else "bad"] += 1
        try:  # V2: the same rows as columns give the same verdict
            columns = {k: [r[k] for r in rows] for k in schema.names} if ok else None
        except (KeyError, TypeError):
            columns = None
        if columns is not None:
            np.testing.assert_array_equal(validate_columns(schema, columns), x)
        body = {"instances": rows}
        if _json_able(body):
            outcomes["compared"] += 1
            parsed = json.loads(json.dumps(body))
            assert validator.is_valid(parsed) == ok == _accepts(schema, parsed), rows
    assert outcomes["ok"] >= 100 and outcomes["bad"] >= 500 and outcomes["compared"] >= 800


# ----------------------------------------------------------------------------- big requests
def complete_row(i: int = 0) -> dict[str, Any]:
    row = toy_row()
    row.update(flag_opt=False, amount_mean=1.5 + i, amount_std=0.25, amount=float(i % 900))
    return row


def both_ways(schema: FeatureSchema, rows: list[Any], monkeypatch: pytest.MonkeyPatch) -> tuple:
    """(outcome with the column-wise check, outcome with the row-by-row path)."""

    def outcome() -> Any:
        try:
            return np.nan_to_num(validate_rows(schema, rows), nan=-12345.0).tolist()
        except InputError as exc:
            return exc.problems

    vectorised = outcome()
    monkeypatch.setattr(serving_schema, "VECTOR_MIN_ROWS", 10**9)
    slow = outcome()
    monkeypatch.undo()
    return vectorised, slow


def test_a_big_valid_request_takes_the_column_path_and_encodes_alike(
    toy: FeatureSchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [complete_row(i) for i in range(200)]
    assert serving_schema._rows_vectorised(toy, rows) is not None
    vectorised, slow = both_ways(toy, rows, monkeypatch)
    assert vectorised == slow


@pytest.mark.parametrize(
    ("change", "message"), [v[1:] for v in VIOLATIONS], ids=[v[0] for v in VIOLATIONS]
)
def test_each_violation_in_a_big_request_is_named_as_in_a_small_one(
    toy: FeatureSchema, change: dict[str, Any], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [complete_row(i) for i in range(100)]
    rows[37] = {**rows[37], **change}
    vectorised, slow = both_ways(toy, rows, monkeypatch)
    assert vectorised == slow
    assert message.replace("row 0:", "row 37:") in vectorised[0]


def test_random_big_requests_get_the_same_answer_both_ways(
    toy: FeatureSchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(11)
    odd_values = [None, True, "7", 2.5, -1, 10**20, 1e308, float("nan"), "b", "zz", 3]
    for _ in range(60):
        rows = [complete_row(i) for i in range(80)]
        for _ in range(int(rng.integers(0, 3))):
            i = int(rng.integers(0, 80))
            field_name = toy.names[int(rng.integers(0, len(toy.names)))]
            rows[i] = {**rows[i], field_name: odd_values[int(rng.integers(0, len(odd_values)))]}
        vectorised, slow = both_ways(toy, rows, monkeypatch)
        assert vectorised == slow
