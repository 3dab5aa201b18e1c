"""The strict decoder of V2 binary requests (serving.v2_binary): every malformed body is
one InputError line; plain requests decode without copies; others go to KServe (None)."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest

from serving.feature_values import FeatureInfo, FeatureKind
from serving.schema import FeatureSchema, InputError
from serving.schema_columns import KnownCodes
from serving.schema_columns import label_records as records_of
from serving.v2_binary import bytes_elements, decode, header_length

KINDS = ["card_present", "online"]


def _bytes(values: list[str | bytes]) -> bytes:
    raws = [v if isinstance(v, bytes) else v.encode() for v in values]
    return b"".join(struct.pack("<I", len(r)) + r for r in raws)


def body_of(tensors: list[tuple[dict[str, Any], bytes]], **envelope: Any) -> tuple[bytes, str]:
    """(body, header length) of (input metadata, raw bytes) pairs; each input's
    binary_data_size is its bytes' length unless its metadata gives parameters."""
    inputs = []
    for meta, raw in tensors:
        inputs.append({"parameters": {"binary_data_size": len(raw)}, **meta})
    head = json.dumps({"inputs": inputs, **envelope}).encode()
    return head + b"".join(raw for _, raw in tensors), str(len(head))


def amount(values: list[float], **meta: Any) -> tuple[dict[str, Any], bytes]:
    base = {"name": "amount", "shape": [len(values)], "datatype": "FP64"}
    return base | meta, struct.pack(f"<{len(values)}d", *values)


def kind(values: list[str | bytes], **meta: Any) -> tuple[dict[str, Any], bytes]:
    return {"name": "kind", "shape": [len(values)], "datatype": "BYTES"} | meta, _bytes(values)


def refused(body: bytes, length: str) -> str:
    with pytest.raises(InputError) as caught:
        decode(body, length)
    assert len(caught.value.problems) == 1
    return caught.value.problems[0]


def test_a_plain_request_decodes_numbers_as_views_and_labels_as_text() -> None:
    body, length = body_of([amount([1.5, 2.0]), kind(["online", "card_present"])], id="r1")
    request_id, columns = decode(body, length)
    assert request_id == "r1"
    assert columns["amount"].tolist() == [1.5, 2.0]
    assert columns["amount"].base is not None  # a view of the body, not a copy
    assert columns["kind"] == ["online", "card_present"]


def test_known_labels_become_the_models_codes() -> None:
    schema = FeatureSchema(
        model="toy",
        features=(
            FeatureInfo("amount", FeatureKind.FLOAT, nullable=False),
            FeatureInfo("kind", FeatureKind.CATEGORY, nullable=False, categories=tuple(KINDS)),
        ),
    )
    coders = {"kind": records_of(schema, "kind")}
    body, length = body_of([amount([1.0]), kind(["online"])])
    _, columns = decode(body, length, coders)
    assert isinstance(columns["kind"], KnownCodes)
    assert columns["kind"].codes.tolist() == [1.0]
    body, length = body_of([amount([1.0]), kind(["atm"])])  # unknown: text, checked later
    assert decode(body, length, coders)[1]["kind"] == ["atm"]


def test_an_element_that_is_not_utf8_stays_bytes_for_the_schema_to_name() -> None:
    body, length = body_of([kind([b"\xff\xfe"])])
    assert decode(body, length)[1]["kind"] == [b"\xff\xfe"]


@pytest.mark.parametrize(
    ("envelope", "meta"),
    [
        ({"parameters": {"binary_data_output": True}}, {}),
        ({"outputs": [{"name": "score"}]}, {}),
        ({}, {"parameters": {"binary_data_size": 8, "content_type": "x"}}),
    ],
)
def test_a_well_formed_request_asking_for_more_goes_to_kserve(
    envelope: dict[str, Any], meta: dict[str, Any]
) -> None:
    body, length = body_of([amount([1.0], **meta)], **envelope)
    assert decode(body, length) is None


def test_json_data_in_a_binary_request_goes_to_kserve() -> None:
    head = json.dumps(
        {"inputs": [{"name": "amount", "shape": [1], "datatype": "FP64", "data": [1.0]}]}
    ).encode()
    assert decode(head, str(len(head))) is None


@pytest.mark.parametrize("value", ["abc", "", "-5", "1e3", "²", " 12", "1" * 13])
def test_a_header_length_that_is_not_a_number_is_named(value: str) -> None:
    with pytest.raises(InputError, match="expected the JSON header's length in bytes, got"):
        header_length(value, 100)


