"""The MLflow run a lifecycle registration logs, each kind of record once and in bulk.

Parameters and metrics go in one batch each, the three data splits in one
``log_inputs``, the model with its signature and input example, and the run's report
files with the model card in one ``log_artifacts`` of a prepared folder. Nothing the
earlier stages computed is computed again: the splits' digests come from
``features.json``, the data's schema from a few representative rows
(:func:`split_dataset`), and MLflow's pip-requirements inference for the model runs once
per environment (:func:`remember_pip_requirements`).

(Registering the logged model as a version, its tags and aliases:
:mod:`registry.mlflow_registry`.)
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from pipelines.spec import ModelSpec

log = logging.getLogger(__name__)


def log_lifecycle_run(
    spec: ModelSpec,
    run_dir: Path,
    lifecycle_run_id: str,
    spec_sha256: str | None,
    tags: dict[str, str],
) -> tuple[str, Any]:
    """Log the lifecycle run folder as one MLflow run (with ``tags``) of the active
    experiment: the MLflow run id and the logged model's info (``model_uri``)."""
    import mlflow

    from pipelines.training import load_model

    name = spec.name
    features = json.loads((run_dir / "features" / "features.json").read_text())
    training = json.loads((run_dir / "train" / "training.json").read_text())
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    booster = load_model(run_dir / "train" / "model.txt")
    feature_names = list(features["features"])
    with mlflow.start_run(run_name=f"{name} {lifecycle_run_id}", tags=tags) as run:
        params = {f"lgb.{k}": v for k, v in (training.get("params") or {}).items()}
        params.update(
            best_iteration=training.get("best_iteration"),
            seed=training.get("seed"),
            decision_threshold=spec.gates.decision_threshold,
            features=",".join(feature_names),
            spec_sha256=spec_sha256 or "",
        )
        mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})
        mlflow.log_metrics(_metrics(metrics))
        splits = [split_dataset(spec, run_dir, features, split) for split, _ in _DATASET_CONTEXTS]
        mlflow.log_inputs(
            datasets=[dataset for dataset, _ in splits],
            contexts=[context for _, context in _DATASET_CONTEXTS],
            tags_list=[None] * len(splits),
        )
        test_head = splits[-1][1]  # the test split's first rows, already read
        info = _log_model(booster, test_head[feature_names])
        with tempfile.TemporaryDirectory(prefix="govml-register-") as tmp:
            staged = _stage_artifacts(spec, run_dir, lifecycle_run_id, Path(tmp))
            mlflow.log_artifacts(str(staged))
        run_id = run.info.run_id
    return run_id, info


def _flatten(prefix: str, data: Any, out: dict[str, float]) -> None:
    """Nested numbers as dotted MLflow metric keys (``recall_at_fpr.0.01``)."""
    if isinstance(data, dict):
        for key, value in data.items():
            _flatten(f"{prefix}{key}.", value, out)
    elif isinstance(data, int | float) and not isinstance(data, bool):
        out[prefix.rstrip(".")] = float(data)


