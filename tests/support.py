"""Helpers shared by the tests: waiting, ports, the embedded stack, model servers and the
prediction log (specs and generated data: ``tests.datasets``; V2 request bodies:
``tests.v2_protocol``)."""

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

from tests.datasets import spec_of, with_training, write_ingest

REPO = Path(__file__).resolve().parents[1]
SERVING_PY = REPO / ".venv-serving" / "bin" / "python"


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


@contextlib.contextmanager
def running_stack(var_dir: Path, **extra: str) -> Iterator[Any]:
    """``govml stack up`` in an isolated environment (:func:`stack_env`); ``govml stack
    down`` afterwards, whatever happened. Yields ``env``, ``settings``, ``api`` (the
    stack's :class:`AirflowAPI`) and ``up`` (the completed ``stack up``)."""
    import subprocess
    from types import SimpleNamespace

    from pipelines.config import load_settings

    govml = str(REPO / ".venv" / "bin" / "govml")
    env = stack_env(var_dir, **extra)
    try:
        up = subprocess.run(
            [govml, "stack", "up"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
        )
        assert up.returncode == 0, up.stdout + up.stderr
        settings = load_settings(env)
        yield SimpleNamespace(env=env, settings=settings, api=AirflowAPI(settings), up=up)
    finally:
        subprocess.run([govml, "stack", "down"], cwd=REPO, env=env, timeout=300, check=False)


def register_booster(
    settings: Any, booster: Any, model: str, experiment: str, run_name: str | None = None
) -> str:
    """Log ``booster`` in a run of ``experiment`` (made in the stack's artifact store if
    new) on the stack's MLflow server and register it as a version of ``model``: the
    version number."""
    import mlflow
    import mlflow.lightgbm

    from registry.mlflow_registry import artifact_location_for

    uri = settings.mlflow_tracking_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = mlflow.MlflowClient(uri, uri)
    if client.get_experiment_by_name(experiment) is None:
        client.create_experiment(
            experiment, artifact_location=artifact_location_for(uri, settings.mlflow_artifacts)
        )
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_name):
        info = mlflow.lightgbm.log_model(booster, name="model")
    return str(mlflow.register_model(info.model_uri, model).version)


