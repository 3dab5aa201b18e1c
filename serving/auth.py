"""Bearer tokens for the model endpoint, configured hashed at rest.

The token file (JSON when its name ends in ``.json``, else YAML) is a list of clients::

    - name: core-banking
      sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
      scopes: [predict]
    - name: imported-analyst
      pbkdf2_sha256: {salt: 1f0c..., iterations: 600000, hash: 6a1e...}
      scopes: [predict, explain]

The plaintext token is never stored: ``python -m serving.auth new NAME --scope predict
--file PATH`` generates one, appends its hash (the file stays mode 0600) and prints the
token once.

**Which hash.** Tokens made by :func:`generate_token` hold 256 random bits from
:mod:`secrets`. For such a secret one SHA-256 is enough: finding a preimage means
searching 2**256 tokens, however fast the hash is; a slow key-derivation function only
adds protection to *guessable* secrets (passwords), and would cost milliseconds of CPU on
every cold check. So generated tokens are stored as ``sha256``. A token that did not come
from the generator (imported from another system, chosen by a person) may have little
entropy: store it as ``pbkdf2_sha256`` (PBKDF2-HMAC-SHA256, a random 16-byte salt and
600,000 iterations by default, as OWASP recommends in 2023); ``--kdf pbkdf2`` does.

**Cost per request.** :meth:`TokenStore.check` hashes the presented token once with
SHA-256 and looks the digest up in a cache of tokens already verified, so a known
client costs a few microseconds and PBKDF2 runs once per token (per process), not per
request. On a cache miss every ``sha256`` record is compared with
:func:`hmac.compare_digest` without stopping at a match; then, only if no ``sha256``
record matched, each PBKDF2 record is tried. Unknown tokens that reached PBKDF2 are
remembered in a bounded negative cache so that repeating one stays cheap. (Random
unknown tokens each cost one PBKDF2 per PBKDF2 record: keep such records few, or rate
limit at the gateway.) Cache keys are SHA-256 digests of the tokens, so the timing of a
lookup reveals nothing usable about a token.

Failures raise :class:`AuthError` with ``status`` 401 (no, malformed or unknown token)
or 403 (a known client without the scope) and a ``www_authenticate`` header value as
RFC 6750 describes. Messages never contain the token.

**Live changes.** A store loaded from a file notices when the file changes: at most once
per ``reload_seconds`` (1 s by default) a check looks at the file's inode, size and
modification time (one ``stat``; the rate limit costs one clock read per request, no
system call) and re-reads it when any of them moved. A revoked token is refused, and a
new one accepted, within about a second, without a restart. A file that becomes
unreadable or invalid (deleted, truncated, a bad hand edit) refuses every token until it
is fixed (fail closed), and says so in the log once per change.

**A deployment's tokens** (:func:`provision`): every deployed version gets, in its
folder, ``tokens.json`` (the hashed records both its model server and its feature
transformer check) holding the project's own client ``govml`` (scopes predict,
explain), and ``service.token``, that client's token, for the project's callers on
this host (the deploy smoke test, the transformer, the gateway, the demo). Both are
mode 0600. Operators add and revoke the bank's clients in ``tokens.json`` with
``govml serving token``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipelines.errors import ConfigError, GovMLError

log = logging.getLogger(__name__)

TOKEN_PREFIX = "gml_"
TOKEN_BYTES = 32
PBKDF2_ITERATIONS = 600_000
MIN_PBKDF2_ITERATIONS = 100_000
SALT_BYTES = 16
MAX_TOKEN_CHARS = 512
NEGATIVE_CACHE_SIZE = 4096
DEFAULT_REALM = "govml"
RELOAD_SECONDS = 1.0
_monotonic = time.monotonic  # a clock read (vDSO), no system call
TOKENS_FILE = "tokens.json"
SERVICE_TOKEN_FILE = "service.token"
SERVICE_CLIENT = "govml"
SERVICE_SCOPES = ("predict", "explain")
# RFC 6750 b64token
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$"
_SCOPE = r"^[a-z][a-z0-9_:.-]{0,63}$"
_HEX64 = r"^[0-9a-fA-F]{64}$"


class AuthError(GovMLError):
    """A request is not authenticated (401) or not allowed (403)."""

    def __init__(self, message: str, status: int, www_authenticate: str) -> None:
        super().__init__(message)
        self.status = status
        self.www_authenticate = www_authenticate


# ----------------------------------------------------------------------------- the file


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class Pbkdf2Hash(_Strict):
    salt: Annotated[str, Field(pattern=r"^[0-9a-fA-F]+$", min_length=2 * SALT_BYTES)]
    iterations: Annotated[int, Field(ge=MIN_PBKDF2_ITERATIONS)]
    hash: Annotated[str, Field(pattern=_HEX64)]


class TokenRecord(_Strict):
    """One client: its name, the hash of its token and its scopes."""

    name: Annotated[str, Field(pattern=_NAME)]
    scopes: Annotated[list[Annotated[str, Field(pattern=_SCOPE)]], Field(min_length=1)]
    sha256: Annotated[str, Field(pattern=_HEX64)] | None = None
    pbkdf2_sha256: Pbkdf2Hash | None = None

    @model_validator(mode="after")
    def _one_hash(self) -> TokenRecord:
        if (self.sha256 is None) == (self.pbkdf2_sha256 is None):
            raise ValueError("give exactly one of 'sha256' or 'pbkdf2_sha256'")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


def _problems(prefix: str, exc: ValidationError) -> list[str]:
    """pydantic's errors as ``prefix.field: problem`` lines."""
    out = []
    for err in exc.errors():
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "missing":
            msg = "required field is missing"
        out.append(f"{prefix}{where}: {msg}")
    return out