def _metrics(metrics: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for role in ("candidate", "baseline", "champion"):
        section = metrics.get(role) or {}
        flat: dict[str, float] = {}
        _flatten("", section, flat)
        for key, value in flat.items():
            out[key if role == "candidate" else f"{role}.{key}"] = value
    business: dict[str, float] = {}
    _flatten("business.", metrics.get("business") or {}, business)
    out.update(business)
    return {k: v for k, v in out.items() if v == v}  # drop NaN


# the data splits logged as the run's inputs, in order, with MLflow's dataset context
_DATASET_CONTEXTS = (("train", "training"), ("validation", "validation"), ("test", "testing"))
# the run folder's stages whose report files become run artifacts under the stage's name
_ARTIFACT_STAGES = ("validate_data", "evaluate", "fairness", "explain", "gates", "lineage", "train")


def split_dataset(spec: ModelSpec, run_dir: Path, features: dict[str, Any], split: str):  # noqa: ANN202
    """One data split as an MLflow dataset, and the split's first five rows (a DataFrame
    with the whole split's dtypes).

    MLflow records a pandas dataset's schema (inferred value by value over the whole
    frame), its profile (rows, elements) and a digest. The features stage wrote the
    digest already (``features.json``), and a Parquet column holds one type: so the
    schema is inferred from a few representative rows (for each column its first value
    and its first missing value, which decide the column's type and whether it is
    required) and the profile is taken from the file's row count. The record is the one
    MLflow would make from the whole frame; only a split without a recorded digest, or
    with nested columns, is read whole for MLflow to digest and infer.
    """
    import mlflow
    import pandas as pd
    import pyarrow.parquet as pq

    path = run_dir / "features" / f"{split}.parquet"
    digest = (features.get("sha256") or {}).get(split, "")[:36] or None
    options = {"source": str(path), "name": f"{spec.name}-{split}", "targets": spec.data.target}
    if digest is None or any(_nested(field.type) for field in pq.read_schema(path)):
        frame = pd.read_parquet(path)
        return mlflow.data.from_pandas(frame, digest=digest, **options), frame.head(5)
    table = pq.read_table(path)
    sample = table.take(_representative_rows(table)).to_pandas()
    dataset = mlflow.data.from_pandas(sample, digest=digest, **options)
    profile = {"num_rows": table.num_rows, "num_elements": table.num_rows * len(sample.columns)}
    return _with_profile(dataset, profile), sample.head(5)


def _nested(arrow_type) -> bool:  # noqa: ANN001
    import pyarrow as pa

    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    return pa.types.is_nested(arrow_type)


def _representative_rows(table) -> list[int]:  # noqa: ANN001
    """Row numbers holding the first five rows and, for every column, its first value and
    its first missing value (null, NaN or NaT): what MLflow's schema inference decides a
    column's type and ``required`` flag from, when all of a column's values have one type.
    The rows convert to pandas with the whole file's dtypes (an integer column with a
    missing value anywhere is float in both)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    rows = set(range(min(table.num_rows, 5)))  # and the first rows: the input example
    for column in table.columns:
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        if column.null_count == 0 and not pa.types.is_floating(column.type):
            continue
        missing = pc.is_null(column, nan_is_null=True)
        for wanted in (True, False):
            found = pc.index(missing, wanted).as_py()
            if found is not None and found >= 0:
                rows.add(found)
    return sorted(rows)


def _with_profile(dataset, profile: dict[str, int]):  # noqa: ANN001, ANN202
    """``dataset`` (a few rows of a split) with the whole split's profile."""
    from mlflow.data.pandas_dataset import PandasDataset

    class SplitDataset(PandasDataset):
        @property
        def profile(self) -> dict[str, int]:
            return profile

    return SplitDataset(
        df=dataset.df,
        source=dataset.source,
        targets=dataset.targets,
        name=dataset.name,
        digest=dataset.digest,
    )


def _log_model(booster, example):  # noqa: ANN001, ANN202
    """Log the LightGBM model (signature and input example from ``example``).

    MLflow infers the model's pip requirements by loading it in a child Python process;
    the answer depends only on the installed packages, so it is inferred once per
    environment and reused (:func:`remember_pip_requirements`).
    """
    import mlflow.lightgbm
    from mlflow.models import infer_signature

    from pipelines.training import score

    signature = infer_signature(example, score(booster, example))
    return mlflow.lightgbm.log_model(
        booster,
        name="model",
        signature=signature,
        input_example=example,
        pip_requirements=_known_pip_requirements(),
    )


def _requirements_cache() -> Path:
    """Where the pip requirements MLflow inferred are kept, one file per environment: the
    Python, the platform and the distributions installed in site-packages (their
    ``*.dist-info`` folders name each one's version)."""
    import hashlib
    import platform
    import site
    import sys

    installed: set[str] = set()
    for folder in site.getsitepackages():
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        installed.update(n for n in names if n.endswith((".dist-info", ".egg-info")))
    key = "\n".join([sys.version, platform.platform(), sys.prefix, *sorted(installed)])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    return base / "govml" / "mlflow-pip-requirements" / f"lightgbm-{digest}.txt"


def _known_pip_requirements() -> list[str] | None:
    """The requirements MLflow inferred for a LightGBM model in this environment, if known.

    The file counts only when this account owns it, nobody else may write it, and each
    line pins one package (``name==version``); otherwise MLflow infers them again.
    """
    import re

    cache = _requirements_cache()
    try:
        status = cache.stat()
        lines = [line.strip() for line in cache.read_text().splitlines() if line.strip()]
    except OSError:
        return None
    pinned = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9][A-Za-z0-9.+!_-]*")
    if status.st_uid != os.getuid() or status.st_mode & 0o022:
        log.warning("ignoring %s: not this account's own file", cache)
        return None
    if not lines or not all(pinned.fullmatch(line) for line in lines):
        log.warning("ignoring %s: not a list of pinned packages", cache)
        return None
    return lines


def remember_pip_requirements(model_dir: Path) -> None:
    """Keep the requirements MLflow wrote for a model logged here (without constraints)."""
    requirements = model_dir / "requirements.txt"
    if not requirements.is_file() or (model_dir / "constraints.txt").exists():
        return
    try:
        cache = _requirements_cache()
        if cache.is_file():
            return
        cache.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(requirements.read_text())
        tmp.chmod(0o600)
        tmp.replace(cache)
    except OSError as exc:  # a read-only home: infer again next time
        log.debug("cannot keep MLflow's inferred pip requirements: %s", exc)


def _stage_artifacts(spec: ModelSpec, run_dir: Path, lifecycle_run_id: str, folder: Path) -> Path:
    """The run's artifacts laid out as in MLflow, for one upload: each stage's report files
    (not its data, baseline or model file) under the stage's name, and the model card."""
    from registry.model_card import render_model_card

    for stage in _ARTIFACT_STAGES:
        source = run_dir / stage
        if not source.is_dir():
            continue
        for item in sorted(source.iterdir()):
            if item.suffix in (".parquet", ".joblib") or item.name == "model.txt":
                continue
            if item.is_dir():
                _link_tree(item, folder / stage / item.name)
            elif item.is_file():
                _link(item, folder / stage / item.name)
    markdown, html = render_model_card(spec, run_dir, lifecycle_run_id)
    card = folder / "model_card"
    card.mkdir(parents=True, exist_ok=True)
    (card / "model_card.md").write_text(markdown, encoding="utf-8")
    (card / "model_card.html").write_text(html, encoding="utf-8")
    return folder


def _link_tree(source: Path, target: Path) -> None:
    for path in sorted(source.rglob("*")):
        if path.is_file():
            _link(path, target / path.relative_to(source))


def _link(source: Path, target: Path) -> None:
    """``target`` holds ``source``'s bytes: a hard link, or a copy across file systems."""
    import shutil

    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
