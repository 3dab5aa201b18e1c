"""The token file's records: one hashed bearer token per client, with its scopes.

A record stores only a hash of its token (``sha256``, or ``pbkdf2_sha256`` for a token
that may have little entropy), never the token. :func:`generate_token` makes a random
token and its record; :func:`load_records` reads and checks a file, naming every problem
with its place. Checking a request against the records: :class:`serving.auth.TokenStore`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipelines.errors import ConfigError
from pipelines.files import read_text

log = logging.getLogger("serving.auth")  # the token files' log, as before

TOKEN_PREFIX = "gml_"


TOKEN_BYTES = 32


PBKDF2_ITERATIONS = 600_000


MIN_PBKDF2_ITERATIONS = 100_000


SALT_BYTES = 16


MAX_TOKEN_CHARS = 512


# RFC 6750 b64token
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$"


_SCOPE = r"^[a-z][a-z0-9_:.-]{0,63}$"


_HEX64 = r"^[0-9a-fA-F]{64}$"


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
    text = read_text(path, ConfigError, "token file not found", "cannot read the token file")
    try:
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        kind = "JSON" if path.suffix == ".json" else "YAML"
        raise ConfigError(f"{path}: not valid {kind}: {str(exc).splitlines()[0]}") from None


def load_records(path: str | Path) -> list[TokenRecord]:
    """The records of a token file (warns when group or others may read it)."""
    path = Path(path)
    records = parse_records(_read(path), str(path))
    warn_if_shared(path)
    return records


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
    if not is_token(token):
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


def is_token(text: str) -> bool:
    """True for a bearer token's form (RFC 6750 b64token, at most MAX_TOKEN_CHARS)."""
    return len(text) <= MAX_TOKEN_CHARS and bool(_TOKEN.fullmatch(text))


def warn_if_shared(path: Path) -> None:
    """Warn when group or others may read a file that holds tokens or their hashes."""
    with contextlib.suppress(OSError):
        if path.stat().st_mode & 0o077:
            log.warning("%s is readable by group or others; chmod 600 it", path)
