"""The end of ``make demo``: four-eyes approval, the deploy step, live scores, one explanation.

After the lifecycle run stops at its approval gate, :func:`approve_and_serve`

1. records the approvals as the embedded stack's ``reviewer`` and ``validator`` users
   through :func:`registry.approvals.decide` (the same checks and audit events as the
   Airflow UI and ``govml approve``: role, not the run's trigger or author, one decision
   each, the registered artifact's SHA-256);
2. runs the DAG's ``deploy`` step for that run: :func:`registry.governance.release_approved`
   with :func:`ops.deploy.serve_release`, exactly as the ``deploy`` task calls them (the
   model server starts with the configured deployer and must reproduce the pipeline's
   scores before the version becomes ``challenger``);
3. scores a few of the run's test transactions through the live endpoint
   (``/v1/models/fraud:predict``) and explains a flagged one (``:explain``: reason codes
   and TreeSHAP contributions).

The model server keeps running; ``make down`` stops it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from pipelines.config import Settings
from pipelines.errors import DeploymentError, GovMLError

DEMO_APPROVERS = ("reviewer", "validator")
DEMO_ACTOR = "govml-lifecycle"  # the deploy task's actor
SCORED_ROWS = 5


def _post(url: str, body: dict[str, Any], token: str) -> dict[str, Any]:
    """POST with the deployment's own bearer token (read from its 0600 file, never shown)."""
    from ops.deploy import post_json

    return post_json(url, body, token)


