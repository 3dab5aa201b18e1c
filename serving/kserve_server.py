"""What the project's KServe servers share: closed by default.

The model server (``python -m serving``) and the feature transformer
(``python -m serving.transformer``) both run :func:`serve_main` with their own model
loading, so both

* require ``--tokens FILE`` (hashed bearer tokens, :mod:`serving.auth`; watched for
  changes) and refuse to start without it, in one line;
* listen on 127.0.0.1 unless ``--host`` or ``GOVML_SERVING_BIND_HOST`` names another
  address (:mod:`serving.bind`): :class:`BoundModelServer` makes KServe's REST server
  listen there (KServe 0.21 itself always listens on every interface);
* serve no gRPC: KServe's gRPC server listens on every interface and passes no request
  through the bearer-token check, so ``--enable_grpc true`` is refused.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kserve

from pipelines.errors import ConfigError
from serving.auth import TokenStore
from serving.bind import bind_host

USAGE = 2
REFUSED = 3  # not started: the model, the options or the event loop refused
GC_THRESHOLDS = (50_000, 20, 100)
NO_TOKENS = (
    "error: --tokens FILE is required: govml's servers answer only bearer-token holders "
    "(make a file with: python -m serving.auth new NAME --scope predict --file FILE)"
)
NO_GRPC = (
    "error: --enable_grpc true: gRPC is not served (KServe's gRPC server listens on every "
    "interface and checks no bearer token); use HTTP"
)


class BoundModelServer(kserve.ModelServer):
    """KServe's model server, its REST server listening on ``host`` only.

    KServe 0.21 hard-codes ``0.0.0.0`` in the uvicorn configuration it builds inside
    :meth:`kserve.ModelServer.start`; ``start`` calls :meth:`setup_event_loop` after
    building it and before serving, where the address is set to ``host``."""

    def __init__(self, host: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.host = host

    def setup_event_loop(self) -> None:
        rest = getattr(self, "_rest_server", None)
        config = getattr(rest, "config", None)
        if config is None or self.workers != 1 or self.enable_grpc:
            raise RuntimeError("BoundModelServer serves one REST worker, no gRPC")
        config.host = self.host
        super().setup_event_loop()


def refuse(message: str, code: int) -> int:
    """One line on stderr; the exit code."""
    sys.stderr.write(message.rstrip() + "\n")
    return code


def server_options(parser: argparse.ArgumentParser) -> None:
    """Options the model server and the feature transformer share: tokens, address."""
    parser.add_argument(
        "--tokens", default=None, help="bearer token file (hashed tokens; required)"
    )
    parser.add_argument(
        "--host",
        default=None,
        help="address to listen on (default: $GOVML_SERVING_BIND_HOST or 127.0.0.1)",
    )
    parser.set_defaults(enable_grpc=False)


def guard_settings(args: argparse.Namespace) -> tuple[str, TokenStore] | int:
    """(host, token store) for a server's arguments, or the exit code of a refusal."""
    if not args.tokens:
        return refuse(NO_TOKENS, USAGE)
    if args.enable_grpc:
        return refuse(NO_GRPC, USAGE)
    try:
        return bind_host(args.host), TokenStore.load(args.tokens)
    except ConfigError as exc:
        return refuse(f"error: {exc}", USAGE)


def freeze_start_up() -> None:
    """Freeze the objects start-up made and collect the young generation less often.

    A server keeps request objects alive until its background work takes them, so the
    cyclic GC runs often; a full collection walks every object of the process (KServe,
    FastAPI, LightGBM, MLflow: about a million), pausing requests for milliseconds.
    What start-up made is never collected again.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def chose_event_loop(choice: str, log: logging.Logger) -> bool:
    """Install the event loop ``--event_loop`` asks for; False (logged) when it cannot be."""
    from serving.http import use_event_loop

    try:
        log.info("event loop: %s", use_event_loop(choice))
    except ValueError as exc:
        log.error("%s", exc)
        return False
    return True


@dataclass(frozen=True)
class Loaded:
    """A server's loaded model: the routes the guard answers itself, the versions it
    reports, KServe's extra model server options, and what to close when it stops."""

    model: Any
    fast_routes: dict[str, Any]
    versions: Mapping[str, str] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    close: Callable[[], None] = lambda: None


def serve_main(
    parser: argparse.ArgumentParser,
    argv: list[str] | None,
    log: logging.Logger,
    load: Callable[[argparse.Namespace], Loaded | int],
) -> int:
    """A server's ``main``: its arguments (refused without tokens or with gRPC), its
    model from ``load`` (or the exit code ``load`` refused with), then served until
    stopped, closed by default: KServe's app guarded (:func:`serving.http.install`:
    ``--max_body_bytes``, the tokens, the fast routes), start-up frozen, the
    ``--event_loop`` installed; 0, or :data:`REFUSED` when the event loop cannot be."""
    from kserve import model_server

    from serving.http import install

    args, _ = parser.parse_known_args(argv)
    guard = guard_settings(args)
    if isinstance(guard, int):
        return guard
    loaded = load(args)
    if isinstance(loaded, int):
        return loaded
    host, tokens = guard
    try:
        install(
            model_server.app,
            max_body_bytes=args.max_body_bytes,
            tokens=tokens,
            fast_routes=loaded.fast_routes,
            versions=loaded.versions,
        )
        freeze_start_up()
        if not chose_event_loop(args.event_loop, log):
            return REFUSED
        start(host, args, loaded.model, log, **loaded.options)
        return 0
    finally:
        loaded.close()


def start(host: str, args: argparse.Namespace, model: Any, log: logging.Logger, **kw: Any) -> None:
    """Serve ``model`` on ``host`` (one REST worker, no gRPC) until stopped."""
    log.info("listening on %s:%d", host, args.http_port)
    BoundModelServer(
        host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        enable_grpc=False,
        workers=1,
        **kw,
    ).start([model])
