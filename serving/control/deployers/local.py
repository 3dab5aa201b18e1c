"""The ``local`` deployer: one supervised model-server process per deployed version.

``deploy`` starts ``python -m serving.supervise`` (detached, in its own session) from
the serving environment; the supervisor runs the KServe model server on a free
loopback port and restarts it if it dies. ``deploy`` returns once the model answers
``/v2/models/NAME/ready``; a server that refuses the artifact (SHA-256 mismatch) or
never becomes ready fails the deployment with the reason from the server's log, and
leaves nothing running. A release with a feature store (a spec with windowed
aggregates) also gets a supervised feature transformer (``python -m
serving.transformer``) in front of its server, in ``transformer/``; it becomes ready
only on warm state (its in-process store loaded from the release's history, or a
backfilled Redis namespace), and ``deploy`` waits for that too: the version takes no
traffic before its online state is rebuilt. State lives in ``<state root>/<model>-v<version>/``
(``release.json``, ``endpoint.json``, ``supervisor.json``, ``server.log``).

Closed by default: both servers listen on ``host`` (127.0.0.1 unless the deployer is
given another address, e.g. from ``GOVML_SERVING_BIND_HOST``) and check the
deployment's own bearer tokens, ``tokens.json`` in its folder, made on the first
deploy (:func:`serving.token_files.provision`) and kept on a redeploy of the same version.
The project's own client token (``service.token``, mode 0600) is what the transformer
presents to its model server; the endpoint names its file in ``details["token_file"]``
for the deploy step's smoke test. Adding or revoking a client in ``tokens.json``
(``govml serving token``) takes effect in both servers within seconds, no restart.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from pipelines.errors import DeploymentError, GovMLError
from serving.bind import LOOPBACK, is_loopback
from serving.control.deployers import Endpoint, Release
from serving.token_files import DeploymentTokens, deployment_tokens, provision

log = logging.getLogger(__name__)

REFUSED_EXIT = 3  # serving/__main__.py: the model was not loaded (e.g. SHA-256 mismatch)


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours is not alive
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return True


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _terminate_group(pid: int, timeout: float) -> None:
    """SIGTERM a supervisor's process group, SIGKILL it after ``timeout``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


