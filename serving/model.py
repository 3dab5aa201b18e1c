"""A ``kserve.Model`` serving a LightGBM booster (KServe protocol V1 and V2).

The model comes from a local folder or any MLflow artifact URI (``models:/fraud@champion``,
``runs:/...``, ``s3://...``). When an expected SHA-256 is given, the model file is
checked before loading; on mismatch the model never becomes ready and the log says why.
Bad input raises KServe's ``InvalidInput`` (or :class:`serving.schema.InputError`);
the guard's one error mapping (:func:`serving.http_errors.error_answer`) and KServe's handler
answer it 400; unknown models are KServe's 404.

With the model's spec (``spec_path``), input is validated strictly against the spec's
feature schema (:mod:`serving.schema`: names, types, ranges, categories, missing-value
policy; every problem named) and turned into the model's input matrix without pandas;
the booster must match the spec (features, category lists) or it is refused. Each
scored row then carries its decision at the spec's threshold, goes to the prediction
log (asynchronous, personal data pseudonymised) and to the score metrics. Explained rows
(``:explain``) go to the prediction log too, with their reason codes. Each row names the
authenticated client, whichever route answered (:mod:`serving.request_context`).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Mapping
from functools import partial
from typing import Any

import lightgbm as lgb
import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
from kserve import Model
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from prometheus_client import Counter

from pipelines import artifacts
from pipelines.booster_layout import booster_categories, typed_frame
from pipelines.errors import DataValidationError
from serving import compiled
from serving.fastscore import RowScorer
from serving.metrics import ScoreHistogram, track_compiled_scorer
from serving.model_files import find_model_file, resolve_model_dir
from serving.model_records import (
    Served,
    decode_infer_body,
    explanation_rows,
    infer_answer,
    json_columns,
    log_explanations,
    log_rows,
    rows_of,
)
from serving.prediction_log import RowContext
from serving.request_context import current_client, current_request_id

log = logging.getLogger(__name__)

# Batches of at least this many rows go to the compiled model once it is ready
# (serving.compiled; bit-for-bit Booster.predict). Measured on the 300-tree fraud model,
# one thread: 2 rows 74 µs vs 99 µs, 100 rows 0.52 ms vs 1.8 ms, 10,000 rows 27 ms vs
# 161 ms. Single rows stay on RowScorer (faster still for one row).
COMPILED_MIN_ROWS = 2

SCORES = ScoreHistogram(
    "govml_score",
    "Model scores served",
    ["model", "version"],
    buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99),
)
DECISIONS = Counter(
    "govml_decisions_total", "Scored rows by decision", ["model", "version", "decision"]
)


class LightGBMModel(Model):
    """Scores rows with a LightGBM booster; returns the positive-class probability."""

    def __init__(
        self,
        name: str,
        model_uri: str,
        expected_sha256: str | None = None,
        *,
        spec_path: str | None = None,
        version: str = "",
        prediction_log: Any = None,
    ) -> None:
        super().__init__(name)
        self.model_uri = model_uri
        self.expected_sha256 = expected_sha256
        self.spec_path = spec_path
        self.version = version
        self.prediction_log = prediction_log
        self.schema_: Any = None
        self.threshold_: float | None = None
        self.labels_ = ("positive", "negative")
        self.reason_labels_: dict[str, str] = {}
        self.booster_: lgb.Booster | None = None
        self.feature_names_: list[str] = []
        self.categories_: dict[str, list[Any]] = {}
        self.model_sha256_: str | None = None
        self.scorer_: RowScorer | None = None
        self.compiled_: compiled.BackgroundCompiler | None = None
        self._scores_hist: Any = None
        self._decision_counts: dict[bool, Any] = {}
        self._json_labels: dict[str, pa.Array] = {}
        self._label_records: dict[str, Any] = {}

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
        try:
            self.scorer_ = RowScorer(booster)
        except (ValueError, lgb.basic.LightGBMError) as exc:  # multiclass: Booster.predict
            log.info("single-row fast path unavailable (%s); using Booster.predict", exc)
            self.scorer_ = None
        self.feature_names_ = list(booster.feature_name())
        try:
            self.categories_ = booster_categories(booster)
        except DataValidationError as exc:
            log.error("refusing to serve %s: %s", self.name, exc)
            self.ready = False
            return False
        if self.spec_path and not self._load_schema(booster):
            self.ready = False
            return False
        # batches: native code built off the request path; Booster.predict until it is ready
        self.compiled_ = compiled.start(booster, name=self.name)
        track_compiled_scorer(self.name, self.compiled_)
        self.ready = True
        log.info("loaded %s (sha256 %s, %d features)", model_file, digest, len(self.feature_names_))
        return True

    def stop(self) -> None:
        """KServe unloads the model on SIGTERM/SIGINT: finish the prediction log first."""
        if self.compiled_ is not None:
            self.compiled_.close()
        self.close_prediction_log()
        super().stop()

    def close_prediction_log(self) -> None:
        """Write every queued record into a complete file (idempotent) and say how many."""
        plog = self.prediction_log
        if plog is None or getattr(self, "_log_closed", False):
            return
        self._log_closed = True
        closed = plog.close(timeout=60)
        stats = plog.stats()
        lost = stats["dropped"] or stats["errors"] or not closed
        log.log(
            logging.WARNING if lost else logging.INFO,
            "prediction log %s: %s",
            "closed" if closed else "NOT closed within 60 s",
            ", ".join(f"{k} {v}" for k, v in stats.items()),
        )

    def _load_schema(self, booster: lgb.Booster) -> bool:
        from pipelines.errors import GovMLError
        from pipelines.spec import load_spec
        from serving.schema import FeatureSchema
        from serving.schema_columns import label_records

        try:
            spec = load_spec(self.spec_path)
            cats = self.categories_
            schema = FeatureSchema.from_spec(
                spec, categories={k: [str(c) for c in v] for k, v in cats.items()}
            )
            schema.check_model(booster.feature_name(), cats)
        except GovMLError as exc:
            log.error("refusing to serve %s: %s", self.name, exc)
            return False
        self.schema_ = schema
        self.threshold_ = spec.gates.decision_threshold
        # what a score at or above the threshold means for the bank's system
        self.labels_ = ("flag", "pass") if spec.use_case == "fraud" else ("decline", "approve")
        self.reason_labels_ = dict(spec.reason_codes)
        self._scores_hist = SCORES.child(self.name, self.version)
        self._json_labels = {
            f.name: pa.array(
                [json.dumps(c) for c in f.categories or ()]
                if f.kind == "category"
                else ["false", "true"],
                pa.string(),
            )
            for f in schema.features
            if f.kind in ("category", "bool")
        }
        self._label_records = {
            f.name: label_records(schema, f.name) for f in schema.features if f.kind == "category"
        }
        self._decision_counts = {
            flagged: DECISIONS.labels(self.name, self.version, str(flagged).lower())
            for flagged in (True, False)
        }
        return True

    def _strict(self, instances: Any = None, columns: Any = None) -> np.ndarray:
        from serving.schema import InputError, validate_rows
        from serving.schema_columns import validate_columns

        try:
            if columns is not None:
                return validate_columns(self.schema_, columns)
            return validate_rows(self.schema_, instances)
        except InputError as exc:
            raise InvalidInput(str(exc)) from None

    def _record(
        self,
        rows: list[dict[str, Any]] | None,
        scores: np.ndarray,
        started: float,
        client: str | None = None,
        matrix: np.ndarray | None = None,
    ) -> list[bool]:
        """Decisions at the spec's threshold; metrics and the prediction log (never raise)."""
        threshold = self.threshold_ if self.threshold_ is not None else 0.5
        values = scores.tolist()
        decisions = [s >= threshold for s in values]
        latency_ms = (time.perf_counter() - started) * 1000.0
        try:
            self._count(scores, values, decisions)
            if self.prediction_log is not None:
                self._log(rows, values, decisions, latency_ms, client, matrix)
        except Exception:  # noqa: BLE001 (logging must never fail a request)
            log.exception("recording predictions failed")
        return decisions

    def _log(
        self,
        rows: list[dict[str, Any]] | None,
        values: list[float],
        decisions: list[bool],
        latency_ms: float,
        client: str | None,
        matrix: np.ndarray | None,
    ) -> None:
        """The request's rows into the prediction log: a batch, or one record per row."""
        plog = self.prediction_log
        labels = [self.labels_[0] if flagged else self.labels_[1] for flagged in decisions]
        if len(values) > 1:
            plog.log_batch(
                None if matrix is not None else rows,
                values,
                labels,
                request_id=current_request_id() or uuid.uuid4().hex,
                context=RowContext(self.name, self.version, latency_ms, client),
                # the JSON text of the features is built in the log's writer thread: a
                # large request is answered without waiting for its log lines
                feature_columns=None
                if matrix is None
                else partial(json_columns, self.schema_, self._json_labels, matrix),
            )
        else:
            served = Served(self.name, self.version)
            log_rows(plog, served, rows, values, labels, latency_ms, client)

    def _count(self, scores: np.ndarray, values: list[float], decisions: list[bool]) -> None:
        """The score histogram and the decision counters of a request's rows."""
        if len(values) == 1:
            self._scores_hist.observe(values[0])
            self._decision_counts[decisions[0]].inc()
            return
        self._scores_hist.observe_many(scores)
        flagged = sum(decisions)
        if flagged:
            self._decision_counts[True].inc(flagged)
        if flagged < len(decisions):
            self._decision_counts[False].inc(len(decisions) - flagged)

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
        """The rows laid out as the booster expects (:mod:`pipelines.booster_layout`);
        an unknown category or a value that is not a number is invalid input."""
        for name, allowed in self.categories_.items():
            bad = sorted({str(v) for v in frame[name] if v not in allowed})
            if bad:
                raise InvalidInput(f"{name}: unknown categories {bad}; allowed {allowed}")
        try:
            return typed_frame(frame, self.feature_names_, self.categories_)
        except DataValidationError as exc:  # "<name>: expected a number"
            raise InvalidInput(str(exc)) from None

    def _score(self, frame: pd.DataFrame) -> np.ndarray:
        assert self.booster_ is not None
        return np.asarray(self.booster_.predict(frame), dtype="float64")

    def score_matrix(self, matrix: np.ndarray) -> np.ndarray:
        """Scores of a validated float64 matrix: bit-for-bit ``Booster.predict``'s."""
        if len(matrix) >= COMPILED_MIN_ROWS and self.compiled_ is not None:
            fast = self.compiled_.scorer
            if fast is not None:
                return fast.predict(matrix)
        if self.scorer_ is not None:
            return self.scorer_.predict(matrix)
        assert self.booster_ is not None
        return np.asarray(self.booster_.predict(matrix), dtype="float64")

    # ------------------------------------------------------------------ protocol
    async def predict(
        self,
        payload: dict | InferRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict | InferResponse:
        if self.schema_ is not None:
            return self._predict_strict(payload, current_client())
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

    def _predict_strict(
        self, payload: dict | InferRequest, client: str | None = None
    ) -> dict | InferResponse:
        if not isinstance(payload, InferRequest):
            return self.predict_v1(payload, client)
        started = time.perf_counter()
        columns: dict[str, Any] = {}
        for item in payload.inputs:
            try:
                columns[item.name] = item.as_numpy()
            except Exception as exc:  # noqa: BLE001 (any decoding problem is bad input)
                raise InvalidInput(f"input {item.name!r}: cannot read it: {exc}") from None
        scores, decisions = self._infer_columns(columns, client, started)
        request_id = payload.id
        score_out = InferOutput(name="score", shape=[len(scores)], datatype="FP64")
        score_out.set_data_from_numpy(scores, binary_data=False)
        decision_out = InferOutput(name="decision", shape=[len(scores)], datatype="BOOL")
        decision_out.set_data_from_numpy(np.asarray(decisions, dtype=bool), binary_data=False)
        return InferResponse(
            model_name=self.name,
            model_version=self.version or None,
            infer_outputs=[score_out, decision_out],
            response_id=request_id or str(uuid.uuid4()),
        )

    def _infer_columns(
        self, columns: dict[str, Any], client: str | None, started: float
    ) -> tuple[np.ndarray, list[bool]]:
        """Scores and decisions of V2 named columns (checked, scored, recorded)."""
        matrix = self._strict(columns=columns)
        scores = self.score_matrix(matrix)
        if len(scores) > 1:  # the log takes the checked matrix as JSON value columns
            decisions = self._record(None, scores, started, client, matrix)
        else:
            decisions = self._record(rows_of(self.schema_, columns), scores, started, client)
        return scores, decisions

    def handle_v2_infer(
        self, body: bytes, json_length: str | None, client: str | None = None
    ) -> tuple[int, bytes] | None:
        """The V2 ``/infer`` route without the web framework: (200, JSON body), or None
        for a request it leaves to KServe's route (a JSON envelope that is not plain:
        extra fields, parameters, requested outputs, anything that does not decode; a
        well-formed binary request asking for more than scores).

        A binary request (``json_length``: the ``Inference-Header-Content-Length``) is
        decoded strictly by :mod:`serving.v2_binary`: a malformed one raises
        :class:`serving.schema.InputError`, bad input raises ``InvalidInput``; the guard
        (:func:`serving.http_errors.error_answer`) answers both 400. A JSON request is decoded
        with KServe's own :class:`InferRequest`. Scored by :meth:`_infer_columns` and
        answered in the shape KServe's route gives.
        """
        started = time.perf_counter()
        decoded = decode_infer_body(body, json_length, self._label_records, self.name)
        if decoded is None:
            return None
        request_id, columns = decoded
        scores, decisions = self._infer_columns(columns, client, started)
        return 200, infer_answer(self.name, self.version, request_id, scores, decisions)

    def predict_v1(self, payload: Any, client: str | None = None) -> dict[str, Any]:
        """A V1 ``{"instances": [...]}`` body (strict schema): scores and decisions."""
        started = time.perf_counter()
        if type(payload) is not dict or "instances" not in payload:
            raise InvalidInput("the body must be a JSON object with 'instances'")
        instances = payload["instances"]
        if not isinstance(instances, list):  # as KServe's own V1 validation says it
            raise InvalidInput('Expected "instances" to be a list')
        matrix = self._strict(instances=instances)
        scores = self.score_matrix(matrix)
        if len(instances) > 1:
            decisions = self._record(None, scores, started, client, matrix)
        else:
            decisions = self._record(instances, scores, started, client)
        return {
            "predictions": scores.tolist(),
            "decisions": decisions,
            "threshold": self.threshold_,
            "model_version": self.version,
            "model_sha256": self.model_sha256_,
        }

    def handle_v1_predict(self, body: bytes, client: str | None = None) -> tuple[int, bytes]:
        """The V1 ``:predict`` route without the web framework: (status, JSON body).

        Same answers as KServe's route (:mod:`serving.http` sends JSON requests for a
        ready strict model here): 200 with the scores; a body that is not JSON or not
        valid input raises ``InvalidInput``, which the guard answers 400
        ``{"error": ...}`` naming what is wrong.
        """
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"Unrecognized request format: {exc}") from None
        return 200, orjson.dumps(self.predict_v1(payload, client))

    async def explain(self, payload: dict, headers: dict[str, str] | None = None) -> dict[str, Any]:
        """Per row: score, decision, TreeSHAP contributions (log-odds) and, for a declined
        or flagged row, up to four adverse factors labelled from the spec, exactly as
        the pipeline's explain stage computes them (:mod:`pipelines.reasons`)."""
        from pipelines.reasons import reason_codes

        started = time.perf_counter()
        if self.schema_ is None:
            raise InvalidInput("explanations need the model's spec (start with --spec)")
        assert self.booster_ is not None
        if not isinstance(payload, dict) or "instances" not in payload:
            raise InvalidInput("the body must be a JSON object with 'instances'")
        instances = payload["instances"]
        matrix = self._strict(instances=instances)
        scores = self.score_matrix(matrix)
        contribs = np.asarray(self.booster_.predict(matrix, pred_contrib=True), dtype="float64")
        names = self.schema_.names
        threshold = self.threshold_ if self.threshold_ is not None else 0.5
        reasons = reason_codes(contribs, names, self.reason_labels_)
        out = explanation_rows(scores, contribs, names, threshold, reasons, self.labels_)
        rows = [instances] if isinstance(instances, Mapping) else instances
        log_explanations(self.prediction_log, Served(self.name, self.version), rows, out, started)
        return {"explanations": out, "model_version": self.version, "threshold": threshold}
