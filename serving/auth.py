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
import hashlib
import hmac
import logging
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipelines.errors import ConfigError, GovMLError
from serving.token_files import add_client, revoke_client
from serving.token_records import TokenRecord, is_token, load_records

log = logging.getLogger(__name__)

NEGATIVE_CACHE_SIZE = 4096
DEFAULT_REALM = "govml"
RELOAD_SECONDS = 1.0
_monotonic = time.monotonic  # a clock read (vDSO), no system call


class AuthError(GovMLError):
    """A request is not authenticated (401) or not allowed (403)."""

    def __init__(self, message: str, status: int, www_authenticate: str) -> None:
        super().__init__(message)
        self.status = status
        self.www_authenticate = www_authenticate


# ----------------------------------------------------------------------------- the file


# ----------------------------------------------------------------------------- tokens


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
        if not is_token(token):
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


# ----------------------------------------------------------------------------- a deployment


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
