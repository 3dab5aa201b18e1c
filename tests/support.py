"""Helpers shared by the tests: waiting, ports, PostgreSQL, the embedded stack's
environment and stores, model servers and the prediction log (``govml stack up`` and the
stack's Airflow REST API: ``tests.airflow_api``; specs and generated data:
``tests.datasets``; V2 request bodies: ``tests.v2_protocol``; registering, approving and
releasing versions: ``tests.releases``; the German Credit model and its server:
``tests.german_credit``)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SERVING_PY = REPO / ".venv-serving" / "bin" / "python"


# The PostgreSQL server of the ``postgres`` tests (and of bench_audit.py when it answers).
PG_ADMIN_URL = os.environ.get(
    "GOVML_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def pg_unavailable(url: str = PG_ADMIN_URL) -> str | None:
    """None when the PostgreSQL server at ``url`` answers, else the reason it does not."""
    try:
        from sqlalchemy import create_engine, text

        engine = create_engine(url, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:  # noqa: BLE001 (any failure means: not available)
        return str(exc).splitlines()[0]


def wait_until(
    condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1
) -> Any:
    """Poll ``condition`` until it returns a truthy value (returned) or ``timeout``
    seconds pass; then fail naming ``what`` was awaited (and the last exception the
    condition raised, if any). The tests wait with this, never with a fixed sleep."""

    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = condition()
        except (OSError, AssertionError, ValueError, KeyError) as exc:
            value, last_error = None, exc
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error is not None else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{detail}")
        time.sleep(interval)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# What points an MLflow client at a server and logs it in.
MLFLOW_CLIENT_VARIABLES = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)


def stack_env(var_dir: Path, **extra: str) -> dict[str, str]:
    """The environment for an isolated embedded stack: own folder, free ports, and no
    MLflow server or login of this process (an earlier test's client in this process may
    have logged in to its own stack: its stack's clients log in as their own service
    account)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOVML_", "AIRFLOW"))}
    for name in MLFLOW_CLIENT_VARIABLES:
        env.pop(name, None)
    env.update(
        {
            "GOVML_VAR_DIR": str(var_dir),
            "GOVML_AIRFLOW_PORT": str(free_port()),
            "GOVML_MLFLOW_PORT": str(free_port()),
        }
    )
    env.update(extra)
    return env


def registry_stack(base: Path) -> tuple[dict[str, str], Any]:
    """:func:`stack_env` for a stack whose state is in ``base/var``, with the MLflow
    registry in a SQLite file there (used directly: no tracking server runs), and the
    settings it makes."""
    from pipelines.config import load_settings

    var = base / "var"
    env = stack_env(var, MLFLOW_TRACKING_URI=f"sqlite:///{var / 'mlflow' / 'mlflow.db'}")
    return env, load_settings(env)


@contextlib.contextmanager
def environ(env: dict[str, str], replace: bool = False) -> Iterator[None]:
    """``os.environ`` with ``env`` on top (``replace``: ``env`` alone) while the context is
    open; as it was afterwards."""
    saved = dict(os.environ)
    if replace:
        os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def prepare_stores(env: dict[str, str], settings: Any = None) -> Any:
    """The stores of the stack of ``env`` (``settings``: its settings, loaded from ``env``
    if not given) created as ``govml run`` prepares them, with ``env`` in ``os.environ``
    (Airflow's migrated metadata DB, the governance and MLflow stores): the settings.

    The first SQLite metadata DB migrated here is kept; later ones start from a copy of
    it (:func:`seed_airflow_db`)."""
    from ops import stack
    from pipelines.config import load_settings

    settings = settings or load_settings(env)
    path = _sqlite_path(settings.airflow_db_url)
    empty = path is not None and not path.exists() and not _MIGRATED_AIRFLOW_DB
    seed_airflow_db(settings)
    with environ(env):
        stack.prepare_stores(settings)
    if empty:  # migrated from nothing just now: the session's copy
        _MIGRATED_AIRFLOW_DB.append(path.read_bytes())
    return settings


# A freshly migrated SQLite Airflow metadata DB of this session (nothing in it but the
# schema, the default pool and the log templates: it names no folder of its stack).
_MIGRATED_AIRFLOW_DB: list[bytes] = []


def _sqlite_path(url: str) -> Path | None:
    return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None


def seed_airflow_db(settings: Any) -> None:
    """A new stack's SQLite Airflow metadata DB as a copy of the one migrated first in this
    session (if any): ``airflow db migrate`` (``govml run``, ``govml stack up``) then finds
    it current, which takes half the time of migrating an empty one."""
    path = _sqlite_path(settings.airflow_db_url)
    if path is None or path.exists() or not _MIGRATED_AIRFLOW_DB:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_MIGRATED_AIRFLOW_DB[0])


