"""Start the model server: ``python -m serving --model_name fraud --model_uri URI``."""

from __future__ import annotations

import argparse
import logging
import sys

import kserve
from kserve import model_server

from serving.model import LightGBMModel


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(parents=[model_server.parser], conflict_handler="resolve")
    parser.add_argument(
        "--model_uri", required=True, help="local folder or MLflow URI (models:/fraud@champion)"
    )
    parser.add_argument(
        "--expected_sha256", default=None, help="refuse to load a model file with another SHA-256"
    )
    args, _ = parser.parse_known_args(argv)
    model = LightGBMModel(args.model_name, args.model_uri, args.expected_sha256)
    if not model.load():
        logging.getLogger(__name__).error("model %s not loaded; not serving", args.model_name)
        return 3
    kserve.ModelServer(
        http_port=args.http_port, grpc_port=args.grpc_port, enable_grpc=args.enable_grpc, workers=1
    ).start([model])
    return 0


if __name__ == "__main__":
    sys.exit(main())
