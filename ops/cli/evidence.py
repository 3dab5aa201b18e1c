"""``govml audit export MODEL VERSION --out DIR``: write a model version's evidence pack.

The pack (``index.html`` plus JSON and the copied reports) answers a model validator's
questions without a server: which data, code, checks and people put the version in
production, and whether the audit record still verifies. Exit code 0 when written
with an intact audit chain; non-zero (after writing the pack) when the chain is broken.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from ops.cli.common import authenticate
from pipelines.config import Settings

PROGRESS_BAR_VAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


def _exporter(args: argparse.Namespace, settings: Settings) -> str:
    """Who exports: ``--as USER`` proven by password, else the host account (by uid)."""
    from ops.identity import host_account

    if args.actor is None:
        return host_account()
    return authenticate(args, settings, args.actor).user


@contextlib.contextmanager
def _quiet_downloads() -> Iterator[None]:
    """No MLflow progress bar per copied folder (the downloads take well under a second);
    an explicit ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR`` in the environment wins."""
    if PROGRESS_BAR_VAR in os.environ:
        yield
        return
    os.environ[PROGRESS_BAR_VAR] = "false"
    try:
        yield
    finally:
        os.environ.pop(PROGRESS_BAR_VAR, None)


def cmd_audit_export(args: argparse.Namespace, settings: Settings) -> int:
    from registry.audit import AuditError
    from registry.evidence import export_evidence

    actor = _exporter(args, settings)
    with _quiet_downloads():
        result = export_evidence(settings, args.model, args.version, Path(args.out), actor=actor)
    print(
        f"evidence pack of {args.model} version {args.version}: {result.index_html} "
        f"({result.files} files, pack sha256 {result.pack_sha256})"
    )
    if not result.chain_ok:
        problem = f": {result.chain['problem']}" if result.chain["problem"] else ""
        print(
            f"error: audit chain {result.chain['state']}{problem} "
            f"(the pack at {result.out_dir} records this)",
            file=sys.stderr,
        )
        return AuditError.exit_code
    return 0


def add_export_parser(audit_sub: argparse._SubParsersAction) -> None:
    """Add ``export`` to the ``govml audit`` subcommands."""
    p = audit_sub.add_parser(
        "export",
        help="write a model version's evidence pack (index.html, JSON, reports) to a folder",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="registered model name (the spec name)")
    p.add_argument("version", help="model version number")
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="DIR",
        help="new or empty folder to write the pack into (never overwritten)",
    )
    p.add_argument(
        "--as",
        dest="actor",
        default=None,
        metavar="ACTOR",
        help="who exports, proven by password (recorded in the audit trail; default: the "
        "host account running the command)",
    )
    p.add_argument("--password-file", default=None, help="file holding your password")
    p.set_defaults(func=cmd_audit_export)
