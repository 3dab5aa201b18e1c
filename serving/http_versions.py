"""Versioned V2 paths: ``/v2/models/NAME/versions/V[/ready|/infer]``, which KServe answers 501.

For the version the server was started with, the guard answers exactly the unversioned
path (:func:`route_version`); another version is a 404 naming the one served.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from typing import Any

from serving.http_errors import one_line

V2_MODELS = "/v2/models/"
VERSIONS = "/versions/"


#: what may follow ``/v2/models/NAME/versions/V``: model metadata, readiness, inference
VERSIONED_SUFFIXES = ("", "/ready", "/infer")


def with_versioned_routes(
    fast_routes: Mapping[str, Any], versions: Mapping[str, str]
) -> dict[str, Any]:
    """The fast routes, each model's V2 ``/infer`` also under its served version."""
    routes = dict(fast_routes)
    for name, version in versions.items():
        route = routes.get(f"{V2_MODELS}{name}/infer")
        if version and route is not None:
            routes[f"{V2_MODELS}{name}{VERSIONS}{version}/infer"] = route
    return routes


MAX_VERSION_CHARS = 64


def _version_text(version: str) -> str:
    return version if len(version) <= MAX_VERSION_CHARS else version[:MAX_VERSION_CHARS] + "..."


def _refusal(name: str, asked: str, served: str) -> str | None:
    """Why version ``asked`` of model ``name`` is not served; None when it is (or when
    the model is not one of this server's: KServe then says it does not exist)."""
    if served == asked:
        return None
    asked = _version_text(asked)
    if not served:
        return one_line(f"model {name} has no version {asked}: it is served without a version")
    return one_line(
        f"model {name} has no version {asked} here: this server serves version {served}"
    )


def route_version(
    path: str, query: bytes, versions: Mapping[str, str]
) -> tuple[str, bytes, str | None]:
    """(path, query string, refusal) of a V2 model request naming a version.

    KServe answers 501 to any version, in the path (``/v2/models/NAME/versions/V``,
    ``.../ready``, ``.../infer``) or in the query (``?model_version=V``). For the
    served version (or a model this server does not know) the request becomes the
    unversioned one; another version of a served model is refused (the reason)."""
    name = path[len(V2_MODELS) :].split("/", 1)[0]
    refusal = None
    head, sep, tail = path[len(V2_MODELS) :].partition(VERSIONS)
    version, slash, rest = tail.partition("/")
    if sep and head and "/" not in head and version and slash + rest in VERSIONED_SUFFIXES:
        path = f"{V2_MODELS}{head}{slash}{rest}"
        if head in versions:
            refusal = _refusal(head, version, versions[head])
    if b"model_version" in query:
        pairs = urllib.parse.parse_qsl(query.decode("latin-1"), keep_blank_values=True)
        asked = [v for k, v in pairs if k == "model_version" and v]
        query = urllib.parse.urlencode([(k, v) for k, v in pairs if k != "model_version"]).encode()
        if asked and name in versions and refusal is None:
            refusal = _refusal(name, asked[-1], versions[name])
    return path, query, refusal
