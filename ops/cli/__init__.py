"""``govml``: the operator and model-risk reviewer command line.

One command with subcommands; ``--help`` works on each. User errors (a bad spec,
bad data, a refused action) print one line and exit non-zero; ``--debug`` shows
the traceback. Each command group is a module of this package; this one only builds
the parser from them and runs the chosen command.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from ops.cli import (
    abtest,
    audit,
    data,
    evidence,
    features,
    governance,
    monitoring,
    registry,
    rollout,
    run,
    serving,
    spec,
    stack,
)
from ops.cli.common import Commands
from pipelines.config import load_settings
from pipelines.errors import GovMLError

log = logging.getLogger("govml")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="govml",
        description="Governed ML lifecycle for financial models: operator and reviewer CLI.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    sub = Commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))

    spec.add_spec_commands(sub)
    data.add_data_commands(sub)
    stack.add_stack_commands(sub)
    run.add_run_command(sub)
    stack.add_config_commands(sub)
    evidence.add_export_parser(audit.add_audit_commands(sub).subparsers)
    governance.add_governance_commands(sub)
    rollout.add_rollout_commands(sub)
    monitoring.add_monitoring_commands(sub)
    abtest.add_abtest_commands(sub)
    features.add_features_commands(sub)
    serving.add_serving_commands(sub)
    registry.add_registry_commands(sub)
    run.add_demo_command(sub)
    return parser


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
