"""Run one spec's DAG in-process with ``dag.test()`` (no scheduler needed).

``python -m dags.govml_airflow.run_dag SPEC_PATH --conf '{"n_rows": 20000}'
--run-after ISO --as USER``
(``--dag rollout --conf '{"version": "7"}'``: the spec's rollout DAG, to the end;
``--dag monitoring``: the spec's monitoring DAG)

Used by ``govml run`` (which adds the progress display) and by the tests. The
Airflow configuration comes from the environment (``govml stack env``); the exit
code is 0 when the run succeeded. The final line is a JSON summary.

``--until TASK`` runs the DAG up to that task (default ``request_approval``: the
version is registered and its approval requested).

Only with the stack down: ``dag.test()`` refuses to run while a scheduler heartbeats
on the metadata database (both would run the same task instances). With the stack
up, trigger runs through Airflow (``govml run`` does, as its user).

Who triggered the run: ``--as USER`` (or ``govml run --as USER``) is proven, then
recorded in the audit chain before the run starts, bound to this process by a one-time
secret (:mod:`ops.local_run`); a name in the environment is never taken as the trigger.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

from ops.local_run import (
    DEFAULT_UNTIL,
    EXIT_REFUSED,
    TRIGGER_NONCE_ENV,
    lifecycle_run_id,
    record_run_trigger,
)
from ops.run_summary import write_summary
from pipelines.config import Settings, load_settings
from pipelines.errors import GovMLError
from pipelines.spec import load_spec

# a spec given by path (outside the specs folder): the DAG files also build its DAGs in
# this process, so that dag.test() finds them serialized like the others
RUN_SPEC_ENV = "GOVML_RUN_SPEC"


def dag_spec_paths(specs_dir: Path) -> dict[str, Path]:
    """The specs a DAG file builds DAGs for: the specs folder's, and in this module's own
    process (``RUN_SPEC_ENV``) the spec it runs, when that one lives elsewhere."""
    from pipelines.spec import discover_specs

    paths = dict(discover_specs(specs_dir))
    extra = os.environ.get(RUN_SPEC_ENV)
    if extra and Path(extra).resolve() not in {p.resolve() for p in paths.values()}:
        paths[f"{Path(extra).stem} ({extra})"] = Path(extra)
    return paths


def load_dag(spec_path: Path, kind: str = "lifecycle"):  # noqa: ANN201
    """The spec's ``lifecycle``, ``rollout`` or ``monitoring`` DAG, built from the DAG file."""
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


def scheduler_running() -> str | None:
    """Why ``dag.test()`` must not run here: a live scheduler on this metadata DB."""
    from airflow.jobs.job import most_recent_job

    job = most_recent_job("SchedulerJob")
    if job is None or not job.is_alive():
        return None
    return (
        f"an Airflow scheduler runs on this metadata database (heartbeat at "
        f"{job.latest_heartbeat:%H:%M:%S} UTC, host {job.hostname}): dag.test() would run "
        "the same tasks; trigger the run in Airflow instead (`govml run SPEC --as USER`)"
    )


def use_backend_store(settings: Settings) -> None:
    """Without a tracking server, read and write its proxied artifacts directly."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or settings.mlflow_tracking_uri
    if not uri.startswith(("http://", "https://")):
        from registry.mlflow_local import serve_proxied_artifacts_from

        serve_proxied_artifacts_from(settings.mlflow_artifacts)


def _authenticate(
    args: argparse.Namespace, settings: Settings, dag_id: str, run_id: str, model: str
) -> None:
    """``--as USER``: prove the user, record them as the trigger, hold the secret."""
    from ops.identity import authenticate_user, password_for

    identity = authenticate_user(settings, args.user, password_for(args.user, args.password_file))
    os.environ[TRIGGER_NONCE_ENV] = record_run_trigger(settings, identity, dag_id, run_id, model)


def _parser() -> argparse.ArgumentParser:
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
    parser.add_argument("--as", dest="user", default=None, help="who triggers the run")
    parser.add_argument(
        "--password-file", default=None, help="file holding the password (else GOVML_PASSWORD)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    conf = json.loads(args.conf)
    run_after = (
        dt.datetime.fromisoformat(args.run_after)
        if args.run_after
        else dt.datetime.now(dt.UTC).replace(microsecond=0)
    )
    settings = load_settings()
    os.environ[RUN_SPEC_ENV] = str(args.spec.resolve())
    dag = load_dag(args.spec, args.dag)
    if args.dag == "rollout" and args.until == DEFAULT_UNTIL:
        args.until = "canary_100"  # the whole rollout
    if args.dag == "monitoring" and args.until == DEFAULT_UNTIL:
        args.until = "publish_retrain"
    if args.until not in dag.task_dict:
        parser.error(f"--until {args.until!r}: no such task; tasks: {sorted(dag.task_dict)}")
    run_id = lifecycle_run_id(run_after)
    summary: dict[str, Any] = {"dag_id": dag.dag_id, "run_id": run_id, "tasks": {}}
    refused = scheduler_running()
    if refused is None and args.user:
        try:
            _authenticate(args, settings, dag.dag_id, run_id, load_spec(args.spec).name)
        except GovMLError as exc:
            refused = str(exc)
    if refused is not None:
        print(f"refused: {refused}", file=sys.stderr)
        write_summary(summary | {"state": "refused", "reason": refused})
        return EXIT_REFUSED
    use_backend_store(settings)
    if dag.task_dict[args.until].downstream_task_ids:
        dag = dag.partial_subset(task_ids=[args.until], include_upstream=True)
    try:
        dag_run = dag.test(run_after=run_after, logical_date=run_after, run_conf=conf)
    except Exception as exc:  # noqa: BLE001 (reported in the summary, for the CLI's one line)
        first = (str(exc).strip().splitlines() or [""])[0]
        write_summary(summary | {"state": "error", "reason": f"{type(exc).__name__}: {first}"})
        return 1
    states = {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}
    write_summary(  # one write: task threads log to the same output
        summary | {"run_id": dag_run.run_id, "state": str(dag_run.state), "tasks": states}
    )
    return 0 if str(dag_run.state) == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
