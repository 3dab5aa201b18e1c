"""The fraud lifecycle DAG on generated transactions: wall time per stage, in total, and
the orchestration overhead (time outside the stage functions).

Two runs side by side on the same data:

* ``airflow``: the real DAG through ``dag.test()`` (Airflow metadata DB, task runner,
  XCom, OpenLineage listener), as ``govml run`` does;
* ``plain``: the same stage functions called one after another in one Python process,
  the floor any orchestrator adds to.

Overhead = DAG wall time − the sum of the stage functions' own time (each task records
it in ``timings/<task>.json`` of the run folder).

    python benchmarks/bench_lifecycle.py --rows 1000000 [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ops import stack  # noqa: E402
from pipelines.config import load_settings  # noqa: E402
from pipelines.runs import safe_run_id  # noqa: E402

PLAIN = r"""
import json, sys, time
from pathlib import Path
from pipelines.config import load_settings
from pipelines.runs import RunContext, resolve_source
settings = load_settings()
run = RunContext.create(Path(sys.argv[1]), "plain", json.loads(sys.argv[2]), settings)
times = {}
def timed(name, fn, *a, **k):
    t = time.perf_counter(); out = fn(*a, **k); times[name] = time.perf_counter() - t; return out
from pipelines.ingest import ingest
from validation.data_quality import validate_data
from pipelines.features import build_features
from pipelines.training import train
from pipelines.evaluation import evaluate
from validation.fairness import assess_fairness
from validation.explain import explain
from validation.gates import check_gates
from pipelines.errors import GateFailedError
timed("ingest", lambda: ingest(run.spec, resolve_source(run), run.stage_dir("ingest")))
data = run.stage_dir("ingest") / "data.parquet"
timed("validate_data", validate_data, run.spec, data, run.stage_dir("validate_data"))
timed("features", build_features, run.spec, data, run.stage_dir("features"))
f, t_ = run.stage_dir("features"), run.stage_dir("train")
timed("train", train, run.spec, f, t_)
timed("evaluate", evaluate, run.spec, f, t_, run.stage_dir("evaluate"))
e = run.stage_dir("evaluate")
timed("fairness", assess_fairness, run.spec, f, e, run.stage_dir("fairness"))
timed("explain", explain, run.spec, f, t_, e, run.stage_dir("explain"))
try:
    timed("gates", check_gates, run.spec, run.stage_dir("evaluate"), run.stage_dir("fairness"),
          run.stage_dir("explain"), run.stage_dir("gates"))
except GateFailedError:
    pass
print("PLAIN " + json.dumps(times))
"""


def _env(var_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOVML_", "AIRFLOW"))}
    env["GOVML_VAR_DIR"] = str(var_dir)
    settings = load_settings(env)
    env.update(stack.airflow_env(settings))
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{var_dir / 'mlflow' / 'mlflow.db'}"
    return env


def run_airflow(rows: int, var_dir: Path) -> dict:
    env = _env(var_dir)
    settings = load_settings(env)
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        stack.prepare_stores(settings)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    # generate the data first, outside the measured run (both variants reuse it)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "ops.cli",
            "data",
            "generate",
            "fraud",
            "--rows",
            str(rows),
            "--out",
            str(var_dir / "data" / "fraud" / f"custom-n_rows{rows}"),
        ],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    run_after = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    started = time.perf_counter()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ops.run_dag",
            str(ROOT / "specs" / "fraud.yaml"),
            "--conf",
            json.dumps({"n_rows": rows}),
            "--run-after",
            run_after.isoformat(),
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    total = time.perf_counter() - started
    run_dir = settings.runs_dir / "fraud" / safe_run_id(f"manual__{run_after.isoformat()}")
    stages = {
        p.stem: json.loads(p.read_text())["seconds"]
        for p in sorted((run_dir / "timings").glob("*.json"))
    }
    tasks = _task_durations(settings.airflow_home / "airflow.db", run_dir.name, run_after)
    state = "success" if result.returncode == 0 else "failed"
    if state != "success":
        print(result.stdout[-3000:], file=sys.stderr)
    return {"total": total, "stages": stages, "tasks": tasks, "state": state}


def _task_durations(db: Path, _folder: str, run_after: dt.datetime) -> dict[str, float]:
    """Each task instance's duration as Airflow recorded it (start to end)."""
    import sqlite3

    run_id = f"manual__{run_after.isoformat()}"
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT task_id, duration FROM task_instance WHERE run_id = ?", (run_id,)
        ).fetchall()
    return {task: float(seconds or 0.0) for task, seconds in rows}


def run_plain(rows: int, var_dir: Path) -> dict:
    env = _env(var_dir)
    started = time.perf_counter()
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            PLAIN,
            str(ROOT / "specs" / "fraud.yaml"),
            json.dumps({"n_rows": rows}),
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    total = time.perf_counter() - started
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("PLAIN "))
    return {"total": total, "stages": json.loads(line[len("PLAIN ") :])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="govml-bench-") as tmp:
        var_dir = Path(tmp) / "var"
        airflow = run_airflow(args.rows, var_dir)
        plain = run_plain(args.rows, var_dir)
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    stage_sum = sum(airflow["stages"].values())
    overhead = airflow["total"] - stage_sum
    task_sum = sum(airflow["tasks"].get(t, 0.0) for t in airflow["stages"])
    in_task = task_sum - stage_sum
    lines = [
        f"Fraud lifecycle DAG on {args.rows:,} generated transactions, every automated "
        f"stage up to the human approval gate (run state: {airflow['state']}).",
        "",
        "| stage | stage function in the DAG (s) | plain script (s) |",
        "| --- | ---: | ---: |",
    ]
    for stage, seconds in airflow["stages"].items():
        plain_s = plain["stages"].get(stage)
        shown = f"{plain_s:.1f}" if plain_s is not None else "–"
        lines.append(f"| {stage} | {seconds:.1f} | {shown} |")
    lines += [
        f"| **sum of stages** | {stage_sum:.1f} | {sum(plain['stages'].values()):.1f} |",
        f"| **wall time, whole run** | {airflow['total']:.1f} | {plain['total']:.1f} |",
        "",
        f"Orchestration overhead (DAG wall time − stage functions): {overhead:.1f} s = "
        f"{100 * overhead / airflow['total']:.1f} % of the run (target < 15 %; total target "
        f"< 600 s). Airflow run / plain script: {airflow['total'] / plain['total']:.2f}x. "
        f"Peak RSS of a child process: {peak_mib:,.0f} MiB. Data generation is outside "
        f"both measurements; the DAG's `register` stage (MLflow) has no plain counterpart.",
        "",
        f"Of the overhead, {in_task:.1f} s is inside the task instances (task runner, "
        f"XCom, OpenLineage events: Airflow's task durations {task_sum:.1f} s vs stage "
        f"functions {stage_sum:.1f} s) and {overhead - in_task:.1f} s is start-up and "
        "scheduling (interpreter, Airflow import, DAG parse, metadata DB), paid once per run; "
        "about 5 s of it is `dag.test()`'s in-process execution API building every API "
        "version's routes (cadwyn) before the first task. Bytecode is compiled at install "
        "(`make setup`), and OpenLineage emits from a thread, not a fork per event.",
    ]
    markdown = "\n".join(lines)
    print(markdown)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "title": "Fraud lifecycle DAG: time per stage and orchestration overhead",
                    "command": f"python benchmarks/bench_lifecycle.py --rows {args.rows}",
                    "markdown": markdown,
                    "results": {"airflow": airflow, "plain": plain, "overhead_s": overhead},
                },
                indent=2,
            )
        )
    return 0 if airflow["state"] == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
