"""The audit chain's key: HMAC-SHA-256 keys kept outside the governance database.

Every audit event carries ``mac = HMAC-SHA-256(key, hash)`` over its chain hash (which
already covers its predecessor and its whole body), and the id of the key that made
it. Whoever can write the database but not read this file can neither append a
believable event nor rewrite old ones: ``registry.audit_verify.verify_chain`` names the first
event whose MAC is missing or wrong.

The keyring is a JSON file, mode 0600 in a 0700 folder::

    {"version": 1, "active": "3f1c...", "keys": {"3f1c...": {"secret": "<64 hex>",
                                                   "created_at": "2026-12-07T..."}}}

Where it is: ``GOVML_AUDIT_KEY_FILE``, else beside a SQLite governance database
(``<its folder>/keys/audit-keys.json``, i.e. ``$GOVML_VAR_DIR/keys/`` in the embedded
stack), else ``$GOVML_VAR_DIR/keys/audit-keys.json``. In Kubernetes the file is a
mounted Secret (``GOVML_AUDIT_KEY_FILE=/var/run/secrets/govml/audit-keys.json``); a
KMS-held key reaches the pods the same way (e.g. synced into that Secret).

**Rotation** (:func:`rotate`, ``govml audit rotate-key``): a new key becomes active and
the old one stays in the file for verification. The chain records the change as an
``audit_key_rotated`` event signed with the *old* key, naming the new key's id; from
the next event on only the new key is accepted, so a retired (perhaps leaked) key
cannot sign new events.

A key id is the first 16 hex digits of SHA-256 of the secret: it names a key without
revealing anything useful about it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from pipelines.errors import RegistryError
from pipelines.files import exclusive_lock

KEY_BYTES = 32
FORMAT_VERSION = 1


class AuditKeyError(RegistryError):
    """The audit key file is missing, unreadable or malformed."""


def key_id(secret: bytes) -> str:
    return hashlib.sha256(secret).hexdigest()[:16]


@dataclass(frozen=True)
class Keyring:
    """The keys of one governance store; ``active`` signs new events."""

    path: Path
    active: str
    keys: dict[str, bytes]

    def sign(self, message: str) -> tuple[str, str]:
        """``(key id, hex MAC)`` of ``message`` with the active key."""
        return self.active, mac(self.keys[self.active], message)

    def check(self, kid: str | None, message: str, tag: str | None) -> str | None:
        """None when ``tag`` is ``message``'s MAC under key ``kid``; else what is wrong."""
        if not kid or not tag:
            return "it carries no MAC (written without the audit key)"
        secret = self.keys.get(kid)
        if secret is None:
            return f"it is signed with key {kid}, which is not in the keyring {self.path}"
        if not hmac.compare_digest(mac(secret, message), tag):
            return f"its MAC does not match (key {kid})"
        return None


def mac(secret: bytes, message: str) -> str:
    return hmac.digest(secret, message.encode("utf-8"), "sha256").hex()


# --------------------------------------------------------------------------- location
def default_key_file(governance_url: str) -> Path:
    """Where the keyring of ``governance_url`` lives (see the module docs)."""
    from pipelines.config import load_settings

    explicit = load_settings().audit_key_file
    if explicit is not None:
        return explicit
    return store_home(governance_url) / "keys" / "audit-keys.json"


def store_home(governance_url: str) -> Path:
    """The folder that holds a store's local companions (its keys and checkpoints).

    A SQLite store's own folder; otherwise the state folder ``$GOVML_VAR_DIR``.
    """
    parsed = make_url(governance_url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        return Path(parsed.database).expanduser().resolve().parent
    from pipelines.config import load_settings

    return load_settings().var_dir


# --------------------------------------------------------------------------- file
def _write_private(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock beside the keyring (two processes never both create a key)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with exclusive_lock(path):
        yield


def _parse(path: Path, text: str) -> Keyring:
    try:
        data = json.loads(text)
        active = str(data["active"])
        keys = {str(k): bytes.fromhex(v["secret"]) for k, v in data["keys"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise AuditKeyError(f"audit key file {path} is malformed ({exc})") from None
    for kid, secret in keys.items():
        if len(secret) < 16 or key_id(secret) != kid:
            raise AuditKeyError(f"audit key file {path}: key {kid} does not match its secret")
    if active not in keys:
        raise AuditKeyError(f"audit key file {path}: the active key {active} is not in it")
    return Keyring(path, active, keys)


def load(path: Path) -> Keyring | None:
    """The keyring at ``path``; None when there is no such file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AuditKeyError(f"cannot read the audit key file {path}: {exc.strerror}") from None
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise AuditKeyError(
            f"audit key file {path} is readable by others (mode {mode:o}): chmod 600 it"
        )
    return _parse(path, text)


def _new_entry() -> tuple[str, dict[str, str]]:
    secret = secrets.token_bytes(KEY_BYTES)
    created = dt.datetime.now(dt.UTC).isoformat()
    return key_id(secret), {"secret": secret.hex(), "created_at": created}


def create(path: Path) -> Keyring:
    """Make a new keyring with one key (refuses to overwrite an existing one)."""
    with _locked(path):
        existing = load(path)
        if existing is not None:
            return existing
        kid, entry = _new_entry()
        _write_private(path, {"version": FORMAT_VERSION, "active": kid, "keys": {kid: entry}})
    ring = load(path)
    assert ring is not None
    return ring


def add_key(path: Path) -> tuple[Keyring, str]:
    """Add a new key to the keyring without activating it; ``(keyring, new id)``."""
    with _locked(path):
        ring = load(path)
        if ring is None:
            raise AuditKeyError(f"no audit key file at {path} to rotate")
        data = json.loads(path.read_text())
        kid, entry = _new_entry()
        data["keys"][kid] = entry
        _write_private(path, data)
    fresh = load(path)
    assert fresh is not None
    return fresh, kid


def activate(path: Path, kid: str) -> Keyring:
    """Make ``kid`` the key that signs new events."""
    with _locked(path):
        data = json.loads(path.read_text())
        if kid not in data["keys"]:
            raise AuditKeyError(f"audit key file {path} has no key {kid}")
        data["active"] = kid
        _write_private(path, data)
    ring = load(path)
    assert ring is not None
    return ring


def main(argv: list[str] | None = None) -> int:
    """``python -m registry.audit_keys new PATH``: a new keyring (for a Secret or a mount)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m registry.audit_keys", description=main.__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    new = sub.add_parser("new", help="write a new keyring with one key (refuses to overwrite)")
    new.add_argument("path", type=Path)
    args = parser.parse_args(argv)
    if args.path.exists():
        print(
            f"error: {args.path} exists; rotate keys with `govml audit rotate-key`", file=sys.stderr
        )
        return 2
    ring = create(args.path.resolve())
    print(f"wrote {ring.path} (mode 0600), key {ring.active}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
