"""What one prediction-log row holds, and how rows are encoded for a file.

The columns of a row (:data:`SCHEMA`), their pseudonymisation (:class:`Pseudonymiser`),
one record as a JSONL or Parquet line, and the rows of a whole request encoded column-wise
(:func:`encode_batch`). :mod:`serving.prediction_log` queues and writes them.

Personal data: every field named in ``personal_fields`` (normally
``spec.personal_data_columns()``), whether a top-level record key or a feature, is
replaced by ``HMAC-SHA256(hmac_key, str(value))`` in hex: the same customer always maps
to the same pseudonym, and the raw value is never written. Only the key holder can link a
pseudonym back to a known customer id.

A record (a dict) has these keys; all but ``features`` are optional:

========== ==========================================================
request_id  text (a UUID is made up when missing)
timestamp   UTC time of the prediction: ``datetime``, epoch seconds or ISO text;
            the time of ``log()`` when missing
model_name  text
model_version  text
features    dict of feature name to value (JSON-serialisable)
score       number
decision    text (other values are stored as their JSON text)
latency_ms  number
client      text: the calling system
========== ==========================================================

Any other key is kept, pseudonymised the same way, in ``extra`` (JSON). The model
server logs a row for every row it scores, through any route: a prediction's rows have
no extra keys; an explanation's (``:explain``) have ``verb`` = ``"explain"`` and
``reasons``, the reason codes given for the row (``feature``, ``label``,
``contribution``; empty when the decision is not adverse). Readers that measure
traffic, score distributions or latency (:func:`is_explanation`) count the
explanation rows apart: a system often explains a decision it has already asked for. In Parquet,
``features`` and ``extra`` are JSON text columns (the feature set differs per model and
may change between versions); in JSONL they are nested objects. :func:`read_records`
reads either format back into the same dicts.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.features_online import canonical_text

if TYPE_CHECKING:
    pass

try:
    import orjson
except ImportError:  # the orchestration environment reads logs; it need not write fast
    orjson = None

Format = Literal["parquet", "jsonl"]


FORMAT_VERSION = "govml-prediction-log/1"


FILE_PREFIX = "predictions-"


MIN_KEY_BYTES = 16


FIELDS = (
    "request_id",
    "timestamp",
    "model_name",
    "model_version",
    "features",
    "score",
    "decision",
    "latency_ms",
    "client",
)


SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("model_name", pa.string()),
        pa.field("model_version", pa.string()),
        pa.field("features", pa.string()),
        pa.field("score", pa.float64()),
        pa.field("decision", pa.string()),
        pa.field("latency_ms", pa.float64()),
        pa.field("client", pa.string()),
        pa.field("extra", pa.string()),
    ]
)


EXTENSION: dict[str, str] = {"parquet": ".parquet", "jsonl": ".jsonl"}


#: the ``verb`` of an explanation's rows (a prediction's rows have none)
EXPLAIN = "explain"


def _joined(texts: pa.Array) -> bytes:
    """The concatenated UTF-8 bytes of a string array (one copy, no Python per row)."""
    texts = texts.cast(pa.large_string()) if texts.type != pa.large_string() else texts
    offsets = np.frombuffer(texts.buffers()[1], dtype=np.int64)[
        texts.offset : texts.offset + len(texts) + 1
    ]
    data = texts.buffers()[2]
    return data.to_pybytes()[offsets[0] : offsets[-1]] if data is not None else b""


class Batch:
    """Queue item: the rows of one multi-row request, encoded for the sink (or, for a
    large request, ``encode`` to call in the writer thread: the request does not wait)."""

    __slots__ = ("encode", "payload", "rows")

    def __init__(
        self,
        rows: int,
        payload: pa.RecordBatch | bytes | None,
        encode: Callable[[], pa.RecordBatch | bytes] | None = None,
    ) -> None:
        self.rows = rows
        self.payload = payload
        self.encode = encode


def _jsonl_line(row: dict[str, Any]) -> bytes:
    """One JSON object; ``features``/``extra`` (already JSON text) are spliced in as objects."""
    head = {k: v for k, v in row.items() if k not in ("features", "extra")}
    head["timestamp"] = _iso(row["timestamp"])
    for key in ("score", "latency_ms"):
        if head[key] is not None and not math.isfinite(head[key]):
            head[key] = None
    line = _LINE_ENCODER.encode(head)[:-1] + ',"features":' + row["features"]
    if row["extra"] is not None:
        line += ',"extra":' + row["extra"]
    return (line + "}\n").encode("utf-8")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


_MICROSECOND = timedelta(microseconds=1)


def _parquet_line(row: dict[str, Any]) -> bytes:
    """One JSON object with the Parquet columns; the timestamp as epoch microseconds."""
    out = dict(row)
    out["timestamp"] = (row["timestamp"] - _EPOCH) // _MICROSECOND
    for key in ("score", "latency_ms"):
        if out[key] is not None and not math.isfinite(out[key]):
            out[key] = None
    if orjson is not None:
        return orjson.dumps(out, option=orjson.OPT_APPEND_NEWLINE)
    return (_LINE_ENCODER.encode(out) + "\n").encode("utf-8")


LINES = {"parquet": _parquet_line, "jsonl": _jsonl_line}


_LINE_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --------------------------------------------------------------------------- values
def _json_default(value: Any) -> Any:
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        return _finite(item())
    if isinstance(value, datetime):
        return _iso(value if value.tzinfo else value.replace(tzinfo=UTC))
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def _finite(value: Any) -> Any:
    """Non-finite floats become None: JSON has no NaN, and NaN means 'missing' here."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_json(mapping: dict[str, Any]) -> str:
    if orjson is not None:  # the model server's environment: 5x faster, same values
        try:
            return orjson.dumps(mapping, default=_json_default, option=_ORJSON_OPTIONS).decode()
        except (TypeError, orjson.JSONEncodeError):
            pass  # keys that are not text, very large ints...: the standard library's way
    try:
        return _ENCODER.encode(mapping)
    except (ValueError, TypeError):  # NaN/inf, or keys that are not text
        clean = {str(k): _finite(v) for k, v in mapping.items()}
        return _ENCODER.encode(clean)


