"""The registry reconciler: MLflow's aliases and artifacts held to the audit chain.

MLflow keeps the current aliases and files; the audit chain keeps what govml did: every
alias move (``alias_moved``), every registration, approval and release. A registry whose
aliases or artifacts disagree with the chain was changed outside govml (by MLflow's
admin, or by anyone before the registry was locked). :func:`check_model` compares, for
each model:

- each alias (``champion``, ``challenger``, ``candidate``) with the chain's last move of
  it: an alias moved, set or removed outside govml is drift;
- the version each alias names with what the alias requires: ``champion`` an approved
  version released by the deploy step, ``challenger`` an approved one, ``candidate`` a
  version govml registered;
- that version's artifact, downloaded now, with the SHA-256 the chain recorded (the
  approval's, else the alias move's or the registration's).

It also picks the version to serve, fail safe: the champion when it is sound, else the
last version the chain made champion, else the newest promoted, else the newest
deployed one that is still approved, released and unchanged. A drifted registry never
takes a model offline that has a sound approved version.

:func:`reconcile` checks every model and records each *distinct* drift once as a
``registry_drift`` event (again only once govml moved that alias). The callers (``make
up``, the monitoring job, ``govml registry check``) raise the alert.
:func:`registry.evidence_audit.tag_claims_without_chain` is the evidence pack's check of
approval tags.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from pipelines.errors import RegistryError
from registry.approval_state import ApprovalStatus
from registry.mlflow_registry import ALIASES, CHALLENGER, CHAMPION

log = logging.getLogger(__name__)

ACTIVE_ACTIONS = ("deployed", "shadow", "canary", "promoted")
ACTOR = "govml-reconciler"


@dataclass(frozen=True)
class Drift:
    """One way the registry disagrees with the chain (``problem`` reads after the alias)."""

    model_name: str
    alias: str
    version: str | None  # what MLflow shows (None: no such alias)
    expected_version: str | None  # what the chain says (None: no move recorded)
    problem: str
    registry_sha256: str | None = None
    chain_sha256: str | None = None

    @property
    def message(self) -> str:
        return f"{self.model_name}: alias {self.alias} {self.problem}"

    def payload(self) -> dict[str, Any]:
        out = asdict(self)
        del out["model_name"]
        out["message"] = self.message
        return out


@dataclass(frozen=True)
class Servable:
    """The version to serve and the approval it was released under."""

    version: str
    alias: str  # champion; challenger for a model without a champion yet
    artifact_sha256: str
    approval_request_id: int
    source: str  # alias (MLflow's champion), chain, promoted or deployed


@dataclass(frozen=True)
class ModelReport:
    model_name: str
    aliases: dict[str, str]  # as MLflow shows them
    drifts: tuple[Drift, ...] = ()
    serve: Servable | None = None
    problem: str | None = None  # why nothing deployed can be served
    recorded: tuple[Drift, ...] = ()  # the drifts recorded as new events by this check

    @property
    def ok(self) -> bool:
        return not self.drifts and self.problem is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "aliases": self.aliases,
            "drifts": [d.payload() for d in self.drifts],
            "serve": asdict(self.serve) if self.serve else None,
            "problem": self.problem,
            "new_drifts": len(self.recorded),
        }


# --------------------------------------------------------------------------- the chain's view
@dataclass
class _Chain:
    """What the audit chain says about one model."""

    requests: list[Any]  # ApprovalState, oldest first
    deployments: list[dict[str, Any]]  # oldest first
    moves: dict[str, dict[str, Any]] = field(default_factory=dict)  # alias -> last move
    registered: dict[str, str] = field(default_factory=dict)  # version -> artifact sha

    @classmethod
    def load(cls, url: str, name: str) -> _Chain:
        from registry import approvals, audit
        from registry.governance import deployments

        requests = approvals.list_requests(url, name)  # derived from the verified chain
        chain = cls(requests, deployments(url, name))
        for event in audit.events(url, model_name=name, kinds=["alias_moved", "model_registered"]):
            if event.kind == "alias_moved":
                chain.moves[str(event.payload.get("alias"))] = dict(event.payload)
            elif event.model_version is not None:
                chain.registered[event.model_version] = str(
                    event.payload.get("artifact_sha256") or ""
                )
        return chain

    def approved(self, version: str) -> Any | None:
        found = [
            r
            for r in self.requests
            if r.model_version == version and r.status == ApprovalStatus.APPROVED
        ]
        return found[-1] if found else None

    def release_of(self, version: str) -> tuple[Any | None, str]:
        """(the approved request ``version`` was released under, "") or (None, why not)."""
        approved = [
            r
            for r in self.requests
            if r.model_version == version and r.status == ApprovalStatus.APPROVED
        ]
        if not approved:
            return None, "has no recorded approval"
        released = {
            row["approval_request_id"]
            for row in self.deployments
            if row["model_version"] == version and row["action"] in ACTIVE_ACTIONS
        }
        for request in reversed(approved):
            if request.id in released:
                return request, ""
        return None, "is approved but was never released by the deploy step"

    def active_versions(self) -> list[str]:
        """Versions still in service (last action active), the most recent first."""
        last: dict[str, dict[str, Any]] = {}
        for row in self.deployments:
            last.pop(row["model_version"], None)
            last[row["model_version"]] = row
        return [v for v, row in reversed(last.items()) if row["action"] in ACTIVE_ACTIONS]

    def promoted_versions(self) -> list[str]:
        active = set(self.active_versions())
        seen: list[str] = []
        for row in reversed(self.deployments):
            version = row["model_version"]
            if row["action"] == "promoted" and version in active and version not in seen:
                seen.append(version)
        return seen


class _Artifacts:
    """Registry SHA-256 of versions, downloaded once per check."""

    def __init__(self, tracking_uri: str, name: str) -> None:
        self.tracking_uri, self.name = tracking_uri, name
        self._known: dict[str, str | None] = {}

    def sha256(self, version: str) -> str | None:
        from registry.mlflow_registry import artifact_sha256_of

        if version not in self._known:
            try:
                self._known[version] = artifact_sha256_of(self.tracking_uri, self.name, version)
            except RegistryError as exc:
                log.warning("%s v%s: %s", self.name, version, exc)
                self._known[version] = None
        return self._known[version]


# --------------------------------------------------------------------------- checks
def _moved_outside(name: str, alias: str, shown: str | None, move: dict[str, Any]) -> Drift:
    expected = move.get("to_version")
    where = f"is on v{shown}" if shown else "is gone"
    told = f"v{expected}" if expected else "nowhere"
    how = "removed" if shown is None else "moved"
    return Drift(
        name,
        alias,
        shown,
        expected,
        f"{where}, but the audit chain last moved it to {told} ({how} outside govml)",
    )


def _requirement(
    chain: _Chain, alias: str, version: str, move: dict[str, Any] | None
) -> tuple[str | None, str | None]:
    """(what the alias's version lacks or None, the SHA-256 the chain holds for it)."""
    if alias == CHAMPION:
        request, why = chain.release_of(version)
        return (why or None), (request.artifact_sha256 if request else None)
    if alias == CHALLENGER:
        request = chain.approved(version)
        if request is None:
            return "has no recorded approval", None
        return None, request.artifact_sha256
    if move is None and version not in chain.registered:
        return "was not registered by govml (no model_registered event)", None
    return None, (move or {}).get("artifact_sha256") or chain.registered.get(version)


def _check_alias(
    name: str, alias: str, shown: str | None, chain: _Chain, artifacts: _Artifacts
) -> Drift | None:
    move = chain.moves.get(alias)
    if move is not None and shown != move.get("to_version"):
        return _moved_outside(name, alias, shown, move)
    if shown is None:
        return None
    lacks, want = _requirement(chain, alias, shown, move)
    if lacks is not None:
        return Drift(name, alias, shown, None, f"is on v{shown}, which {lacks}")
    got = artifacts.sha256(shown)
    expected = move.get("to_version") if move else None
    if got is None:
        return Drift(
            name,
            alias,
            shown,
            expected,
            f"is on v{shown}, whose artifact cannot be read from the registry",
            chain_sha256=want,
        )
    if want and got != want:
        return Drift(
            name,
            alias,
            shown,
            expected,
            f"is on v{shown}, whose artifact changed: the registry has {got[:12]}, "
            f"the audit chain recorded {want[:12]}",
            registry_sha256=got,
            chain_sha256=want,
        )
    return None


def _candidates(
    chain: _Chain, shown: dict[str, str], drifted: set[str]
) -> list[tuple[str, str, str]]:
    """(version, alias, source) to try, in order of preference, without repeats."""
    order: list[tuple[str, str, str]] = []
    if CHAMPION in shown and CHAMPION not in drifted:
        order.append((shown[CHAMPION], CHAMPION, "alias"))
    moved = (chain.moves.get(CHAMPION) or {}).get("to_version")
    if moved:
        order.append((str(moved), CHAMPION, "chain"))
    order += [(v, CHAMPION, "promoted") for v in chain.promoted_versions()]
    order += [(v, CHALLENGER, "deployed") for v in chain.active_versions()]
    seen: set[str] = set()
    unique = []
    for item in order:
        if item[0] not in seen:
            seen.add(item[0])
            unique.append(item)
    return unique


def _servable(
    name: str, chain: _Chain, shown: dict[str, str], drifted: set[str], artifacts: _Artifacts
) -> tuple[Servable | None, str | None]:
    first_problem: str | None = None
    for version, alias, source in _candidates(chain, shown, drifted):
        request, why = chain.release_of(version)
        if request is None:
            first_problem = first_problem or f"{name} v{version} ({alias}) {why}"
            continue
        if artifacts.sha256(version) != request.artifact_sha256:
            first_problem = first_problem or (
                f"{name} v{version} ({alias}): its artifact in the registry is not the "
                f"approved one ({request.artifact_sha256[:12]})"
            )
            continue
        return Servable(version, alias, request.artifact_sha256, request.id, source), None
    return None, first_problem


def check_model(governance_url: str, tracking_uri: str, name: str) -> ModelReport:
    """Compare one model's aliases and artifacts with the chain; pick what to serve."""
    from registry.mlflow_registry import aliases

    chain = _Chain.load(governance_url, name)
    shown = aliases(tracking_uri, name)
    artifacts = _Artifacts(tracking_uri, name)
    drifts = tuple(
        d
        for alias in ALIASES
        if (d := _check_alias(name, alias, shown.get(alias), chain, artifacts)) is not None
    )
    serve, problem = _servable(name, chain, shown, {d.alias for d in drifts}, artifacts)
    return ModelReport(name, shown, drifts, serve, problem)


def record_drifts(
    governance_url: str, report: ModelReport, actor: str = ACTOR
) -> tuple[Drift, ...]:
    """Record each drift of ``report`` not recorded since govml last moved its alias."""
    from registry import audit

    if not report.drifts:
        return ()
    recorded: dict[str, set[str]] = {}
    for event in audit.events(
        governance_url, model_name=report.model_name, kinds=["alias_moved", "registry_drift"]
    ):
        alias = str(event.payload.get("alias"))
        if event.kind == "alias_moved":
            recorded.pop(alias, None)
        else:
            recorded.setdefault(alias, set()).add(audit.canonical_json(event.payload))
    new = []
    for drift in report.drifts:
        payload = drift.payload()
        if audit.canonical_json(payload) in recorded.get(drift.alias, set()):
            continue
        audit.append_event(
            governance_url,
            "registry_drift",
            actor=actor,
            payload=payload,
            model_name=report.model_name,
            model_version=drift.version,
        )
        log.warning("registry drift: %s", drift.message)
        new.append(drift)
    return tuple(new)


def model_names(governance_url: str, tracking_uri: str) -> list[str]:
    """Every model MLflow knows, and every model whose aliases the chain recorded."""
    from registry import audit
    from registry.mlflow_registry import registered_models

    names = set(registered_models(tracking_uri))
    names |= {
        e.model_name
        for e in audit.events(governance_url, kinds=["alias_moved"])
        if e.model_name is not None
    }
    return sorted(names)


def reconcile(
    governance_url: str,
    tracking_uri: str,
    names: Iterable[str] | None = None,
    *,
    record: bool = True,
    actor: str = ACTOR,
) -> list[ModelReport]:
    """Check every model (or ``names``); record new drifts (``registry_drift``) once."""
    reports = []
    for name in names if names is not None else model_names(governance_url, tracking_uri):
        report = check_model(governance_url, tracking_uri, name)
        if record and report.drifts:
            new = record_drifts(governance_url, report, actor)
            report = ModelReport(
                report.model_name,
                report.aliases,
                report.drifts,
                report.serve,
                report.problem,
                new,
            )
        reports.append(report)
    return reports


# --------------------------------------------------------------------------- endpoints
ENDPOINT_KINDS = ("deployed", "traffic_shifted", "promoted", "rolled_back", "endpoint_reconciled")


def active_versions(governance_url: str, name: str) -> list[str]:
    """The model's versions still in service per the chain, the most recent first."""
    from registry.governance import deployments

    return _Chain([], deployments(governance_url, name)).active_versions()


def recorded_endpoint(governance_url: str, name: str, version: str) -> dict[str, Any] | None:
    """Where the chain last recorded ``version`` served: ``{"url", "transformer"}``; the
    url is None once it was recorded as no longer served; None when never deployed.

    The last of: a deployment event's ``endpoint`` and an ``endpoint_reconciled`` event's
    ``to_url`` (``make up`` records the live address each time it serves a version).
    """
    from registry import audit

    found: dict[str, Any] | None = None
    for event in audit.events(
        governance_url, model_name=name, model_version=str(version), kinds=ENDPOINT_KINDS
    ):
        p = event.payload
        if event.kind == "endpoint_reconciled":
            found = {"url": p.get("to_url"), "transformer": p.get("transformer_to")}
        elif p.get("endpoint"):
            transformer = p.get("transformer")
            if isinstance(transformer, dict):
                transformer = transformer.get("url")
            found = {"url": p["endpoint"], "transformer": transformer}
    return found


def record_endpoint(
    governance_url: str,
    name: str,
    version: str,
    url: str | None,
    *,
    transformer: str | None = None,
    deployment: str | None = None,
    reason: str,
    actor: str = ACTOR,
) -> bool:
    """Record ``url`` (None: not served) as the version's endpoint unless it is already
    (an ``endpoint_reconciled`` event); True when recorded now."""
    from registry import audit

    before = recorded_endpoint(governance_url, name, version)
    if before is not None and before.get("url") == url and before.get("transformer") == transformer:
        return False
    if before is None and url is None:
        return False
    audit.append_event(
        governance_url,
        "endpoint_reconciled",
        actor=actor,
        payload={
            "from_url": (before or {}).get("url"),
            "to_url": url,
            "transformer_from": (before or {}).get("transformer"),
            "transformer_to": transformer,
            "deployment": deployment,
            "reason": reason,
        },
        model_name=name,
        model_version=str(version),
    )
    return True
