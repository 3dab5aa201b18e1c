"""serving.compiled: the compiled model scores bit-for-bit like Booster.predict, or is not used.

lleaves lives in .venv-serving only; under another interpreter the lleaves tests skip and
``test_in_the_serving_env`` runs this file with .venv-serving's Python.
"""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from serving import compiled

ROOT = Path(__file__).resolve().parents[2]
SERVING_PYTHON = ROOT / ".venv-serving" / "bin" / "python"
HAVE_LLEAVES = importlib.util.find_spec("lleaves") is not None
needs_lleaves = pytest.mark.skipif(
    not HAVE_LLEAVES, reason="lleaves is in .venv-serving (test_in_the_serving_env)"
)
CATEGORIES = {"channel": 5, "segment": 12, "mcc": 40}  # 40 > 32: a two-word bitset


def _frame(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    data: dict[str, object] = {f"x{i}": rng.normal(size=rows) * (i + 1) for i in range(14)}
    for name, n in CATEGORIES.items():
        data[name] = pd.Categorical(rng.integers(0, n, rows), categories=list(range(n)))
    frame = pd.DataFrame(data)
    for i in range(0, 14, 3):
        frame.loc[rng.random(rows) < 0.08, f"x{i}"] = np.nan
    return frame


def _matrix(frame: pd.DataFrame) -> np.ndarray:
    out = frame.copy()
    for name in CATEGORIES:
        out[name] = out[name].cat.codes.astype(float)
    return out.to_numpy(dtype=float)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """17 features (3 categorical), NaN, 80 trees: three blocks of the compiled sum."""
    frame = _frame(6000, 1)
    logit = (
        frame["x0"].fillna(0) * 0.8
        - frame["x3"].fillna(1) * 0.3
        + (frame["mcc"].cat.codes % 7 == 3) * 1.5
        + (frame["channel"].cat.codes == 2) * 0.7
    )
    y = (np.random.default_rng(2).random(len(frame)) < 1 / (1 + np.exp(-logit))).astype(int)
    params = {"objective": "binary", "verbosity": -1, "seed": 1, "num_leaves": 31}
    params |= {"min_data_per_group": 20, "cat_smooth": 1, "max_cat_to_onehot": 4}
    booster = lgb.train(params, lgb.Dataset(frame, y), num_boost_round=80)
    cache = tmp_path_factory.mktemp("compiled-cache")
    return {"booster": booster, "text": booster.model_to_string(), "cache": cache}


@pytest.fixture(autouse=True)
def _compiled_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(compiled.ENV_SWITCH, "1")  # tests/conftest.py turns it off


@pytest.fixture(scope="module")
def built(model: dict) -> compiled.CompiledModel:
    if not HAVE_LLEAVES:
        pytest.skip("lleaves is in .venv-serving (test_in_the_serving_env)")
    return compiled.build(model["text"], model["booster"], cache=model["cache"])


def _odd_rows(rows: int) -> np.ndarray:
    """NaN everywhere, unseen/negative/fractional/huge category codes, zeros, infinities."""
    rng = np.random.default_rng(5)
    matrix = _matrix(_frame(rows, 9))
    matrix[rng.random(matrix.shape) < 0.15] = np.nan
    odd = [-1, -3, 5, 12, 40, 41, 63, 64, 1000, 2.5, -0.5, 2.0**31, -(2.0**31) - 1, 1e12, np.inf]
    for j in (14, 15, 16):
        pick = rng.random(rows) < 0.3
        matrix[pick, j] = rng.choice(odd, pick.sum())
    tiny = 1.0000000180025095e-35  # LightGBM reads |x| <= this (float 1e-35) as 0
    specials = [0.0, -0.0, 1e-40, tiny, -tiny, 1e-34, np.inf, -np.inf, 1e300]
    for j in range(14):
        pick = rng.random(rows) < 0.05
        matrix[pick, j] = rng.choice(specials, pick.sum())
    return matrix


@needs_lleaves
def test_scores_are_bit_identical_nan_and_odd_category_codes_included(
    model: dict, built: compiled.CompiledModel
) -> None:
    booster = model["booster"]
    for matrix in (
        _matrix(_frame(3000, 7)),
        _odd_rows(3000),
        compiled.verification_rows(model["text"], 17, 2000),
    ):
        assert np.isnan(matrix).any()
        expected = booster.predict(matrix)
        got = built.predict(matrix)
        assert got.dtype == np.float64 and got.shape == expected.shape
        assert np.array_equal(got, expected)  # exactly, not approximately
    assert np.array_equal(built.predict(matrix[:1]), booster.predict(matrix[:1]))
    assert np.array_equal(built.predict(matrix[::2]), booster.predict(matrix[::2]))  # strided


@needs_lleaves
def test_lleaves_own_block_sums_are_not_lightgbms(model: dict) -> None:
    """Why the code generator is patched (in the compiler process only): lleaves' blocked
    sum rounds differently from LightGBM's."""
    import lleaves

    path = model["cache"] / "plain.txt"
    path.write_text(model["text"])
    plain = lleaves.Model(model_file=str(path))
    plain.compile(fblocksize=compiled.FBLOCKSIZE, finline=False)  # unpatched, in this process
    matrix = _matrix(_frame(3000, 7))
    assert not np.array_equal(plain.predict(matrix, n_jobs=1), model["booster"].predict(matrix))


@needs_lleaves
def test_the_cache_is_reused_and_keyed_by_the_model(
    model: dict, built: compiled.CompiledModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = compiled.cache_key(model["text"])
    assert (model["cache"] / f"{key}.o").exists()

    def no_compiler(*args: object, **kwargs: object) -> None:
        raise AssertionError("compiled again")

    monkeypatch.setattr(compiled, "_build_object", no_compiler)
    again = compiled.build(model["text"], model["booster"], cache=model["cache"])
    assert again.source == "cache"
    matrix = _odd_rows(500)
    assert np.array_equal(again.predict(matrix), built.predict(matrix))
    other = model["text"].replace("learning_rate: 0.1", "learning_rate: 0.10")
    assert other != model["text"] and compiled.cache_key(other) != key


def test_a_failing_compiler_leaves_booster_predict_in_charge(
    model: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(compiled.sys, "executable", "/bin/false")  # the child exits 1
    caplog.set_level(logging.WARNING, logger="serving.compiled")
    job = compiled.BackgroundCompiler(model["booster"], cache=tmp_path).start()
    assert job.wait(60)
    assert job.scorer is None and job.status.startswith("unavailable: ")
    reason = "the compiler failed (exit 1)" if HAVE_LLEAVES else "lleaves is not installed"
    assert reason in job.status
    assert "using Booster.predict" in caplog.text and reason in caplog.text
    assert not list(tmp_path.glob("*.o*"))  # nothing half-written left behind


def test_without_lleaves_it_says_so(model: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "lleaves", None)  # import fails
    with pytest.raises(compiled.CompileError, match="lleaves is not installed"):
        compiled.build(model["text"], model["booster"])
    monkeypatch.setenv(compiled.ENV_SWITCH, "0")
    assert compiled.start(model["booster"]) is None


@needs_lleaves
def test_a_compiled_model_that_scores_differently_is_refused(
    model: dict, built: compiled.CompiledModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = compiled.cache_key(model["text"])
    for suffix in (".txt", ".o"):  # the cached build, in a cache of its own
        name = f"{key}{suffix}"
        (tmp_path / name).write_bytes((model["cache"] / name).read_bytes())
    real = compiled.CompiledModel.predict
    monkeypatch.setattr(
        compiled.CompiledModel, "predict", lambda self, m: np.nextafter(real(self, m), 1.0)
    )
    with pytest.raises(compiled.CompileError, match=r"scores differ from Booster.predict on \d+"):
        compiled.build(model["text"], model["booster"], cache=tmp_path)
    assert not (tmp_path / f"{key}.o").exists()  # never reused


@needs_lleaves
def test_the_model_server_scores_batches_with_it_once_ready(
    model: dict, built: compiled.CompiledModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("kserve")
    from serving.model import LightGBMModel

    monkeypatch.setenv(compiled.ENV_CACHE, str(model["cache"]))
    (tmp_path / "model").mkdir()
    model["booster"].save_model(str(tmp_path / "model" / "model.txt"))
    server = LightGBMModel("fraud", str(tmp_path / "model"))
    assert server.load()
    matrix = _odd_rows(2000)
    booster = server.booster_
    assert np.array_equal(server.score_matrix(matrix), booster.predict(matrix))  # either way
    assert server.compiled_ is not None and server.compiled_.wait(120)
    assert server.compiled_.status == "ready", server.compiled_.status
    assert np.array_equal(server.score_matrix(matrix), booster.predict(matrix))
    assert np.array_equal(server.score_matrix(matrix[:1]), booster.predict(matrix[:1]))
    server.compiled_.close()


@pytest.mark.skipif(HAVE_LLEAVES, reason="lleaves is here: the tests above ran")
@pytest.mark.skipif(not SERVING_PYTHON.exists(), reason="no .venv-serving here")
def test_in_the_serving_env() -> None:
    done = subprocess.run(
        [str(SERVING_PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__]
        + ["-k", "not test_in_the_serving_env"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout, done.stdout[-2000:]
