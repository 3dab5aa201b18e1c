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

Files, their names and how they are read back: :mod:`serving.prediction_log_files`;
the columns of a row and their pseudonymisation: :mod:`serving.prediction_log_records`.

Counters: every ``log()`` call ends in exactly one of ``written`` (in a complete file),
``dropped`` (queue full or log closed), ``errors`` (a bad record or a failed write; the
error is logged, never raised, and the writer carries on with the next file).
After ``close()``: ``written + dropped + errors`` equals the number of ``log()`` calls.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from pipelines.errors import ConfigError
from serving.prediction_log_files import (
    SLICE_ROWS,
    LogFile,
    LogOptions,
    checked_options,
    yield_gil,
)
from serving.prediction_log_records import (
    FORMAT_VERSION,
    LINES,
    Batch,
    Format,
    Pseudonymiser,
    encode_batch,
    feature_objects,
    feature_texts,
    record_row,
)

try:
    import orjson
except ImportError:  # the orchestration environment reads logs; it need not write fast
    orjson = None

if TYPE_CHECKING:
    from pipelines.spec import ModelSpec

log = logging.getLogger(__name__)

_ERROR_LOG_INTERVAL_S = 10.0
PARQUET_WRITER_NICE = 19
JSONL_WRITER_NICE = 10


class _Flush:
    """Queue marker: finish the current file, then set ``done``."""

    def __init__(self) -> None:
        self.done = threading.Event()


_CLOSE = object()
#: requests with at least this many rows are encoded in the writer thread
DEFER_ROWS = 256
DEFERRED_QUEUE_FACTOR = 4  # rows of large requests awaiting encoding: 4 x queue_size


# --------------------------------------------------------------------------- the log
def _log_directory(directory: str | os.PathLike[str]) -> Path:
    """The log's folder, created if need be."""
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"prediction log directory {path}: {exc}") from None
    return path


@dataclass(frozen=True)
class RowContext:
    """What every row of one request shares besides its id: the model that answered,
    how fast, for which client."""

    model_name: str | None = None
    model_version: str | None = None
    latency_ms: float | None = None
    client: str | None = None


