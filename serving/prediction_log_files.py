"""The prediction log's files: the sinks that write them, the readers that read them back.

A sink writes one file under a temporary name (:class:`ParquetSink`, :class:`JsonlSink`);
:func:`complete_files`, :func:`read_records` and :func:`read_directory` read what the log
finished (and, for JSONL, the complete lines of a file still being written).

Files are written atomically: rows go to a hidden ``.<name>.tmp`` file, which is fsynced
and renamed to its final name only once complete, so a reader listing ``*.parquet`` or
``*.jsonl`` (or ``pyarrow.dataset``, which skips dot-files) never sees a partial file.
Names sort by time: ``predictions-20261128T203000Z-000001-3f9a1c.parquet`` (UTC time the
file was opened, sequence number, instance id so that replicas sharing a folder never
collide).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from pipelines.errors import ConfigError
from serving.prediction_log_records import (
    EXPLAIN,
    EXTENSION,
    FILE_PREFIX,
    MIN_KEY_BYTES,
    SCHEMA,
    Batch,
    Format,
)

# The writer's own Python loop (rotation bookkeeping, about 0.3 µs a line) pauses after
# this many lines: a real sleep blocks the thread, so an event loop waiting for the GIL
# gets it at once (``sleep(0)`` would not: the writer takes the GIL straight back).
SLICE_ROWS = 512


_SLICE_PAUSE_S = 0.0001


_PARSE_OPTIONS = pa_json.ParseOptions(
    explicit_schema=pa.schema(
        [pa.field("timestamp", pa.int64()) if f.name == "timestamp" else f for f in SCHEMA]
    ),
    unexpected_field_behavior="error",
)


def yield_gil() -> None:
    time.sleep(_SLICE_PAUSE_S)


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

    def write(self, items: list[bytes | Batch]) -> None:
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

    def write(self, items: list[bytes | Batch]) -> None:
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


SINKS: dict[str, type[ParquetSink] | type[JsonlSink]] = {
    "parquet": ParquetSink,
    "jsonl": JsonlSink,
}


def codec_available(name: str) -> bool:
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


def is_explanation(record: dict[str, Any]) -> bool:
    """True for the row of an explanation (``:explain``), not of a prediction; takes a
    record of :func:`read_records` or a raw JSONL line's object (``extra`` nested)."""
    extra = record.get("extra")
    nested = extra.get("verb") if isinstance(extra, dict) else None
    return EXPLAIN in (record.get("verb"), nested)


def complete_files(directory: str | os.PathLike[str]) -> list[Path]:
    """The complete log files in a folder, oldest first (never a ``.tmp``)."""
    folder = Path(directory)
    found = [p for ext in EXTENSION.values() for p in folder.glob(f"{FILE_PREFIX}*{ext}")]
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