class LocalDeployer:
    """Model servers as local processes (the embedded stack's deployment target)."""

    kind = "local"

    def __init__(
        self,
        state_root: Path,
        python: Path,
        *,
        host: str = LOOPBACK,
        env: dict[str, str] | None = None,
        ready_timeout: float = 120.0,
    ) -> None:
        """``host``: where the servers listen and are called (loopback by default; any
        other address is passed to them as an explicit ``--host``)."""
        self.state_root = Path(state_root)
        self.python = Path(python)
        self.host = host
        self.env = dict(os.environ if env is None else env)
        self.ready_timeout = ready_timeout

    # ------------------------------------------------------------------ helpers
    def _dir(self, name: str) -> Path:
        return self.state_root / name

    def _url(self, port: int) -> str:
        host = LOOPBACK if self.host in ("0.0.0.0", "::") else self.host  # call it locally
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def tokens(self, name: str) -> DeploymentTokens:
        """The deployment's token files (``tokens.json``, ``service.token``)."""
        return deployment_tokens(self._dir(name))

    def publish_tokens(self, name: str) -> str:
        """Nothing to copy: the servers watch ``tokens.json`` itself; where it is."""
        return f"{self.tokens(name).tokens} (its servers re-read it within seconds)"

    def _ready(self, url: str, model: str) -> bool:
        try:
            with urllib.request.urlopen(f"{url}/v2/models/{model}/ready", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _endpoint(self, release: Release, port: int, state: dict[str, Any]) -> Endpoint:
        return Endpoint(
            name=release.name,
            model_name=release.model_name,
            version=release.version,
            url=self._url(port),
            artifact_sha256=release.artifact_sha256,
            deployer=self.kind,
            details={
                "port": port,
                "state_dir": str(self._dir(release.name)),
                "token_file": str(self.tokens(release.name).service_token),
                **state,
            },
        )

    # ------------------------------------------------------------------ interface
    def deploy(self, release: Release, port: int | None = None) -> Endpoint:
        """Start (or find running) the server of this release; return once it is ready."""
        folder = self._dir(release.name)
        current = self.status(release.name)
        same = current.get("artifact_sha256") == release.artifact_sha256
        if release.feature_store:  # and its transformer must be running too
            same = same and bool((current.get("transformer") or {}).get("running"))
        same = same and self._closed(folder)
        if current.get("running") and same and self._ready(current["url"], release.model_name):
            log.info("%s already serving at %s", release.name, current["url"])
            return self._endpoint(release, int(current["port"]), current)
        if current.get("running"):
            self.stop(release.name)
        folder.mkdir(parents=True, exist_ok=True)
        for stale in ("supervisor.json", "endpoint.json"):
            (folder / stale).unlink(missing_ok=True)
        try:
            tokens = provision(folder)
        except GovMLError as exc:
            raise DeploymentError(f"{release.name}: its token files: {exc}") from None
        port = port or _free_port(self.host)
        (folder / "release.json").write_text(json.dumps(release.to_dict(), indent=2))
        server = [
            str(self.python), "-m", "serving",
            "--model_name", release.model_name,
            "--model_uri", release.model_uri,
            "--expected_sha256", release.artifact_sha256,
            "--http_port", str(port),
            "--enable_grpc", "false",
            "--model_version", release.version,
            "--prediction_log", str(folder / "predictions"),
        ]  # fmt: skip
        if release.spec_path:
            server += ["--spec", release.spec_path]
        server += self._guard(tokens)
        supervisor = self._supervise(folder, server)
        url = self._url(port)
        self._wait_ready(url, release, folder, supervisor, "the model server")
        endpoint: dict[str, Any] = {
            "url": url,
            "port": port,
            "supervisor_pid": supervisor.pid,
            "artifact_sha256": release.artifact_sha256,
            "deployed_at": time.time(),
        }
        if release.feature_store:
            try:
                endpoint["transformer"] = self._start_transformer(release, folder, port, tokens)
            except DeploymentError:
                self._cleanup(folder, supervisor)
                raise
        (folder / "endpoint.json").write_text(json.dumps(endpoint, indent=2))
        log.info("%s serving at %s (supervisor pid %d)", release.name, url, supervisor.pid)
        return self._endpoint(release, port, self.status(release.name))

    def _closed(self, folder: Path) -> bool:
        """Whether the deployment's running servers check its tokens: one started before
        tokens were enforced (or by hand without them) is restarted, never reused."""
        for state_dir in (folder, folder / "transformer"):
            command = _read_json(state_dir / "supervisor.json").get("command")
            if command is not None and "--tokens" not in command:
                return False
        return self.tokens(folder.name).tokens.is_file()

    def _guard(self, tokens: DeploymentTokens) -> list[str]:
        """The servers' token file and address (explicit: never left to their environment)."""
        if not is_loopback(self.host):
            log.warning("deploying servers that listen on %s, not loopback", self.host)
        return ["--tokens", str(tokens.tokens), "--host", self.host]

    def _supervise(self, folder: Path, server: list[str]) -> subprocess.Popen:
        command = [
            str(self.python), "-m", "serving.supervise",
            "--state", str(folder),
            "--permanent-exit", str(REFUSED_EXIT),
            "--", *server,
        ]  # fmt: skip
        return subprocess.Popen(
            command,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _wait_ready(
        self, url: str, release: Release, folder: Path, supervisor: subprocess.Popen, what: str
    ) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self._ready(url, release.model_name):
                return
            state = _read_json(folder / "supervisor.json")
            if supervisor.poll() is not None or state.get("gave_up"):
                self._cleanup(folder, supervisor)
                raise DeploymentError(
                    f"{release.name}: {what} refused to start "
                    f"(exit {state.get('last_exit_code', supervisor.returncode)}):\n"
                    + _tail(folder / "server.log")
                )
            time.sleep(0.3)
        self._cleanup(folder, supervisor)
        raise DeploymentError(
            f"{release.name}: {what} not ready within {self.ready_timeout:.0f} s:\n"
            + _tail(folder / "server.log")
        )

    def _start_transformer(
        self, release: Release, folder: Path, predictor_port: int, tokens: DeploymentTokens
    ) -> dict:
        """The feature transformer in front of the model server, ready on warm state only
        (the in-process store loads the release's history first; a Redis namespace must
        carry its backfill record)."""
        if not release.spec_path:
            raise DeploymentError(f"{release.name}: the feature transformer needs the spec")
        tdir = folder / "transformer"
        tdir.mkdir(parents=True, exist_ok=True)
        (tdir / "supervisor.json").unlink(missing_ok=True)
        port = _free_port(self.host)
        command = [
            str(self.python), "-m", "serving.transformer",
            "--model_name", release.model_name,
            "--spec", release.spec_path,
            "--predictor_host", self._url(predictor_port).removeprefix("http://"),
            "--predictor_token_file", str(tokens.service_token),
            "--http_port", str(port),
            "--enable_grpc", "false",
            "--feature_store", str(release.feature_store),
        ]  # fmt: skip
        if release.feature_store == "memory":
            if not release.history:
                raise DeploymentError(
                    f"{release.name}: the in-process feature store needs a history to warm up"
                )
            command += ["--history", release.history]
        command += self._guard(tokens)
        supervisor = self._supervise(tdir, command)
        url = self._url(port)
        self._wait_ready(url, release, tdir, supervisor, "the feature transformer")
        log.info("%s feature transformer at %s", release.name, url)
        return {"url": url, "port": port, "supervisor_pid": supervisor.pid}

    def _cleanup(self, folder: Path, supervisor: subprocess.Popen) -> None:
        if supervisor.poll() is None:
            os.killpg(supervisor.pid, signal.SIGTERM)
            try:
                supervisor.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(supervisor.pid, signal.SIGKILL)
                supervisor.wait()
        (folder / "endpoint.json").unlink(missing_ok=True)

    def status(self, name: str) -> dict[str, Any]:
        folder = self._dir(name)
        endpoint = _read_json(folder / "endpoint.json")
        state = _read_json(folder / "supervisor.json")
        pid = endpoint.get("supervisor_pid") or state.get("supervisor_pid")
        transformer = endpoint.get("transformer")
        if transformer:
            tstate = _read_json(folder / "transformer" / "supervisor.json")
            transformer = {
                **transformer,
                "running": _alive(transformer.get("supervisor_pid")),
                "restarts": tstate.get("restarts", 0),
            }
        return {
            **endpoint,
            **({"transformer": transformer} if transformer else {}),
            "running": _alive(pid),
            "server_pid": state.get("server_pid"),
            "restarts": state.get("restarts", 0),
            "last_exit_code": state.get("last_exit_code"),
        }

    def stop(self, name: str, timeout: float = 30.0) -> bool:
        """Stop the supervisor and its server; True if something was running."""
        folder = self._dir(name)
        state = _read_json(folder / "supervisor.json")
        endpoint = _read_json(folder / "endpoint.json")
        pid = endpoint.get("supervisor_pid") or state.get("supervisor_pid")
        transformer = (endpoint.get("transformer") or {}).get("supervisor_pid") or _read_json(
            folder / "transformer" / "supervisor.json"
        ).get("supervisor_pid")
        if _alive(transformer):  # first: it forwards to the model server
            _terminate_group(transformer, timeout)
        if not _alive(pid):
            (folder / "endpoint.json").unlink(missing_ok=True)
            return False
        _terminate_group(pid, timeout)
        (folder / "endpoint.json").unlink(missing_ok=True)
        return True

    def deployed(self) -> list[str]:
        if not self.state_root.is_dir():
            return []
        return sorted(p.name for p in self.state_root.iterdir() if (p / "release.json").exists())
