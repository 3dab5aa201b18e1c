"""Writing stage artifacts: atomic, canonical, hashed.

Every stage writes its files through these helpers, so a rerun leaves identical bytes
and a crash never leaves a half-written file (a temporary file in the same folder,
then ``os.replace``). Used by ``pipelines``, ``validation``, ``registry`` and the
model server.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

MODEL_FILES = ("model.txt", "model.lgb", "model.bst")
"""LightGBM model file names: ours (``model.txt``), MLflow's flavour, KServe's runtime."""


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def temporary_beside(path: Path) -> Path:
    """A fresh temporary name in ``path``'s folder (which is created if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``."""
    path = Path(path)
    tmp = temporary_beside(path)
    try:
        with tmp.open("xb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def to_jsonable(value: Any) -> Any:
    """Plain JSON types: numpy scalars and arrays to Python, NaN/inf to None, paths to str."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [to_jsonable(v) for v in value.tolist()]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, Path):
        return str(value)
    return value


def json_text(obj: Any) -> str:
    """Canonical JSON: sorted keys, indent 2, no NaN, trailing newline."""
    return json.dumps(to_jsonable(obj), sort_keys=True, indent=2, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write canonical JSON atomically."""
    write_bytes_atomic(path, json_text(obj).encode("utf-8"))


def find_model_file(folder: str | os.PathLike[str]) -> Path | None:
    """The LightGBM model file under a folder (searched recursively), or None."""
    for name in MODEL_FILES:
        hits = sorted(Path(folder).rglob(name))
        if hits:
            return hits[0]
    return None
