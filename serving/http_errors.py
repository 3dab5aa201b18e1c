"""The one place where errors become HTTP answers (the model server's and its guard's).

:func:`error_status` maps an exception to its status and one line: bad input 400 (the
project's :class:`~serving.schema.InputError`, KServe's ``InvalidInput``, a body that
FastAPI's models or KServe's own decoders cannot read), unknown model 404, anything else
500 (a failure: logged with its traceback; the answer names no internals).
:func:`error_answer` gives the JSON body ``{"error": "<one line>"}``.
"""

from __future__ import annotations

import functools
import json
import logging
import traceback
from types import CodeType
from typing import Any

from pipelines.errors import GovMLError

log = logging.getLogger("serving.http")  # the guard's log, as before

# ----------------------------------------------------------------------------- errors
INTERNAL_ERROR = "internal error; see the server log"


#: characters of an error line (a decoder's message can quote the body)
MAX_ERROR_CHARS = 500


#: problems of a FastAPI validation error listed in its line
MAX_VALIDATION_PROBLEMS = 5


def one_line(text: str) -> str:
    """``text`` on one line, at most :data:`MAX_ERROR_CHARS` characters."""
    line = " ".join(text.split())
    return line if len(line) <= MAX_ERROR_CHARS else line[: MAX_ERROR_CHARS - 3] + "..."


@functools.cache
def _kserve_statuses() -> tuple[tuple[type, int], ...]:
    """KServe's exceptions that are answers (KServe is only in the serving environment)."""
    try:
        from kserve.errors import InvalidInput, ModelNotFound
    except ImportError:
        return ()
    return ((InvalidInput, 400), (ModelNotFound, 404))


@functools.cache
def validation_error() -> tuple[type, ...]:
    """FastAPI's request validation error (a body its models refuse: KServe's V2 JSON)."""
    try:
        from fastapi.exceptions import RequestValidationError
    except ImportError:
        return ()
    return (RequestValidationError,)


@functools.cache
def _kserve_decoders() -> frozenset[CodeType]:
    """The code of KServe's request decoders. They raise ``ValueError``, ``KeyError``,
    ``TypeError`` or ``struct.error`` on a body they cannot read (a binary header
    length that is not a number, a tensor shorter than its shape...), not
    ``InvalidInput``: an exception raised inside them is the body's fault."""
    try:
        from kserve.protocol.dataplane import DataPlane
        from kserve.protocol.infer_type import InferInput, InferRequest
    except ImportError:
        return frozenset()
    functions = (
        DataPlane.decode,
        DataPlane.decode_inference_request,
        DataPlane.decode_cloudevent,
        DataPlane.get_binary_cloudevent,
        InferRequest.from_bytes,
        InferRequest.from_inference_request,
        InferInput.as_numpy,
    )
    return frozenset(getattr(f, "__func__", f).__code__ for f in functions)


def _raised_while_decoding(exc: BaseException) -> bool:
    decoders = _kserve_decoders()
    return any(frame.f_code in decoders for frame, _ in traceback.walk_tb(exc.__traceback__))


def _validation_line(exc: Any) -> str:
    """FastAPI's RequestValidationError as one line: where and what, never the input.

    KServe's V2 route takes ``InferenceRequest | bytes``: a JSON body that fails the
    model also "fails" the raw-bytes alternative, which says nothing; that is left out."""
    errors = list(exc.errors())
    modelled = [e for e in errors if tuple(e.get("loc", ()))[:2] != ("body", "bytes")]
    errors = modelled or errors
    parts = []
    for error in errors[:MAX_VALIDATION_PROBLEMS]:
        where = ".".join(str(p) for p in error.get("loc", ())) or "body"
        what = error.get("msg", "invalid")
        reason = (error.get("ctx") or {}).get("error")
        parts.append(f"{where}: {what}" + (f" ({reason})" if reason else ""))
    if len(errors) > MAX_VALIDATION_PROBLEMS:
        parts.append(f"... and {len(errors) - MAX_VALIDATION_PROBLEMS} more")
    return "invalid request body: " + "; ".join(parts)


def error_status(exc: BaseException) -> tuple[int, str]:
    """(HTTP status, one-line message) for an error raised while serving a request.

    Bad input is 400, an unknown model 404, a refused token 401/403 (each a
    :class:`GovMLError` or KServe error saying so); anything else is a failure, 500,
    whose message names no internals (the traceback goes to the server log)."""
    status = getattr(exc, "status", None)
    if isinstance(exc, GovMLError) and isinstance(status, int) and 400 <= status < 500:
        return status, str(exc)  # written as one line, every problem listed
    for kind, code in _kserve_statuses():
        if isinstance(exc, kind):
            return code, str(exc)  # as KServe's own routes answer it
    if isinstance(exc, validation_error()):
        return 400, one_line(_validation_line(exc))
    if _raised_while_decoding(exc):
        return 400, one_line(f"cannot decode the request body: {type(exc).__name__}: {exc}")
    log.error("request failed", exc_info=exc)
    return 500, INTERNAL_ERROR


def error_answer(exc: BaseException) -> tuple[int, bytes]:
    """(status, JSON body ``{"error": line}``) for an error: see :func:`error_status`."""
    status, line = error_status(exc)
    return status, json.dumps({"error": line}).encode()
