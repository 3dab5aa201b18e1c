"""Send monitoring alerts: to a webhook when one is configured, to the log otherwise.

``GOVML_ALERT_WEBHOOK`` (a URL) receives one JSON POST per alert:
``{"model", "version", "kind", "severity", "message", "details", "raised_at"}``. A webhook
that fails (unreachable, non-2xx) is logged and the alert is still written to the log: a
broken pager never hides an alert, and never fails the monitoring run.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.request
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("govml.alerts")

WEBHOOK_ENV = "GOVML_ALERT_WEBHOOK"


def notify(alert: Mapping[str, Any], webhook: str | None = None, timeout: float = 5.0) -> str:
    """Deliver one alert; returns where it went (``webhook`` or ``log``)."""
    url = webhook if webhook is not None else os.environ.get(WEBHOOK_ENV, "")
    line = f"[{alert.get('severity', 'warn').upper()}] {alert.get('model')}: {alert.get('message')}"
    if url:
        body = json.dumps(alert, default=str).encode()
        request = urllib.request.Request(
            url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310
                if 200 <= resp.status < 300:
                    log.info("alert sent to %s: %s", url, line)
                    return "webhook"
                log.error("alert webhook %s answered %s; alert: %s", url, resp.status, line)
        except OSError as exc:
            log.error("alert webhook %s failed (%s); alert: %s", url, exc, line)
        return "log"
    log.warning("%s", line)
    return "log"
