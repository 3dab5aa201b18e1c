"""``govml stack up|down|status|env``, ``govml config`` and ``govml db init``: the embedded
stack (Airflow, MLflow, the model servers), its settings and its stores' databases."""

from __future__ import annotations

import argparse

from ops.cli.common import Commands
from pipelines.config import Settings


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


def add_stack_commands(sub: Commands) -> None:
    verbs = sub.group("stack", "the embedded stack: Airflow and MLflow")
    p = verbs.add("up", cmd_stack_up, "start every service and wait until healthy")
    p.add_argument("--only", action="append", help="start only this service (repeatable)")
    verbs.add("down", cmd_stack_down, "stop every service and its children")
    verbs.add("status", cmd_stack_status, "show each service with its URL")
    verbs.add("env", cmd_stack_env, "print the Airflow environment (for `airflow` CLI use)")


def add_config_commands(sub: Commands) -> None:
    sub.add("config", cmd_config, "show the resolved settings (URLs, ports, paths)")
    verbs = sub.group("db", "the three stores' databases")
    verbs.add("init", cmd_db_init, "create the databases if missing (PostgreSQL)")
