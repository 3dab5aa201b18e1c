"""The Dask backend of the heavy stages: features, training and batch scoring on a cluster.

Chosen with ``compute.backend: dask`` in the spec (or ``GOVML_COMPUTE_BACKEND=dask``);
:func:`dask_client` connects to ``compute.scheduler`` (``tcp://host:8786``) or starts a
``LocalCluster`` of ``compute.workers`` processes, and closes what it opened.

Data is read as partitions of ``partition_rows`` consecutive rows of a Parquet file
(:func:`read_partitioned`; only the row groups a partition overlaps are read, so no
worker ever holds the whole file). The frame is indexed by the global row number
``_row`` with known divisions, which is what lets results computed elsewhere be put
back in the original row order.

Results against the local backend:

* **features: exactly equal.** A windowed aggregate of a row depends only on the rows
  of the same entity, in their original relative order. For each entity column the
  needed columns are hash-partitioned by entity (a shuffle), each partition is sorted by
  ``_row`` and given to the same :func:`pipelines.features.compute_aggregates`; the
  per-entity sums are then the same floating-point sums in the same order, so every
  value is bit-identical, wherever the input partitions cut an entity's history. The
  results are realigned on ``_row`` (known divisions) and the time split is a global
  sort on (time, id) with the same positional cut as the local split (a stratified
  split draws the same seeded index split from the labels, gathered on the client at
  9 bytes a row). The split files hold the same rows, values and order; their bytes
  (row groups) differ, so their SHA-256 differ.
* **batch scoring: exactly equal** to :func:`pipelines.training.score` (LightGBM
  predicts each row independently; every partition runs the same booster).
* **training: within a tolerance** (:mod:`pipelines.backends.dask_training`).
* Ingest (:mod:`pipelines.backends.dask_ingest`), data validation
  (:mod:`pipelines.backends.dask_validation`), evaluation and SHAP
  (:mod:`pipelines.backends.dask_evaluation`) have their own Dask modules; fairness runs
  as the local stage on the evaluation's scores.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.artifacts import sha256_file
from pipelines.errors import ConfigError, DataValidationError
from pipelines.features import (
    SPLITS,
    FeaturesInputs,
    FeatureTables,
    compute_aggregates,
    retype_categories,
    table_columns,
)
from pipelines.spec import Compute, ModelSpec, SplitMethod
from pipelines.spec_features import AggregateFeature

if TYPE_CHECKING:
    import dask.dataframe as dd
    import lightgbm as lgb
    from distributed import Client

log = logging.getLogger(__name__)

ROW = "_row"


# ----------------------------------------------------------------------------- cluster


#: the shuffle of every stage's shuffles and sorts: Dask's task-based shuffle, whose
#: intermediate pieces are ordinary task results on the workers (spilled to their local
#: directories under memory pressure, dropped when done). Left to itself Dask picks its
#: ``disk`` shuffle here, because the stages' client is not the process's default: partd
#: files in the temporary folder of whichever worker opened them, correct only while
#: every worker shares one machine's disk, and deleted only when that worker process
#: exits (a 50M-row lifecycle run left ~20 GiB in /tmp).
SHUFFLE_METHOD = "tasks"


def on_cluster(client: Client) -> contextlib.AbstractContextManager[Any]:
    """The Dask settings the stages compute under: ``client``'s cluster, task shuffles."""
    import dask

    return dask.config.set({"dataframe.shuffle.method": SHUFFLE_METHOD}, scheduler=client)


@dataclass(frozen=True)
class Cluster:
    """Where a Dask computation runs: the client of its cluster, and how many rows a
    partition of the data holds."""

    client: Client
    partition_rows: int