class PredictionLog:
    """An asynchronous, rotating, pseudonymising prediction log (see the module doc),
    tuned by :class:`LogOptions`."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        fmt: Format = "parquet",
        options: LogOptions = LogOptions(),
    ) -> None:
        o = options
        fields, key = checked_options(fmt, o)
        self.directory = _log_directory(directory)
        self.fmt: Format = fmt
        self.rotate_rows = o.rotate_rows
        self.rotate_seconds = float(o.rotate_seconds)
        self.personal_fields = tuple(fields)
        self._pseudo = Pseudonymiser(key or b"", fields)
        self._batch_rows = o.batch_rows
        self._row_group_rows = min(o.row_group_rows, o.rotate_rows)
        self._poll = o.poll_seconds
        self._clock = o.clock
        # log() appends to a deque (no lock hand-off, no wake-up per record); the writer
        # wakes every poll_seconds, or at once when batch_rows are waiting or on flush/close.
        self._items: collections.deque[Any] = collections.deque()
        self._queue_size = o.queue_size
        self._queued_rows = 0  # rows in _items (lines and encoded batches)
        # rows of large requests still to be encoded by the writer: bounded apart (they
        # hold only the request's arrays), so that a burst of big batches that the
        # low-priority writer encodes later neither drops nor crowds out single rows
        self._deferred_rows = 0
        self._deferred_limit = DEFERRED_QUEUE_FACTOR * o.queue_size
        self._wake = threading.Event()
        self._gate = threading.Lock()  # orders log() against close()
        self._closed = False
        self._dropped = 0
        self._errors = 0
        metadata = {
            "govml.format": FORMAT_VERSION,
            "govml.personal_fields": ",".join(fields),
            "govml.pseudonymisation": "hmac-sha256-hex",
            "govml.hmac_key_id": self._pseudo.key_id if fields else "",
        }
        # writer-thread state: the file being written
        self._file = LogFile(self.directory, fmt, metadata, o, self._failed)
        self._line = LINES[fmt]
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
        fmt: Format = "parquet",
        options: LogOptions = LogOptions(),
    ) -> PredictionLog:
        """A log pseudonymising the fields ``spec`` marks as personal data."""
        fields = spec.personal_data_columns  # a property of ModelSpec
        return cls(directory, fmt, replace(options, personal_fields=fields, hmac_key=hmac_key))

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
            line = self._line(record_row(self._pseudo, item, now))
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
        context: RowContext = RowContext(),
        feature_columns: dict[str, pa.Array] | Callable[[], dict[str, pa.Array]] | None = None,
    ) -> int:
        """Queue the rows of one request (row ``i`` gets ``request_id:i``); the number
        queued (0 when full, closed or unreadable, counted as for :meth:`log`); every row
        carries ``context``.

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
                "model_name": context.model_name, "model_version": context.model_version,
                "latency_ms": context.latency_ms, "client": context.client,
            }  # fmt: skip
            if feature_columns is None and features is None:
                raise ValueError("features or feature_columns are needed")

            def feats() -> pa.Array:
                if feature_columns is None:
                    return feature_texts(self._pseudo, features)  # type: ignore[arg-type]
                columns = feature_columns() if callable(feature_columns) else feature_columns
                return feature_objects(self._pseudo, columns, n)

            def encode() -> pa.RecordBatch | bytes:
                return encode_batch(
                    self.fmt, self._pseudo, feats(), scores, decisions, str(request_id), now, common
                )

            if callable(feature_columns) or n >= DEFER_ROWS:  # the writer thread encodes
                return self._enqueue(Batch(n, None, encode))
            payload = encode()
        except Exception as exc:  # noqa: BLE001 (never raise to the caller)
            self._failed(n, f"bad batch skipped: {type(exc).__name__}: {exc}")
            return 0
        return self._enqueue(Batch(n, payload))

    def _enqueue(self, item: Batch) -> int:
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
        return self._file.written

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
        return self._file.rows

    @property
    def queued(self) -> int:
        return self._queued_rows + self._deferred_rows

    @property
    def files(self) -> list[Path]:
        """Complete files this log wrote, oldest first."""
        return list(self._file.files)

    def stats(self) -> dict[str, int]:
        return {
            "written": self._file.written,
            "dropped": self._dropped,
            "errors": self._errors,
            "buffered": self._file.rows,
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
            if isinstance(item, Batch) and item.encode is not None:
                deferred += item.rows
            else:
                taken += 1 if isinstance(item, bytes) else getattr(item, "rows", 0)
        if taken or deferred:
            with self._gate:
                self._queued_rows -= taken
                self._deferred_rows -= deferred
        if not batch:
            self._file.rotate_if_old(self.rotate_seconds)
            return False
        closing = False
        rows: list[bytes | Batch] = []
        for item in batch:
            if item is _CLOSE:
                closing = True
            elif isinstance(item, _Flush):
                self._add(rows)
                rows = []
                self._file.finish()
                item.done.set()
            else:
                rows.append(item)
        self._add(rows)
        if closing:
            self._drain_after_close()
            self._file.finish()
            return True
        self._file.rotate_if_old(self.rotate_seconds)
        return False

    def _drain_after_close(self) -> None:
        lines: list[bytes | Batch] = []
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

    def _add(self, lines: list[bytes | Batch]) -> None:
        for n, line in enumerate(lines, 1):
            if n % SLICE_ROWS == 0:
                yield_gil()
            if isinstance(line, Batch) and line.encode is not None:
                try:  # a large request's rows, encoded here rather than on its thread
                    line.payload, line.encode = line.encode(), None
                except Exception as exc:  # noqa: BLE001 (never stop the writer)
                    self._failed(line.rows, f"bad batch skipped: {type(exc).__name__}: {exc}")
                    continue
            self._file.rotate_if_old(self.rotate_seconds)
            if self._file.sink is None and not self._file.open():
                if isinstance(line, Batch):  # _open counted one row lost
                    self._failed(line.rows - 1, "batch lost with its file")
                continue
            self._file.pending.append(line)
            self._file.rows += 1 if isinstance(line, bytes) else line.rows
            if len(self._file.pending) >= self._row_group_rows:
                self._file.write_pending()
            if self._file.rows >= self.rotate_rows:
                self._file.finish()
        if self._file.pending:
            self._file.write_pending()

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