class LogFile:
    """The file a prediction log is writing (writer thread only): opened on its first
    row under a hidden temporary name, finished (closed, fsynced, renamed into place) at
    rotation; a failure discards it and counts its rows through ``failed``. From the
    log's :class:`LogOptions`: the Parquet ``compression`` and the ``clock``."""

    def __init__(
        self,
        directory: Path,
        fmt: str,
        metadata: dict[str, str],
        options: LogOptions,
        failed: Callable[[int, str], None],
    ) -> None:
        self.directory = directory
        self.fmt = fmt
        self._metadata = metadata
        self._options = options
        self._failed = failed
        self._instance = secrets.token_hex(3)
        self._seq = 0
        self.sink: ParquetSink | JsonlSink | None = None
        self._tmp: Path | None = None
        self._final: Path | None = None
        self._opened_at = 0.0
        self.rows = 0  # rows in the current file (written to the sink or pending)
        self.pending: list[bytes | Batch] = []  # lines/batches not yet handed to the sink
        self.written = 0  # rows in complete files
        self.files: list[Path] = []  # complete files, oldest first

    def open(self) -> bool:
        now = self._options.clock()
        self._seq += 1
        stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%SZ")
        name = f"{FILE_PREFIX}{stamp}-{self._seq:06d}-{self._instance}{EXTENSION[self.fmt]}"
        final = self.directory / name
        tmp = self.directory / f".{name}.tmp"
        try:
            sink = SINKS[self.fmt](tmp, self._metadata, self._options.compression)
        except Exception as exc:  # noqa: BLE001
            self._failed(1, f"cannot open {tmp}: {type(exc).__name__}: {exc}")
            return False
        self.sink, self._tmp, self._final, self._opened_at = sink, tmp, final, now
        self.rows = 0
        return True

    def write_pending(self) -> None:
        if self.sink is None or not self.pending:
            return
        try:
            self.sink.write(self.pending)
        except Exception as exc:  # noqa: BLE001
            self.discard(f"write to {self._tmp} failed: {type(exc).__name__}: {exc}")
            return
        self.pending = []

    def finish(self) -> None:
        """Complete the current file: last rows, close, fsync, rename into place."""
        if self.sink is None:
            return
        self.write_pending()
        if self.sink is None:  # the write failed and discarded the file
            return
        sink, tmp, final, rows = self.sink, self._tmp, self._final, self.rows
        assert tmp is not None and final is not None
        try:
            sink.finish()
            os.replace(tmp, final)
        except Exception as exc:  # noqa: BLE001
            self.discard(f"finishing {final} failed: {type(exc).__name__}: {exc}")
            return
        self._reset()
        self.written += rows
        self.files.append(final)

    def rotate_if_old(self, rotate_seconds: float) -> None:
        if self.sink is not None and self._options.clock() - self._opened_at >= rotate_seconds:
            self.finish()

    def discard(self, message: str) -> None:
        """Give up on the current file: its rows count as errors, the .tmp is removed."""
        lost = self.rows
        if self.sink is not None:
            self.sink.abort()
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                self._tmp.unlink()
        self._reset()
        self._failed(lost, message)

    def _reset(self) -> None:
        self.sink = self._tmp = self._final = None
        self.pending = []
        self.rows = 0


@dataclass(frozen=True)
class LogOptions:
    """How a :class:`PredictionLog` pseudonymises, rotates, queues and writes.

    ``personal_fields``: fields replaced by their keyed hash under ``hmac_key``.
    ``rotate_rows``/``rotate_seconds``: finish a file at this many rows or this age.
    ``queue_size``: records held for the writer before ``log()`` drops (rows of large
    requests waiting to be encoded by the writer have a bound of their own,
    :data:`DEFERRED_QUEUE_FACTOR` times that). ``batch_rows``:
    records the writer takes per wake-up; ``row_group_rows``: Parquet row-group size.
    ``poll_seconds``: how often an idle writer checks the file's age. ``compression``:
    the Parquet codec (JSONL is plain text). ``clock``: wall time in epoch seconds, for
    default timestamps, file names and rotation (tests pass a fake one).
    """

    personal_fields: Iterable[str] = ()
    hmac_key: bytes | str | None = field(default=None, repr=False)
    rotate_rows: int = 100_000
    rotate_seconds: float = 300.0
    queue_size: int = 100_000
    batch_rows: int = 1_000
    row_group_rows: int = 10_000
    poll_seconds: float = 0.5
    compression: str = "zstd"
    clock: Callable[[], float] = time.time


def checked_options(fmt: Format, options: LogOptions) -> tuple[list[str], bytes | None]:
    """(personal fields, HMAC key) of a log's options; ConfigError naming a bad one."""
    o = options
    rotate_rows, queue_size, batch_rows, row_group_rows = (
        o.rotate_rows, o.queue_size, o.batch_rows, o.row_group_rows,
    )  # fmt: skip
    rotate_seconds, poll_seconds = o.rotate_seconds, o.poll_seconds
    compression, personal_fields, hmac_key = o.compression, o.personal_fields, o.hmac_key
    if fmt not in SINKS:
        raise ConfigError(f"prediction log fmt: {fmt!r} is not one of {sorted(SINKS)}")
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
    if fmt == "parquet" and not codec_available(compression):
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
    return fields, key
