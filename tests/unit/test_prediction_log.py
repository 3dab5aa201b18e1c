"""Prediction log: round trips, pseudonymisation, rotation, back-pressure, failures."""

from __future__ import annotations

import hashlib
import hmac
import math
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.errors import ConfigError
from serving import prediction_log as plog
from serving.prediction_log import PredictionLog, RowContext
from serving.prediction_log_files import (
    JsonlSink,
    LogOptions,
    ParquetSink,
    complete_files,
    read_records,
)
from serving.prediction_log_records import Pseudonymiser
from tests.support import wait_until

KEY = b"test-key-0123456789abcdef"
CARD = 4111111111111111  # raw values that must never reach a file
CUSTOMER = 987654321
FORMATS = ["parquet", "jsonl"]
SINKS = {"parquet": ParquetSink, "jsonl": JsonlSink}


def record(i: int, **overrides: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "request_id": f"req-{i}",
        "timestamp": datetime(2026, 11, 28, 20, 30, i % 60, 123456, tzinfo=UTC),
        "model_name": "fraud",
        "model_version": "7",
        "features": {"amount": 10.5 + i, "merchant": "grocery", "customer_id": CUSTOMER + i % 3},
        "score": 0.25,
        "decision": "approve",
        "latency_ms": 3.5,
        "client": "core-banking",
    }
    rec.update(overrides)
    return rec


def pseudonym(value: str) -> str:
    return hmac.new(KEY, value.encode(), hashlib.sha256).hexdigest()


def all_rows(directory: Path) -> list[dict[str, Any]]:
    return [row for path in complete_files(directory) for row in read_records(path)]


def make_log(directory: Path, fmt: str = "parquet", **kwargs: Any) -> PredictionLog:
    kwargs.setdefault("personal_fields", ["customer_id", "card_id"])
    kwargs.setdefault("hmac_key", KEY)
    kwargs.setdefault("poll_seconds", 0.01)
    return PredictionLog(directory, fmt, LogOptions(**kwargs))  # type: ignore[arg-type]


@pytest.fixture
def logs() -> Iterator[list[PredictionLog]]:
    """Logs a test opened; closed afterwards even when the test fails."""
    opened: list[PredictionLog] = []
    yield opened
    for each in opened:
        each.close(timeout=10)


class FakeClock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


# --------------------------------------------------------------------------- round trip
@pytest.mark.parametrize("fmt", FORMATS)
def test_records_round_trip(tmp_path: Path, fmt: str) -> None:
    pl = make_log(tmp_path, fmt)
    ts = datetime(2026, 11, 28, 20, 30, 0, 500000, tzinfo=UTC)
    assert pl.log(record(0, timestamp=ts))
    assert pl.log(
        record(
            1,
            timestamp=ts.timestamp() + 1,  # epoch seconds
            score=np.float32(0.5),  # numpy scalars
            features={"amount": np.float64(2.0), "missing": math.nan, "n": np.int64(3)},
            decision=True,
            channel="mobile",  # an extra key
        )
    )
    assert pl.log({"features": {"amount": 1.0}})  # all optional fields missing
    assert pl.close()
    rows = all_rows(tmp_path)
    assert [r["request_id"] for r in rows[:2]] == ["req-0", "req-1"]
    first, second, bare = rows
    assert first["timestamp"] == ts
    assert first["model_name"] == "fraud" and first["model_version"] == "7"
    assert first["features"]["amount"] == 10.5 and first["features"]["merchant"] == "grocery"
    assert first["score"] == 0.25 and first["decision"] == "approve"
    assert first["latency_ms"] == 3.5 and first["client"] == "core-banking"
    assert second["timestamp"] == datetime(2026, 11, 28, 20, 30, 1, 500000, tzinfo=UTC)
    assert second["score"] == 0.5
    assert second["features"] == {"amount": 2.0, "missing": None, "n": 3}
    assert second["decision"] == "true"
    assert second["channel"] == "mobile"
    assert len(bare["request_id"]) == 32 and bare["score"] is None
    assert bare["timestamp"].tzinfo is not None
    assert (pl.written, pl.dropped, pl.errors) == (3, 0, 0)