@contextmanager
def dask_client(compute: Compute, timeout: float | None = None) -> Iterator[Client]:
    """A client to ``compute.scheduler``, or to a fresh ``LocalCluster``; closed on exit.

    ``timeout`` (default ``compute.connect_timeout``) bounds the wait for the scheduler.
    """
    from distributed import Client, LocalCluster

    timeout = compute.connect_timeout if timeout is None else timeout

    if compute.scheduler:
        try:
            client = Client(compute.scheduler, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ConfigError(
                f"Dask scheduler {compute.scheduler}: not reachable within {timeout:.0f} s "
                f"({type(exc).__name__}: {exc}); check compute.scheduler in the spec or "
                "GOVML_DASK_SCHEDULER"
            ) from None
        try:
            yield client
        finally:
            client.close()
        return
    cluster = LocalCluster(
        n_workers=compute.workers,
        threads_per_worker=compute.threads_per_worker,
        processes=True,
        memory_limit=compute.memory_limit or "auto",
        dashboard_address=None,
        silence_logs=logging.WARNING,
    )
    try:
        client = Client(cluster, set_as_default=False)
        try:
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


# ----------------------------------------------------------------------------- reading


def _read_rows(
    piece: tuple[str, int, int], columns: list[str] | None, spec: ModelSpec
) -> pd.DataFrame:
    """Rows ``[start, stop)`` of a Parquet file, typed per spec, indexed by ``_row``."""
    path, start, stop = piece
    file = pq.ParquetFile(path)
    meta = file.metadata
    groups, offsets, first = [], [], 0
    for i in range(meta.num_row_groups):
        n = meta.row_group(i).num_rows
        if first < stop and first + n > start:
            groups.append(i)
            offsets.append(first)
        first += n
    table = file.read_row_groups(groups, columns=columns)
    table = table.slice(start - offsets[0], stop - start) if groups else table.slice(0, 0)
    frame = retype_categories(table.to_pandas(), spec)
    frame.index = pd.RangeIndex(start, stop, name=ROW)
    return frame


def read_partitioned(
    path: Path, spec: ModelSpec, partition_rows: int, columns: list[str] | None = None
) -> dd.DataFrame:
    """A Parquet file as a Dask frame of ``partition_rows``-row partitions indexed by ``_row``."""
    import dask.dataframe as dd

    path = Path(path)
    if not path.is_file():
        raise DataValidationError(f"{path}: data file not found")
    try:
        rows = pq.ParquetFile(path).metadata.num_rows
    except (OSError, pa.ArrowException) as exc:
        raise DataValidationError(f"{path}: not a readable Parquet file: {exc}") from exc
    if rows == 0:
        raise DataValidationError(f"{path}: no rows")
    step = max(int(partition_rows), 1)
    starts = list(range(0, rows, step))
    pieces = [(str(path), s, min(s + step, rows)) for s in starts]
    meta = _read_rows((str(path), 0, min(rows, 1)), columns, spec).iloc[:0]
    divisions = [*starts, rows - 1]
    return dd.from_map(
        _read_rows,
        pieces,
        columns=columns,
        spec=spec,
        meta=meta,
        divisions=divisions,
        label="read-rows",
        enforce_metadata=False,
    )


# ----------------------------------------------------------------------------- features


def _entity_aggregates(
    part: pd.DataFrame, aggregates: Sequence[AggregateFeature], time_column: str
) -> pd.DataFrame:
    """The aggregates of one entity-partition, rows in global order, indexed by ``_row``."""
    part = part.sort_values(ROW, kind="mergesort").set_index(ROW)
    return compute_aggregates(aggregates, part, time_column)


def _by_entity(aggregates: Sequence[AggregateFeature]) -> dict[str, list[AggregateFeature]]:
    groups: dict[str, list[AggregateFeature]] = {}
    for agg in aggregates:
        groups.setdefault(agg.entity, []).append(agg)
    return groups


def aggregates_dask(
    frame: dd.DataFrame, aggregates: Sequence[AggregateFeature], time_column: str
) -> dd.DataFrame:
    """Every aggregate as a float64 column of a frame indexed by ``_row`` (same divisions).

    Exactly equal to :func:`pipelines.features.compute_aggregates` on the whole frame.
    """
    if not frame.known_divisions:
        raise ValueError("the frame needs known divisions on _row (use read_partitioned)")
    out = []
    for entity, group in _by_entity(aggregates).items():
        needed = {time_column, entity}
        for agg in group:
            needed |= {*([agg.column] if agg.column else []), *agg.where}
        missing = sorted(c for c in needed if c not in frame.columns)
        if missing:
            raise DataValidationError(f"aggregates on {entity}: missing column(s) {missing}")
        sub = frame[sorted(needed)].reset_index()
        shuffled = sub.shuffle(on=entity, npartitions=frame.npartitions)
        meta = pd.DataFrame(
            {a.name: pd.Series(dtype="float64") for a in group},
            index=pd.Index([], dtype="int64", name=ROW),
        )
        result = shuffled.map_partitions(
            _entity_aggregates, group, time_column, meta=meta, align_dataframes=False
        )
        realigned = result.reset_index().set_index(ROW, divisions=list(frame.divisions))
        out.append(realigned)
    names = [a.name for a in aggregates]
    combined = frame.drop(columns=[n for n in names if n in frame.columns])
    for part in out:
        combined = combined.assign(**{c: part[c] for c in part.columns})
    return combined


def _check_input_dask(frame: dd.DataFrame, spec: ModelSpec, source: Path) -> int:
    """The local features stage's input checks, computed on partitions; the row count."""
    from pipelines.features import check_input

    check_input(frame._meta, spec, source)  # columns
    target, id_col = spec.data.target, spec.data.id_column
    checks = {
        "rows": frame[id_col].count() + frame[id_col].isna().sum(),
        "target_nulls": frame[target].isna().sum(),
        "target_bad": (~frame[target].isin([0, 1])).sum(),
        "distinct_ids": frame[id_col].nunique(),
    }
    if spec.data.time_column:
        checks["time_nulls"] = frame[spec.data.time_column].isna().sum()
    import dask

    (values,) = dask.compute(checks)
    if values["target_nulls"] or values["target_bad"]:
        raise DataValidationError(f"{source}: target {target!r} must be 0/1 without nulls")
    if values["distinct_ids"] != values["rows"]:
        raise DataValidationError(f"{source}: id column {id_col!r} has duplicates")
    if values.get("time_nulls"):
        raise DataValidationError(f"{source}: time column {spec.data.time_column!r} has nulls")
    return int(values["rows"])


def _positional_slice(part: pd.DataFrame, lo: int, hi: int, offset: int) -> pd.DataFrame:
    return part.iloc[max(lo - offset, 0) : max(min(hi - offset, len(part)), 0)]


def _split_time(table: dd.DataFrame, spec: ModelSpec, n: int) -> dict[str, dd.DataFrame]:
    """The local time split: global (time, id) order, cut at the same positions."""
    from dask import delayed

    time_col = spec.data.time_column
    assert time_col is not None
    ordered = table.sort_values([time_col, spec.data.id_column])
    ordered = ordered.persist()
    lengths = ordered.map_partitions(len).compute().tolist()
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(int).tolist()
    n_test = int(round(n * spec.data.split.test_fraction))
    n_val = int(round(n * spec.data.split.validation_fraction))
    n_train = n - n_val - n_test
    cuts = {
        "train": (0, n_train),
        "validation": (n_train, n_train + n_val),
        "test": (n_train + n_val, n),
    }
    parts = ordered.to_delayed()
    out: dict[str, dd.DataFrame] = {}
    import dask.dataframe as dd

    for name, (lo, hi) in cuts.items():
        pieces = [
            delayed(_positional_slice)(p, lo, hi, offsets[i])
            for i, p in enumerate(parts)
            if offsets[i] < hi and offsets[i + 1] > lo
        ]
        if not pieces:
            pieces = [delayed(_positional_slice)(parts[0], 0, 0, 0)]
        out[name] = dd.from_delayed(pieces, meta=ordered._meta, verify_meta=False)
    return out


def _split_stratified(table: dd.DataFrame, spec: ModelSpec) -> dict[str, dd.DataFrame]:
    """The local stratified split: the same seeded index split, rows sorted by id."""
    from pipelines.features import stratified_split

    labels = table[[spec.data.target, spec.data.id_column]].compute().reset_index(drop=True)
    parts, _ = stratified_split(labels, spec)
    membership = np.zeros(len(labels), dtype=np.int8)
    for code, name in enumerate(SPLITS):
        membership[parts[name].index.to_numpy()] = code
    out = {}
    for code, name in enumerate(SPLITS):
        chosen = table.map_partitions(
            lambda p, c=code: p[membership[p.index.to_numpy()] == c], meta=table._meta
        )
        out[name] = chosen.sort_values(spec.data.id_column)
    return out


def _write_single_parquet(frame: dd.DataFrame, path: Path, columns: list[str]) -> str:
    """Write a Dask frame (distributed, in partitions) then join the parts in order into
    one Parquet file, one row group at a time. Returns the file's SHA-256."""
    tmp = path.with_name(f".{path.name}.parts")
    if tmp.exists():
        shutil.rmtree(tmp)
    frame[columns].to_parquet(
        tmp,
        write_index=False,
        write_metadata_file=False,
        compression="zstd",
        name_function=lambda i: f"part.{i:06d}.parquet",
    )
    parts = sorted(tmp.glob("part.*.parquet"))
    writer: pq.ParquetWriter | None = None
    schema: pa.Schema | None = None
    partial = path.with_name(f".{path.name}.tmp")
    try:
        for part in parts:
            file = pq.ParquetFile(part)
            for i in range(file.metadata.num_row_groups):
                table = file.read_row_group(i).replace_schema_metadata(None)
                if schema is None:
                    schema = table.schema
                    writer = pq.ParquetWriter(
                        partial, schema, compression="zstd", compression_level=3, version="2.6"
                    )
                assert writer is not None
                writer.write_table(table.cast(schema))
        if writer is None:  # no rows at all: an empty table with the frame's schema
            empty = pa.Table.from_pandas(frame._meta[columns], preserve_index=False)
            pq.write_table(empty.replace_schema_metadata(None), partial)
        else:
            writer.close()
            writer = None
        partial.replace(path)
    finally:
        if writer is not None:
            writer.close()
        if partial.exists():
            partial.unlink()
        shutil.rmtree(tmp, ignore_errors=True)
    return sha256_file(path)


def build_features_dask(spec: ModelSpec, inputs: FeaturesInputs, cluster: Cluster) -> FeatureTables:
    """:func:`pipelines.features.feature_tables` on a Dask cluster: the same tables and
    values."""
    data, out_dir = inputs.data, inputs.out_dir
    with on_cluster(cluster.client):
        frame = read_partitioned(data, spec, cluster.partition_rows)
        n = _check_input_dask(frame, spec, data)
        log.info(
            "features for %s on dask: %d rows in %d partitions from %s",
            spec.name,
            n,
            frame.npartitions,
            data,
        )
        if spec.features.aggregates:
            assert spec.data.time_column is not None
            frame = aggregates_dask(frame, spec.features.aggregates, spec.data.time_column)
        columns = table_columns(spec)
        table = frame[columns]
        if spec.data.split.method == SplitMethod.TIME:
            parts = _split_time(table, spec, n)
        else:
            parts = _split_stratified(table, spec)

        out_dir.mkdir(parents=True, exist_ok=True)
        paths: dict[str, Path] = {}
        sha: dict[str, str] = {}
        rows: dict[str, int] = {}
        label_rate: dict[str, float | None] = {}
        boundaries: dict[str, Any] = {}
        time_col = spec.data.time_column
        for name in SPLITS:
            paths[name] = out_dir / f"{name}.parquet"
            sha[name] = _write_single_parquet(parts[name], paths[name], columns)
            stats = pq.read_table(paths[name], columns=[spec.data.target]).column(0)
            rows[name] = len(stats)
            positives = int(pc.sum(stats).as_py() or 0)
            label_rate[name] = positives / rows[name] if rows[name] else None
            if spec.data.split.method == SplitMethod.TIME and time_col:
                times = pq.read_table(paths[name], columns=[time_col]).column(0)
                for key, fn in (("start", pc.min), ("end", pc.max)):
                    value = fn(times).as_py() if rows[name] else None
                    boundaries[f"{name}_{key}"] = (
                        None if value is None else pd.Timestamp(value).isoformat()
                    )
            log.info("%s: %d rows, label rate %s", name, rows[name], label_rate[name])

    return FeatureTables(out_dir, paths, sha, rows, label_rate, boundaries, {"backend": "dask"})


# ----------------------------------------------------------------------------- scoring


@functools.lru_cache(maxsize=4)
def _booster(model_text: str) -> lgb.Booster:
    import lightgbm as lgb

    return lgb.Booster(model_str=model_text)


def _score_partition(part: pd.DataFrame, model_text: str, id_column: str) -> pd.DataFrame:
    from pipelines.training import score

    return pd.DataFrame(
        {id_column: part[id_column].to_numpy(), "score": score(_booster(model_text), part)},
        index=part.index,
    )


def score_dask(model_text: str, frame: dd.DataFrame, id_column: str) -> dd.DataFrame:
    """``(id, score)`` for every row, computed partition by partition with the booster.

    Exactly equal to :func:`pipelines.training.score` on the whole frame.
    """
    meta = pd.DataFrame(
        {id_column: frame._meta[id_column].to_numpy(), "score": np.zeros(0, dtype=np.float64)},
        index=frame._meta.index,
    )
    return frame.map_partitions(_score_partition, model_text, id_column, meta=meta)


def batch_score(
    spec: ModelSpec,
    model_path: Path,
    data: Path,
    out_path: Path,
    client: Client,
    partition_rows: int,
) -> dict[str, Any]:
    """Score a Parquet file on the cluster into ``out_path`` (``id``, ``score``, in row order)."""

    model_path = Path(model_path)
    if not model_path.is_file():
        raise DataValidationError(f"{model_path}: model file not found")
    text = model_path.read_text(encoding="utf-8")
    with on_cluster(client):
        frame = read_partitioned(data, spec, partition_rows)
        scores = score_dask(text, frame, spec.data.id_column)
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        digest = _write_single_parquet(scores, Path(out_path), [spec.data.id_column, "score"])
    rows = pq.ParquetFile(out_path).metadata.num_rows
    return {
        "scores": str(out_path),
        "rows": rows,
        "sha256": digest,
        "model_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
    }