class AirflowAPI:
    """The stack's Airflow REST API, as the users `make up` created."""

    def __init__(self, settings) -> None:  # noqa: ANN001
        import json

        self.base = settings.airflow_url
        self.passwords = json.loads((settings.airflow_home / "passwords.json").read_text())

    def call(
        self, method: str, path: str, body: dict | None = None, user: str = "operator"
    ) -> tuple[int, object]:
        import json
        import urllib.error
        import urllib.request

        headers = {"Content-Type": "application/json"}
        if user:
            headers["Authorization"] = f"Bearer {self.token(user)}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                return err.code, json.loads(raw)
            except ValueError:
                return err.code, raw.decode(errors="replace")

    def token(self, user: str) -> str:
        import json
        import urllib.request

        req = urllib.request.Request(
            f"{self.base}/auth/token",
            data=json.dumps({"username": user, "password": self.passwords[user]}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())["access_token"]

    @staticmethod
    def _run_path(dag: str, run_id: str) -> str:
        from urllib.parse import quote

        return f"/api/v2/dags/{dag}/dagRuns/{quote(run_id, safe='')}"

    def wait_for_dag(self, dag: str, timeout: float = 180) -> None:

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # the dag-processor parses dags/ after start-up
            if self.call("GET", f"/api/v2/dags/{dag}")[0] == 200:
                return
            time.sleep(2)
        raise AssertionError(f"{dag} was not parsed by the dag-processor in {timeout} s")

    def trigger(self, dag: str, conf: dict | None = None, user: str = "operator") -> str:
        self.wait_for_dag(dag)
        code, run = self.call(
            "POST", f"/api/v2/dags/{dag}/dagRuns", {"logical_date": None, "conf": conf or {}}, user
        )
        assert code == 200, run
        return run["dag_run_id"]  # type: ignore[index]

    def run_state(self, dag: str, run_id: str) -> str:
        return self.call("GET", self._run_path(dag, run_id))[1]["state"]  # type: ignore[index]

    def task_state(self, dag: str, run_id: str, task: str) -> str | None:
        code, ti = self.call("GET", f"{self._run_path(dag, run_id)}/taskInstances/{task}")
        return ti.get("state") if code == 200 and isinstance(ti, dict) else None

    def hitl(self, dag: str, run_id: str, task: str) -> dict:
        code, body = self.call(
            "GET", f"{self._run_path(dag, run_id)}/taskInstances/{task}/-1/hitlDetails"
        )
        assert code == 200, body
        return body  # type: ignore[return-value]

    def answer(
        self, dag: str, run_id: str, task: str, option: str, reason: str, user: str
    ) -> tuple[int, object]:
        from ops.approval_form import answer_body

        return self.call(
            "PATCH",
            f"{self._run_path(dag, run_id)}/taskInstances/{task}/-1/hitlDetails",
            answer_body(option, reason),
            user,
        )

    def wait_awaiting_input(
        self, dag: str, run_id: str, task: str, timeout: float, settle: float = 5.0
    ) -> None:
        """Until the task waits for a (new) answer: awaiting_input with no response, still
        so ``settle`` seconds later.

        An answer given within a second of the task pausing can race Airflow's scheduler
        (the paused task process's exit is processed after the answer moved the task on,
        and the scheduler fails the task instance); people do not answer that fast, and
        a loaded CI machine widens the window, so the tests wait as a person would.
        """

        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            state = self.task_state(dag, run_id, task)
            if state == "awaiting_input" and not self.hitl(dag, run_id, task).get(
                "response_received"
            ):
                time.sleep(settle)
                if self.task_state(dag, run_id, task) == "awaiting_input":
                    return
                continue
            if self.run_state(dag, run_id) in ("failed", "success"):
                break
            time.sleep(3)
        raise AssertionError(f"{task} not awaiting input (state {state}, run {run_id})")

    def wait_run(self, dag: str, run_id: str, timeout: float) -> str:

        deadline = time.monotonic() + timeout
        state = self.run_state(dag, run_id)
        while state in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(3)
            state = self.run_state(dag, run_id)
        return state


def run_async(coroutine: Any) -> Any:
    """``asyncio.run`` in a fresh thread: a test's coroutine gets an event loop of its
    own even if an earlier test (a library it drove) left one marked running in the
    main thread, where ``asyncio.run`` would refuse to start."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-loop") as pool:
        return pool.submit(asyncio.run, coroutine).result()


# ----------------------------------------------------------------------------- model servers
# The model server (python -m serving, .venv-serving) on loopback with the German Credit
# model trained by the real pipeline stages, bearer tokens and a prediction log: shared by
# tests/integration/test_model_server_strict.py and the serving tests in tests/security/.
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


def train_german_credit(root: Path) -> Any:
    """The German Credit model trained by the real pipeline stages (features, training),
    60 rounds: ``spec``, ``booster``, ``test`` (the test split), ``rows`` (its model
    features as JSON records), ``model_dir``, ``sha256``."""
    import hashlib
    import json
    from types import SimpleNamespace

    from pipelines.data.german_credit import load_german_credit
    from pipelines.features import build_features, read_split
    from pipelines.stages.train import train
    from pipelines.training import load_model

    spec = with_training(spec_of(GERMAN_CREDIT), num_boost_round=60, early_stopping_rounds=60)
    ingest = write_ingest(spec, load_german_credit(), root / "ingest")
    build_features(spec, ingest, root / "features")
    train(spec, root / "features", root / "train")
    booster = load_model(root / "train" / "model.txt")
    test = read_split(spec, root / "features", "test")
    frame = test[list(booster.feature_name())]
    values = frame.astype(object).where(frame.notna(), None)
    rows = json.loads(json.dumps(values.to_dict("records"), default=lambda o: o.item()))
    digest = hashlib.sha256((root / "train" / "model.txt").read_bytes()).hexdigest()
    return SimpleNamespace(
        spec=spec, booster=booster, test=test, rows=rows, model_dir=root / "train", sha256=digest
    )


def serve_german_credit(
    root: Path, trained: Any, *, version: str = "7", max_body_bytes: int = 200_000
) -> Any:
    """A ready model server for ``trained`` (:func:`train_german_credit`) on a free
    loopback port: strict input (the spec), the approved SHA-256, version ``version``,
    a JSONL prediction log in ``root/predictions`` and two clients, ``core-banking``
    (scope predict: ``token``) and ``dashboards`` (scope explain: ``explain_token``).
    Stop it with :func:`stop_model_server` (``.proc``)."""
    import os
    from types import SimpleNamespace

    from serving.token_files import write_records
    from serving.token_records import generate_token

    predict_token, predict_record = generate_token("core-banking", ["predict"])
    explain_token, explain_record = generate_token("dashboards", ["explain"])
    tokens = root / "tokens.json"
    write_records(tokens, [predict_record, explain_record])
    port = free_port()
    env = dict(os.environ) | {"GOVML_PREDICTION_LOG_KEY": "k" * 32}
    log = root / "server.log"
    proc = start_model_server(
        env,
        log,
        "--model_name", GERMAN_CREDIT,
        "--model_uri", str(trained.model_dir),
        "--expected_sha256", trained.sha256,
        "--spec", str(REPO / "specs" / f"{GERMAN_CREDIT}.yaml"),
        "--model_version", version,
        "--prediction_log", str(root / "predictions"),
        "--prediction_log_format", "jsonl",
        "--tokens", str(tokens),
        "--max_body_bytes", str(max_body_bytes),
        "--http_port", str(port),
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    wait_model_ready(base, GERMAN_CREDIT, proc, log)
    return SimpleNamespace(
        base=base,
        proc=proc,
        token=predict_token,
        explain_token=explain_token,
        log_dir=root / "predictions",
        server_log=log,
        env=env,
        version=version,
    )


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
