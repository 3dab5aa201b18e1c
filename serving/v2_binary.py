"""Strict decoding of KServe V2 requests in the binary tensor extension.

A binary request is a JSON header (its length in bytes in the
``Inference-Header-Content-Length`` HTTP header), then each input's raw bytes in order,
``parameters.binary_data_size`` bytes each: numbers little-endian, a ``BYTES`` element
as a 4-byte little-endian length and then its bytes.

:func:`decode` reads every such body the model server receives (whatever its
content type: the header declares the extension). A malformed body raises
:class:`serving.schema.InputError` naming the first problem (the HTTP answer is a 400
with that line): a header length that is not a number or exceeds the body, a header
that is not a JSON object, an input whose shape, datatype and ``binary_data_size``
disagree, data running past the end of the body or left over after the last input. A
well-formed request with more than ids and tensors (``parameters``, ``outputs``,
an input carrying JSON ``data``, input parameters besides ``binary_data_size``) is
checked just as strictly and then left to KServe's route (``None``), which encodes
what those ask for; KServe's own decoder then only sees bodies it can read.

Numbers come back as numpy views of the body (no copies); ``BYTES`` as text (raw
bytes where an element is not UTF-8, which the schema check names), or, for the
category features given in ``coders`` (:func:`serving.schema_columns.label_records`), straight
as the model's codes when every element is a known label.

Imports numpy and :mod:`serving.schema` only (no KServe), and orjson where it is
installed (the serving environment; else the standard library's JSON), so the decoder
is tested in either environment.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from serving.schema import InputError
from serving.schema_columns import codes_of_bytes

try:
    from orjson import loads as _json_loads
except ImportError:  # the orchestration environment: the standard library's decoder
    from json import loads as _json_loads

HEADER = "Inference-Header-Content-Length"
#: digits accepted in the header length (a body is far smaller than 10**12 bytes)
MAX_LENGTH_DIGITS = 12
MAX_SHOWN_CHARS = 40
NUMPY_TYPES = {
    "BOOL": "?",
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}
DATATYPES = (*NUMPY_TYPES, "BYTES")
_DATATYPE_SET = frozenset(DATATYPES)
_DTYPES = {name: np.dtype(code) for name, code in NUMPY_TYPES.items()}
_PLAIN_KEYS = frozenset({"id", "inputs"})
_BINARY_INPUT_KEYS = frozenset({"name", "shape", "datatype", "parameters"})
_NO_PARAMETERS: dict[str, Any] = {}
_LENGTH = struct.Struct("<I")

Decoded = tuple["str | None", dict[str, Any]]


def _bad(problem: str) -> InputError:
    return InputError([problem])


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= MAX_SHOWN_CHARS else f"{text[:MAX_SHOWN_CHARS]}..."


def header_length(value: str, body_bytes: int) -> int:
    """The JSON header's length from the ``Inference-Header-Content-Length`` value."""
    if not (value.isascii() and value.isdigit()) or len(value) > MAX_LENGTH_DIGITS:
        raise _bad(f"{HEADER}: expected the JSON header's length in bytes, got {_shown(value)}")
    length = int(value)
    if length > body_bytes:
        raise _bad(f"{HEADER}: {length} is larger than the body ({body_bytes} bytes)")
    return length


def decode(
    body: bytes, json_length: str, coders: Mapping[str, Any] | None = None
) -> Decoded | None:
    """(request id, {input name: values}) of a plain binary request; None for a
    well-formed request that KServe's route must answer; InputError for anything else."""
    head_end = header_length(json_length, len(body))
    try:
        header = _json_loads(body[:head_end])
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise _bad(f"the JSON header (the first {head_end} bytes) is not JSON: {exc}") from None
    if type(header) is not dict:
        raise _bad("the JSON header must be an object with 'inputs'")
    request_id, inputs = header.get("id"), header.get("inputs")
    if request_id is not None and type(request_id) is not str:
        raise _bad("'id' must be a string")
    if type(inputs) is not list or not inputs:
        raise _bad("'inputs' must be a non-empty list of tensors")
    plain = _check_envelope(header)
    view = memoryview(body)
    pos = head_end
    columns: dict[str, Any] = {}
    for i, item in enumerate(inputs):
        name, datatype, shape, size, item_plain = _check_input(i, item)
        if name in columns:
            raise _bad(f"input {name}: given twice")
        plain = plain and item_plain
        if size is None:  # JSON data in the header: KServe's route reads it
            columns[name] = None
            continue
        if size > len(body) - pos:
            raise _bad(
                f"input {name}: binary_data_size {size} runs past the end of the body "
                f"({len(body) - pos} bytes left)"
            )
        chunk = view[pos : pos + size]
        pos += size
        columns[name] = _tensor(name, datatype, shape, chunk, coders)
    if pos != len(body):
        raise _bad(
            f"{len(body) - pos} bytes after the last input's binary data "
            "(the binary_data_size values do not add up to the body)"
        )
    return (request_id, columns) if plain else None