def test_parquet_schema_and_metadata(tmp_path: Path) -> None:
    with make_log(tmp_path) as pl:
        pl.log(record(0))
    (path,) = complete_files(tmp_path)
    assert path.name.startswith("predictions-") and path.suffix == ".parquet"
    schema = pq.read_schema(path)
    assert str(schema.field("timestamp").type) == "timestamp[us, tz=UTC]"
    meta = {k.decode(): v.decode() for k, v in schema.metadata.items()}
    assert meta["govml.personal_fields"] == "card_id,customer_id"
    assert meta["govml.pseudonymisation"] == "hmac-sha256-hex"
    assert len(meta["govml.hmac_key_id"]) == 16 and KEY.hex() not in str(meta)


# --------------------------------------------------------------------------- personal data
@pytest.mark.parametrize("fmt", FORMATS)
def test_personal_fields_are_hmac_pseudonyms_and_raw_values_never_written(
    tmp_path: Path, fmt: str
) -> None:
    pl = make_log(tmp_path, fmt, compression="none", rotate_rows=2)
    for i in range(5):
        features = {"amount": 1.0, "customer_id": CUSTOMER, "card_id": CARD}
        pl.log(record(i, features=features, card_id=str(CARD)))  # card_id also top-level
    pl.log(record(5, features={"amount": 1.0, "customer_id": CUSTOMER + 1}))
    assert pl.close()
    rows = all_rows(tmp_path)
    assert len(rows) == 6 and len(complete_files(tmp_path)) == 3
    expected_customer, expected_card = pseudonym(str(CUSTOMER)), pseudonym(str(CARD))
    for row in rows[:5]:
        assert row["features"]["customer_id"] == expected_customer  # stable across records
        assert row["features"]["card_id"] == expected_card
        assert row["card_id"] == expected_card  # int and str map to the same pseudonym
    assert rows[5]["features"]["customer_id"] not in (expected_customer, None)
    assert rows[0]["features"]["amount"] == 1.0  # other fields untouched
    for path in tmp_path.iterdir():
        data = path.read_bytes()
        assert str(CARD).encode() not in data, path
        assert str(CUSTOMER).encode() not in data, path


def test_pseudonym_is_the_same_for_equal_ids_of_any_type(tmp_path: Path) -> None:
    with make_log(tmp_path) as pl:
        for value in (1234, "1234", np.int64(1234), 1234.0):
            pl.log(record(0, features={"customer_id": value}))
        pl.log(record(0, features={"customer_id": None}))
    ids = [row["features"]["customer_id"] for row in all_rows(tmp_path)]
    assert ids[:4] == [pseudonym("1234")] * 4
    assert ids[4] is None


def test_personal_fields_need_a_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="hmac_key"):
        PredictionLog(tmp_path, options=LogOptions(personal_fields=["customer_id"]))
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        PredictionLog(tmp_path, options=LogOptions(["customer_id"], hmac_key="short"))
    with pytest.raises(ConfigError, match="fmt"):
        PredictionLog(tmp_path, "csv")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="compression"):
        PredictionLog(tmp_path, options=LogOptions(compression="rot13"))
    with pytest.raises(ConfigError, match="rotate_rows"):
        PredictionLog(tmp_path, options=LogOptions(rotate_rows=0))


def test_for_spec_takes_the_personal_fields_from_the_spec(tmp_path: Path, root: Path) -> None:
    from pipelines.spec import load_spec

    spec = load_spec(root / "specs" / "fraud.yaml")
    with PredictionLog.for_spec(spec, tmp_path, hmac_key=KEY) as pl:
        assert set(pl.personal_fields) == set(spec.personal_data_columns)
        assert "customer_id" in pl.personal_fields


# --------------------------------------------------------------------------- rotation
@pytest.mark.parametrize("fmt", FORMATS)
def test_rotation_by_rows(tmp_path: Path, fmt: str) -> None:
    pl = make_log(tmp_path, fmt, rotate_rows=3)
    for i in range(7):
        assert pl.log(record(i))
    assert pl.close()
    files = complete_files(tmp_path)
    assert [len(read_records(f)) for f in files] == [3, 3, 1]
    assert [r["request_id"] for f in files for r in read_records(f)] == [
        f"req-{i}" for i in range(7)
    ]
    assert files == pl.files
    assert pl.written == 7


