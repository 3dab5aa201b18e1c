"""A lifecycle run through the embedded stack's scheduler: Airflow's plain LocalExecutor
against the stack's PreloadingLocalExecutor (``dags/govml_airflow/executor.py``).

Each round starts a fresh embedded stack (German Credit only, unscheduled) with one
executor, triggers the German Credit lifecycle over the REST API and waits until the run
waits at its approval task; rounds alternate between the executors, so both see the
same machine. Measured per round: the wall time from trigger to the approval request,
and the CPU time of every stack process and its descendants (scheduler, workers, task
processes, servers) over that span; and the stack's CPU from its start until it is
ready for the run (the DAG parsed and, with the preloading executor, the preload done).

    python benchmarks/bench_stack_run.py [--rounds 2] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import write_result  # noqa: E402

from ops import stack  # noqa: E402
from pipelines.config import load_settings  # noqa: E402
from tests.airflow_api import AirflowAPI  # noqa: E402
from tests.support import german_credit_stack_env, seed_airflow_db, wait_until  # noqa: E402

DAG = "german_credit_lifecycle"
EXECUTORS = {"LocalExecutor (Airflow's)": "LocalExecutor", "PreloadingLocalExecutor": None}


def stack_cpu_s(var_dir: str) -> float:
    """CPU seconds used so far by the stack in ``var_dir``: its processes (found by their
    environment) and all their descendants, reaped children included."""
    import psutil

    seen: set[int] = {os.getpid()}
    total = 0.0
    for proc in psutil.process_iter():
        try:
            if proc.pid in seen or proc.environ().get("GOVML_VAR_DIR") != var_dir:
                continue
            family = [proc, *proc.children(recursive=True)]
        except psutil.Error:
            continue
        for member in family:
            if member.pid in seen:
                continue
            seen.add(member.pid)
            try:
                t = member.cpu_times()
            except psutil.Error:
                continue
            total += t.user + t.system + t.children_user + t.children_system
    return total


def _preloaded(settings: Any) -> bool:
    log = settings.run_dir / "airflow-scheduler.log"
    return "for the task processes in" in log.read_text(errors="replace")


def one_round(executor: str | None) -> dict[str, float]:
    """One fresh stack with ``executor`` (None: the stack's own), one run to approval."""
    default = stack.LOCAL_EXECUTOR
    with tempfile.TemporaryDirectory(prefix="bench-stack-run-") as tmp:
        env = german_credit_stack_env(Path(tmp))
        settings = load_settings(env)
        seed_airflow_db(settings)
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(env)
        stack.LOCAL_EXECUTOR = executor or default
        try:
            stack.up(settings, report=lambda _line: None)
            api = AirflowAPI(settings)
            api.wait_for_dag(DAG)
            if executor is None:  # the scheduler's preload is part of the start
                wait_until(lambda: _preloaded(settings), 300, "the scheduler's preload")
            before, started = stack_cpu_s(env["GOVML_VAR_DIR"]), time.monotonic()
            run_id = api.trigger(DAG, {"tuning_trials": 0})
            api.wait_awaiting_input(DAG, run_id, "approval", timeout=900, settle=0.5)
            wall = time.monotonic() - started
            run_cpu = stack_cpu_s(env["GOVML_VAR_DIR"]) - before
            up_cpu = before
        finally:
            stack.LOCAL_EXECUTOR = default
            stack.down(settings)
            os.environ.clear()
            os.environ.update(saved)
    return {"up_cpu_s": up_cpu, "run_wall_s": wall, "run_cpu_s": run_cpu}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in EXECUTORS}
    for i in range(args.rounds):
        for name, executor in EXECUTORS.items():
            rounds[name].append(one_round(executor))
            print(f"round {i + 1} {name}: {rounds[name][-1]}", file=sys.stderr, flush=True)
    results: dict[str, Any] = {
        name: {key: median(r[key] for r in runs) for key in runs[0]} | {"rounds": runs}
        for name, runs in rounds.items()
    }
    lines = [
        "| executor | run to approval: wall (s) | run: CPU (s) | stack start to ready: CPU (s) |",
        "|---|---:|---:|---:|",
    ]
    for name, figures in results.items():
        lines.append(
            f"| {name} | {figures['run_wall_s']:.1f} | {figures['run_cpu_s']:.1f} "
            f"| {figures['up_cpu_s']:.1f} |"
        )
    markdown = "\n".join(lines) + (
        f"\n\nMedians of {args.rounds} interleaved round(s), each on a fresh stack. The run "
        "is the German Credit lifecycle from its trigger to its approval request (12 "
        "tasks, each a forked task process); CPU counts every stack process and its "
        "descendants.\n"
    )
    print(markdown)
    if args.json:
        write_result(
            args.json,
            {
                "title": "Lifecycle run through the stack: preloaded task processes",
                "command": "python benchmarks/bench_stack_run.py",
                "markdown": markdown,
                "results": results,
            },
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