def test_a_header_length_beyond_the_body_is_named() -> None:
    body, _ = body_of([amount([1.0])])
    assert refused(body, str(len(body) + 1)) == (
        f"Inference-Header-Content-Length: {len(body) + 1} is larger than the body "
        f"({len(body)} bytes)"
    )


def test_each_malformed_body_is_one_line_naming_the_problem() -> None:
    ok, length = body_of([amount([1.0])])
    cases: list[tuple[bytes, str, str]] = [
        (ok, "3", "the JSON header (the first 3 bytes) is not JSON: "),
        (b"[1]", "3", "the JSON header must be an object with 'inputs'"),
        (b'{"inputs": []}', "14", "'inputs' must be a non-empty list of tensors"),
        (*body_of([amount([1.0])], id=5), "'id' must be a string"),
        (*body_of([amount([1.0])], parameters=[]), "'parameters' must be an object"),
        (*body_of([amount([1.0])], outputs="x"), "'outputs' must be a list of objects with"),
        (*body_of([amount([1.0], datatype="FP128")]), "input amount: datatype 'FP128' is not"),
        (*body_of([amount([1.0], shape=[-1])]), "input amount: 'shape' must be a list of"),
        (*body_of([amount([1.0], shape=[True])]), "input amount: 'shape' must be a list of"),
        (*body_of([amount([1.0], parameters=[])]), "input amount: 'parameters' must be an obj"),
        (*body_of([amount([1.0], parameters={})]), "input amount: neither 'data' nor parameters"),
        (*body_of([amount([1.0], data=[1.0])]), "input amount: both 'data' and parameters"),
        (
            *body_of([amount([1.0], parameters={"binary_data_size": True})]),
            "input amount: parameters.binary_data_size must be a whole number >= 0",
        ),
        (
            *body_of([amount([1.0], parameters={"binary_data_size": 7})]),
            "input amount: shape [1] of FP64 needs 8 bytes, binary_data_size is 7",
        ),
        (
            *body_of([amount([1.0], shape=[3])]),
            "input amount: shape [3] of FP64 needs 24 bytes, binary_data_size is 8",
        ),
        (
            *body_of([amount([1.0], parameters={"binary_data_size": 10**12})]),
            "input amount: binary_data_size 1000000000000 runs past the end of the body "
            "(8 bytes left)",
        ),
        (
            *body_of([kind(["online"], shape=[2])]),
            "input kind: 10 bytes of BYTES data are not 2 length-prefixed element(s)",
        ),
        (*body_of([amount([1.0]), amount([2.0])]), "input amount: given twice"),
        (
            ok + b"\x00\x00",
            length,
            "2 bytes after the last input's binary data (the binary_data_size values do not "
            "add up to the body)",
        ),
        ((inp := b'{"inputs": [7]}'), str(len(inp)), "inputs[0] must be an object with name"),
        (
            (inp := b'{"inputs": [{"name": 7}]}'),
            str(len(inp)),
            "inputs[0]: 'name' must be a string",
        ),
    ]
    for body, head, expected in cases:
        assert refused(body, head).startswith(expected), (body[:120], expected)


def test_other_shapes_are_left_to_the_schema_check() -> None:
    body, length = body_of([kind(["online", "online"], shape=[1, 2])])
    column = decode(body, length)[1]["kind"]
    assert isinstance(column, np.ndarray) and column.shape == (1, 2)
    body, length = body_of([amount([1.0, 2.0], shape=[2, 1])])
    assert decode(body, length)[1]["amount"].shape == (2, 1)


def test_empty_tensors_decode_and_the_schema_says_no_rows() -> None:
    body, length = body_of([amount([], shape=[0]), kind([], shape=[0])])
    _, columns = decode(body, length)
    assert len(columns["amount"]) == 0 and columns["kind"] == []


@pytest.mark.parametrize(
    ("chunk", "count", "expected"),
    [
        (_bytes(["a", "bc"]), 2, ["a", "bc"]),
        (_bytes(["a", "bc"]), 1, None),  # bytes left over
        (_bytes(["a"])[:-1], 1, None),  # cut short
        (b"\xff\xff\xff\xff", 1, None),  # a length past the end
        (b"", 0, []),
        (b"", 2**40, None),  # more elements than could fit: refused before any loop
    ],
)
def test_bytes_elements_tile_the_chunk_exactly(
    chunk: bytes, count: int, expected: list[str] | None
) -> None:
    assert bytes_elements(chunk, count) == expected
