"""``govml registry check``: hold MLflow's aliases and artifacts to the audit chain.

Runs the reconciler (:mod:`registry.reconcile`) over every registered model (or the
named ones): one line per model, one ``DRIFT`` line per disagreement, and which version
stays served. A drift is recorded once as a ``registry_drift`` audit event and raised as
an alert (``GOVML_ALERT_WEBHOOK`` or the log); the command exits non-zero (6) while any
drift remains, so a scheduler or CI job notices.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ops.cli.common import Commands
from pipelines.config import Settings
from pipelines.errors import RegistryError

ACTOR = "govml-registry-check"


def _aliases(report: Any) -> str:
    shown = [f"{a} v{v}" for a, v in sorted(report.aliases.items())]
    return ", ".join(shown) or "no aliases"


def _serving(report: Any) -> str:
    if report.serve is not None:
        return f"serving v{report.serve.version} ({report.serve.alias})"
    return f"not served: {report.problem}" if report.problem else "nothing deployed"


def _reachable(settings: Settings) -> None:
    """The check needs the tracking server (it downloads artifacts through it)."""
    from ops.stack_processes import http_ok

    uri = settings.mlflow_tracking_uri
    if uri.startswith(("http://", "https://")) and not http_ok(f"{uri}/health", timeout=5)[0]:
        raise RegistryError(f"MLflow at {uri} does not answer: start the stack (make up)")


def _known(settings: Settings, names: list[str]) -> None:
    from registry.reconcile import model_names

    known = model_names(settings.governance_url, settings.mlflow_tracking_uri)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise RegistryError(
            f"no registered model named {', '.join(map(repr, unknown))} "
            f"(models: {', '.join(known) or 'none'})"
        )


def cmd_registry_check(args: argparse.Namespace, settings: Settings) -> int:
    from ops.endpoints import reconcile_registry

    _reachable(settings)
    if args.models:
        _known(settings, args.models)
    reports = reconcile_registry(settings, args.models or None, actor=ACTOR)
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], indent=2))
    else:
        if not reports:
            print("no registered models")
        for report in reports:
            if report.ok:
                print(f"ok    {report.model_name}: {_aliases(report)}; {_serving(report)}")
                continue
            for drift in report.drifts:
                print(f"DRIFT {drift.message}")
            stays = (
                f"v{report.serve.version} stays served (the last approved version)"
                if report.serve
                else "no approved version to serve"
            )
            print(f"      {report.model_name}: {stays}")
    drifted = [r for r in reports if r.drifts]
    if drifted:
        count = sum(len(r.drifts) for r in drifted)
        names = ", ".join(r.model_name for r in drifted)
        raise RegistryError(
            f"registry drift: {count} finding(s) in {names}; recorded as registry_drift "
            "and alerted; the last approved versions stay served"
        )
    return 0


def add_registry_commands(sub: Commands) -> None:
    """Add ``govml registry check``."""
    verbs = sub.group("registry", "the locked MLflow registry: check it against the audit chain")
    p = verbs.add(
        "check",
        cmd_registry_check,
        "compare aliases and artifact hashes with the audit chain; non-zero on drift",
    )
    p.add_argument("models", nargs="*", help="model names (default: every registered model)")
    p.add_argument("--json", action="store_true", help="print the reports as JSON")
