"""The stack's supervised processes: each service runs in its own process group with a
pid file and a log in the run folder, and carries the stack's marker in its environment;
liveness and health checks, and the tail of a log for error messages."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from pipelines.config import Settings
from pipelines.errors import StackError

log = logging.getLogger(__name__)

MARKER = "GOVML_STACK_ID"


@dataclass(frozen=True)
class Service:
    """One long-running process of the stack."""

    name: str
    argv: list[str]
    url: str | None = None
    health_url: str | None = None
    port: int | None = None
    env: dict[str, str] = field(default_factory=dict)


def stack_id(settings: Settings) -> str:
    """A stable id for this stack (its run folder), used to find its processes."""
    return hashlib.sha256(str(settings.run_dir).encode()).hexdigest()[:16]


def pid_file(settings: Settings, name: str) -> Path:
    return settings.run_dir / f"{name}.pid"


def log_file(settings: Settings, name: str) -> Path:
    return settings.run_dir / f"{name}.log"


def read_pid(settings: Settings, name: str) -> int | None:
    path = pid_file(settings, name)
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def pid_alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def http_ok(url: str, timeout: float = 2.0) -> tuple[bool, str]:
    """GET ``url``; True when it answers 2xx. Returns the body's first bytes too."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (loopback)
            body = resp.read(4096).decode("utf-8", "replace")
            return 200 <= resp.status < 300, body
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return False, str(exc)


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def base_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env[MARKER] = stack_id(settings)
    env["PYTHONUNBUFFERED"] = "1"
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
    return env


def start_service(settings: Settings, svc: Service) -> int:
    """Start one service in a new process group; return its pid."""
    pid = read_pid(settings, svc.name)
    if pid_alive(pid):
        log.info("%s already running (pid %s)", svc.name, pid)
        assert pid is not None
        return pid
    if svc.port is not None and port_in_use("127.0.0.1", svc.port):
        raise StackError(
            f"{svc.name}: port {svc.port} is already in use by another process; "
            "stop it or choose another port (see pipelines/config.py for the variable)"
        )
    env = base_env(settings) | svc.env
    out = log_file(settings, svc.name).open("ab")
    proc = subprocess.Popen(  # noqa: S603 (our own binaries)
        svc.argv,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        cwd=settings.home,
    )
    out.close()
    pid_file(settings, svc.name).write_text(f"{proc.pid}\n")
    log.info("started %s (pid %s)", svc.name, proc.pid)
    return proc.pid


def wait_healthy(
    settings: Settings,
    svc: Service,
    timeout: float = 240.0,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Wait until the service answers its health URL, or fail with its log tail."""
    deadline = clock() + timeout
    while True:
        if not pid_alive(read_pid(settings, svc.name)):
            raise StackError(
                f"{svc.name} exited during start-up; last lines of "
                f"{log_file(settings, svc.name)}:\n{log_tail(log_file(settings, svc.name))}"
            )
        if svc.health_url is None:
            return
        ok, _ = http_ok(svc.health_url)
        if ok:
            return
        if clock() > deadline:
            raise StackError(
                f"{svc.name} did not answer {svc.health_url} within {timeout:.0f}s; "
                f"see {log_file(settings, svc.name)}"
            )
        time.sleep(1.0)


def marked_processes(settings: Settings) -> list[psutil.Process]:
    """Every live process carrying this stack's marker (any process group)."""
    marker = stack_id(settings)
    found = []
    me = os.getpid()
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == me:
            continue
        try:
            if proc.environ().get(MARKER) == marker:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found