def _native(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def sample_transactions(run_dir: Path, target: str, n: int = SCORED_ROWS) -> list[dict[str, Any]]:
    """``n`` complete test rows of the run (feature columns), frauds first when there are any."""
    import pandas as pd

    features = json.loads((run_dir / "features" / "features.json").read_text())["features"]
    test = pd.read_parquet(run_dir / "features" / "test.parquet")
    complete = test.dropna(subset=list(features))
    picked = pd.concat(
        [complete[complete[target] == 1].head(2), complete[complete[target] != 1].head(n)]
    ).head(n)
    rows = picked[list(features)].to_dict(orient="records")
    # Python's JSON floats round-trip exactly
    return json.loads(json.dumps(rows, default=_native))


def _decision(answer: dict[str, Any], index: int, score: float) -> str:
    decisions = answer.get("decisions")
    if isinstance(decisions, list) and index < len(decisions):
        value = decisions[index]
        if isinstance(value, bool):
            return "flag" if value else "pass"
        if isinstance(value, dict):
            return str(value.get("decision", value))
        return str(value)
    threshold = answer.get("threshold")
    return ("flag" if score >= threshold else "pass") if threshold is not None else "-"


def record_demo_approvals(settings: Settings, model: str, version: str, run_id: str) -> Any:
    """The approvals the version needs, as the demo stack's reviewer and validator."""
    from registry.approval_state import ApprovalStatus
    from registry.approvals import Review, decide, get_request
    from registry.mlflow_registry import artifact_sha256_of, tag_version

    sha = artifact_sha256_of(settings.mlflow_tracking_uri, model, version)
    state = get_request(settings.governance_url, model, version, run_id)
    for user in DEMO_APPROVERS:
        if state.status == ApprovalStatus.APPROVED:
            break
        state = decide(
            settings.governance_url,
            model,
            version,
            Review(
                user=user,
                decision="approve",
                reason=f"demo approval by {user}: gates, fairness and SHAP reports reviewed",
                channel="demo",
            ),
            run_id=run_id,
            artifact_sha256=sha,
        )
        tag_version(settings.mlflow_tracking_uri, model, version, state.mlflow_tags())
    return state


def approve_and_serve(
    settings: Settings, spec_path: Path, run_dir: Path, console: Console
) -> tuple[int, str | None]:
    """Approve, deploy and use the run's version; (exit code, endpoint URL)."""
    from ops.deploy import serve_release
    from ops.lifecycle_runner import tracking_uri
    from pipelines.spec import load_spec
    from registry.governance import release_approved

    spec = load_spec(spec_path)
    request_file = run_dir / "approval" / "request.json"
    if not request_file.exists():
        console.print("[yellow]no approval request in the run folder: nothing to deploy[/]")
        return 1, None
    request = json.loads(request_file.read_text())
    model, version, run_id = request["model_name"], str(request["model_version"]), request["run_id"]
    # the same registry the run used (the tracking server when it answers, else its store)
    settings = dataclasses.replace(settings, mlflow_tracking_uri=tracking_uri(settings))

    console.rule("approval (four-eyes) and deployment")
    console.print(
        f"[bold]demo approvals by {' and '.join(DEMO_APPROVERS)} "
        "(in a bank these are two people)[/]"
    )
    if not _approve(console, settings, model, version, run_id):
        return 1, None
    with console.status(f"deploy step: starting the {model} v{version} model server"):
        try:
            released = release_approved(
                settings.governance_url,
                settings.mlflow_tracking_uri,
                model,
                version,
                actor=DEMO_ACTOR,
                run_id=run_id,
                out_dir=run_dir / "deploy",
                serve=lambda approved: serve_release(
                    settings, run_dir, approved, spec_path=spec_path
                ),
            )
        except GovMLError as exc:
            console.print(f"[red]deploy failed:[/] {exc}")
            return 1, None
    url = str(released["endpoint"])
    console.print(
        f"[green]deployed[/] {model} v{version} as {released['alias']} at {url} "
        "(the endpoint reproduced the pipeline's scores exactly)"
    )

    return _score_live(console, settings, spec, run_dir, released), url


def _approve(console: Console, settings: Settings, model: str, version: str, run_id: str) -> bool:
    """Record the demo's two approvals; True when the version is approved."""
    from registry.approval_state import ApprovalStatus

    try:
        state = record_demo_approvals(settings, model, version, run_id)
    except GovMLError as exc:
        console.print(f"[red]approval refused:[/] {exc}")
        return False
    for decision in state.decisions:
        console.print(f"  {decision.user:<10} {decision.decision} via {decision.channel}")
    if state.status != ApprovalStatus.APPROVED:
        console.print(f"[red]request {state.id} is {state.status}; not deployed[/]")
        return False
    console.print(
        f"request {state.id}: approved by {', '.join(state.approvers)} "
        f"({len(state.approvers)}/{state.required_approvers}), bound to SHA-256 "
        f"{state.artifact_sha256[:16]}…"
    )
    return True


def _score_live(
    console: Console,
    settings: Settings,
    spec: Any,
    run_dir: Path,
    released: dict[str, Any],
) -> int:
    """Score a few test transactions through the ``released`` version's live endpoint and
    explain a flagged one (raw ones through the transformer too, when there is one); the
    exit code."""
    model, version = released["model_name"], str(released["model_version"])
    url = str(released["endpoint"])
    console.rule(f"live scoring: POST {url}/v1/models/{model}:predict")
    try:
        from ops.deploy import service_token

        token = service_token(settings, model, version)  # the deployment's own client
        rows = sample_transactions(run_dir, spec.data.target)
        answer = _post(f"{url}/v1/models/{model}:predict", {"instances": rows}, token)
        scores = [float(s) for s in answer["predictions"]]
        table = Table(title=f"{len(rows)} test transactions scored by the live endpoint")
        for column in ("amount", "channel", "score", "decision"):
            table.add_column(column, justify="right" if column in ("amount", "score") else "left")
        decisions = []
        for index, (row, score) in enumerate(zip(rows, scores, strict=True)):
            decisions.append(_decision(answer, index, score))
            table.add_row(
                f"{float(row.get('amount', 0.0)):,.2f}",
                str(row.get("channel", "-")),
                f"{score:.4f}",
                decisions[-1],
            )
        console.print(table)
        flagged = [i for i, d in enumerate(decisions) if d in ("flag", "decline")]
        pick = flagged[0] if flagged else max(range(len(scores)), key=scores.__getitem__)
        explained = _post(f"{url}/v1/models/{model}:explain", {"instances": [rows[pick]]}, token)
        _print_explanation(console, explained["explanations"][0], rows[pick], bool(flagged))
        if released.get("transformer"):
            _raw_through_transformer(console, str(released["transformer"]), spec, run_dir, token)
    except (DeploymentError, KeyError, TypeError, ValueError) as exc:
        console.print(f"[red]scoring failed:[/] {exc}")
        return 1
    return 0


def _raw_through_transformer(
    console: Console, url: str, spec: Any, run_dir: Path, token: str
) -> None:
    """Raw transactions (ids, time, card, amount...) through the feature transformer,
    which computes the card's, customer's and terminal's aggregates from its warm state."""
    import pandas as pd

    from ops.deploy import raw_transactions
    from pipelines.ingest import DATA_FILE

    console.rule(f"raw transactions: POST {url}/v1/models/{spec.name}:predict (transformer)")
    test = pd.read_parquet(run_dir / "features" / "test.parquet", columns=[spec.data.id_column])
    ids = test[spec.data.id_column].tail(3).tolist()
    raw = raw_transactions(spec, run_dir / "ingest" / DATA_FILE, ids)
    answer = _post(f"{url}/v1/models/{spec.name}:predict", {"instances": raw}, token)
    shown = [a.name for a in spec.features.aggregates][:3]
    table = Table(title="the transformer's aggregates (as offline, exactly) and the score")
    for column in ("amount", *shown, "score"):
        table.add_column(column, justify="right")
    for row, aggregates, score in zip(
        raw, answer["aggregates"], answer["predictions"], strict=True
    ):
        values = [aggregates.get(n) for n in shown]
        table.add_row(
            f"{float(row.get('amount') or 0.0):,.2f}",
            *("-" if v is None else f"{v:,.2f}" for v in values),
            f"{float(score):.4f}",
        )
    console.print(table)
    console.print(
        f"feature endpoint   : {url}/v1/models/{spec.name}:predict (raw transactions; "
        "state rebuilt from the run's history before it took traffic)"
    )


def _print_explanation(
    console: Console, explanation: dict[str, Any], row: dict[str, Any], flagged: bool
) -> None:
    what = "a flagged transaction" if flagged else "the highest-scoring transaction"
    console.rule(f"explanation of {what} (:explain)")
    console.print(
        f"amount {float(row.get('amount', 0.0)):,.2f}, channel {row.get('channel', '-')}: "
        f"score {explanation['score']:.4f}, decision {explanation['decision']}"
    )
    reasons = explanation.get("reasons") or []
    if reasons:
        console.print("reason codes (adverse factors, as sent to the fraud operations queue):")
        for number, reason in enumerate(reasons, start=1):
            console.print(
                f"  {number}. {reason['label']}  [dim]({reason['feature']}, "
                f"{reason['contribution']:+.3f})[/]"
            )
    else:
        console.print("no reason codes: the transaction is below the decision threshold")
    contributions = explanation.get("contributions") or {}
    top = sorted(contributions.items(), key=lambda kv: abs(kv[1]), reverse=True)[:6]
    table = Table(title="TreeSHAP contributions (log-odds), largest first")
    table.add_column("feature")
    table.add_column("value", justify="right")
    table.add_column("contribution", justify="right")
    for name, value in top:
        shown = row.get(name, "-")
        shown = f"{shown:,.2f}" if isinstance(shown, float) else str(shown)
        table.add_row(name, shown, f"{value:+.4f}")
    console.print(table)
    if "expected_value" in explanation:
        console.print(f"base value (expected log-odds): {explanation['expected_value']:+.4f}")