_ORJSON_OPTIONS = (
    (orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_SUBCLASS)
    if orjson is not None
    else 0
)


_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), default=_json_default, allow_nan=False
)


def as_float(value: Any) -> float | None:
    if value is None:
        return None
    return float(value)


def as_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(_finite(value), default=_json_default)


def as_timestamp(value: Any, fallback: float) -> datetime:
    if value is None:
        return datetime.fromtimestamp(fallback, UTC)
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str):
        parsed = datetime.fromisoformat(value)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return datetime.fromtimestamp(float(value), UTC)


class Pseudonymiser:
    """HMAC-SHA256 of ``str(value)`` in hex; ``None`` stays ``None``."""

    def __init__(self, key: bytes, fields: Iterable[str]) -> None:
        self._key = key
        self.fields = frozenset(fields)

    def value(self, value: Any) -> str | None:
        if value is None:
            return None
        text = canonical_text(value)
        return hmac.digest(self._key, text.encode("utf-8"), "sha256").hex()

    def mapping(self, mapping: dict[str, Any]) -> dict[str, Any]:
        if not self.fields.intersection(mapping):
            return mapping
        return {k: (self.value(v) if k in self.fields else v) for k, v in mapping.items()}

    def field(self, name: str, value: Any) -> Any:
        """``value`` of the record field ``name``, pseudonymised when it is personal."""
        return self.value(value) if name in self.fields else value

    @property
    def key_id(self) -> str:
        """A non-secret fingerprint telling which key made the pseudonyms."""
        return hmac.new(self._key, b"govml-key-id", hashlib.sha256).hexdigest()[:16]


def feature_texts(pseudo: Pseudonymiser, features: Sequence[dict[str, Any]]) -> pa.Array:
    """One JSON object text per row of feature dicts (pseudonymised)."""
    pseudo = pseudo.mapping if pseudo.fields else None
    if orjson is not None:
        dumps, opts = orjson.dumps, _ORJSON_OPTIONS
        texts = [
            dumps(pseudo(f) if pseudo else f, default=_json_default, option=opts) for f in features
        ]
    else:
        texts = [to_json(pseudo(f) if pseudo else f).encode() for f in features]
    return pa.array(texts, pa.string())


def feature_objects(pseudo: Pseudonymiser, columns: dict[str, pa.Array], n: int) -> pa.Array:
    """One JSON object per row from columns of JSON value texts (keys sorted)."""
    pieces: list[Any] = []
    for i, name in enumerate(sorted(columns)):
        values = columns[name]
        if len(values) != n:
            raise ValueError(f"feature {name!r}: {len(values)} values for {n} rows")
        if name in pseudo.fields:  # pseudonymise each value (rare: model inputs)
            values = pa.array(
                [
                    "null" if v == "null" else json.dumps(pseudo.value(json.loads(v)))
                    for v in values.to_pylist()
                ],
                pa.string(),
            )
        pieces.append(("{" if i == 0 else ",") + json.dumps(name) + ":")
        pieces.append(values)
    pieces.append("}" if pieces else "{}")
    return pc.binary_join_element_wise(*pieces, "")


