"""Where the project's servers listen: loopback unless an operator says otherwise.

The model server (``python -m serving``), the feature transformer and the gateway
listen on ``127.0.0.1``. Another address is an explicit choice: ``--host`` on the
command line, else ``GOVML_SERVING_BIND_HOST`` (e.g. ``0.0.0.0`` inside a container,
where the pod's network is the boundary). A non-loopback address is logged as a
warning when the server starts; bearer tokens are required wherever it listens.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from collections.abc import Mapping

from pipelines.errors import ConfigError

log = logging.getLogger(__name__)

BIND_HOST_ENV = "GOVML_SERVING_BIND_HOST"
LOOPBACK = "127.0.0.1"
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9-]{1,63})*$")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind_host(explicit: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """The address to listen on: ``explicit`` (``--host``), else ``GOVML_SERVING_BIND_HOST``,
    else 127.0.0.1. Warns when it is not loopback; ConfigError when it is no address."""
    env = os.environ if env is None else env
    source = "--host" if explicit else BIND_HOST_ENV
    host = (explicit or env.get(BIND_HOST_ENV) or LOOPBACK).strip()
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        if not _HOSTNAME.match(host):
            raise ConfigError(f"{source}={host!r}: not an IP address or host name") from None
    if not is_loopback(host):
        log.warning(
            "listening on %s (%s), not loopback: any host that reaches this address can "
            "call the server (bearer tokens are still required)",
            host,
            source,
        )
    return host
