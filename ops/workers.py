"""Worker identity for Airflow's ``hostname_callable``.

Several Celery workers on one machine (the embedded stack starts two) would all record
the same host name on the task instances they run; ``GOVML_WORKER_NAME`` (set per worker
by ``make up``) tells them apart in the UI, the REST API and the logs. Everywhere else
the machine's fully qualified name is used, as Airflow's default does.
"""

from __future__ import annotations

import os
import socket


def hostname() -> str:
    return os.environ.get("GOVML_WORKER_NAME") or socket.getfqdn()
