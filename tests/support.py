"""Helpers shared by the integration and browser tests."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stack_env(var_dir: Path, **extra: str) -> dict[str, str]:
    """The environment for an isolated embedded stack: own folder, free ports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOVML_", "AIRFLOW"))}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(
        {
            "GOVML_VAR_DIR": str(var_dir),
            "GOVML_AIRFLOW_PORT": str(free_port()),
            "GOVML_MLFLOW_PORT": str(free_port()),
        }
    )
    env.update(extra)
    return env
