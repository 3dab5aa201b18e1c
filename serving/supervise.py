"""Keep one model-server process running: restart it when it dies, stop it cleanly.

``python -m serving.supervise --state DIR -- python -m serving --model_name ...``

Runs detached (its own session) so it outlives whoever deployed it. It starts the
command, and when the child exits without being asked to (a crash, an OOM kill, a
``kill -9``) starts it again after a short back-off (doubling up to 30 s, reset once a
child has run for a minute). SIGTERM or SIGINT stops the child (SIGTERM, then SIGKILL
after a grace period) and exits. An exit code passed with ``--permanent-exit`` (the
server's "model refused") is final. ``DIR/supervisor.json`` records the pids, the
restart count and the last exit code; the child's output goes to ``DIR/server.log``.
Standard library only: it runs in either environment.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

GRACE_SECONDS = 20.0
MAX_BACKOFF = 30.0
STABLE_AFTER = 60.0


def _write_state(state_dir: Path, **values: object) -> None:
    path = state_dir / "supervisor.json"
    current = json.loads(path.read_text()) if path.exists() else {}
    current.update(values)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(current, indent=2, sort_keys=True))
    tmp.replace(path)


def supervise(command: list[str], state_dir: Path, permanent: frozenset[int] = frozenset()) -> int:
    """Run ``command`` until told to stop; an exit code in ``permanent`` is final."""
    state_dir.mkdir(parents=True, exist_ok=True)
    stopping = False
    child: subprocess.Popen | None = None

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    restarts = 0
    backoff = 1.0
    _write_state(state_dir, supervisor_pid=os.getpid(), command=command, restarts=0)
    with (state_dir / "server.log").open("a", buffering=1) as log:
        while not stopping:
            started = time.monotonic()
            child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            _write_state(state_dir, server_pid=child.pid, restarts=restarts, started_at=time.time())
            code = child.wait()
            if stopping:
                break
            if code in permanent:
                log.write(f"[supervise] server exited with {code}: permanent, not restarting\n")
                _write_state(state_dir, last_exit_code=code, server_pid=None, gave_up=True)
                return code
            ran = time.monotonic() - started
            backoff = 1.0 if ran > STABLE_AFTER else min(backoff * 2, MAX_BACKOFF)
            restarts += 1
            log.write(
                f"[supervise] server exited with {code} after {ran:.1f} s; "
                f"restart {restarts} in {backoff:.0f} s\n"
            )
            _write_state(state_dir, last_exit_code=code, restarts=restarts, server_pid=None)
            deadline = time.monotonic() + backoff
            while not stopping and time.monotonic() < deadline:
                time.sleep(0.1)
    if child is not None and child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout=GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    _write_state(state_dir, server_pid=None, stopped_at=time.time())
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print("usage: python -m serving.supervise --state DIR -- COMMAND...", file=sys.stderr)
        return 2
    split = argv.index("--")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--state", required=True, type=Path)
    parser.add_argument(
        "--permanent-exit",
        type=int,
        action="append",
        default=[],
        help="an exit code that means 'do not restart' (e.g. the model was refused)",
    )
    args = parser.parse_args(argv[:split])
    command = argv[split + 1 :]
    if not command:
        print("error: no command to supervise", file=sys.stderr)
        return 2
    return supervise(command, args.state, frozenset(args.permanent_exit))


if __name__ == "__main__":
    sys.exit(main())
