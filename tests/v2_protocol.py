"""Request bodies in the V2 inference protocol: JSON tensors and the binary tensor
extension."""

from __future__ import annotations

import json
import struct
from typing import Any


def v2_inputs(rows: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    """V2 JSON tensors of ``rows``: one per feature, ``BYTES`` for text, else ``FP64``."""
    inputs = []
    for name in names:
        values = [r[name] for r in rows]
        kind = "BYTES" if any(isinstance(v, str) for v in values) else "FP64"
        inputs.append({"name": name, "shape": [len(rows)], "datatype": kind, "data": values})
    return inputs


def v2_binary(inputs: list[dict[str, Any]], request_id: str | None = None) -> tuple[bytes, int]:
    """(body, JSON header length) of V2 JSON tensors (:func:`v2_inputs`) in the binary
    tensor extension: the JSON header, then each tensor's bytes (``BYTES`` elements
    length-prefixed, numbers little-endian). A tensor may carry its own ``shape`` or
    ``parameters`` (e.g. a wrong ``binary_data_size``) to send as they are."""
    header: dict[str, Any] = {"inputs": []}
    if request_id:
        header["id"] = request_id
    raw = b""
    for item in inputs:
        if item["datatype"] == "BYTES":
            data = b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in item["data"])
        else:
            data = struct.pack(f"<{len(item['data'])}d", *item["data"])
        meta = {k: item[k] for k in ("name", "shape", "datatype")}
        meta["parameters"] = item.get("parameters") or {"binary_data_size": len(data)}
        header["inputs"].append(meta)
        raw += data
    head = json.dumps(header).encode()
    return head + raw, len(head)
