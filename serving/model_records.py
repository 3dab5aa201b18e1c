"""What the model server records of the rows it scores, and the V2 bodies it answers itself.

The prediction log's rows: one :meth:`~serving.prediction_log.PredictionLog.log` per row
(:func:`log_rows`: a single row, an explanation's rows), or a request's features as JSON
value columns built from the checked input matrix (:func:`json_columns`, in the log's
writer thread). :func:`plain_infer_request` reads a plain V2 JSON body.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from kserve.protocol.infer_type import InferInput, InferRequest

from serving import v2_binary
from serving.prediction_log_records import EXPLAIN
from serving.request_context import current_client, current_request_id
from serving.schema import FeatureSchema
from serving.schema_columns import KnownCodes

_model_log = logging.getLogger("serving.model")  # the model's log, as before


@dataclass(frozen=True)
class Served:
    """Which model answered: every log row names it."""

    model_name: str
    model_version: str


def log_rows(
    plog: Any,
    served: Served,
    rows: list[dict[str, Any]],
    scores: list[float],
    decisions: list[str],
    latency_ms: float,
    client: str | None,
    extras: list[dict[str, Any]] | None = None,
) -> None:
    """One log record per row, ``<request id>:<row>``; ``extras``: more keys per row."""
    request_id = current_request_id() or uuid.uuid4().hex
    for i, (row, score, decision) in enumerate(zip(rows, scores, decisions, strict=True)):
        record = {
            "request_id": f"{request_id}:{i}",
            "model_name": served.model_name,
            "model_version": served.model_version,
            "features": row,
            "score": score,
            "decision": decision,
            "latency_ms": latency_ms,
            "client": client,
        }
        if extras is not None:
            record.update(extras[i])
        plog.log(record)


def json_columns(
    schema: FeatureSchema, json_labels: dict[str, pa.Array], matrix: np.ndarray
) -> dict[str, pa.Array]:
    """Each feature's values as JSON text, straight from the checked input matrix
    (labels for categories, ``null`` for missing): the prediction log's batch input."""
    out = {}
    for j, f in enumerate(schema.features):
        column = matrix[:, j]
        missing = np.isnan(column)
        if f.name in json_labels:
            codes = np.where(missing, 0, column).astype(np.int64)
            text = json_labels[f.name].take(pa.array(codes))
        else:
            text = pc.cast(pa.array(column), pa.string())
        if missing.any():
            text = pc.if_else(pa.array(missing), pa.scalar("null"), text)
        out[f.name] = text
    return out


def rows_of(schema: FeatureSchema, columns: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's rows as sent (category labels, not codes) for the prediction log."""
    names = schema.names
    values = []
    for name in names:
        column = columns[name]
        if isinstance(column, KnownCodes):  # known labels, already coded
            labels = schema.feature(name).categories
            column = [labels[int(code)] for code in column.codes]
        column = column.reshape(-1).tolist() if isinstance(column, np.ndarray) else column
        values.append(
            [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in column]
            if column and isinstance(column[0], bytes)
            else column
        )
    return [dict(zip(names, row, strict=True)) for row in zip(*values, strict=True)]


_INPUT_KEYS = frozenset({"name", "shape", "datatype", "data"})


def plain_infer_request(payload: Any, model_name: str) -> InferRequest | None:
    """A V2 JSON body with nothing but ``id`` and plain ``inputs`` as KServe's
    InferRequest; None for anything else (KServe's route answers those)."""
    if type(payload) is not dict or not set(payload) <= {"id", "inputs"}:
        return None
    inputs, request_id = payload.get("inputs"), payload.get("id")
    if (
        type(inputs) is not list
        or not inputs
        or not (request_id is None or type(request_id) is str)
    ):
        return None
    infer_inputs = []
    for item in inputs:
        if type(item) is not dict or set(item) != _INPUT_KEYS:
            return None
        name, shape, datatype, data = item["name"], item["shape"], item["datatype"], item["data"]
        if (
            type(name) is not str
            or type(datatype) is not str
            or datatype == "FP16"
            or type(data) is not list
            or type(shape) is not list
            or not all(type(d) is int for d in shape)
        ):
            return None
        infer_inputs.append(InferInput(name=name, shape=shape, datatype=datatype, data=data))
    return InferRequest(model_name=model_name, infer_inputs=infer_inputs, request_id=request_id)


def decode_infer_body(
    body: bytes, json_length: str | None, label_records: dict[str, Any], model_name: str
) -> tuple[str | None, dict[str, Any]] | None:
    """(request id, named input columns) of a V2 ``/infer`` body; None for a body left to
    KServe's route. A binary one (``json_length``) is decoded strictly by
    :mod:`serving.v2_binary` (a malformed one raises
    :class:`serving.schema.InputError`); a JSON one must be plain."""
    if json_length is not None:
        return v2_binary.decode(body, json_length, label_records)
    try:
        request = plain_infer_request(orjson.loads(body), model_name)
        if request is None:
            return None
        request_id, columns = request.id, {}
        for item in request.inputs:
            columns[item.name] = item.as_numpy()
    except Exception:  # noqa: BLE001 (KServe's route gives its own answer)
        return None
    return request_id, columns


def infer_answer(
    model_name: str,
    version: str,
    request_id: str | None,
    scores: np.ndarray,
    decisions: list[bool],
) -> bytes:
    """The JSON body of a V2 answer, in the shape KServe's route gives."""
    n = len(decisions)
    return orjson.dumps(
        {
            "model_name": model_name,
            "model_version": version or None,
            "id": request_id or str(uuid.uuid4()),
            "parameters": None,
            "outputs": [
                {"name": "score", "shape": [n], "datatype": "FP64", "parameters": None,
                 "data": scores.tolist()},
                {"name": "decision", "shape": [n], "datatype": "BOOL", "parameters": None,
                 "data": decisions},
            ],
        }
    )  # fmt: skip


def explanation_rows(
    scores: np.ndarray,
    contribs: np.ndarray,
    names: list[str],
    threshold: float,
    reasons: list[Any],
    labels: tuple[str, str] | list[str],
) -> list[dict[str, Any]]:
    """The ``:explain`` answer's rows: score, decision (``labels``: adverse, favourable),
    TreeSHAP contributions and, for an adverse row, its reason codes."""
    out = []
    for score, row, row_reasons in zip(scores, contribs, reasons, strict=True):
        adverse = bool(score >= threshold)
        out.append(
            {
                "score": float(score),
                "decision": labels[0] if adverse else labels[1],
                "contributions": dict(zip(names, map(float, row[:-1]), strict=True)),
                "expected_value": float(row[-1]),
                "reasons": [r._asdict() for r in row_reasons] if adverse else [],
            }
        )
    return out


def log_explanations(
    plog: Any,
    served: Served,
    rows: list[dict[str, Any]],
    explanations: list[dict[str, Any]],
    started: float,
) -> None:
    """One prediction-log row per explained row: its features, score, decision and
    the reason codes given (``verb: explain``, ``reasons`` in the record's extra
    fields), with the request id and client like a prediction's; never raises."""
    if plog is None:
        return
    try:
        latency_ms = (time.perf_counter() - started) * 1000.0
        log_rows(
            plog,
            served,
            rows,
            [item["score"] for item in explanations],
            [item["decision"] for item in explanations],
            latency_ms,
            current_client(),
            [{"verb": EXPLAIN, "reasons": item["reasons"]} for item in explanations],
        )
    except Exception:  # noqa: BLE001 (logging must never fail a request)
        _model_log.exception("logging explanations failed")
