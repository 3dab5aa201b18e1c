"""``govml``: the operator and model-risk reviewer command line.

One command with subcommands; ``--help`` works on each. User errors (a bad spec,
bad data, a refused action) print one line and exit non-zero; ``--debug`` shows
the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ops.cli_abtest import add_abtest_commands
from ops.cli_args import positive_int as _positive_int
from ops.cli_audit import add_audit_commands
from ops.cli_evidence import add_export_parser
from ops.cli_features import add_features_commands
from ops.cli_governance import add_governance_commands
from ops.cli_monitoring import add_monitoring_commands
from ops.cli_registry import add_registry_commands
from ops.cli_rollout import add_rollout_commands
from ops.cli_serving import add_serving_commands
from pipelines.config import Settings, load_settings
from pipelines.errors import GovMLError, SpecError

log = logging.getLogger("govml")


# --------------------------------------------------------------------------- spec
def cmd_spec_validate(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.spec import discover_specs, load_spec

    paths = [Path(p) for p in args.paths] or list(discover_specs(settings.specs_dir).values())
    if not paths:
        raise SpecError(f"no spec files (*.yaml) in {settings.specs_dir}")
    failures = []
    for path in paths:
        try:
            spec = load_spec(path)
        except SpecError as exc:
            failures.append(str(exc))
            print(f"FAIL {exc}")
            continue
        print(f"ok   {path}: {spec.name} ({spec.use_case}, {len(spec.features.names)} features)")
    if failures:
        raise SpecError(f"{len(failures)} of {len(paths)} spec(s) invalid")
    return 0


def cmd_spec_show(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.spec import load_spec

    spec = load_spec(_spec_path(args.spec, settings))
    print(json.dumps(spec.model_dump(mode="json"), indent=2))
    return 0


def _spec_path(name_or_path: str, settings: Settings) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        return path
    candidate = settings.specs_dir / f"{name_or_path}.yaml"
    if not candidate.exists():
        raise SpecError(f"no spec named {name_or_path!r} in {settings.specs_dir}")
    return candidate


# --------------------------------------------------------------------------- data
def cmd_data_generate(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.datasets import materialise
    from pipelines.spec import discover_specs, load_spec

    names = list(discover_specs(settings.specs_dir)) if args.all else args.specs
    if not names:
        raise SpecError("name at least one spec (fraud, credit, german_credit) or use --all")
    overrides = {k: v for k, v in {"n_rows": args.rows, "seed": args.seed}.items() if v}
    for name in names:
        spec = load_spec(_spec_path(name, settings))
        out = Path(args.out) if args.out else settings.data_dir / spec.name
        manifest = materialise(spec, out, overrides)
        print(
            f"{spec.name}: {manifest.rows:,} rows -> {out / manifest.path} "
            f"(sha256 {manifest.sha256[:16]}...)"
        )
    return 0


def cmd_data_verify(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.data.manifest import verify_manifest

    for path in args.manifests:
        manifest = verify_manifest(Path(path))
        print(f"ok   {path}: {manifest.rows:,} rows, sha256 {manifest.sha256}")
    return 0


# --------------------------------------------------------------------------- stack
def _print_status(rows: list) -> None:
    for row in rows:
        state = "running" if row.running else "stopped"
        health = {True: "healthy", False: "NOT HEALTHY", None: ""}[row.healthy]
        pid = f"pid {row.pid}" if row.pid else ""
        print(f"{row.name:<24} {state:<8} {health:<12} {pid:<11} {row.url or ''} {row.detail}")


def airflow_login_lines(settings: Settings) -> list[str]:
    """Where the Airflow logins are: users and roles, and the password file (never a password)."""
    import shlex
    import shutil

    from ops import stack

    path = stack.passwords_file(settings)
    stack.airflow_passwords(settings)  # makes the file (0600) if it is missing
    user = next((u for u, r in settings.airflow_users if r == "approver"), "admin")
    if shutil.which("jq"):
        read_one = f"jq -r --arg u {shlex.quote(user)} '.[$u]' {shlex.quote(str(path))}"
    else:
        read_one = (
            "python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "
            f"{shlex.quote(str(path))} {shlex.quote(user)}"
        )
    users = ", ".join(f"{u} ({r})" for u, r in settings.airflow_users)
    return [
        f"Airflow UI : {settings.airflow_url}   users {users}",
        f"             passwords in {path} (mode 0600, this account only);",
        f"             read one with: {read_one}",
    ]


def cmd_stack_up(args: argparse.Namespace, settings: Settings) -> int:
    from ops import stack
    from registry.mlflow_auth import service_file as mlflow_service_file

    rows = stack.up(settings, only=args.only or None, report=lambda line: print(f"model: {line}"))
    _print_status(rows)
    print()
    for line in airflow_login_lines(settings):
        print(line)
    print(f"MLflow UI  : {settings.mlflow_url}   (log in as your Airflow user; read-only)")
    print(f"             service account in {mlflow_service_file(settings.var_dir)} (mode 0600)")
    for row in rows:
        if row.name.startswith(stack.MODEL_PREFIX):
            print(f"Model      : {row.url}   ({row.name[len(stack.MODEL_PREFIX) :]}, {row.detail})")
    print(f"Logs, pids : {settings.run_dir}")
    print("Stop with  : make down")
    return 0


def cmd_stack_down(args: argparse.Namespace, settings: Settings) -> int:
    from ops import stack

    count = stack.down(settings)
    print(f"stopped {count} process(es); nothing of the stack is left running")
    return 0


def cmd_stack_status(args: argparse.Namespace, settings: Settings) -> int:
    from ops import stack

    rows = stack.status(settings)
    _print_status(rows)
    services = [r for r in rows if not r.name.startswith(stack.MODEL_PREFIX)]
    return 0 if all(r.running for r in services) or not any(r.running for r in services) else 1


def cmd_stack_env(args: argparse.Namespace, settings: Settings) -> int:
    from ops import stack

    for key, value in sorted(stack.airflow_env(settings).items()):
        if "SECRET" in key:
            continue
        print(f"export {key}={value!r}")
    return 0


# --------------------------------------------------------------------------- misc
def cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    from dataclasses import asdict

    from sqlalchemy.engine import make_url

    values = {k: str(v) for k, v in asdict(settings).items()}
    for key in ("airflow_db_url", "mlflow_backend_url", "governance_url", "mlflow_auth_db_url"):
        values[key] = make_url(values[key]).render_as_string(hide_password=True)
    values["airflow_users"] = ",".join(f"{u}:{r}" for u, r in settings.airflow_users)
    width = max(map(len, values))
    for key, value in values.items():
        print(f"{key:<{width}}  {value}")
    return 0


def cmd_db_init(args: argparse.Namespace, settings: Settings) -> int:
    from registry.databases import ensure_database
    from registry.store import upgrade

    for store, url in settings.database_urls.items():
        created = ensure_database(url)
        print(f"{store:<11} {'created' if created else 'exists '} {url.split('@')[-1]}")
    revision = upgrade(settings.governance_url)
    print(f"{'governance':<11} schema at revision {revision}")
    return 0


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from ops.identity import authenticate_user, password_for
    from ops.lifecycle_runner import run_lifecycle
    from pipelines.spec import load_spec

    path = _spec_path(args.spec, settings).resolve()  # the DAG runs in another folder
    spec = load_spec(path)
    identity = None  # without --as: an unauthenticated trigger (dag.test only)
    if args.user:
        identity = authenticate_user(
            settings, args.user, password_for(args.user, args.password_file)
        )
    conf = {
        "data_path": str(Path(args.data).resolve()) if args.data else None,
        "n_rows": args.rows,
        "seed": args.seed,
        "bias": args.bias,
        "tuning_trials": args.tuning_trials,
        "author": args.author,
        "reason": args.reason,
    }
    return run_lifecycle(
        settings,
        spec,
        path,
        {k: v for k, v in conf.items() if v is not None},
        until=args.until,
        identity=identity,
    )


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from ops.demo import run_demo

    return run_demo(settings, rows=args.rows)


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="govml",
        description="Governed ML lifecycle for financial models: operator and reviewer CLI.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    spec = sub.add_parser("spec", help="validate and show model specs")
    spec_sub = spec.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = spec_sub.add_parser("validate", help="validate spec files (default: every spec)")
    p.add_argument("paths", nargs="*", help="spec YAML files (default: specs/*.yaml)")
    p.set_defaults(func=cmd_spec_validate)
    p = spec_sub.add_parser("show", help="print a validated spec with defaults filled in")
    p.add_argument("spec", help="spec name (fraud) or path")
    p.set_defaults(func=cmd_spec_show)

    data = sub.add_parser("data", help="generate and verify data sets")
    data_sub = data.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = data_sub.add_parser("generate", help="write a spec's data set as Parquet + manifest")
    p.add_argument("specs", nargs="*", help="spec names or paths (fraud, credit, german_credit)")
    p.add_argument("--all", action="store_true", help="every spec in the specs folder")
    p.add_argument("--rows", type=_positive_int, help="override the number of rows")
    p.add_argument("--seed", type=int, help="override the random seed")
    p.add_argument("--out", help="output folder (default: $GOVML_DATA_DIR/<spec>)")
    p.set_defaults(func=cmd_data_generate)
    p = data_sub.add_parser("verify", help="check a data set against its manifest")
    p.add_argument("manifests", nargs="+", help="*.manifest.json files")
    p.set_defaults(func=cmd_data_verify)

    stack = sub.add_parser("stack", help="the embedded stack: Airflow and MLflow")
    stack_sub = stack.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = stack_sub.add_parser("up", help="start every service and wait until healthy")
    p.add_argument("--only", action="append", help="start only this service (repeatable)")
    p.set_defaults(func=cmd_stack_up)
    p = stack_sub.add_parser("down", help="stop every service and its children")
    p.set_defaults(func=cmd_stack_down)
    p = stack_sub.add_parser("status", help="show each service with its URL")
    p.set_defaults(func=cmd_stack_status)
    p = stack_sub.add_parser("env", help="print the Airflow environment (for `airflow` CLI use)")
    p.set_defaults(func=cmd_stack_env)

    p = sub.add_parser(
        "run",
        help="run a spec's lifecycle DAG now, as you (in Airflow when the stack runs, "
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
    p.add_argument("--rows", type=_positive_int, help="rows to generate (generated sources)")
    p.add_argument("--seed", type=int, help="generator seed (generated sources)")
    p.add_argument("--bias", type=_unit_float, help="credit generator bias knob in [0, 1]")
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
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("config", help="show the resolved settings (URLs, ports, paths)")
    p.set_defaults(func=cmd_config)

    db = sub.add_parser("db", help="the three stores' databases")
    db_sub = db.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = db_sub.add_parser("init", help="create the databases if missing (PostgreSQL)")
    p.set_defaults(func=cmd_db_init)

    add_export_parser(add_audit_commands(sub))
    add_governance_commands(sub)
    add_rollout_commands(sub)
    add_monitoring_commands(sub)
    add_abtest_commands(sub)
    add_features_commands(sub)
    add_serving_commands(sub)
    add_registry_commands(sub)

    p = sub.add_parser("demo", help="generate data and run the fraud lifecycle end to end")
    p.add_argument(
        "--rows",
        type=_positive_int,
        default=None,
        help="fraud transactions to generate (default: the spec's)",
    )
    p.set_defaults(func=cmd_demo)
    return parser


def _unit_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"{value!r} must be between 0 and 1")
    return number


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # MLflow's download progress bars are noise in a command's output
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        settings = load_settings()
        return int(args.func(args, settings) or 0)
    except GovMLError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