def encode_batch(
    fmt: Format,
    pseudo: Pseudonymiser,
    feats: pa.Array,
    scores: Sequence[float],
    decisions: Sequence[str],
    request_id: str,
    now: float,
    common: dict[str, Any],
) -> pa.RecordBatch | bytes:
    """The rows of one request: a record batch for Parquet, JSONL lines as bytes."""
    n = len(feats)
    fields = {k: as_text(pseudo.field(k, v)) for k, v in common.items() if k != "latency_ms"}
    latency = as_float(common["latency_ms"])
    if "decision" in pseudo.fields or not all(type(d) is str for d in decisions):
        decisions = [as_text(pseudo.field("decision", d)) for d in decisions]
    ids = pc.binary_join_element_wise(request_id, pa.array(np.arange(n)).cast(pa.string()), ":")
    scores_arr = pa.array(np.asarray(scores, dtype=np.float64), from_pandas=True)
    scores_arr = pc.if_else(pc.is_finite(scores_arr), scores_arr, None)
    decisions_arr = pa.array(decisions, pa.string())
    if fmt == "parquet":
        stamp = int(round(now * 1_000_000))
        arrays = [
            ids,
            pa.repeat(pa.scalar(stamp, pa.timestamp("us", tz="UTC")), n),
            pa.repeat(pa.scalar(fields["model_name"], pa.string()), n),
            pa.repeat(pa.scalar(fields["model_version"], pa.string()), n),
            feats,
            scores_arr,
            decisions_arr,
            pa.repeat(pa.scalar(latency, pa.float64()), n),
            pa.repeat(pa.scalar(fields["client"], pa.string()), n),
            pa.nulls(n, pa.string()),
        ]
        return pa.RecordBatch.from_arrays(arrays, schema=SCHEMA)
    # JSONL: the same line as _jsonl_line, assembled column-wise
    stamp_text = _iso(datetime.fromtimestamp(now, UTC))
    head = _LINE_ENCODER.encode({"timestamp": stamp_text, **fields})[1:-1]
    score_text = pc.fill_null(pc.cast(scores_arr, pa.string()), "null")
    decision_text = pc.fill_null(
        pc.binary_join_element_wise('"', pc.cast(decisions_arr, pa.string()), '"', ""), "null"
    )
    if any('"' in d or "\\" in d for d in set(decisions) if d is not None):
        decision_text = pa.array([json.dumps(d) for d in decisions], pa.string())
    latency_text = "null" if latency is None or not math.isfinite(latency) else repr(latency)
    lines = pc.binary_join_element_wise(
        '{"request_id":"', ids, '",' + head + ',"score":', score_text,
        ',"decision":', decision_text, ',"latency_ms":' + latency_text + ',"features":',
        feats, "}\n", "",
    )  # fmt: skip
    return b"".join(v.as_py().encode("utf-8") for v in lines) if n < 8 else _joined(lines)


def record_row(pseudo: Pseudonymiser, record: dict[str, Any], logged_at: float) -> dict[str, Any]:
    """One record as the row a file stores (pseudonymised; ``extra`` the other keys)."""
    features = record.get("features")
    if features is None:
        features = {}
    if not isinstance(features, dict):
        raise TypeError(f"features must be a dict, not {type(features).__name__}")
    extra = {k: v for k, v in record.items() if k not in FIELDS}
    request_id = record.get("request_id")
    return {
        "request_id": str(request_id) if request_id is not None else uuid.uuid4().hex,
        "timestamp": as_timestamp(record.get("timestamp"), logged_at),
        "model_name": as_text(pseudo.field("model_name", record.get("model_name"))),
        "model_version": as_text(pseudo.field("model_version", record.get("model_version"))),
        "features": to_json(pseudo.mapping(features)),
        "score": as_float(record.get("score")),
        "decision": as_text(pseudo.field("decision", record.get("decision"))),
        "latency_ms": as_float(record.get("latency_ms")),
        "client": as_text(pseudo.field("client", record.get("client"))),
        "extra": to_json(pseudo.mapping(extra)) if extra else None,
    }
