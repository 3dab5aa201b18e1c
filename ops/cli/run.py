"""``govml run SPEC --as USER`` and ``govml demo``: a spec's lifecycle DAG, run now."""

from __future__ import annotations

import argparse
from pathlib import Path

from ops.cli.common import Commands, authenticate, positive_int, spec_path, unit_float
from pipelines.config import Settings


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from ops.lifecycle_runner import LifecycleRequest, run_lifecycle
    from pipelines.spec import load_spec

    path = spec_path(args.spec, settings).resolve()  # the DAG runs in another folder
    spec = load_spec(path)
    identity = None  # without --as: an unauthenticated trigger (dag.test only)
    if args.user:
        identity = authenticate(args, settings, args.user)
    conf = {
        "data_path": str(Path(args.data).resolve()) if args.data else None,
        "n_rows": args.rows,
        "seed": args.seed,
        "bias": args.bias,
        "tuning_trials": args.tuning_trials,
        "author": args.author,
        "reason": args.reason,
    }
    given = {k: v for k, v in conf.items() if v is not None}
    return run_lifecycle(
        settings, LifecycleRequest(spec, path, given, until=args.until, identity=identity)
    )


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from ops.demo import run_demo

    return run_demo(settings, rows=args.rows)


def add_run_command(sub: Commands) -> None:
    p = sub.add(
        "run",
        cmd_run,
        "run a spec's lifecycle DAG now, as you (in Airflow when the stack runs, "
        "else here with dag.test)",
    )
    p.add_argument("spec", help="spec name (fraud, credit, german_credit) or path")
    p.add_argument(
        "--as",
        dest="user",
        default=None,
        help="your user name, proven by your password: recorded as the run's trigger "
        "(needed with the stack up; without it the version cannot be approved)",
    )
    p.add_argument(
        "--password-file", default=None, help="file holding your password (else GOVML_PASSWORD)"
    )
    p.add_argument("--data", help="a Parquet or CSV file instead of the spec's data source")
    p.add_argument("--rows", type=positive_int, help="rows to generate (generated sources)")
    p.add_argument("--seed", type=int, help="generator seed (generated sources)")
    p.add_argument("--bias", type=unit_float, help="credit generator bias knob in [0, 1]")
    p.add_argument("--tuning-trials", type=int, help="LightGBM tuning budget")
    p.add_argument("--author", help="who developed this model change (may not approve it)")
    p.add_argument("--reason", help="why this run (recorded in the audit trail)")
    p.add_argument(
        "--until",
        choices=["register", "request_approval", "deploy"],
        default="request_approval",
        help="last stage (default request_approval; 'deploy' waits for the human approval, "
        "which needs `make up`)",
    )


def add_demo_command(sub: Commands) -> None:
    p = sub.add("demo", cmd_demo, "generate data and run the fraud lifecycle end to end")
    p.add_argument(
        "--rows",
        type=positive_int,
        default=None,
        help="fraud transactions to generate (default: the spec's)",
    )
