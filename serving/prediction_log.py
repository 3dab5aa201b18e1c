"""The prediction log: one record per scored row, written off the request path.

``PredictionLog.log(record)`` pseudonymises the record's personal-data fields and encodes
it as one JSON line (a few microseconds, on the caller's thread), then appends the line to
a bounded in-memory queue: it never blocks and never raises. A full queue drops the
record (counted in ``dropped``); the caller's latency never depends on the disk. A
background thread takes batches of lines and appends them to the current file; the file is
finished and renamed into place when it reaches ``rotate_rows`` rows or ``rotate_seconds``
of age, on ``flush()`` and on ``close()``.

Why encode on the caller's thread: in a model server the caller is the event loop, and
the writer thread shares the GIL (and, when the server is pinned, the CPU) with it. Per-
record Python work in the writer comes in bursts that make requests wait for the GIL; a
constant few microseconds per request do not. The writer only runs code that releases the
GIL: Arrow's JSON reader turns a batch of lines into columns, the Parquet writer
compresses and writes them (JSONL is written as it is).

Files are written atomically: rows go to a hidden ``.<name>.tmp`` file, which is fsynced
and renamed to its final name only once complete, so a reader listing ``*.parquet`` or
``*.jsonl`` (or ``pyarrow.dataset``, which skips dot-files) never sees a partial file.
Names sort by time: ``predictions-20261128T203000Z-000001-3f9a1c.parquet`` (UTC time the
file was opened, sequence number, instance id so that replicas sharing a folder never
collide).

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

Counters: every ``log()`` call ends in exactly one of ``written`` (in a complete file),
``dropped`` (queue full or log closed), ``errors`` (a bad record or a failed write; the
error is logged, never raised, and the writer carries on with the next file).
After ``close()``: ``written + dropped + errors`` equals the number of ``log()`` calls.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import hmac
import json
import logging
import math
import os
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from pipelines.errors import ConfigError

try:
    import orjson
except ImportError:  # the orchestration environment reads logs; it need not write fast
    orjson = None

if TYPE_CHECKING:
    from pipelines.spec import ModelSpec

log = logging.getLogger(__name__)

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
_EXTENSION: dict[str, str] = {"parquet": ".parquet", "jsonl": ".jsonl"}
#: the ``verb`` of an explanation's rows (a prediction's rows have none)
EXPLAIN = "explain"
_ERROR_LOG_INTERVAL_S = 10.0
# The writer's own Python loop (rotation bookkeeping, about 0.3 µs a line) pauses after
# this many lines: a real sleep blocks the thread, so an event loop waiting for the GIL
# gets it at once (``sleep(0)`` would not: the writer takes the GIL straight back).
_SLICE_ROWS = 512
PARQUET_WRITER_NICE = 19
JSONL_WRITER_NICE = 10
_SLICE_PAUSE_S = 0.0001
_PARSE_OPTIONS = pa_json.ParseOptions(
    explicit_schema=pa.schema(
        [pa.field("timestamp", pa.int64()) if f.name == "timestamp" else f for f in SCHEMA]
    ),
    unexpected_field_behavior="error",
)


def _joined(texts: pa.Array) -> bytes:
    """The concatenated UTF-8 bytes of a string array (one copy, no Python per row)."""
    texts = texts.cast(pa.large_string()) if texts.type != pa.large_string() else texts
    offsets = np.frombuffer(texts.buffers()[1], dtype=np.int64)[
        texts.offset : texts.offset + len(texts) + 1
    ]
    data = texts.buffers()[2]
    return data.to_pybytes()[offsets[0] : offsets[-1]] if data is not None else b""


def _yield_gil() -> None:
    time.sleep(_SLICE_PAUSE_S)


class _Flush:
    """Queue marker: finish the current file, then set ``done``."""

    def __init__(self) -> None:
        self.done = threading.Event()


_CLOSE = object()
#: requests with at least this many rows are encoded in the writer thread
DEFER_ROWS = 256
DEFERRED_QUEUE_FACTOR = 4  # rows of large requests awaiting encoding: 4 x queue_size


class _Batch:
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


# --------------------------------------------------------------------------- sinks
class ParquetSink:
    """Appends row groups to one Parquet file; ``finish`` closes and fsyncs it."""

    def __init__(self, path: Path, metadata: dict[str, str], compression: str = "zstd") -> None:
        self.path = path
        self._schema = SCHEMA.with_metadata(metadata)
        self._compression = compression
        self._writer: pq.ParquetWriter | None = None

    def _open(self) -> pq.ParquetWriter:
        return pq.ParquetWriter(self.path, self._schema, compression=self._compression)

    def write(self, items: list[bytes | _Batch]) -> None:
        """Append JSON lines (:func:`_parquet_line`) and batches as one row group."""
        tables = []
        lines: list[bytes] = []
        for item in [*items, None]:
            if isinstance(item, bytes):
                lines.append(item)
                continue
            if lines:
                tables.append(self._parse(lines))
                lines = []
            if item is not None:
                tables.append(pa.Table.from_batches([item.payload], schema=self._schema))
        if not tables:
            return
        table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
        if self._writer is None:
            self._writer = self._open()
        self._writer.write_table(table, row_group_size=max(table.num_rows, 1))

    def _parse(self, lines: list[bytes]) -> pa.Table:
        data = b"".join(lines)
        parsed = pa_json.read_json(
            pa.BufferReader(data),
            read_options=pa_json.ReadOptions(use_threads=False, block_size=len(data) + 1),
            parse_options=_PARSE_OPTIONS,
        )
        columns = parsed.columns
        columns[1] = columns[1].cast(pa.timestamp("us", tz="UTC"))  # epoch µs → timestamp
        return pa.Table.from_arrays(columns, schema=self._schema)

    def finish(self) -> None:
        if self._writer is None:  # nothing written: still a valid, empty file
            self._writer = self._open()
        self._writer.close()
        _fsync(self.path)

    def abort(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()


class JsonlSink:
    """Appends one JSON object per line; ``finish`` flushes, fsyncs and closes."""

    def __init__(self, path: Path, metadata: dict[str, str], compression: str = "none") -> None:
        self.path = path
        self._file: Any = None

    def write(self, items: list[bytes | _Batch]) -> None:
        """Append JSON lines (:func:`_jsonl_line`) and batches of them."""
        if self._file is None:
            self._file = open(self.path, "ab")  # noqa: SIM115 (kept open)
        self._file.write(b"".join(i if isinstance(i, bytes) else i.payload for i in items))
        self._file.flush()  # readable at once by live readers (the rollout controller)

    def finish(self) -> None:
        if self._file is None:
            self._file = open(self.path, "ab")  # noqa: SIM115
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def abort(self) -> None:
        if self._file is not None:
            with contextlib.suppress(Exception):
                self._file.close()


_SINKS: dict[str, type[ParquetSink] | type[JsonlSink]] = {
    "parquet": ParquetSink,
    "jsonl": JsonlSink,
}


def _codec_available(name: str) -> bool:
    if name.lower() in ("none", "uncompressed"):
        return True
    try:
        return pa.Codec.is_available(name)
    except ValueError:  # not a codec pyarrow knows
        return False


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


_LINES = {"parquet": _parquet_line, "jsonl": _jsonl_line}


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


def _to_json(mapping: dict[str, Any]) -> str:
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


def _as_float(value: Any) -> float | None:
    if value is None:
        return None
    return float(value)


def _as_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(_finite(value), default=_json_default)


def _as_timestamp(value: Any, fallback: float) -> datetime:
    if value is None:
        return datetime.fromtimestamp(fallback, UTC)
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str):
        parsed = datetime.fromisoformat(value)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return datetime.fromtimestamp(float(value), UTC)


def _canonical_text(value: Any) -> str:
    """One text per identifier: 123, 123.0, numpy.int64(123) and "123" all give "123"."""
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, str):
        value = item()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class Pseudonymiser:
    """HMAC-SHA256 of ``str(value)`` in hex; ``None`` stays ``None``."""

    def __init__(self, key: bytes, fields: Iterable[str]) -> None:
        self._key = key
        self.fields = frozenset(fields)

    def value(self, value: Any) -> str | None:
        if value is None:
            return None
        text = _canonical_text(value)
        return hmac.digest(self._key, text.encode("utf-8"), "sha256").hex()

    def mapping(self, mapping: dict[str, Any]) -> dict[str, Any]:
        if not self.fields.intersection(mapping):
            return mapping
        return {k: (self.value(v) if k in self.fields else v) for k, v in mapping.items()}

    @property
    def key_id(self) -> str:
        """A non-secret fingerprint telling which key made the pseudonyms."""
        return hmac.new(self._key, b"govml-key-id", hashlib.sha256).hexdigest()[:16]


# --------------------------------------------------------------------------- the log
class PredictionLog:
    """An asynchronous, rotating, pseudonymising prediction log (see the module doc).

    ``rotate_rows``/``rotate_seconds``: finish a file at this many rows or this age.
    ``queue_size``: records held for the writer before ``log()`` drops (rows of large
    requests waiting to be encoded by the writer have a bound of their own,
    :data:`DEFERRED_QUEUE_FACTOR` times that). ``batch_rows``:
    records the writer takes per wake-up; ``row_group_rows``: Parquet row-group size.
    ``poll_seconds``: how often an idle writer checks the file's age. ``compression``:
    the Parquet codec (JSONL is plain text). ``clock``: wall time in epoch seconds, for
    default timestamps, file names and rotation (tests pass a fake one).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        fmt: Format = "parquet",
        *,
        rotate_rows: int = 100_000,
        rotate_seconds: float = 300.0,
        queue_size: int = 100_000,
        personal_fields: Iterable[str] = (),
        hmac_key: bytes | str | None = None,
        batch_rows: int = 1_000,
        row_group_rows: int = 10_000,
        poll_seconds: float = 0.5,
        compression: str = "zstd",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if fmt not in _SINKS:
            raise ConfigError(f"prediction log fmt: {fmt!r} is not one of {sorted(_SINKS)}")
        for name, value in (
            ("rotate_rows", rotate_rows),
            ("queue_size", queue_size),
            ("batch_rows", batch_rows),
            ("row_group_rows", row_group_rows),
        ):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"prediction log {name}: must be a whole number >= 1")
        if rotate_seconds <= 0 or poll_seconds <= 0:
            raise ConfigError("prediction log rotate_seconds and poll_seconds: must be > 0")
        if fmt == "parquet" and not _codec_available(compression):
            raise ConfigError(f"prediction log compression: {compression!r} is not available")
        if isinstance(personal_fields, str):
            personal_fields = [personal_fields]
        fields = sorted(set(personal_fields))
        key = hmac_key.encode("utf-8") if isinstance(hmac_key, str) else hmac_key
        if fields and (key is None or len(key) < MIN_KEY_BYTES):
            raise ConfigError(
                f"prediction log hmac_key: personal fields {fields} need a key of at least "
                f"{MIN_KEY_BYTES} bytes to be pseudonymised"
            )
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"prediction log directory {self.directory}: {exc}") from None
        self.fmt: Format = fmt
        self.rotate_rows = rotate_rows
        self.rotate_seconds = float(rotate_seconds)
        self.personal_fields = tuple(fields)
        self._pseudo = Pseudonymiser(key or b"", fields)
        self._batch_rows = batch_rows
        self._row_group_rows = min(row_group_rows, rotate_rows)
        self._poll = poll_seconds
        self._clock = clock
        self._compression = compression
        self._instance = secrets.token_hex(3)
        self._metadata = {
            "govml.format": FORMAT_VERSION,
            "govml.personal_fields": ",".join(fields),
            "govml.pseudonymisation": "hmac-sha256-hex",
            "govml.hmac_key_id": self._pseudo.key_id if fields else "",
        }
        # log() appends to a deque (no lock hand-off, no wake-up per record); the writer
        # wakes every poll_seconds, or at once when batch_rows are waiting or on flush/close.
        self._items: collections.deque[Any] = collections.deque()
        self._queue_size = queue_size
        self._queued_rows = 0  # rows in _items (lines and encoded batches)
        # rows of large requests still to be encoded by the writer: bounded apart (they
        # hold only the request's arrays), so that a burst of big batches that the
        # low-priority writer encodes later neither drops nor crowds out single rows
        self._deferred_rows = 0
        self._deferred_limit = DEFERRED_QUEUE_FACTOR * queue_size
        self._wake = threading.Event()
        self._gate = threading.Lock()  # orders log() against close()
        self._closed = False
        self._dropped = 0
        self._written = 0
        self._errors = 0
        self._files: list[Path] = []
        # writer-thread state
        self._seq = 0
        self._sink: ParquetSink | JsonlSink | None = None
        self._tmp: Path | None = None
        self._final: Path | None = None
        self._opened_at = 0.0
        self._file_rows = 0  # rows in the current file (written to the sink or pending)
        self._pending: list[bytes | _Batch] = []  # lines/batches not yet handed to the sink
        self._line = _LINES[fmt]
        self._last_error_log = -math.inf
        self._suppressed_errors = 0
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    @classmethod
    def for_spec(
        cls,
        spec: ModelSpec,
        directory: str | os.PathLike[str],
        hmac_key: bytes | str,
        **kwargs: Any,
    ) -> PredictionLog:
        """A log pseudonymising the fields ``spec`` marks as personal data."""
        fields = spec.personal_data_columns  # a property of ModelSpec
        return cls(directory, personal_fields=fields, hmac_key=hmac_key, **kwargs)

    # ------------------------------------------------------------------ caller side
    def log(self, record: dict[str, Any]) -> bool:
        """Queue one record; False (and counted in ``dropped``) when full or closed.

        Never blocks, never raises. The record is encoded at once (pseudonymised,
        one JSON line), so the caller may reuse its dicts; a record that cannot be
        encoded is counted in ``errors``.
        """
        try:
            now = self._clock()
            item = dict(record)
        except Exception:  # noqa: BLE001 (a broken record or clock must not reach the caller)
            self._count_drop()
            return False
        try:
            line = self._line(self._row(item, now))
        except Exception as exc:  # noqa: BLE001 (a bad record is counted, not raised)
            self._failed(1, f"bad record skipped: {type(exc).__name__}: {exc}")
            return False
        with self._gate:
            if not self._closed and self._queued_rows < self._queue_size:
                self._items.append(line)
                self._queued_rows += 1
                if self._queued_rows == self._batch_rows:
                    self._wake.set()
                return True
            self._dropped += 1
        return False

    def log_batch(
        self,
        features: Sequence[dict[str, Any]] | None,
        scores: Sequence[float],
        decisions: Sequence[str],
        *,
        request_id: str,
        model_name: str | None = None,
        model_version: str | None = None,
        latency_ms: float | None = None,
        client: str | None = None,
        feature_columns: dict[str, pa.Array] | Callable[[], dict[str, pa.Array]] | None = None,
    ) -> int:
        """Queue the rows of one request (row ``i`` gets ``request_id:i``); the number
        queued (0 when full, closed or unreadable, counted as for :meth:`log`).

        ``features``: one dict per row; or ``feature_columns``: feature name → Arrow
        string array of each row's value as JSON text (``"1.5"``, ``"\\"grocery\\""``,
        ``"null"``), which needs no Python work per row at all. Encoded in one go, far
        cheaper than a :meth:`log` call per row for large requests. A request of
        :data:`DEFER_ROWS` rows or more (or ``feature_columns`` given as a function
        returning those columns) is encoded later, in the low-priority writer thread,
        so it is answered without waiting for its log lines; a failure there is counted
        in ``errors``. The caller must not change ``features``, ``scores`` or
        ``decisions`` afterwards.
        """
        n = len(scores) if features is None else len(features)
        if n == 0:
            return 0
        try:
            now = self._clock()
            if len(scores) != n or len(decisions) != n:
                counts = f"{n} feature rows, {len(scores)} scores, {len(decisions)} decisions"
                raise ValueError(counts)
            common = {
                "model_name": model_name, "model_version": model_version,
                "latency_ms": latency_ms, "client": client,
            }  # fmt: skip
            if feature_columns is None and features is None:
                raise ValueError("features or feature_columns are needed")

            def feats() -> pa.Array:
                if feature_columns is None:
                    return self._feature_texts(features)  # type: ignore[arg-type]
                columns = feature_columns() if callable(feature_columns) else feature_columns
                return self._objects(columns, n)

            def encode() -> pa.RecordBatch | bytes:
                return self._encode_batch(feats(), scores, decisions, str(request_id), now, common)

            if callable(feature_columns) or n >= DEFER_ROWS:  # the writer thread encodes
                return self._enqueue(_Batch(n, None, encode))
            payload = encode()
        except Exception as exc:  # noqa: BLE001 (never raise to the caller)
            self._failed(n, f"bad batch skipped: {type(exc).__name__}: {exc}")
            return 0
        return self._enqueue(_Batch(n, payload))

    def _enqueue(self, item: _Batch) -> int:
        n = item.rows
        with self._gate:
            if item.encode is not None:
                if not self._closed and self._deferred_rows + n <= max(self._deferred_limit, n):
                    self._items.append(item)
                    self._deferred_rows += n
                    self._wake.set()
                    return n
                self._dropped += n
                return 0
            if not self._closed and self._queued_rows + n <= max(self._queue_size, n):
                self._items.append(item)
                before = self._queued_rows
                self._queued_rows += n
                if before < self._batch_rows <= self._queued_rows:
                    self._wake.set()
                return n
            self._dropped += n
        return 0

    def _feature_texts(self, features: Sequence[dict[str, Any]]) -> pa.Array:
        pseudo = self._pseudo.mapping if self._pseudo.fields else None
        if orjson is not None:
            dumps, opts = orjson.dumps, _ORJSON_OPTIONS
            texts = [
                dumps(pseudo(f) if pseudo else f, default=_json_default, option=opts)
                for f in features
            ]
        else:
            texts = [_to_json(pseudo(f) if pseudo else f).encode() for f in features]
        return pa.array(texts, pa.string())

    def _objects(self, columns: dict[str, pa.Array], n: int) -> pa.Array:
        """One JSON object per row from columns of JSON value texts (keys sorted)."""
        pieces: list[Any] = []
        for i, name in enumerate(sorted(columns)):
            values = columns[name]
            if len(values) != n:
                raise ValueError(f"feature {name!r}: {len(values)} values for {n} rows")
            if name in self._pseudo.fields:  # pseudonymise each value (rare: model inputs)
                values = pa.array(
                    [
                        "null" if v == "null" else json.dumps(self._pseudo.value(json.loads(v)))
                        for v in values.to_pylist()
                    ],
                    pa.string(),
                )
            pieces.append(("{" if i == 0 else ",") + json.dumps(name) + ":")
            pieces.append(values)
        pieces.append("}" if pieces else "{}")
        return pc.binary_join_element_wise(*pieces, "")

    def _encode_batch(
        self,
        feats: pa.Array,
        scores: Sequence[float],
        decisions: Sequence[str],
        request_id: str,
        now: float,
        common: dict[str, Any],
    ) -> pa.RecordBatch | bytes:
        n = len(feats)
        fields = {k: _as_text(self._field(k, v)) for k, v in common.items() if k != "latency_ms"}
        latency = _as_float(common["latency_ms"])
        if "decision" in self._pseudo.fields or not all(type(d) is str for d in decisions):
            decisions = [_as_text(self._field("decision", d)) for d in decisions]
        ids = pc.binary_join_element_wise(request_id, pa.array(np.arange(n)).cast(pa.string()), ":")
        scores_arr = pa.array(np.asarray(scores, dtype=np.float64), from_pandas=True)
        scores_arr = pc.if_else(pc.is_finite(scores_arr), scores_arr, None)
        decisions_arr = pa.array(decisions, pa.string())
        if self.fmt == "parquet":
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

    def _count_drop(self) -> None:
        with self._gate:
            self._dropped += 1

    def flush(self, timeout: float | None = None) -> bool:
        """Write everything logged so far into complete files; False on timeout."""
        if self._closed or not self._thread.is_alive():
            return not self._thread.is_alive()
        deadline = None if timeout is None else time.monotonic() + timeout
        marker = _Flush()
        self._items.append(marker)
        self._wake.set()
        while not marker.done.wait(0.05):
            if not self._thread.is_alive():  # closed meanwhile: close() wrote everything
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
        return True

    def close(self, timeout: float | None = None) -> bool:
        """Stop accepting records, write every queued one, finish the file. Idempotent.

        Returns False when the writer did not finish within ``timeout`` seconds.
        """
        with self._gate:
            already = self._closed
            self._closed = True
            if not already:
                self._items.append(_CLOSE)
        self._wake.set()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def __enter__(self) -> PredictionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ counters
    @property
    def written(self) -> int:
        """Rows in complete files."""
        return self._written

    @property
    def dropped(self) -> int:
        """Records refused by ``log()``: queue full, or the log already closed."""
        return self._dropped

    @property
    def errors(self) -> int:
        """Rows lost to a bad record or a failed write (each logged)."""
        return self._errors

    @property
    def buffered(self) -> int:
        """Rows taken by the writer and not yet in a complete file."""
        return self._file_rows

    @property
    def queued(self) -> int:
        return self._queued_rows + self._deferred_rows

    @property
    def files(self) -> list[Path]:
        """Complete files this log wrote, oldest first."""
        return list(self._files)

    def stats(self) -> dict[str, int]:
        return {
            "written": self._written,
            "dropped": self._dropped,
            "errors": self._errors,
            "buffered": self._file_rows,
            "queued": self.queued,
        }

    # ------------------------------------------------------------------ writer thread
    def _run(self) -> None:
        # Background work at a lower CPU priority (per thread on Linux), so that the
        # scheduler runs a request's thread first when both want the CPU. JSONL writing
        # is cheap and must keep up with a saturated server (nice 10 still leaves it a
        # tenth of a busy CPU); Parquet compresses on this CPU and goes lower still: it
        # may fall behind under long saturation, and then drops (counted in /metrics).
        nice = PARQUET_WRITER_NICE if self.fmt == "parquet" else JSONL_WRITER_NICE
        with contextlib.suppress(AttributeError, OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        while True:
            try:
                if self._step():
                    return
            except Exception:  # noqa: BLE001 (the writer must survive anything)
                log.exception("prediction log: unexpected writer failure; carrying on")

    def _step(self) -> bool:
        """One batch; True when the log is closed and fully written."""
        items = self._items
        if len(items) < self._batch_rows:
            self._wake.wait(self._poll)
            self._wake.clear()
        batch = []
        taken = deferred = 0
        while items and taken + deferred < self._batch_rows:
            item = items.popleft()
            batch.append(item)
            if isinstance(item, _Batch) and item.encode is not None:
                deferred += item.rows
            else:
                taken += 1 if isinstance(item, bytes) else getattr(item, "rows", 0)
        if taken or deferred:
            with self._gate:
                self._queued_rows -= taken
                self._deferred_rows -= deferred
        if not batch:
            self._rotate_if_old()
            return False
        closing = False
        rows: list[bytes | _Batch] = []
        for item in batch:
            if item is _CLOSE:
                closing = True
            elif isinstance(item, _Flush):
                self._add(rows)
                rows = []
                self._finish()
                item.done.set()
            else:
                rows.append(item)
        self._add(rows)
        if closing:
            self._drain_after_close()
            self._finish()
            return True
        self._rotate_if_old()
        return False

    def _drain_after_close(self) -> None:
        lines: list[bytes | _Batch] = []
        while self._items:
            item = self._items.popleft()
            if isinstance(item, _Flush):
                item.done.set()
            elif item is not _CLOSE:
                lines.append(item)
        with self._gate:
            self._queued_rows = 0
            self._deferred_rows = 0
        self._add(lines)

    def _add(self, lines: list[bytes | _Batch]) -> None:
        for n, line in enumerate(lines, 1):
            if n % _SLICE_ROWS == 0:
                _yield_gil()
            if isinstance(line, _Batch) and line.encode is not None:
                try:  # a large request's rows, encoded here rather than on its thread
                    line.payload, line.encode = line.encode(), None
                except Exception as exc:  # noqa: BLE001 (never stop the writer)
                    self._failed(line.rows, f"bad batch skipped: {type(exc).__name__}: {exc}")
                    continue
            if self._sink is not None and self._clock() - self._opened_at >= self.rotate_seconds:
                self._finish()
            if self._sink is None and not self._open():
                if isinstance(line, _Batch):  # _open counted one row lost
                    self._failed(line.rows - 1, "batch lost with its file")
                continue
            self._pending.append(line)
            self._file_rows += 1 if isinstance(line, bytes) else line.rows
            if len(self._pending) >= self._row_group_rows:
                self._write_pending()
            if self._file_rows >= self.rotate_rows:
                self._finish()
        if self._pending:
            self._write_pending()

    def _row(self, record: dict[str, Any], logged_at: float) -> dict[str, Any]:
        features = record.get("features")
        if features is None:
            features = {}
        if not isinstance(features, dict):
            raise TypeError(f"features must be a dict, not {type(features).__name__}")
        extra = {k: v for k, v in record.items() if k not in FIELDS}
        request_id = record.get("request_id")
        return {
            "request_id": str(request_id) if request_id is not None else uuid.uuid4().hex,
            "timestamp": _as_timestamp(record.get("timestamp"), logged_at),
            "model_name": _as_text(self._field("model_name", record.get("model_name"))),
            "model_version": _as_text(self._field("model_version", record.get("model_version"))),
            "features": _to_json(self._pseudo.mapping(features)),
            "score": _as_float(record.get("score")),
            "decision": _as_text(self._field("decision", record.get("decision"))),
            "latency_ms": _as_float(record.get("latency_ms")),
            "client": _as_text(self._field("client", record.get("client"))),
            "extra": _to_json(self._pseudo.mapping(extra)) if extra else None,
        }

    def _field(self, name: str, value: Any) -> Any:
        return self._pseudo.value(value) if name in self._pseudo.fields else value

    def _open(self) -> bool:
        now = self._clock()
        self._seq += 1
        stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%SZ")
        name = f"{FILE_PREFIX}{stamp}-{self._seq:06d}-{self._instance}{_EXTENSION[self.fmt]}"
        final = self.directory / name
        tmp = self.directory / f".{name}.tmp"
        try:
            sink = _SINKS[self.fmt](tmp, self._metadata, self._compression)
        except Exception as exc:  # noqa: BLE001
            self._failed(1, f"cannot open {tmp}: {type(exc).__name__}: {exc}")
            return False
        self._sink, self._tmp, self._final, self._opened_at = sink, tmp, final, now
        self._file_rows = 0
        return True

    def _write_pending(self) -> None:
        if self._sink is None or not self._pending:
            return
        try:
            self._sink.write(self._pending)
        except Exception as exc:  # noqa: BLE001
            self._discard(f"write to {self._tmp} failed: {type(exc).__name__}: {exc}")
            return
        self._pending = []

    def _finish(self) -> None:
        """Complete the current file: last rows, close, fsync, rename into place."""
        if self._sink is None:
            return
        self._write_pending()
        if self._sink is None:  # the write failed and discarded the file
            return
        sink, tmp, final, rows = self._sink, self._tmp, self._final, self._file_rows
        assert tmp is not None and final is not None
        try:
            sink.finish()
            os.replace(tmp, final)
        except Exception as exc:  # noqa: BLE001
            self._discard(f"finishing {final} failed: {type(exc).__name__}: {exc}")
            return
        self._reset()
        self._written += rows
        self._files.append(final)

    def _rotate_if_old(self) -> None:
        if self._sink is not None and self._clock() - self._opened_at >= self.rotate_seconds:
            self._finish()

    def _discard(self, message: str) -> None:
        """Give up on the current file: its rows count as errors, the .tmp is removed."""
        lost = self._file_rows
        if self._sink is not None:
            self._sink.abort()
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                self._tmp.unlink()
        self._reset()
        self._failed(lost, message)

    def _reset(self) -> None:
        self._sink = self._tmp = self._final = None
        self._pending = []
        self._file_rows = 0

    def _failed(self, rows: int, message: str) -> None:
        """Count lost rows and log why (at most every few seconds); thread-safe."""
        with self._gate:
            self._errors += rows
            now = time.monotonic()
            if now - self._last_error_log < _ERROR_LOG_INTERVAL_S:
                self._suppressed_errors += 1
                return
            suppressed, self._suppressed_errors = self._suppressed_errors, 0
            self._last_error_log = now
        more = f" ({suppressed} similar errors not logged)" if suppressed else ""
        log.error("prediction log: %s; %d row(s) lost%s", message, rows, more)


def is_explanation(record: dict[str, Any]) -> bool:
    """True for the row of an explanation (``:explain``), not of a prediction; takes a
    record of :func:`read_records` or a raw JSONL line's object (``extra`` nested)."""
    extra = record.get("extra")
    nested = extra.get("verb") if isinstance(extra, dict) else None
    return EXPLAIN in (record.get("verb"), nested)


def complete_files(directory: str | os.PathLike[str]) -> list[Path]:
    """The complete log files in a folder, oldest first (never a ``.tmp``)."""
    folder = Path(directory)
    found = [p for ext in _EXTENSION.values() for p in folder.glob(f"{FILE_PREFIX}*{ext}")]
    return sorted(found, key=lambda p: p.name)


def read_directory(directory: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every record in a log folder so far, as :func:`read_records` gives them: the
    complete files, then the complete lines of the JSONL files still being written
    (a live reader's view; a file finished meanwhile is read as a complete one)."""
    folder = Path(directory)
    if not folder.is_dir():
        return []
    records = [r for path in complete_files(folder) for r in read_records(path)]
    for tmp in sorted(folder.glob(f".{FILE_PREFIX}*.jsonl.tmp")):
        try:
            data = tmp.read_bytes()
        except OSError:  # finished and renamed since the listing
            continue
        for line in data.split(b"\n")[:-1]:  # the last piece may be half a line
            try:
                records.append(_record_of_line(json.loads(line)))
            except ValueError:
                continue
    return records


def _record_of_line(row: dict[str, Any]) -> dict[str, Any]:
    row["timestamp"] = datetime.fromisoformat(row["timestamp"])
    extra = row.pop("extra", None)
    if extra:
        row.update(extra)
    return row


def read_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """One log file's records: ``features``/``extra`` as dicts, ``timestamp`` a UTC datetime."""
    return list(_iter_records(Path(path)))


def _iter_records(path: Path) -> Iterator[dict[str, Any]]:
    if path.suffix == ".parquet":
        for row in pq.read_table(path).to_pylist():
            row["features"] = json.loads(row["features"]) if row["features"] else {}
            extra = row.pop("extra")
            if extra:
                row.update(json.loads(extra))
            yield row
        return
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            yield _record_of_line(json.loads(line))
