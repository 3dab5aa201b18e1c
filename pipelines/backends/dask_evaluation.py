"""Evaluation and SHAP explanations on a Dask cluster.

``evaluate_dask`` and ``explain_dask`` give the same records as
:func:`pipelines.evaluation.evaluate` and :func:`validation.explain.explain_candidate`,
so the stages write the same files and the fairness stage and the gates read them
unchanged.

* **evaluation: exactly equal.** The test table is read in ``partition_rows`` partitions;
  every partition is scored on the workers by the candidate, the baseline and (if given)
  the champion (each model predicts a row independently, so the scores are the local
  ones bit for bit). The exact ranking metrics (ROC-AUC, PR-AUC, KS, recall@FPR, the
  alert budget, calibration quantiles) need a global order of the scores: the client
  gathers the scores with the label, the id, ``amount`` and the segment columns (about
  60 bytes a row: 450 MB for the 7.5M test rows of 50M transactions) and computes every
  metric with the local functions. Only the feature columns stay on the workers.
* **SHAP: exactly equal.** The sample is the local one: the client gathers the id column
  (8 bytes a row), orders it as :func:`validation.explain.sample_rows` does and draws the
  same seeded positions; the workers return only those rows. The contributions of the
  flagged rows (reason codes) are computed on the workers (LightGBM ``pred_contrib``, row
  by row independent), partition by partition, and put in the local order.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.backends.dask_ingest import Piece, map_pieces, plan_pieces, read_piece
from pipelines.errors import DataValidationError
from pipelines.spec import ModelSpec

if TYPE_CHECKING:
    from distributed import Client

    from pipelines.backends.dask_core import Cluster
    from pipelines.evaluation import EvaluateInputs, ScoredTest
    from validation.explain import ExplainInputs, Explanation

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=8)
def _model(path: str, mtime: float) -> Any:
    from pipelines.training import load_model

    return load_model(Path(path))


@functools.lru_cache(maxsize=4)
def _baseline(path: str, mtime: float) -> Any:
    from pipelines.training import load_baseline

    return load_baseline(Path(path))


def _key(path: Path) -> tuple[str, float]:
    return str(path), path.stat().st_mtime


def _pieces(path: Path, partition_rows: int) -> list[Piece]:
    if not path.is_file():
        raise DataValidationError(f"{path}: feature table not found (run the features stage)")
    pieces, _, _ = plan_pieces([path], partition_rows)
    return pieces


# ----------------------------------------------------------------------------- evaluation


def score_piece(
    piece: Piece,
    spec: ModelSpec,
    keep: list[str],
    features: list[str],
    models: dict[str, tuple[str, float]],
    baseline: tuple[str, float],
) -> pd.DataFrame:
    """The kept columns of one partition with every model's score."""
    from pipelines.features import retype_categories
    from pipelines.training import score, score_baseline

    part = retype_categories(read_piece(piece).to_pandas(), spec)
    out = part[[c for c in keep if c in part.columns]].copy()
    for name, key in models.items():
        try:
            out[name] = score(_model(*key), part)
        except DataValidationError as exc:
            raise DataValidationError(f"{name} {key[0]}: {exc}") from None
    out["baseline"] = score_baseline(_baseline(*baseline), part, features)
    return out


def evaluate_dask(spec: ModelSpec, inputs: EvaluateInputs, cluster: Cluster) -> ScoredTest:
    """:func:`pipelines.evaluation.evaluate` with the scoring on the cluster (module doc)."""
    from pipelines.evaluation import AMOUNT_COLUMN, score_test
    from pipelines.features import read_features_json
    from pipelines.training import BASELINE_FILE, MODEL_FILE

    features_dir, train_dir, client = inputs.features_dir, inputs.train_dir, cluster.client
    champion_model = inputs.champion_model
    meta = read_features_json(features_dir)
    features = list(meta.get("features") or spec.features.names)
    pieces = _pieces(features_dir / "test.parquet", cluster.partition_rows)
    for path in (train_dir / MODEL_FILE, train_dir / BASELINE_FILE):
        if not path.is_file():
            raise DataValidationError(f"{path}: not found (run the training stage)")
    models = {"candidate": _key(train_dir / MODEL_FILE)}
    if champion_model is not None:
        if not champion_model.is_file():
            raise DataValidationError(f"champion {champion_model}: model file not found")
        models["champion"] = _key(champion_model)
    target = spec.data.target
    keep = list(
        dict.fromkeys(
            [spec.data.id_column, target, AMOUNT_COLUMN, *(s.column for s in spec.segments)]
        )
    )
    baseline = _key(train_dir / BASELINE_FILE)
    parts = map_pieces(client, score_piece, pieces, spec, keep, features, models, baseline)
    test = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=keep)
    del parts
    if target not in test.columns:
        raise DataValidationError(f"{features_dir / 'test.parquet'}: no {target!r} column")
    y = test[target].to_numpy().astype(np.int64)
    scores = {name: test.pop(name).to_numpy(dtype=np.float64) for name in models}
    scores["baseline"] = test.pop("baseline").to_numpy(dtype=np.float64)
    scores = {k: scores[k] for k in ("candidate", "baseline", "champion") if k in scores}
    n = len(pieces)
    log.info("evaluate %s on dask: %d test rows in %d partitions", spec.name, len(y), n)
    scored = score_test(spec, test, y, scores, inputs)
    return dataclasses.replace(scored, marker={"backend": "dask", "partitions": n})


