"""Parquet + manifest writer: determinism, canonical JSON, verification."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipelines.data.manifest import (
    Manifest,
    read_manifest,
    sha256_file,
    verify_manifest,
    write_parquet_with_manifest,
)
from pipelines.errors import DataValidationError


def _frame(n: int = 1_000) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "id": np.arange(n, dtype=np.int64),
            "x": rng.normal(size=n),
            "c": pd.Categorical(rng.choice(["a", "b", "c"], size=n), categories=["a", "b", "c"]),
            "t": pd.date_range("2026-01-01", periods=n, freq="min"),
        },
        index=np.arange(n) + 100,  # a non-default index that must not be stored
    )


def _write(tmp_path: Path, frame: pd.DataFrame | list[pd.DataFrame], **kw: int) -> Manifest:
    return write_parquet_with_manifest(
        frame, tmp_path, "demo", {"seed": 1, "knobs": [1, 2]}, generator="tests.demo", **kw
    )


def test_manifest_fields_and_files(tmp_path: Path) -> None:
    m = _write(tmp_path, _frame())
    assert m.name == "demo"
    assert m.path == "demo.parquet"
    assert m.rows == 1_000
    assert m.created_by == "govml"
    assert m.generator == "tests.demo"
    assert m.params == {"seed": 1, "knobs": [1, 2]}
    assert m.schema == [
        {"name": "id", "dtype": "int64"},
        {"name": "x", "dtype": "double"},
        {"name": "c", "dtype": "dictionary<values=string, indices=int8, ordered=0>"},
        {"name": "t", "dtype": "timestamp[ns]"},
    ]
    assert m.sha256 == hashlib.sha256((tmp_path / "demo.parquet").read_bytes()).hexdigest()
    assert read_manifest(tmp_path / "demo.manifest.json") == m
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_manifest_json_is_canonical_without_timestamp(tmp_path: Path) -> None:
    _write(tmp_path, _frame())
    text = (tmp_path / "demo.manifest.json").read_text(encoding="utf-8")
    data = json.loads(text)
    assert text == json.dumps(data, sort_keys=True, indent=2) + "\n"
    assert set(data) == {
        "name",
        "path",
        "rows",
        "schema",
        "sha256",
        "generator",
        "params",
        "created_by",
    }
    assert "time" not in text.replace('"t"', "").replace("timestamp[ns]", "")


def test_parquet_has_no_index_and_uses_zstd(tmp_path: Path) -> None:
    _write(tmp_path, _frame())
    pf = pq.ParquetFile(tmp_path / "demo.parquet")
    assert pf.schema_arrow.names == ["id", "x", "c", "t"]
    assert pf.metadata.row_group(0).column(0).compression == "ZSTD"
    back = pd.read_parquet(tmp_path / "demo.parquet")
    assert back.index.tolist() == list(range(1_000))
    expected = _frame().reset_index(drop=True)
    pd.testing.assert_frame_equal(back, expected)


def test_rerun_is_byte_identical_and_chunking_does_not_matter(tmp_path: Path) -> None:
    frame = _frame()
    one = _write(tmp_path / "one", frame, row_group_rows=300)
    again = _write(tmp_path / "again", frame, row_group_rows=300)
    chunks = [frame.iloc[:7], frame.iloc[7:650], frame.iloc[650:651], frame.iloc[651:]]
    chunked = _write(tmp_path / "chunked", chunks, row_group_rows=300)
    assert one.sha256 == again.sha256 == chunked.sha256
    for name in ("demo.parquet", "demo.manifest.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "chunked" / name).read_bytes()
    meta = pq.ParquetFile(tmp_path / "chunked" / "demo.parquet").metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [300, 300, 300, 100]


def test_different_data_gives_different_hash(tmp_path: Path) -> None:
    frame = _frame()
    a = _write(tmp_path / "a", frame)
    frame.loc[frame.index[0], "x"] += 1.0
    b = _write(tmp_path / "b", frame)
    assert a.sha256 != b.sha256


def test_sha256_is_streamed_in_blocks(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    payload = np.random.default_rng(1).bytes(3 * (1 << 20) + 17)
    big.write_bytes(payload)
    assert sha256_file(big) == hashlib.sha256(payload).hexdigest()


def test_verify_passes_on_untouched_file(tmp_path: Path) -> None:
    m = _write(tmp_path, _frame())
    assert verify_manifest(tmp_path / "demo.manifest.json") == m


def test_verify_catches_modified_file(tmp_path: Path) -> None:
    _write(tmp_path, _frame())
    path = tmp_path / "demo.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DataValidationError, match=r"demo\.parquet.*sha256 mismatch"):
        verify_manifest(tmp_path / "demo.manifest.json")


def test_verify_catches_replaced_file_and_wrong_row_count(tmp_path: Path) -> None:
    _write(tmp_path, _frame())
    manifest_path = tmp_path / "demo.manifest.json"
    # another valid Parquet file in its place
    _frame(10).to_parquet(tmp_path / "demo.parquet")
    with pytest.raises(DataValidationError, match="sha256 mismatch"):
        verify_manifest(manifest_path)
    # right file, manifest claims a different row count
    m = _write(tmp_path, _frame())
    data = json.loads(manifest_path.read_text(encoding="utf-8"))
    data["rows"] = m.rows + 1
    manifest_path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(DataValidationError, match=r"demo\.parquet: row count mismatch.*1001"):
        verify_manifest(manifest_path)


def test_verify_catches_missing_file_and_bad_manifest(tmp_path: Path) -> None:
    _write(tmp_path, _frame())
    (tmp_path / "demo.parquet").unlink()
    with pytest.raises(DataValidationError, match="missing"):
        verify_manifest(tmp_path / "demo.manifest.json")
    with pytest.raises(DataValidationError, match="not found"):
        read_manifest(tmp_path / "nope.manifest.json")
    bad = tmp_path / "bad.manifest.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(DataValidationError, match="bad.manifest.json"):
        read_manifest(bad)
    bad.write_text(json.dumps({"name": "x"}), encoding="utf-8")
    with pytest.raises(DataValidationError, match="missing key"):
        read_manifest(bad)


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match="JSON"):
        write_parquet_with_manifest(_frame(), tmp_path, "demo", {"f": object()})
    with pytest.raises(DataValidationError, match="name"):
        write_parquet_with_manifest(_frame(), tmp_path, "../demo", {})
    with pytest.raises(DataValidationError, match="no data"):
        write_parquet_with_manifest([], tmp_path, "demo", {})
    with pytest.raises(DataValidationError, match="DataFrame"):
        write_parquet_with_manifest([[1, 2]], tmp_path, "demo", {})  # type: ignore[list-item]
    other = _frame().assign(x="text")
    with pytest.raises(DataValidationError, match="schema"):
        write_parquet_with_manifest([_frame(), other], tmp_path, "demo", {})
    assert not (tmp_path / "demo.parquet").exists()
