"""Start the model server: ``python -m serving --model_name fraud --model_uri URI``.

Options beyond KServe's own (``--http_port``, ``--workers``...):

* ``--expected_sha256``: refuse any other model file (exit 3, never ready);
* ``--spec``: strict input validation against the spec's feature schema, decisions at
  its threshold, personal data of the spec pseudonymised in the prediction log;
* ``--model_version``: reported in responses and metrics;
* ``--prediction_log DIR`` (``--prediction_log_format jsonl|parquet``, JSONL by
  default: written as it comes, while Parquet compresses on the serving CPU): the
  asynchronous prediction log, with its counts in ``/metrics``; the HMAC key for
  personal data comes from ``GOVML_PREDICTION_LOG_KEY``;
* ``--tokens FILE`` (required): bearer tokens (hashed, :mod:`serving.auth`) needed on
  predict/explain/infer; the file is watched (a revoked token is refused, a new one
  accepted, within about a second, without a restart). Without it the server refuses
  to start;
* ``--host``: the address to listen on, 127.0.0.1 unless given here or in
  ``GOVML_SERVING_BIND_HOST`` (:mod:`serving.bind`; KServe itself would listen on
  every interface);
* ``--max_body_bytes``: larger request bodies get 413 (default 1 MiB).

gRPC is not served (``--enable_grpc`` true is refused): KServe's gRPC server listens on
every interface and passes no request through the bearer-token check.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys

from kserve import model_server

from serving.kserve_server import REFUSED, Loaded, serve_main, server_options
from serving.model import LightGBMModel
from serving.schema_openapi import document_requests

log = logging.getLogger(__name__)


def _prediction_log(args: argparse.Namespace):  # noqa: ANN202
    if not args.prediction_log:
        return None
    from pipelines.spec import load_spec
    from serving.prediction_log import PredictionLog
    from serving.prediction_log_files import LogOptions

    key = os.environ.get("GOVML_PREDICTION_LOG_KEY")
    if not key:
        key = secrets.token_hex(32)
        log.warning(
            "GOVML_PREDICTION_LOG_KEY is not set: personal data is pseudonymised with a "
            "random key, so pseudonyms change when the server restarts"
        )
    kwargs = {"fmt": args.prediction_log_format}
    if args.spec:
        return PredictionLog.for_spec(load_spec(args.spec), args.prediction_log, key, **kwargs)
    return PredictionLog(args.prediction_log, options=LogOptions(hmac_key=key), **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """KServe's model server options, and the project's."""
    parser = argparse.ArgumentParser(parents=[model_server.parser], conflict_handler="resolve")
    parser.add_argument(
        "--model_uri", required=True, help="local folder or MLflow URI (models:/fraud@champion)"
    )
    parser.add_argument(
        "--expected_sha256", default=None, help="refuse to load a model file with another SHA-256"
    )
    parser.add_argument("--spec", default=None, help="the model's spec YAML (strict input)")
    parser.add_argument("--model_version", default="", help="the registered version served")
    parser.add_argument("--prediction_log", default=None, help="folder of the prediction log")
    parser.add_argument(
        "--prediction_log_format",
        default="jsonl",
        choices=["parquet", "jsonl"],
        help="jsonl (default): lines written as they come, the lowest latency cost; "
        "parquet: compressed on the serving CPU (see BENCHMARKS.md)",
    )
    server_options(parser)
    parser.add_argument("--max_body_bytes", type=int, default=1 << 20)
    parser.add_argument(
        "--switch_interval_ms",
        type=float,
        default=0.5,
        help="Python's thread switch interval (latency bound for the log writer thread)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    return serve_main(build_parser(), argv, log, _load)


def _load(args: argparse.Namespace) -> Loaded | int:
    """The model server's model, loaded (or the exit code of a refusal)."""
    prediction_log = _prediction_log(args)
    if prediction_log is not None:
        from serving.metrics import register_prediction_log

        register_prediction_log(prediction_log, args.model_name, args.model_version)
    model = LightGBMModel(
        args.model_name,
        args.model_uri,
        args.expected_sha256,
        spec_path=args.spec,
        version=args.model_version,
        prediction_log=prediction_log,
    )
    if not model.load():
        log.error("model %s not loaded; not serving", args.model_name)
        return REFUSED
    # The prediction log's writer thread shares the GIL with the event loop: a short
    # switch interval bounds how long a request can wait for it (default 5 ms).
    sys.setswitchinterval(args.switch_interval_ms / 1000.0)
    if model.schema_ is not None:
        document_requests(model_server.app, args.model_name, model.schema_)
    return Loaded(
        model,
        _fast_routes(model, args.model_name),
        versions={args.model_name: args.model_version},
        close=model.close_prediction_log,
    )


def _fast_routes(model: LightGBMModel, name: str) -> dict:
    """The V1 and V2 scoring routes the guard answers itself (a strict model only)."""
    if model.schema_ is None:
        return {}
    return {
        f"/v1/models/{name}:predict": (
            lambda body, client, _json_length: model.handle_v1_predict(body, client),
            lambda: model.ready,
        ),
        f"/v2/models/{name}/infer": (
            lambda body, client, json_length: model.handle_v2_infer(body, json_length, client),
            lambda: model.ready,
        ),
    }


if __name__ == "__main__":
    sys.exit(main())