def test_rotation_by_time_with_an_injected_clock(tmp_path: Path) -> None:
    clock = FakeClock(datetime(2026, 11, 28, 20, 30, tzinfo=UTC).timestamp())
    pl = make_log(tmp_path, rotate_seconds=60, clock=clock)
    pl.log(record(0))
    pl.log(record(1))
    wait_until(lambda: pl.buffered == 2, 10, "2 buffered rows", interval=0.005)
    clock.now += 30  # younger than rotate_seconds: nothing finishes
    time.sleep(0.05)  # a chance to act wrongly: that nothing happens has no condition to poll
    assert complete_files(tmp_path) == []
    clock.now += 31  # now 61 s old: the idle writer finishes the file by itself
    wait_until(lambda: len(complete_files(tmp_path)) == 1, 10, "one finished file", interval=0.005)
    assert pl.written == 2 and pl.buffered == 0
    pl.log(record(2))
    assert pl.close()
    files = complete_files(tmp_path)
    assert [len(read_records(f)) for f in files] == [2, 1]
    assert files[0].name.startswith("predictions-20261128T203000Z-000001-")
    assert files[1].name.startswith("predictions-20261128T203101Z-000002-")


def test_a_busy_writer_rotates_by_time_too(tmp_path: Path) -> None:
    clock = FakeClock(1_800_000_000.0)
    pl = make_log(tmp_path, rotate_seconds=10, clock=clock)
    pl.log(record(0))
    wait_until(lambda: pl.buffered == 1, 10, "1 buffered row", interval=0.005)
    clock.now += 10
    pl.log(record(1))  # the next record lands in a new file
    assert pl.close()
    assert [len(read_records(f)) for f in complete_files(tmp_path)] == [1, 1]


def test_flush_makes_everything_logged_visible(tmp_path: Path) -> None:
    pl = make_log(tmp_path, fmt="jsonl")
    for i in range(4):
        pl.log(record(i))
    assert pl.flush(timeout=10)
    assert len(all_rows(tmp_path)) == 4 and pl.written == 4
    pl.log(record(4))
    assert pl.close()
    assert len(complete_files(tmp_path)) == 2


