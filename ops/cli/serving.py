"""``govml serving``: the bearer tokens of deployed versions and of the gateway.

Every deployed version checks its own token file (``tokens.json`` in its folder under
``$GOVML_SERVING_DIR``; on Kubernetes the Secret made from it). Operators give the
bank's systems their tokens here::

    govml serving token new fraud 7 core-banking --scope predict
    govml serving token list fraud 7
    govml serving token revoke fraud 7 core-banking
    govml serving gateway-token new core-banking --scope predict --scope explain

``new`` prints the token once on stdout (nothing else goes there, so it can be piped
into a secret store); only its SHA-256 is kept. A change reaches the running servers
within seconds, without a restart (on Kubernetes: once the kubelet has updated the
mounted Secret). ``govml`` is the project's own client (deploy step, transformer,
gateway) and cannot be added or revoked here; a redeploy renews it. Each ``new`` and
``revoke`` is an audit event (``serving_token_issued`` / ``serving_token_revoked``)
naming the host account that ran it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ops.cli.common import Commands
from pipelines.config import Settings
from pipelines.errors import ConfigError, DeploymentError

SCOPES = ("predict", "explain", "admin")


def _actor() -> str:
    """The host account running the command (:func:`ops.identity.host_account`)."""
    from ops.identity import host_account

    return host_account()


def _deployment(settings: Settings, model: str, version: str) -> tuple[Any, str, Path]:
    """(deployer, deployment name, its token file); refuses a version never deployed."""
    from ops.deploy import deployer_for
    from serving.token_files import deployment_name

    deployer = deployer_for(settings)
    name = deployment_name(model, version)
    path = deployer.tokens(name).tokens
    if not path.is_file():
        raise DeploymentError(
            f"{model} v{version} has no token file at {path}: deploy it first "
            "(each deployment gets its own tokens)"
        )
    return deployer, name, path


def _gateway_file(settings: Settings) -> Path:
    from serving.control.routes import gateway_dir

    return gateway_dir(settings) / "tokens.json"


def _own_client(name: str) -> None:
    from serving.token_files import SERVICE_CLIENT

    if name == SERVICE_CLIENT:
        raise ConfigError(
            f"{name!r} is the project's own client (deploy step, transformer, gateway); "
            "redeploy the version to renew its token"
        )


def _record(settings: Settings, kind: str, payload: dict[str, Any], model: Any = None) -> None:
    from registry.audit import append_event

    model_name, version = model if model else (None, None)
    append_event(
        settings.governance_url,
        kind,
        actor=_actor(),
        payload=payload,
        model_name=model_name,
        model_version=version,
    )


def _issue(
    settings: Settings, path: Path, args: argparse.Namespace, where: dict[str, Any], model: Any
) -> str:
    """Add the client to ``path``, audit it (undone if the audit fails); the token."""
    from serving.token_files import add_client, revoke_client

    _own_client(args.name)
    scopes = list(dict.fromkeys(args.scope))
    token = add_client(path, args.name, scopes, args.kdf)
    payload = {**where, "client": args.name, "scopes": scopes, "kdf": args.kdf}
    try:
        _record(settings, "serving_token_issued", payload, model)
    except Exception:
        revoke_client(path, args.name)
        raise
    return token


def _revoke(
    settings: Settings, path: Path, args: argparse.Namespace, where: dict[str, Any], model: Any
) -> None:
    from serving.token_files import revoke_client

    _own_client(args.name)
    revoke_client(path, args.name)  # first: a revocation never waits for the audit trail
    _record(settings, "serving_token_revoked", {**where, "client": args.name}, model)


def _print_token(token: str, args: argparse.Namespace, where: str) -> None:
    sys.stdout.write(token + "\n")
    sys.stderr.write(
        f"token for {args.name!r} ({', '.join(dict.fromkeys(args.scope))}) on {where}; "
        "it is shown only this once\n"
    )


def _list(path: Path) -> int:
    from serving.token_records import load_records

    records = load_records(path)
    if not records:
        print(f"no clients in {path}")
    for record in records:
        kind = "sha256" if record.sha256 else "pbkdf2"
        print(f"{record.name:<24} {','.join(record.scopes):<24} {kind}")
    return 0


# --------------------------------------------------------------------------- commands
def cmd_token_new(args: argparse.Namespace, settings: Settings) -> int:
    deployer, name, path = _deployment(settings, args.model, args.version)
    model = (args.model, str(args.version))
    token = _issue(settings, path, args, {"deployment": name}, model)
    published = deployer.publish_tokens(name)
    _print_token(token, args, f"{args.model} v{args.version}: {published}")
    return 0


def cmd_token_revoke(args: argparse.Namespace, settings: Settings) -> int:
    deployer, name, path = _deployment(settings, args.model, args.version)
    _revoke(settings, path, args, {"deployment": name}, (args.model, str(args.version)))
    published = deployer.publish_tokens(name)
    print(f"revoked {args.name!r} on {args.model} v{args.version}: {published}")
    return 0


def cmd_token_list(args: argparse.Namespace, settings: Settings) -> int:
    return _list(_deployment(settings, args.model, args.version)[2])


def cmd_gateway_new(args: argparse.Namespace, settings: Settings) -> int:
    path = _gateway_file(settings)
    token = _issue(settings, path, args, {"deployment": "gateway"}, None)
    _print_token(token, args, f"the gateway: {path} (re-read within seconds)")
    return 0


def cmd_gateway_revoke(args: argparse.Namespace, settings: Settings) -> int:
    path = _gateway_file(settings)
    _revoke(settings, path, args, {"deployment": "gateway"}, None)
    print(f"revoked {args.name!r} on the gateway: {path}")
    return 0


def cmd_gateway_list(args: argparse.Namespace, settings: Settings) -> int:
    path = _gateway_file(settings)
    if not path.is_file():
        raise ConfigError(f"no gateway token file at {path}: add a client with `new` first")
    return _list(path)


def _new_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="the client's name (letters, digits, _ . @ -)")
    p.add_argument(
        "--scope",
        action="append",
        required=True,
        choices=SCOPES,
        help="what it may call (repeat): predict, explain, admin (load/unload models)",
    )
    p.add_argument(
        "--kdf",
        choices=["sha256", "pbkdf2"],
        default="sha256",
        help="how the token's hash is kept (sha256 for generated tokens; see serving.auth)",
    )


def _token_commands(
    verbs: Commands, whose: tuple[str, ...], new: Any, revoke: Any, listing: Any
) -> None:
    """``new``, ``revoke`` and ``list`` of one token file, named by the ``whose``
    arguments (a deployed version's: model and version; the gateway's: none)."""
    p = verbs.add("new", new, "make a client's token, print it once")
    for name in whose:
        p.add_argument(name)
    _new_options(p)
    p = verbs.add("revoke", revoke, "remove a client's token (effective within seconds)")
    for name in (*whose, "name"):
        p.add_argument(name)
    p = verbs.add("list", listing, "the clients, their scopes and hash kind")
    for name in whose:
        p.add_argument(name)


def add_serving_commands(sub: Commands) -> None:
    groups = sub.group(
        "serving", "bearer tokens of deployed versions and the gateway", metavar="GROUP"
    )
    verbs = groups.group("token", "a deployed version's clients")
    _token_commands(verbs, ("model", "version"), cmd_token_new, cmd_token_revoke, cmd_token_list)
    verbs = groups.group("gateway-token", "the gateway's clients")
    _token_commands(verbs, (), cmd_gateway_new, cmd_gateway_revoke, cmd_gateway_list)
