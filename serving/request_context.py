"""The request being served, for the prediction log: its id and its authenticated client.

The model server's guard (:mod:`serving.http`) sets the id from the request's
``X-Request-Id`` header (the gateway sends one on A/B routes); the model writes it into
its prediction log as ``<request id>:<row>``, so the gateway's A/B assignment log, the
prediction log and the label feed join on one id. A missing or unusual header (anything
but 1-128 letters, digits, ``.``, ``_``, ``-``) leaves it unset, and the model makes up a
UUID as before.

The client is the name of the bearer token the guard accepted. The guard's fast routes
hand it to their handler directly; a request that KServe's own routes answer (another
content type, a V2 envelope with ``parameters``, ``:explain``) reaches the model through
KServe, which passes no such thing, so the guard sets it here and the model reads it
when it logs the rows. Context variables: each request (an asyncio task) sees its own
values.
"""

from __future__ import annotations

import re
from contextvars import ContextVar
from dataclasses import dataclass

from serving.asgi import Scope

REQUEST_ID: ContextVar[str | None] = ContextVar("govml_request_id", default=None)
CLIENT: ContextVar[str | None] = ContextVar("govml_client", default=None)
_VALID = re.compile(rb"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def set_request_id(header: bytes | None) -> None:
    """Set (or clear) the current request's id from its raw header value."""
    REQUEST_ID.set(header.decode("ascii") if header and _VALID.match(header) else None)


def current_request_id() -> str | None:
    return REQUEST_ID.get()


def set_client(name: str | None) -> None:
    """Set (or clear) the authenticated client of the current request."""
    CLIENT.set(name)


def current_client() -> str | None:
    return CLIENT.get()


@dataclass(slots=True)
class RequestHeaders:
    """The request headers the guard (:mod:`serving.http`) reads (names lower-cased)."""

    authorization: str | None = None
    length: bytes | None = None
    content_type: bytes | None = None
    json_length: str | None = None
    request_id: bytes | None = None
    cloudevent: bool = False

    @classmethod
    def of(cls, scope: Scope) -> RequestHeaders:
        headers = cls()
        for key, value in scope["headers"]:
            key = key.lower()
            if key == b"x-request-id":
                headers.request_id = value
            elif key == b"authorization":
                headers.authorization = value.decode("latin-1")
            elif key == b"content-length":
                headers.length = value
            elif key == b"content-type":
                headers.content_type = value.lower()
            elif key == b"inference-header-content-length":
                headers.json_length = value.decode("latin-1")
            elif key.startswith(b"ce-"):
                headers.cloudevent = True
        return headers
