"""Writing token files: clients added and revoked, a deployment's own token files.

Files are replaced atomically (mode 0600 from the start), under an exclusive lock beside
them so that two admins do not lose each other's records.

"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from pipelines.errors import ConfigError
from pipelines.files import exclusive_lock
from serving.token_records import generate_token, is_token, load_records, warn_if_shared

log = logging.getLogger("serving.auth")  # the token files' log, as before

TOKENS_FILE = "tokens.json"


SERVICE_TOKEN_FILE = "service.token"


SERVICE_CLIENT = "govml"


SERVICE_SCOPES = ("predict", "explain")


def write_records(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Replace the token file atomically; the new file has mode 0600."""
    if path.suffix == ".json":
        text = json.dumps(list(records), indent=2) + "\n"
    else:
        text = yaml.safe_dump(list(records), sort_keys=False)
    _write_private(path, text)


def add_client(
    path: str | Path, name: str, scopes: Sequence[str], kdf: Literal["sha256", "pbkdf2"] = "sha256"
) -> str:
    """Generate a token for a new client, append its record to ``path``; the token."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(path):
        existing = load_records(path) if path.exists() else []
        if any(r.name == name for r in existing):
            raise ConfigError(f"{path}: client {name!r} already has a token (revoke it first)")
        token, record = generate_token(name, scopes, kdf)
        write_records(path, [r.to_dict() for r in existing] + [record])
    return token


def revoke_client(path: str | Path, name: str) -> None:
    """Remove a client's record from ``path``."""
    path = Path(path)
    with exclusive_lock(path):
        existing = load_records(path)
        kept = [r for r in existing if r.name != name]
        if len(kept) == len(existing):
            raise ConfigError(f"{path}: no client named {name!r}")
        write_records(path, [r.to_dict() for r in kept])


@dataclass(frozen=True)
class DeploymentTokens:
    """A deployment's token files: the records its servers check, and the project's
    own client token (both mode 0600)."""

    tokens: Path
    service_token: Path


def deployment_name(model_name: str, version: str) -> str:
    """A deployment's name: ``<model>-v<version>`` (a DNS-1035 label for Kubernetes), also
    its folder under the deployers' state root."""
    return f"{model_name.replace('_', '-')}-v{version}"


def deployment_tokens(folder: str | Path) -> DeploymentTokens:
    folder = Path(folder)
    return DeploymentTokens(folder / TOKENS_FILE, folder / SERVICE_TOKEN_FILE)


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, mode 0600 from the start."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_token(path: str | Path, token: str) -> None:
    """Keep a token in a file of its own, mode 0600 (e.g. for a caller of a server)."""
    if not is_token(token):
        raise ConfigError("a token must be 1-512 characters of A-Z a-z 0-9 - . _ ~ + / (then =)")
    _write_private(Path(path), token + "\n")


def read_token(path: str | Path) -> str:
    """A token kept in a file (e.g. a deployment's ``service.token``); ConfigError when
    the file is missing or holds no token. Never logs or returns more than the token."""
    path = Path(path)
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(f"{path}: token file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the token file ({exc.strerror})") from None
    if not is_token(token):
        raise ConfigError(f"{path}: does not hold a bearer token")
    warn_if_shared(path)
    return token


def provision(folder: str | Path) -> DeploymentTokens:
    """A deployment's token files, made when missing; kept when they match.

    ``tokens.json`` keeps every record it has (the bank's clients added with ``govml
    serving token new`` survive a restart of the same version); the project's own client
    ``govml`` gets a new token when ``service.token`` is missing or does not match its
    record. Both files end mode 0600."""
    files = deployment_tokens(folder)
    files.tokens.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(files.tokens):
        records = load_records(files.tokens) if files.tokens.exists() else []
        token = None
        with contextlib.suppress(ConfigError):
            token = read_token(files.service_token)
        digest = hashlib.sha256(token.encode()).hexdigest() if token else None
        ours = [r for r in records if r.name == SERVICE_CLIENT]
        if token is None or not ours or ours[0].sha256 != digest:
            token, record = generate_token(SERVICE_CLIENT, SERVICE_SCOPES)
            others = [r.to_dict() for r in records if r.name != SERVICE_CLIENT]
            write_token(files.service_token, token)
            write_records(files.tokens, [record, *others])
            log.info("%s: new token for the project's client %r", folder, SERVICE_CLIENT)
        for path in (files.tokens, files.service_token):
            os.chmod(path, 0o600)
    return files
