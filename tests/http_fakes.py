"""Fake HTTP services for the tests: a request handler that answers JSON and logs
nothing. Standard library only: the fake Kubernetes API server of
``tests/unit/test_manifests.py`` runs it with .venv-serving's Python too."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from typing import Any


class JsonHandler(BaseHTTPRequestHandler):
    """A handler whose ``do_*`` methods answer with :meth:`reply`."""

    def reply(self, code: int, body: Any) -> None:
        """Send ``body`` as the JSON response, with status ``code``."""
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass
