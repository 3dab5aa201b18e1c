"""Run one spec's lifecycle DAG in-process with ``dag.test()`` (no scheduler needed).

``python -m ops.run_dag SPEC_PATH --conf '{"n_rows": 20000}' --run-after ISO``
(``--dag rollout --conf '{"version": "7"}'``: the spec's rollout DAG, to the end;
``--dag monitoring``: the spec's monitoring DAG)

Used by ``govml run`` (which adds the progress display) and by the tests. The
Airflow configuration comes from the environment (``govml stack env``); the exit
code is 0 when the run succeeded. The final line is a JSON summary.

``--until TASK`` runs the DAG up to that task (default ``request_approval``: the
version is registered and its approval requested). ``--until deploy`` includes the
human approval gate: ``dag.test()`` then waits until a reviewer answers the Required
Action, which needs an api-server on the same metadata database (``make up``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import sys
from pathlib import Path

from ops.run_summary import write_summary
from pipelines.config import load_settings
from pipelines.spec import load_spec

DEFAULT_UNTIL = "request_approval"


def lifecycle_run_id(run_after: dt.datetime) -> str:
    """The run id ``dag.test`` gives a manual run at ``run_after`` (its logical date)."""
    return f"manual__{run_after.isoformat()}"


def load_dag(spec_path: Path, kind: str = "lifecycle"):  # noqa: ANN201
    """The spec's ``lifecycle`` or ``rollout`` DAG, built from the DAG file."""
    settings = load_settings()
    module_path = settings.home / "dags" / f"{kind}.py"
    module_spec = importlib.util.spec_from_file_location(f"govml_{kind}_dags", module_path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    spec = load_spec(spec_path)
    if kind == "rollout":
        return module.build_rollout_dag(spec, str(spec_path))
    if kind == "monitoring":
        return module.build_monitoring_dag(spec, spec_path)
    return module.build_lifecycle_dag(spec, spec_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("spec", type=Path)
    parser.add_argument("--conf", default="{}", help="run parameters as JSON")
    parser.add_argument("--run-after", default=None, help="ISO timestamp (UTC) of the run")
    parser.add_argument(
        "--until",
        default=DEFAULT_UNTIL,
        help=f"last task to run (default {DEFAULT_UNTIL}; 'deploy' waits for approval)",
    )
    parser.add_argument(
        "--dag",
        default="lifecycle",
        choices=["lifecycle", "rollout", "monitoring"],
        help="which DAG",
    )
    args = parser.parse_args(argv)
    conf = json.loads(args.conf)
    run_after = (
        dt.datetime.fromisoformat(args.run_after)
        if args.run_after
        else dt.datetime.now(dt.UTC).replace(microsecond=0)
    )
    dag = load_dag(args.spec, args.dag)
    if args.dag == "rollout" and args.until == DEFAULT_UNTIL:
        args.until = "canary_100"  # the whole rollout
    if args.dag == "monitoring" and args.until == DEFAULT_UNTIL:
        args.until = "publish_retrain"
    if args.until not in dag.task_dict:
        parser.error(f"--until {args.until!r}: no such task; tasks: {sorted(dag.task_dict)}")
    if dag.task_dict[args.until].downstream_task_ids:
        dag = dag.partial_subset(task_ids=[args.until], include_upstream=True)
    dag_run = dag.test(run_after=run_after, logical_date=run_after, run_conf=conf)
    states = {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}
    summary = {
        "dag_id": dag.dag_id,
        "run_id": dag_run.run_id,
        "state": str(dag_run.state),
        "tasks": states,
    }
    write_summary(summary)  # one write: task threads log to the same output
    return 0 if str(dag_run.state) == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
