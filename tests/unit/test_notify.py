"""Alerts reach a webhook when one is configured, and the log always."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from ops.notify import notify
from tests.support import http_server

ALERT = {"model": "fraud", "kind": "drift", "severity": "alarm", "message": "amount drifts"}


class _Hook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []
    status = 204

    def do_POST(self) -> None:  # noqa: N802
        _Hook.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(_Hook.status)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hook() -> Iterator[str]:
    with http_server(_Hook) as base:
        yield base + "/hook"


def test_webhook_receives_the_alert(hook: str) -> None:
    assert notify(ALERT, webhook=hook) == "webhook"
    assert _Hook.received[-1] == ALERT


def test_a_failing_webhook_falls_back_to_the_log(
    hook: str, caplog: pytest.LogCaptureFixture
) -> None:
    _Hook.status = 500
    try:
        with caplog.at_level(logging.ERROR, logger="govml.alerts"):
            assert notify(ALERT, webhook=hook) == "log"
    finally:
        _Hook.status = 204
    assert "answered 500" in caplog.text or "failed" in caplog.text
    assert "[ALARM] fraud: amount drifts" in caplog.text
    with caplog.at_level(logging.ERROR, logger="govml.alerts"):
        assert notify(ALERT, webhook="http://127.0.0.1:9/nowhere") == "log"


def test_without_a_webhook_the_alert_is_logged(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GOVML_ALERT_WEBHOOK", raising=False)
    with caplog.at_level(logging.WARNING, logger="govml.alerts"):
        assert notify(ALERT) == "log"
    assert "[ALARM] fraud: amount drifts" in caplog.text