def single_spec_dir(root: Path, dest: Path, name: str) -> Path:
    """A specs folder holding one spec, unscheduled (lifecycle and monitoring): only the
    runs a test triggers run.

    (A scheduled run would start when the stack starts and wait at its approval gate,
    and the DAG runs one run at a time.)
    """
    import yaml

    dest.mkdir(parents=True, exist_ok=True)
    data = yaml.safe_load((root / "specs" / f"{name}.yaml").read_text())
    data["schedule"] = "none"
    data["monitoring"] = {**(data.get("monitoring") or {}), "schedule": "none"}
    (dest / f"{name}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return dest


def german_credit_stack_env(base: Path, **extra: str) -> dict[str, str]:
    """:func:`stack_env` for a stack whose state is in ``base/var`` and whose specs folder
    (``GOVML_SPECS_DIR``, ``base/specs``) holds the German Credit spec alone, unscheduled
    (:func:`single_spec_dir`); ``extra`` on top."""
    specs = single_spec_dir(REPO, base / "specs", "german_credit")
    return stack_env(base / "var", GOVML_SPECS_DIR=str(specs), **extra)


def run_async(coroutine: Any) -> Any:
    """``asyncio.run`` in a fresh thread: a test's coroutine gets an event loop of its
    own even if an earlier test (a library it drove) left one marked running in the
    main thread, where ``asyncio.run`` would refuse to start."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-loop") as pool:
        return pool.submit(asyncio.run, coroutine).result()


# ----------------------------------------------------------------------------- model servers
# The model server (python -m serving, .venv-serving) on loopback: started, awaited,
# called and stopped (the German Credit server of the strict-input and security tests:
# ``tests.german_credit``).
GERMAN_CREDIT = "german_credit"


def http_call(
    url: str,
    body: object | None = None,
    token: str | None = None,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 15.0,
) -> tuple[int, Any, dict[str, str]]:
    """POST ``body`` (JSON) or ``raw`` bytes, else GET: (status, JSON or text, headers).
    ``Content-Type`` is ``application/json`` unless ``headers`` say otherwise."""
    import json
    import urllib.error
    import urllib.request

    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    for key, value in (headers or {}).items():
        req.add_header(key, value)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, text, head = resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as err:
        status, text, head = err.code, err.read(), dict(err.headers)
    try:
        return status, json.loads(text), head
    except ValueError:
        return status, text.decode(errors="replace"), head


def predict_request(
    base: str, model: str, row: dict, token: str, entity: str | None = None
) -> urllib.request.Request:
    """A V1 ``:predict`` request of one ``row`` for ``model`` at ``base`` (a model server
    or the gateway) with the bearer ``token``, and ``X-Govml-Entity: entity`` if given."""
    import json

    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    if entity is not None:
        headers["X-Govml-Entity"] = entity
    body = json.dumps({"instances": [row]}).encode()
    return urllib.request.Request(f"{base}/v1/models/{model}:predict", data=body, headers=headers)


def http_status(url: str, timeout: float = 5) -> int:
    """GET ``url``: its status code, 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return 0


def wait_http_ok(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    """Until ``url`` answers 200; fails at once (with ``log``) if ``proc`` exits."""

    def ready() -> bool:
        assert proc.poll() is None, log.read_text()[-3000:]
        return http_status(url, 2) == 200

    wait_until(ready, timeout, f"{url} to answer 200 (log {log})", interval=0.2)


def start_serving(args: list[str], log: Path) -> subprocess.Popen:
    """``python ARGS`` in .venv-serving in a process group of its own (see
    :func:`stop_serving`), its output to ``log``."""
    with log.open("w") as out:  # a file: a pipe nobody reads would block the server
        return subprocess.Popen(
            [str(SERVING_PY), *args], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def stop_serving(proc: subprocess.Popen) -> None:
    """Stop a :func:`start_serving` process group (woken first if a test froze it)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGCONT)
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def serving_process(
    args: list[str], log: Path, ready: str, timeout: float = 90
) -> Iterator[subprocess.Popen]:
    """:func:`start_serving` ``args`` (output to ``log``), ready once the URL ``ready``
    answers 200 (:func:`wait_http_ok`); stopped (:func:`stop_serving`) when the context
    closes, whatever happened."""
    proc = start_serving(args, log)
    try:
        wait_http_ok(ready, proc, log, timeout)
        yield proc
    finally:
        stop_serving(proc)


def model_server_argv(model: str, model_uri: Path | str, port: int, *args: str) -> list[str]:
    """The command line of the model server (``python -m serving`` in .venv-serving)
    serving ``model`` from the folder ``model_uri`` on HTTP ``port``, then ``args``."""
    return [
        str(SERVING_PY), "-m", "serving", "--model_name", model, "--model_uri", str(model_uri),
        "--http_port", str(port), *args,
    ]  # fmt: skip


def start_model_server(env: dict[str, str], log: Path, *args: str) -> Any:
    """``python -m serving ARGS`` in .venv-serving; output to ``log`` (a pipe nobody
    reads fills up and blocks the server's logging)."""
    import subprocess

    with log.open("w") as out:
        return subprocess.Popen(
            [str(SERVING_PY), "-m", "serving", "--enable_grpc", "false", *args],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )


def wait_model_ready(base: str, model: str, proc: Any, log: Path, timeout: float = 90) -> None:
    """Until ``model`` is ready; fails (with the server's output) if it exits or times out."""

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"model server exited {proc.returncode}:\n{log.read_text()}")
        try:
            if http_call(f"{base}/v2/models/{model}/ready", timeout=5)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise AssertionError(f"model server not ready in {timeout} s:\n{log.read_text()[-3000:]}")


def stop_model_server(proc: Any) -> None:
    """Stop a server started here (SIGTERM: it completes its prediction log)."""
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=60)


def logged_rows(log_dir: Path) -> list[dict[str, Any]]:
    """Every prediction-log row so far: complete files and the file being written
    (complete lines), each with its extra fields (``verb``, ``reasons``) merged in."""
    from serving.prediction_log_files import read_directory

    return read_directory(log_dir)


@contextlib.contextmanager
def http_server(handler: type) -> Iterator[str]:
    """An ``HTTPServer`` with ``handler`` on a free local port, served on a daemon thread
    while the context is open; yields its base URL (``http://127.0.0.1:<port>``)."""
    import threading
    from http.server import HTTPServer

    server = HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
