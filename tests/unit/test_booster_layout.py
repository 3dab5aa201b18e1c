"""One input layout: training, reason codes and the model server type a frame identically."""

from __future__ import annotations

import subprocess
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from pipelines.booster_layout import (
    booster_categories,
    categorical_indices,
    category_lists,
    model_frame,
    typed_frame,
)
from pipelines.errors import DataValidationError

ROOT = Path(__file__).resolve().parents[2]
SERVING_PYTHON = ROOT / ".venv-serving" / "bin" / "python"
FEATURES = ["amount", "channel", "age", "segment"]
CATEGORICAL = ["channel", "segment"]


def _rows(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "amount": rng.gamma(2.0, 50.0, n).round(2),
            "channel": rng.choice(["online", "card_present"], n),  # plain strings
            "age": rng.integers(18, 80, n).astype(np.float64),
            "segment": pd.Categorical(rng.choice(["a", "b", "c"], n), categories=["c", "a", "b"]),
        }
    )


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[lgb.Booster, Path, pd.DataFrame]:
    train = _rows(400, 0)
    y = ((train["channel"] == "online") & (train["amount"] > 80)).astype(int).to_numpy()
    y[::17] = 1 - y[::17]
    cats = category_lists(train, CATEGORICAL)
    x = typed_frame(train, FEATURES, cats)
    params = {"objective": "binary", "verbose": -1, "seed": 1, "num_leaves": 7, "num_threads": 1}
    trained = lgb.train(params, lgb.Dataset(x, y, categorical_feature=CATEGORICAL), 10)
    folder = tmp_path_factory.mktemp("model")
    trained.save_model(str(folder / "model.txt"))
    return lgb.Booster(model_file=str(folder / "model.txt")), folder, _rows(60, 1)


def test_categories_and_indices_are_read_from_the_booster(
    model: tuple[lgb.Booster, Path, pd.DataFrame],
) -> None:
    booster, _, _ = model
    assert booster_categories(booster) == {
        "channel": ["card_present", "online"],
        "segment": ["c", "a", "b"],
    }
    names = ["a", "b", "c"]
    assert categorical_indices("2,0", names) == [0, 2]
    assert categorical_indices("name:c,a", names) == [0, 2]
    assert categorical_indices([1, "c"], names) == [1, 2]
    assert categorical_indices(1, names) == [1]
    assert categorical_indices("auto", names) == categorical_indices(None, names) == []


def test_training_reasons_and_layout_give_one_frame(
    model: tuple[lgb.Booster, Path, pd.DataFrame],
) -> None:
    from pipelines import training
    from pipelines.reasons import contributions

    booster, _, rows = model
    shuffled = rows.assign(extra=1.0)[["extra", "segment", "age", "channel", "amount"]]
    laid_out = model_frame(booster, shuffled)
    assert list(laid_out.columns) == FEATURES
    as_text = rows.assign(segment=rows["segment"].astype(str))  # plain strings, as from JSON
    pd.testing.assert_frame_equal(model_frame(booster, as_text), laid_out)
    np.testing.assert_array_equal(
        contributions(booster, rows), booster.predict(laid_out, pred_contrib=True)
    )
    # training scores (and so evaluates and explains) through the same layout, bit for bit
    for variant in (rows, shuffled, as_text):
        np.testing.assert_array_equal(training.score(booster, variant), booster.predict(laid_out))
    with pytest.raises(DataValidationError, match="amount: expected a number"):
        model_frame(booster, rows.assign(amount="high"))
    with pytest.raises(DataValidationError, match=r"\['age'\]"):
        model_frame(booster, rows.drop(columns=["age"]))


def _serving_check(folder: Path, rows: pd.DataFrame) -> None:
    from serving.model import LightGBMModel

    booster = lgb.Booster(model_file=str(folder / "model.txt"))
    server = LightGBMModel("layout", str(folder))
    assert server.load()
    try:
        records = rows.astype(object).to_dict(orient="records")  # as JSON rows
        served = server._frame(
            [{k: str(v) if k == "segment" else v for k, v in r.items()} for r in records]
        )
        expected = model_frame(booster, rows)
        pd.testing.assert_frame_equal(served, expected.reset_index(drop=True))
        assert server.categories_ == booster_categories(booster)
        np.testing.assert_array_equal(server._score(served), booster.predict(expected))
    finally:
        if server.compiled_ is not None:
            server.compiled_.close()


def test_the_model_server_lays_rows_out_the_same(
    model: tuple[lgb.Booster, Path, pd.DataFrame], tmp_path: Path
) -> None:
    _, folder, rows = model
    try:
        import kserve  # noqa: F401
    except ImportError:
        if not SERVING_PYTHON.exists():
            pytest.skip("no kserve and no .venv-serving here")
        rows.to_pickle(tmp_path / "rows.pkl")
        code = (
            "import pandas as pd; from pathlib import Path; "
            "from tests.unit.test_booster_layout import _serving_check; "
            f"_serving_check(Path({str(folder)!r}), pd.read_pickle({str(tmp_path / 'rows.pkl')!r}))"
        )
        done = subprocess.run(
            [str(SERVING_PYTHON), "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return
    _serving_check(folder, rows)