def parse_records(data: Any, source: str = "<tokens>") -> list[TokenRecord]:
    """Validate an already-parsed token file: a list of records, unique names and hashes."""
    if data is None:
        return []
    if not isinstance(data, list):
        raise ConfigError(f"{source}: a token file holds a list of records")
    records: list[TokenRecord] = []
    problems: list[str] = []
    for i, item in enumerate(data):
        try:
            records.append(TokenRecord.model_validate(item))
        except ValidationError as exc:
            problems += _problems(f"[{i}]", exc)
    names = [r.name for r in records]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"client name {name!r} appears more than once")
    hashes = [r.sha256.lower() for r in records if r.sha256]
    if len(set(hashes)) != len(hashes):
        problems.append("two records hold the same sha256 (one token for two clients)")
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    return records


def _read(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: token file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the token file ({exc.strerror})") from None
    try:
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        kind = "JSON" if path.suffix == ".json" else "YAML"
        raise ConfigError(f"{path}: not valid {kind}: {str(exc).splitlines()[0]}") from None


def load_records(path: str | Path) -> list[TokenRecord]:
    """The records of a token file (warns when group or others may read it)."""
    path = Path(path)
    records = parse_records(_read(path), str(path))
    with contextlib.suppress(OSError):
        if path.stat().st_mode & 0o077:
            log.warning("%s is readable by group or others; chmod 600 it", path)
    return records


# ----------------------------------------------------------------------------- tokens


def generate_token(
    name: str, scopes: Sequence[str], kdf: Literal["sha256", "pbkdf2"] = "sha256"
) -> tuple[str, dict[str, Any]]:
    """A new random token and the record to store for it (which holds only its hash)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
    return token, hash_record(name, scopes, token, kdf)


def hash_record(
    name: str,
    scopes: Sequence[str],
    token: str,
    kdf: Literal["sha256", "pbkdf2"] = "sha256",
    iterations: int = PBKDF2_ITERATIONS,
) -> dict[str, Any]:
    """The record for a given token (for tokens issued elsewhere use ``kdf="pbkdf2"``)."""
    if not _TOKEN.fullmatch(token) or len(token) > MAX_TOKEN_CHARS:
        raise ConfigError("a token must be 1-512 characters of A-Z a-z 0-9 - . _ ~ + / (then =)")
    data: dict[str, Any] = {"name": name, "scopes": list(scopes)}
    if kdf == "sha256":
        data["sha256"] = hashlib.sha256(token.encode()).hexdigest()
    else:
        salt = secrets.token_bytes(SALT_BYTES)
        digest = hashlib.pbkdf2_hmac("sha256", token.encode(), salt, iterations)
        data["pbkdf2_sha256"] = {"salt": salt.hex(), "iterations": iterations, "hash": digest.hex()}
    try:
        return TokenRecord.model_validate(data).to_dict()
    except ValidationError as exc:
        raise ConfigError("; ".join(_problems("new record", exc))) from None


@dataclass(frozen=True)
class _Client:
    name: str
    scopes: frozenset[str]


@dataclass(frozen=True)
class _Pbkdf2Client:
    client: _Client
    salt: bytes
    iterations: int
    digest: bytes


class TokenStore:
    """Checks ``Authorization: Bearer <token>`` headers against hashed records."""

    def __init__(
        self,
        records: Iterable[TokenRecord],
        realm: str = DEFAULT_REALM,
        source: Path | None = None,
        reload_seconds: float = RELOAD_SECONDS,
        *,
        stamp: tuple[int, int, int] | None = None,
    ) -> None:
        """``source``: the file the records came from (watched, see the module doc);
        ``stamp``: that file's :func:`file_stamp` taken *before* it was read (so a
        change made while it was read is seen on the next look)."""
        self.realm = realm
        self.source = source
        self.reload_seconds = reload_seconds
        self._lock = threading.Lock()
        self._next_look = _monotonic() + reload_seconds
        self._set(list(records), stamp if stamp is not None else file_stamp(source))

    def _set(self, records: list[TokenRecord], stamp: tuple[int, int, int] | None) -> None:
        fast: list[tuple[bytes, _Client]] = []
        slow: list[_Pbkdf2Client] = []
        for r in records:
            client = _Client(r.name, frozenset(r.scopes))
            if r.sha256 is not None:
                fast.append((bytes.fromhex(r.sha256), client))
            elif r.pbkdf2_sha256 is not None:
                p = r.pbkdf2_sha256
                slow.append(
                    _Pbkdf2Client(
                        client, bytes.fromhex(p.salt), p.iterations, bytes.fromhex(p.hash)
                    )
                )
        with self._lock:
            self._fast = tuple(fast)
            self._slow = tuple(slow)
            self._cache: dict[bytes, _Client] = {}
            self._misses: OrderedDict[bytes, None] = OrderedDict()
            self._stamp = stamp

    @classmethod
    def load(
        cls, path: str | Path, realm: str = DEFAULT_REALM, reload_seconds: float = RELOAD_SECONDS
    ) -> TokenStore:
        """The store of a token file, watched for changes; ConfigError if unusable now."""
        path = Path(path)
        stamp = file_stamp(path)
        return cls(load_records(path), realm, path, reload_seconds, stamp=stamp)

    @property
    def clients(self) -> list[str]:
        return [c.name for _, c in self._fast] + [p.client.name for p in self._slow]

    def reload_if_changed(self) -> bool:
        """Re-read the token file if it changed since it was read; True if it did.

        A revoked token stops working and a new one starts. A file that cannot be used
        any more leaves no valid token (fail closed) and is logged as an error."""
        if self.source is None:
            return False
        stamp = file_stamp(self.source)
        if stamp == self._stamp:
            return False
        try:
            records = load_records(self.source)
        except ConfigError as exc:
            self._set([], stamp)
            log.error("%s; refusing every token until the file is fixed", exc)
            return True
        self._set(records, stamp)
        log.info("reloaded %d token record(s) from %s", len(records), self.source)
        return True

    def _look(self, now: float) -> None:
        """Pick up a changed token file (called at most once per ``reload_seconds``)."""
        self._next_look = now + self.reload_seconds
        self.reload_if_changed()

    # ------------------------------------------------------------------ checks
    def _fail(self, message: str, error: str | None = None) -> AuthError:
        header = f'Bearer realm="{self.realm}"'
        if error is not None:
            header += f', error="{error}", error_description="{message}"'
        return AuthError(message, 401, header)

    def _token(self, authorization: str | None) -> str:
        if authorization is None or not authorization.strip():
            raise self._fail("missing bearer token")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise self._fail("expected 'Authorization: Bearer <token>'", "invalid_request")
        if len(token) > MAX_TOKEN_CHARS or not _TOKEN.fullmatch(token):
            raise self._fail("malformed bearer token", "invalid_token")
        return token

    def _verify(self, token: str, digest: bytes) -> _Client:
        match: _Client | None = None
        for expected, client in self._fast:  # no early exit: the time does not depend on which
            if hmac.compare_digest(expected, digest):
                match = client
        if match is None and self._slow:
            with self._lock:
                if digest in self._misses:
                    self._misses.move_to_end(digest)
                    raise self._fail("unknown bearer token", "invalid_token")
            secret = token.encode()
            for p in self._slow:
                derived = hashlib.pbkdf2_hmac("sha256", secret, p.salt, p.iterations)
                if hmac.compare_digest(derived, p.digest):
                    match = p.client
                    break
            if match is None:
                with self._lock:
                    self._misses[digest] = None
                    while len(self._misses) > NEGATIVE_CACHE_SIZE:
                        self._misses.popitem(last=False)
        if match is None:
            raise self._fail("unknown bearer token", "invalid_token")
        return match

    def check(self, authorization: str | None, scope: str) -> str:
        """The client name for an ``Authorization`` header value allowed ``scope``."""
        if self.source is not None and (now := _monotonic()) >= self._next_look:
            self._look(now)
        token = self._token(authorization)
        digest = hashlib.sha256(token.encode()).digest()
        client = self._cache.get(digest)
        if client is None:
            client = self._verify(token, digest)
            self._cache[digest] = client
        if scope not in client.scopes:
            raise AuthError(
                f"client {client.name!r} may not {scope}",
                403,
                f'Bearer realm="{self.realm}", error="insufficient_scope", scope="{scope}"',
            )
        return client.name


def file_stamp(path: Path | None) -> tuple[int, int, int] | None:
    """(inode, size, mtime ns) of a file, None when absent: a new version of the file
    (written in place, or replaced atomically) has another stamp."""
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


# ----------------------------------------------------------------------------- writing


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock beside ``path`` (two admins do not lose each other's records)."""
    lock = path.with_name(path.name + ".lock")
    fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_records(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Replace the token file atomically; the new file has mode 0600."""
    if path.suffix == ".json":
        text = json.dumps(list(records), indent=2) + "\n"
    else:
        text = yaml.safe_dump(list(records), sort_keys=False)
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


def add_client(
    path: str | Path, name: str, scopes: Sequence[str], kdf: Literal["sha256", "pbkdf2"] = "sha256"
) -> str:
    """Generate a token for a new client, append its record to ``path``; the token."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        existing = load_records(path) if path.exists() else []
        if any(r.name == name for r in existing):
            raise ConfigError(f"{path}: client {name!r} already has a token (revoke it first)")
        token, record = generate_token(name, scopes, kdf)
        write_records(path, [r.to_dict() for r in existing] + [record])
    return token


def revoke_client(path: str | Path, name: str) -> None:
    """Remove a client's record from ``path``."""
    path = Path(path)
    with _locked(path):
        existing = load_records(path)
        kept = [r for r in existing if r.name != name]
        if len(kept) == len(existing):
            raise ConfigError(f"{path}: no client named {name!r}")
        write_records(path, [r.to_dict() for r in kept])


# ----------------------------------------------------------------------------- a deployment


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
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_token(path: str | Path, token: str) -> None:
    """Keep a token in a file of its own, mode 0600 (e.g. for a caller of a server)."""
    if not _TOKEN.fullmatch(token) or len(token) > MAX_TOKEN_CHARS:
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
    if not _TOKEN.fullmatch(token) or len(token) > MAX_TOKEN_CHARS:
        raise ConfigError(f"{path}: does not hold a bearer token")
    with contextlib.suppress(OSError):
        if path.stat().st_mode & 0o077:
            log.warning("%s is readable by group or others; chmod 600 it", path)
    return token


def provision(folder: str | Path) -> DeploymentTokens:
    """A deployment's token files, made when missing; kept when they match.

    ``tokens.json`` keeps every record it has (the bank's clients added with ``govml
    serving token new`` survive a restart of the same version); the project's own client
    ``govml`` gets a new token when ``service.token`` is missing or does not match its
    record. Both files end mode 0600."""
    files = deployment_tokens(folder)
    files.tokens.parent.mkdir(parents=True, exist_ok=True)
    with _locked(files.tokens):
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


# ----------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serving.auth", description="Manage the model endpoint's bearer tokens."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    new = sub.add_parser("new", help="generate a token, append its hash, print the token once")
    new.add_argument("name", help="client name (letters, digits, _ . @ -)")
    new.add_argument(
        "--scope",
        action="append",
        required=True,
        help="a scope (repeat): predict, explain, admin (load/unload models)",
    )
    new.add_argument("--file", required=True, type=Path, help="token file (.json or .yaml)")
    new.add_argument("--kdf", choices=["sha256", "pbkdf2"], default="sha256")
    revoke = sub.add_parser("revoke", help="remove a client's token")
    revoke.add_argument("name")
    revoke.add_argument("--file", required=True, type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "new":
            token = add_client(args.file, args.name, args.scope, args.kdf)
            sys.stdout.write(token + "\n")
            sys.stderr.write(
                f"token for {args.name!r} ({', '.join(args.scope)}) added to {args.file}; "
                "it is shown only this once\n"
            )
        else:
            revoke_client(args.file, args.name)
            sys.stderr.write(f"revoked {args.name!r} in {args.file}\n")
    except GovMLError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