# ----------------------------------------------------------------------------- explain


def _ids(piece: Piece, id_column: str) -> np.ndarray:
    return read_piece(piece, [id_column]).column(id_column).to_numpy(zero_copy_only=False)


def _rows_with_ids(piece: Piece, id_column: str, ids: np.ndarray) -> pa.Table:
    import pyarrow.compute as pc

    table = read_piece(piece)
    return table.filter(pc.is_in(table.column(id_column), value_set=pa.array(ids)))


def _contributions_piece(
    piece: Piece, id_column: str, ids: np.ndarray, model: tuple[str, float]
) -> tuple[np.ndarray, np.ndarray]:
    from pipelines.reasons import contributions

    rows = _rows_with_ids(piece, id_column, ids).to_pandas()
    return rows[id_column].to_numpy(), contributions(_model(*model), rows)


def _sampled_ids(
    client: Client, pieces: list[Piece], id_col: str, max_rows: int, seed: int
) -> np.ndarray | None:
    """The ids of :func:`validation.explain.sample_rows`' rows, sorted (``None`` when the
    ids are not unique)."""
    ids = np.concatenate(map_pieces(client, _ids, pieces, id_col) or [[]])
    ordered = np.sort(ids, kind="stable")
    unique = len(ordered) < 2 or bool((ordered[1:] != ordered[:-1]).all())
    if not unique:
        return None
    if len(ordered) > max_rows:  # validation.explain.sample_rows' positions
        picked = np.sort(np.random.default_rng(seed).choice(len(ordered), max_rows, replace=False))
        return ordered[picked]
    return ordered


@dataclass(frozen=True)
class _FlaggedContributions:
    """The contributions of the flagged rows, found on the cluster (in ``flagged`` order)."""

    client: Client
    pieces: list[Piece]
    id_col: str
    model: tuple[str, float]
    width: int
    test_path: Path

    def __call__(self, flagged: pd.DataFrame, scores_path: Path) -> np.ndarray:
        wanted = flagged["id"].to_numpy()
        found = map_pieces(
            self.client, _contributions_piece, self.pieces, self.id_col, wanted, self.model
        )
        got_ids = np.concatenate([f[0] for f in found]) if found else np.zeros(0)
        width = self.width
        matrix = np.concatenate([f[1] for f in found]) if found else np.zeros((0, width))
        position = pd.Index(got_ids).get_indexer(wanted)
        unknown = int((position < 0).sum())
        if unknown:
            raise DataValidationError(
                f"explain: {unknown} flagged row(s) of {scores_path} have no "
                f"{self.id_col!r} in {self.test_path}"
            )
        return matrix[position] if len(wanted) else np.zeros((0, width))


def explain_dask(spec: ModelSpec, inputs: ExplainInputs, cluster: Cluster) -> Explanation:
    """:func:`validation.explain.explain_candidate` with the rows found on the cluster
    (module doc)."""
    from validation.explain import explain_sample, load_booster

    client, max_rows = cluster.client, inputs.max_rows
    seed, id_col = spec.training.seed, spec.data.id_column
    model_path = inputs.train_dir / "model.txt"
    booster = load_booster(model_path)
    test_path = inputs.features_dir / "test.parquet"
    if not test_path.exists():
        raise DataValidationError(f"explain: {test_path} does not exist")
    pieces = _pieces(test_path, cluster.partition_rows)
    if id_col not in pq.ParquetFile(test_path).schema_arrow.names:
        raise DataValidationError(f"explain: {test_path} lacks the id column {id_col!r}")
    n = len(pieces)

    chosen = _sampled_ids(client, pieces, id_col, max_rows, seed)
    if chosen is None:
        raise DataValidationError(f"explain: {test_path} has duplicate ids in {id_col!r}")
    tables = map_pieces(client, _rows_with_ids, pieces, id_col, chosen)
    sample = pa.concat_tables(tables).to_pandas()
    sample = sample.sort_values(id_col, kind="stable").reset_index(drop=True)

    flagged_contributions = _FlaggedContributions(
        client, pieces, id_col, _key(model_path), len(booster.feature_name()) + 1, test_path
    )
    log.info("explain %s on dask: %d sampled rows from %d partitions", spec.name, len(sample), n)
    marker = {"backend": "dask", "partitions": n}
    return explain_sample(spec, inputs, booster, sample, flagged_contributions, marker)
