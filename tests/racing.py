"""Many threads or processes started at once, for the tests of races (the audit chain,
migrations, feature stores)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def run_threads(
    count: int, target: Callable[[int], Any], join_timeout: float | None = None
) -> None:
    """Run ``target(i)`` for ``i`` in ``range(count)``, each on its own thread, and wait."""
    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(join_timeout)


def run_together(script: str, worker_args: list[list[str]], folder: Path) -> list[str]:
    """One ``python -c script`` process per entry of ``worker_args``, each also given its
    own ``ready`` file and the shared ``go`` file as its last two arguments: they start,
    touch ``ready`` and wait; ``go`` releases them at once (after 90 s at the latest, or
    when one has already failed). Returns their standard outputs, each after exit code 0."""
    go = folder / "go"
    ready = [folder / f"ready-{i}" for i in range(len(worker_args))]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, *args, str(r), str(go)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args, r in zip(worker_args, ready, strict=True)
    ]
    deadline = time.monotonic() + 90
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        if any(p.poll() not in (None, 0) for p in procs):
            break
        time.sleep(0.02)
    go.touch()
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        outputs.append(out.strip())
    return outputs
