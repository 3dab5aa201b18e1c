"""A ``kserve.Model`` serving a LightGBM booster (KServe protocol V1 and V2).

The model comes from a local folder or any MLflow artifact URI (``models:/fraud@champion``,
``runs:/...``, ``s3://...``). When an expected SHA-256 is given, the model file is
checked before loading; on mismatch the model never becomes ready and the log says why.
Bad input maps to 400 through KServe's ``InvalidInput``; unknown models are KServe's 404.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from kserve import Model
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from pipelines import artifacts
from pipelines.artifacts import MODEL_FILES

log = logging.getLogger(__name__)


def find_model_file(folder: Path) -> Path:
    """The LightGBM model file in a folder (searched recursively, MLflow layout too)."""
    found = artifacts.find_model_file(folder)
    if found is None:
        raise FileNotFoundError(f"no LightGBM model file ({', '.join(MODEL_FILES)}) under {folder}")
    return found


def resolve_model_dir(model_uri: str) -> Path:
    """A local folder for a local path or an MLflow artifact URI (downloaded)."""
    local = Path(model_uri)
    if local.exists():
        return local
    import mlflow.artifacts

    return Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))


class LightGBMModel(Model):
    """Scores rows with a LightGBM booster; returns the positive-class probability."""

    def __init__(self, name: str, model_uri: str, expected_sha256: str | None = None) -> None:
        super().__init__(name)
        self.model_uri = model_uri
        self.expected_sha256 = expected_sha256
        self.booster_: lgb.Booster | None = None
        self.feature_names_: list[str] = []
        self.categories_: dict[str, list[Any]] = {}
        self.model_sha256_: str | None = None

    def load(self) -> bool:
        model_file = find_model_file(resolve_model_dir(self.model_uri))
        digest = artifacts.sha256_file(model_file)
        if self.expected_sha256 and digest != self.expected_sha256:
            log.error(
                "refusing to load %s: SHA-256 %s does not match the approved %s",
                model_file,
                digest,
                self.expected_sha256,
            )
            self.ready = False
            return False
        booster = lgb.Booster(model_file=str(model_file))
        self.booster_ = booster
        self.model_sha256_ = digest
        self.feature_names_ = list(booster.feature_name())
        cat_idx = booster.params.get("categorical_feature") or []
        pandas_cats = getattr(booster, "pandas_categorical", None) or []
        cat_names = [self.feature_names_[i] for i in _indices(cat_idx)]
        self.categories_ = dict(zip(cat_names, pandas_cats, strict=False))
        self.ready = True
        log.info("loaded %s (sha256 %s, %d features)", model_file, digest, len(self.feature_names_))
        return True

    # ------------------------------------------------------------------ input
    def _frame(self, rows: Any) -> pd.DataFrame:
        if not isinstance(rows, list) or not rows:
            raise InvalidInput("'instances' must be a non-empty list of rows")
        if all(isinstance(r, dict) for r in rows):
            missing = [f for f in self.feature_names_ if f not in rows[0]]
            if missing:
                raise InvalidInput(f"row 0: missing feature(s) {missing}")
            frame = pd.DataFrame.from_records(rows)
            unknown = sorted(set(frame.columns) - set(self.feature_names_))
            if unknown:
                raise InvalidInput(f"unknown feature(s) {unknown}")
            if frame[self.feature_names_].isna().any().any():
                bad = frame[self.feature_names_].isna().any()
                raise InvalidInput(f"missing value(s) in {sorted(bad[bad].index)}")
            frame = frame[self.feature_names_]
        elif all(isinstance(r, list) for r in rows):
            if any(len(r) != len(self.feature_names_) for r in rows):
                raise InvalidInput(
                    f"each row needs {len(self.feature_names_)} values "
                    f"in the order {self.feature_names_}"
                )
            frame = pd.DataFrame(rows, columns=self.feature_names_)
        else:
            raise InvalidInput("rows must all be objects (feature: value) or all be lists")
        return self._typed(frame)

    def _typed(self, frame: pd.DataFrame) -> pd.DataFrame:
        out = {}
        for name in self.feature_names_:
            col = frame[name]
            if name in self.categories_:
                allowed = self.categories_[name]
                bad = sorted({str(v) for v in col if v not in allowed})
                if bad:
                    raise InvalidInput(f"{name}: unknown categories {bad}; allowed {allowed}")
                out[name] = pd.Categorical(col, categories=allowed)
            else:
                try:
                    out[name] = pd.to_numeric(col, errors="raise").astype("float64")
                except (ValueError, TypeError):
                    raise InvalidInput(f"{name}: expected a number") from None
        return pd.DataFrame(out)

    def _score(self, frame: pd.DataFrame) -> np.ndarray:
        assert self.booster_ is not None
        return np.asarray(self.booster_.predict(frame), dtype="float64")

    # ------------------------------------------------------------------ protocol
    async def predict(
        self,
        payload: dict | InferRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict | InferResponse:
        if isinstance(payload, InferRequest):
            try:
                frame = payload.as_dataframe()
            except Exception as exc:  # noqa: BLE001 (any decoding problem is bad input)
                raise InvalidInput(f"cannot read the V2 inputs: {exc}") from None
            missing = [f for f in self.feature_names_ if f not in frame.columns]
            if missing:
                raise InvalidInput(f"missing input(s) {missing}")
            scores = self._score(self._typed(frame[self.feature_names_]))
            output = InferOutput(name="score", shape=[len(scores)], datatype="FP64")
            output.set_data_from_numpy(scores, binary_data=False)
            return InferResponse(
                model_name=self.name,
                infer_outputs=[output],
                response_id=payload.id or str(uuid.uuid4()),
            )
        if not isinstance(payload, dict) or "instances" not in payload:
            raise InvalidInput("the body must be a JSON object with 'instances'")
        scores = self._score(self._frame(payload["instances"]))
        return {"predictions": scores.tolist(), "model_sha256": self.model_sha256_}


def _indices(value: Any) -> list[int]:
    if isinstance(value, str):
        return [int(v) for v in value.split(",") if v.strip()]
    return [int(v) for v in value]