def _check_envelope(header: dict[str, Any]) -> bool:
    """Checks ``parameters`` and ``outputs``; True when the header has nothing else but
    ``id`` and ``inputs`` (other fields are ignored, as KServe ignores them)."""
    params = header.get("parameters")
    if params is not None and type(params) is not dict:
        raise _bad("'parameters' must be an object")
    outputs = header.get("outputs")
    if outputs is not None and (
        type(outputs) is not list
        or not all(type(o) is dict and type(o.get("name")) is str for o in outputs)
        or not all(o.get("parameters") is None or type(o["parameters"]) is dict for o in outputs)
    ):
        raise _bad("'outputs' must be a list of objects with a 'name'")
    return set(header) <= _PLAIN_KEYS


def _input(name: str) -> str:
    """An input's name for a message (clipped, quotes dropped)."""
    return _shown(name)[1:-1]


def _check_input(i: int, item: Any) -> tuple[str, str, list[int], int | None, bool]:
    """(name, datatype, shape, binary_data_size or None for JSON data, plain)."""
    if type(item) is not dict:
        raise _bad(f"inputs[{i}] must be an object with name, shape, datatype")
    name = item.get("name")
    if type(name) is not str:
        raise _bad(f"inputs[{i}]: 'name' must be a string")
    datatype = item.get("datatype")
    if type(datatype) is not str or datatype not in _DATATYPE_SET:
        raise _bad(
            f"input {_input(name)}: datatype {_shown(datatype)} is not a V2 tensor type "
            f"({', '.join(DATATYPES)})"
        )
    shape = item.get("shape")
    if type(shape) is not list or not all(type(d) is int and d >= 0 for d in shape):
        raise _bad(f"input {_input(name)}: 'shape' must be a list of whole numbers >= 0")
    params = item.get("parameters")
    if type(params) is not dict:
        if params is not None:
            raise _bad(f"input {_input(name)}: 'parameters' must be an object")
        params = _NO_PARAMETERS
    if "binary_data_size" not in params:
        if type(item.get("data")) is not list:
            raise _bad(f"input {_input(name)}: neither 'data' nor parameters.binary_data_size")
        return name, datatype, shape, None, False
    if "data" in item:
        raise _bad(f"input {_input(name)}: both 'data' and parameters.binary_data_size")
    size = params["binary_data_size"]
    if type(size) is not int or size < 0:
        raise _bad(f"input {_input(name)}: parameters.binary_data_size must be a whole number >= 0")
    plain = len(params) == 1 and _BINARY_INPUT_KEYS.issuperset(item)
    return name, datatype, shape, size, plain


def _tensor(
    name: str,
    datatype: str,
    shape: list[int],
    chunk: memoryview,
    coders: Mapping[str, Any] | None,
) -> Any:
    count = math.prod(shape)
    dtype = _DTYPES.get(datatype)
    if dtype is not None:
        if len(chunk) != count * dtype.itemsize:
            raise _bad(
                f"input {_input(name)}: shape {shape} of {datatype} needs "
                f"{count * dtype.itemsize} bytes, binary_data_size is {len(chunk)}"
            )
        return np.frombuffer(chunk, dtype=dtype).reshape(shape)
    one_column = len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)
    coder = coders.get(name) if coders and one_column else None
    if coder is not None:
        coded = codes_of_bytes(bytes(chunk), count, *coder)
        if coded is not None:
            return coded
    values = bytes_elements(chunk, count)
    if values is None:
        raise _bad(
            f"input {_input(name)}: {len(chunk)} bytes of BYTES data are not {count} "
            "length-prefixed element(s) (4-byte little-endian length, then the bytes)"
        )
    if one_column:
        return values
    array = np.empty(count, dtype=object)
    array[:] = values
    return array.reshape(shape)  # the schema check names the shape it expects


def bytes_elements(chunk: memoryview | bytes, count: int) -> list[str | bytes] | None:
    """``count`` BYTES elements exactly filling ``chunk``, as text (raw bytes where an
    element is not UTF-8); None when they do not."""
    raw = bytes(chunk)
    end = len(raw)
    if count * _LENGTH.size > end:  # each element has at least its length
        return None
    out: list[str | bytes] = []
    pos = 0
    unpack = _LENGTH.unpack_from
    for _ in range(count):
        if pos + 4 > end:
            return None
        (n,) = unpack(raw, pos)
        pos += 4
        if n > end - pos:
            return None
        element = raw[pos : pos + n]
        try:
            out.append(element.decode("utf-8"))
        except UnicodeDecodeError:
            out.append(element)
        pos += n
    return out if pos == end else None
