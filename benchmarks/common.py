"""What the benchmark scripts share: the JSON result file and the wrk request prelude."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

# the request half of every wrk script: POST the body file, JSON, optional bearer token
WRK_REQUEST = r"""
wrk.method = "POST"
local f = io.open(os.getenv("BENCH_BODY"), "rb"); wrk.body = f:read("*a"); f:close()
wrk.headers["Content-Type"] = "application/json"
local token = os.getenv("BENCH_TOKEN")
if token and token ~= "" then wrk.headers["Authorization"] = "Bearer " .. token end
"""


def write_result(
    path: str | Path,
    report: dict[str, Any],
    indent: int | None = None,
    default: Callable[[Any], Any] | None = None,
) -> None:
    """Write one benchmark's result file: ``report`` holds title, command, markdown, results."""
    Path(path).write_text(json.dumps(report, indent=indent, default=default))
