"""``make demo``: the fraud lifecycle as far as it exists, on the embedded stack.

Validates every spec, generates the fraud and credit data sets and copies the German
Credit data (Parquet + manifest, SHA-256), then runs the fraud lifecycle DAG end to
end (ingest, data validation, lineage, features, training, evaluation, fairness,
SHAP, gates, MLflow registration as ``candidate``, audit events, and the approval
request). At the human approval gate the demo records the two four-eyes approvals as
the embedded stack's ``reviewer`` and ``validator`` users (in a bank, two people in the
Airflow UI or with ``govml approve``), runs the deploy step, which starts the
version's model server, scores a few test transactions through the live endpoint and
explains a flagged one (:mod:`ops.demo_serving`). The model server keeps running
(``make down`` stops it); the demo ends by verifying the audit chain.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from pipelines.config import Settings
from pipelines.data.manifest import data_path, manifest_path_for, verify_manifest
from pipelines.datasets import materialise
from pipelines.spec import discover_specs, load_spec


def _demo_trigger(settings: Settings):  # noqa: ANN202 (ops.identity.Identity)
    """The demo triggers its run as the stack's operator (role ``op``), proven with that
    user's password from the stack's password file (the host account's, mode 0600)."""
    from ops import stack
    from ops.identity import authenticate_user

    user = next((u for u, role in settings.airflow_users if role == "op"), None)
    if user is None:
        return None  # no operator configured: the run's trigger is unauthenticated
    return authenticate_user(settings, user, stack.airflow_passwords(settings)[user])


def _data_sets(
    console: Console, settings: Settings, specs: dict[str, Any], rows: int | None
) -> dict[str, Path]:
    """Write (and verify) the demo's data sets; their manifests by spec name."""
    table = Table(title="Data sets (Parquet + manifest)")
    for col in ("spec", "rows", "label rate", "sha256", "seconds"):
        table.add_column(col)
    manifests: dict[str, Path] = {}
    for name in ("fraud", "credit", "german_credit"):
        if name not in specs:
            continue
        spec = specs[name]
        out = settings.data_dir / name
        started = time.perf_counter()
        with console.status(f"writing {name} data"):
            overrides = {"n_rows": rows} if rows and name == "fraud" else {}
            manifest = materialise(spec, out, overrides)
            manifest_file = manifest_path_for(out, manifest.name)
            verify_manifest(manifest_file)
        elapsed = time.perf_counter() - started
        manifests[name] = manifest_file
        target = pd.read_parquet(data_path(manifest_file, manifest), columns=[spec.data.target])
        rate = float(target[spec.data.target].mean())
        table.add_row(
            name, f"{manifest.rows:,}", f"{rate:.3%}", manifest.sha256[:16] + "…", f"{elapsed:.1f}"
        )
    console.print(table)
    return manifests


def _fraud_summary(console: Console, fraud_file: Path) -> None:
    """The fraud data's time span and its frauds by scenario."""
    manifest = verify_manifest(fraud_file)
    frame = pd.read_parquet(
        data_path(fraud_file, manifest), columns=["tx_time", "fraud_scenario", "is_fraud"]
    )
    scenarios = frame.loc[frame["is_fraud"] == 1, "fraud_scenario"].value_counts()
    console.print(
        f"fraud transactions {frame['tx_time'].min():%Y-%m-%d} → "
        f"{frame['tx_time'].max():%Y-%m-%d}; fraud by scenario: "
        + ", ".join(f"{k} {v:,}" for k, v in scenarios.items() if v)
    )


def _where_to_look(
    console: Console, settings: Settings, manifests: dict[str, Path], endpoint: str | None
) -> None:
    console.rule("where to look")
    console.print(f"data and manifests : {settings.data_dir}")
    console.print(f"specs              : {settings.specs_dir}")
    console.print(
        f"verify a data set  : .venv/bin/govml data verify {manifests.get('fraud', '<manifest>')}"
    )
    console.print(
        "Airflow and MLflow : make up   (prints the URLs, the Airflow users and where "
        "their passwords are);"
    )
    console.print("                     the registered candidate is under Models → fraud")
    console.print("run it again       : .venv/bin/govml run fraud   (or trigger it in Airflow)")
    console.print("approvals          : .venv/bin/govml approvals list --status pending")
    console.print("audit trail        : .venv/bin/govml audit verify; .venv/bin/govml audit log")
    if endpoint:
        console.print(f"model endpoint     : {endpoint}/v1/models/fraud:predict (and :explain)")
        console.print("                     still running; stop it with: make down")
        console.print(
            "                     bearer token required (loopback only); get one with: "
            ".venv/bin/govml serving token new fraud VERSION NAME --scope predict"
        )


def run_demo(settings: Settings, rows: int | None = None) -> int:
    console = Console()
    console.rule("[bold]govml demo: fraud lifecycle (embedded stack)")
    specs = {}
    with console.status("validating specs"):
        for name, path in discover_specs(settings.specs_dir).items():
            specs[name] = load_spec(path)
    console.print(f"[green]ok[/] {len(specs)} specs valid: {', '.join(sorted(specs))}")
    manifests = _data_sets(console, settings, specs, rows)
    fraud_file = manifests.get("fraud")
    if fraud_file is not None:
        _fraud_summary(console, fraud_file)

    console.rule("fraud lifecycle DAG (dag.test, embedded stack)")
    from ops.demo_serving import approve_and_serve
    from ops.lifecycle_runner import LifecycleRequest, run_lifecycle_in
    from registry.audit_verify import verify_chain

    conf = {"n_rows": rows} if rows else {}
    spec_path = settings.specs_dir / "fraud.yaml"
    request = LifecycleRequest(specs["fraud"], spec_path, conf, identity=_demo_trigger(settings))
    code, run_dir = run_lifecycle_in(settings, request, console)
    endpoint = None
    if code == 0:
        code, endpoint = approve_and_serve(settings, spec_path, run_dir, console)
    chain = verify_chain(settings.governance_url)
    console.print(
        f"audit chain        : {'[green]verified[/]' if chain.ok else '[red]BROKEN[/]'}, "
        f"{chain.events} events, head {chain.head_seq} {chain.head_hash[:16]}…"
        + ("" if chain.ok else f" ({chain.problem})")
    )
    if not chain.ok:
        code = 1
    _where_to_look(console, settings, manifests, endpoint)
    if code == 0:
        console.print("[green]demo finished[/]")
    return code