# --------------------------------------------------------------------------- back-pressure
class StalledSink:
    """Patches a sink's ``write`` so that the writer thread blocks inside it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, sink: type) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        original = sink.write

        def write(inner: Any, rows: list[dict[str, Any]]) -> None:
            self.entered.set()
            self.release.wait(30)
            original(inner, rows)

        monkeypatch.setattr(sink, "write", write)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_full_queue_drops_without_blocking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, logs: list[PredictionLog]
) -> None:
    stall = StalledSink(monkeypatch, SINKS[fmt])
    pl = make_log(tmp_path, fmt, queue_size=5)
    logs.append(pl)
    assert pl.log(record(0))
    assert stall.entered.wait(10)  # the writer holds record 0 and is stuck in the sink
    timer = threading.Timer(5.0, stall.release.set)  # a blocking log() would wait for this
    timer.start()
    try:
        started = time.monotonic()
        accepted = [pl.log(record(i)) for i in range(1, 26)]
        elapsed = time.monotonic() - started
    finally:
        stall.release.set()
        timer.cancel()
    assert elapsed < 2.0, f"log() blocked for {elapsed:.2f}s on a stalled writer"
    assert accepted == [True] * 5 + [False] * 20
    assert pl.dropped == 20
    assert pl.close(timeout=10)
    assert (pl.written, pl.dropped, pl.errors) == (6, 20, 0)
    assert [r["request_id"] for r in all_rows(tmp_path)] == [f"req-{i}" for i in range(6)]


def test_log_never_raises_and_counts_what_it_refuses(tmp_path: Path) -> None:
    pl = make_log(tmp_path)

    class Unreadable:  # a mapping whose copy fails
        def keys(self) -> Any:
            raise RuntimeError("boom")

    assert pl.log(Unreadable()) is False  # type: ignore[arg-type]
    assert pl.log(None) is False  # type: ignore[arg-type]
    assert pl.dropped == 2
    assert pl.close()


# --------------------------------------------------------------------------- failures
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_failing_sink_is_counted_and_the_writer_carries_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, caplog: pytest.LogCaptureFixture
) -> None:
    sink = SINKS[fmt]
    original = sink.write
    failing = {"on": True}

    def write(inner: Any, rows: list[dict[str, Any]]) -> None:
        if failing["on"]:
            raise OSError(28, "No space left on device")
        original(inner, rows)

    monkeypatch.setattr(sink, "write", write)
    pl = make_log(tmp_path, fmt)
    started = time.monotonic()
    assert all(pl.log(record(i)) for i in range(3))
    assert time.monotonic() - started < 1.0
    assert pl.flush(timeout=10)
    assert (pl.written, pl.errors) == (0, 3)
    assert "No space left on device" in caplog.text
    failing["on"] = False
    pl.log(record(3))
    pl.log(record(4))
    assert pl.close()
    assert (pl.written, pl.dropped, pl.errors) == (2, 0, 3)
    assert [r["request_id"] for r in all_rows(tmp_path)] == ["req-3", "req-4"]
    assert list(tmp_path.glob(".*.tmp")) == []  # the failed file's .tmp was removed


def test_a_vanished_directory_is_counted_not_raised(tmp_path: Path) -> None:
    folder = tmp_path / "log"
    pl = make_log(folder, fmt="jsonl")
    folder.rmdir()
    folder.write_text("not a folder")  # no write can succeed, even as root
    assert pl.log(record(0)) and pl.log(record(1))
    assert pl.flush(timeout=10)
    assert (pl.written, pl.errors) == (0, 2)
    folder.unlink()
    folder.mkdir()
    pl.log(record(2))
    assert pl.close()
    assert (pl.written, pl.errors) == (1, 2)
    assert [r["request_id"] for r in all_rows(folder)] == ["req-2"]


def test_a_bad_record_is_counted_and_the_rest_are_written(tmp_path: Path) -> None:
    pl = make_log(tmp_path)
    pl.log(record(0))
    pl.log(record(1, features=["not", "a", "dict"]))
    pl.log(record(2, timestamp="not a time"))
    pl.log(record(3))
    assert pl.close()
    assert (pl.written, pl.errors) == (2, 2)
    assert [r["request_id"] for r in all_rows(tmp_path)] == ["req-0", "req-3"]


# --------------------------------------------------------------------------- close
def test_close_drains_everything_and_is_idempotent(tmp_path: Path) -> None:
    pl = make_log(tmp_path, queue_size=20_000, rotate_rows=1_500, batch_rows=200)
    calls = 5_000
    for i in range(calls):
        pl.log(record(i))
    assert pl.close(timeout=60)
    assert pl.queued == 0 and pl.buffered == 0
    assert pl.written == calls
    assert len(all_rows(tmp_path)) == calls
    assert [len(read_records(f)) for f in complete_files(tmp_path)] == [1500, 1500, 1500, 500]
    assert pl.close() and pl.close()  # idempotent
    assert pl.log(record(calls)) is False  # closed: refused and counted
    assert pl.written + pl.dropped + pl.errors == calls + 1
    assert pl.flush(timeout=1)  # nothing left to flush


def test_close_drains_records_logged_from_many_threads(tmp_path: Path) -> None:
    pl = make_log(tmp_path, fmt="jsonl", queue_size=100_000)
    per_thread, threads = 500, 4

    def worker(t: int) -> None:
        for i in range(per_thread):
            pl.log(record(t * per_thread + i))

    workers = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert pl.close(timeout=60)
    ids = sorted(r["request_id"] for r in all_rows(tmp_path))
    assert ids == sorted(f"req-{i}" for i in range(per_thread * threads))


@pytest.mark.parametrize("fmt", FORMATS)
def test_no_partial_file_is_ever_visible(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, logs: list[PredictionLog]
) -> None:
    pl = make_log(tmp_path, fmt, rotate_rows=2, batch_rows=1)
    logs.append(pl)
    for i in range(3):
        pl.log(record(i))
    wait_until(
        lambda: pl.written == 2 and pl.buffered == 1,
        10,
        "2 rows written, 1 buffered",
        interval=0.005,
    )
    wait_until(  # row 2 on disk
        lambda: any(p.name.startswith(".") for p in tmp_path.iterdir()),
        10,
        "a file being written (a dot file)",
        interval=0.005,
    )
    stall = StalledSink(monkeypatch, SINKS[fmt])
    pl.log(record(3))  # the second file is being written...
    assert stall.entered.wait(10)
    names = sorted(p.name for p in tmp_path.iterdir())
    suffix = ".parquet" if fmt == "parquet" else ".jsonl"
    hidden = [n for n in names if n.startswith(".")]
    visible = [n for n in names if not n.startswith(".")]
    assert len(hidden) == 1 and hidden[0].endswith(f"{suffix}.tmp")
    assert len(visible) == 1 and visible[0].endswith(suffix)
    assert len(read_records(tmp_path / visible[0])) == 2  # complete and readable
    assert [p.name for p in complete_files(tmp_path)] == visible
    stall.release.set()
    assert pl.close(timeout=10)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert [len(read_records(f)) for f in complete_files(tmp_path)] == [2, 2]


def test_writer_survives_an_unexpected_bug(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pl = make_log(tmp_path)
    calls = {"n": 0}
    original = plog.PredictionLog._add

    def flaky(self: PredictionLog, items: list[Any]) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("unexpected")
        original(self, items)

    monkeypatch.setattr(plog.PredictionLog, "_add", flaky)
    pl.log(record(0))
    wait_until(lambda: calls["n"] >= 1, 10, "a first call", interval=0.005)
    pl.log(record(1))
    assert pl.close(timeout=10)
    assert "unexpected writer failure" in caplog.text
    assert [r["request_id"] for r in all_rows(tmp_path)] == ["req-1"]


# --------------------------------------------------------------------------- batches
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_batch_is_written_like_the_same_rows_logged_one_by_one(tmp_path: Path, fmt: str) -> None:
    rows = [{"amount": 10.5 + i, "merchant": "grocery", "card_id": 4000 + i} for i in range(20)]
    scores = [0.1, 0.9, float("nan"), 0.4, 0.5] * 4
    decisions = ["pass", "flag", "pass", "pass", "pass"] * 4
    one = make_log(tmp_path / "one", fmt)
    for i, (row, s, d) in enumerate(zip(rows, scores, decisions, strict=True)):
        one.log(
            {
                "request_id": f"r1:{i}",
                "model_name": "fraud",
                "model_version": "7",
                "features": row,
                "score": s,
                "decision": d,
                "latency_ms": 1.5,
                "client": "cards",
            }
        )
    batch = make_log(tmp_path / "batch", fmt)
    queued = batch.log_batch(
        rows, scores, decisions, request_id="r1",
        context=RowContext(model_name="fraud", model_version="7", latency_ms=1.5, client="cards"),
    )  # fmt: skip
    assert queued == 20
    assert one.close() and batch.close()
    a, b = all_rows(tmp_path / "one"), all_rows(tmp_path / "batch")
    for x, y in zip(a, b, strict=True):
        x.pop("timestamp"), y.pop("timestamp")
    assert a == b
    assert b[0]["features"]["card_id"] != 4000  # personal data pseudonymised
    assert b[2]["score"] is None
    assert (batch.written, batch.dropped, batch.errors) == (20, 0, 0)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_batch_given_as_json_value_columns_reads_back_as_the_rows(
    tmp_path: Path, fmt: str
) -> None:
    import pyarrow as pa

    pl = make_log(tmp_path, fmt)
    n = 12
    columns = {
        "amount": pa.array([repr(1.5 * i) for i in range(n)]),
        "merchant": pa.array(['"grocery"'] * (n - 1) + ["null"]),
        "card_id": pa.array([str(4000 + i) for i in range(n)]),  # personal: pseudonymised
    }
    assert pl.log_batch(None, [0.5] * n, ["pass"] * n, request_id="c", feature_columns=columns)
    assert pl.close()
    rows = all_rows(tmp_path)
    assert [r["request_id"] for r in rows] == [f"c:{i}" for i in range(n)]
    assert rows[3]["features"]["amount"] == 4.5
    assert rows[0]["features"]["merchant"] == "grocery" and rows[-1]["features"]["merchant"] is None
    assert rows[0]["features"]["card_id"] == Pseudonymiser(KEY, ["card_id"]).value(4000)


def test_batches_and_single_records_interleave_in_order(tmp_path: Path) -> None:
    pl = make_log(tmp_path)
    pl.log(record(0))
    pl.log_batch([{"amount": 1.0}] * 3, [0.1] * 3, ["pass"] * 3, request_id="b")
    pl.log(record(1))
    assert pl.close()
    ids = [r["request_id"] for r in all_rows(tmp_path)]
    assert ids == ["req-0", "b:0", "b:1", "b:2", "req-1"]
    assert (pl.written, pl.dropped, pl.errors) == (5, 0, 0)


def test_a_batch_that_does_not_fit_is_dropped_whole_and_counted(tmp_path: Path) -> None:
    pl = make_log(tmp_path, queue_size=4, poll_seconds=5)
    assert pl.log_batch([{"a": 1}] * 3, [0.1] * 3, ["x"] * 3, request_id="a") == 3
    assert pl.log_batch([{"a": 1}] * 3, [0.1] * 3, ["x"] * 3, request_id="b") == 0
    assert pl.log_batch([{"a": 1}], [0.1, 0.2], ["x"], request_id="c") == 0  # bad shape
    assert pl.close()
    assert (pl.written, pl.dropped, pl.errors) == (3, 3, 1)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_large_batch_is_encoded_by_the_writer_and_reads_back_the_same(
    tmp_path: Path, fmt: str
) -> None:
    import pyarrow as pa

    n = plog.DEFER_ROWS + 44
    rows = [{"amount": 1.25 * i, "merchant": "fuel", "card_id": 7000 + i} for i in range(n)]
    scores = [i / n for i in range(n)]
    decisions = ["flag" if i % 7 == 0 else "pass" for i in range(n)]
    now_encoded = make_log(tmp_path / "small", fmt, batch_rows=10 * n)
    for start in range(0, n, 100):  # below DEFER_ROWS: encoded on the caller's thread
        part = slice(start, start + 100)
        now_encoded.log_batch(
            rows[part],
            scores[part],
            decisions[part],
            request_id=f"r{start}",
            context=RowContext(model_version="3"),
        )
    later = make_log(tmp_path / "large", fmt)
    calls: list[int] = []

    def columns() -> dict[str, pa.Array]:
        calls.append(threading.get_ident())
        return {
            "amount": pa.array([repr(r["amount"]) for r in rows]),
            "merchant": pa.array(['"fuel"'] * n),
            "card_id": pa.array([str(r["card_id"]) for r in rows]),
        }

    assert later.log_batch(None, scores, decisions, request_id="big", feature_columns=columns,
                           context=RowContext(model_version="3")) == n  # fmt: skip
    assert later.log_batch(rows, scores, decisions, request_id="big2",
                           context=RowContext(model_version="3")) == n  # fmt: skip
    assert now_encoded.close() and later.close()
    assert calls and calls[0] != threading.get_ident()  # built in the writer thread
    small, large = all_rows(tmp_path / "small"), all_rows(tmp_path / "large")
    assert len(large) == 2 * n and (later.written, later.errors) == (2 * n, 0)
    strip = ("timestamp", "request_id")
    want = [{k: v for k, v in r.items() if k not in strip} for r in small]
    for part in (large[:n], large[n:]):
        assert [{k: v for k, v in r.items() if k not in strip} for r in part] == want
    assert large[0]["request_id"] == "big:0" and large[n]["request_id"] == "big2:0"


def test_a_deferred_batch_that_fails_is_counted_and_the_writer_goes_on(tmp_path: Path) -> None:
    pl = make_log(tmp_path)

    def broken() -> dict:
        raise RuntimeError("no columns")

    n = plog.DEFER_ROWS
    assert pl.log_batch(None, [0.1] * n, ["x"] * n, request_id="a", feature_columns=broken) == n
    pl.log(record(1))
    assert pl.close()
    assert (pl.written, pl.dropped, pl.errors) == (1, 0, n)
    assert [r["request_id"] for r in all_rows(tmp_path)] == ["req-1"]


def test_a_burst_of_large_batches_waits_for_the_writer_without_crowding_out_single_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, logs: list[PredictionLog]
) -> None:
    """Large requests are encoded later by the low-priority writer; while it is behind,
    their rows wait under a bound of their own (DEFERRED_QUEUE_FACTOR x queue_size):
    a burst of them is kept whole, single rows still fit, and only beyond that bound
    is a batch dropped (counted)."""
    stall = StalledSink(monkeypatch, SINKS["jsonl"])
    n = plog.DEFER_ROWS
    pl = make_log(tmp_path, "jsonl", queue_size=n)
    logs.append(pl)
    assert pl.log(record(0))
    assert stall.entered.wait(10)  # the writer is stuck: nothing is taken from the queue
    try:
        taken = [
            pl.log_batch([{"a": i}] * n, [0.5] * n, ["x"] * n, request_id=f"b{i}")
            for i in range(plog.DEFERRED_QUEUE_FACTOR + 1)
        ]
        singles = [pl.log(record(i)) for i in range(1, 4)]
    finally:
        stall.release.set()
    assert taken == [n] * plog.DEFERRED_QUEUE_FACTOR + [0]  # 4 x queue_size kept, then full
    assert singles == [True] * 3  # the single-row queue is not taken by the batches
    assert pl.close(timeout=30)
    kept = plog.DEFERRED_QUEUE_FACTOR * n
    assert (pl.written, pl.dropped, pl.errors) == (4 + kept, n, 0)


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_explanation_row_keeps_its_reason_codes(tmp_path: Path, fmt: str) -> None:
    """The model server logs each explained row with ``verb`` and ``reasons``; readers
    tell those rows from predictions (raw JSONL lines too, ``extra`` nested)."""
    import json

    from serving.prediction_log_files import is_explanation
    from serving.prediction_log_records import EXPLAIN

    reasons = [{"feature": "amount", "label": "High amount", "contribution": 0.8}]
    log = PredictionLog(tmp_path, fmt, LogOptions(personal_fields=["customer_id"], hmac_key=KEY))
    log.log(record(1, verb=EXPLAIN, reasons=reasons, decision="decline"))
    log.log(record(2))
    assert log.close(timeout=10)
    explained, predicted = [r for f in complete_files(tmp_path) for r in read_records(f)]
    assert explained["verb"] == "explain" and explained["reasons"] == reasons
    assert is_explanation(explained) and not is_explanation(predicted)
    assert explained["features"]["customer_id"] == pseudonym(str(CUSTOMER + 1))
    if fmt == "jsonl":
        lines = complete_files(tmp_path)[0].read_text().splitlines()
        assert [is_explanation(json.loads(line)) for line in lines] == [True, False]


def test_read_directory_sees_complete_files_and_the_lines_being_written(tmp_path: Path) -> None:
    from serving.prediction_log_files import read_directory

    log = PredictionLog(tmp_path, "jsonl", LogOptions(poll_seconds=0.05))
    log.log(record(1))
    assert log.flush(timeout=10)  # one complete file
    log.log(record(2, verb="explain", reasons=[]))
    wait_until(  # the second still in a .tmp
        lambda: len(read_directory(tmp_path)) == 2, 10, "2 rows in the directory", interval=0.005
    )
    assert not [p for p in complete_files(tmp_path) if "req-2" in p.read_text()]
    live = read_directory(tmp_path)
    assert [r["request_id"] for r in live] == ["req-1", "req-2"]
    assert live[1]["verb"] == "explain" and live[1]["timestamp"].tzinfo is not None
    assert log.close(timeout=10)
    assert read_directory(tmp_path) == live
    assert read_directory(tmp_path / "absent") == []
