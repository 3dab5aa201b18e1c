"""Serving bearer tokens: hashed at rest, 401/403 with WWW-Authenticate, cached checks, CLI."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.errors import ConfigError
from serving import auth
from serving.auth import AuthError, TokenStore, main
from serving.token_files import SERVICE_CLIENT, add_client, provision, read_token, revoke_client
from serving.token_records import (
    MIN_PBKDF2_ITERATIONS,
    TokenRecord,
    generate_token,
    hash_record,
    load_records,
    parse_records,
)

ROOT = Path(__file__).resolve().parents[2]
LOW_ITERATIONS = MIN_PBKDF2_ITERATIONS  # the cheapest PBKDF2 the file format allows


def store_of(*records: dict[str, Any]) -> TokenStore:
    return TokenStore(parse_records(list(records)))


@pytest.fixture
def two_clients() -> tuple[TokenStore, str, str]:
    bank_token, bank = generate_token("core-banking", ["predict"])
    ops_token, ops = generate_token("fraud-ops", ["predict", "explain"])
    return store_of(bank, ops), bank_token, ops_token


def auth_error(store: TokenStore, header: str | None, scope: str = "predict") -> AuthError:
    with pytest.raises(AuthError) as caught:
        store.check(header, scope)
    return caught.value


# ----------------------------------------------------------------------------- tokens


def test_generated_tokens_are_random_and_stored_only_as_a_hash() -> None:
    token, record = generate_token("core-banking", ["predict", "explain"])
    again, _ = generate_token("core-banking", ["predict"])
    assert token != again and token.startswith("gml_") and len(token) >= 4 + 43
    assert record == {
        "name": "core-banking",
        "scopes": ["predict", "explain"],
        "sha256": hashlib.sha256(token.encode()).hexdigest(),
    }
    assert token not in json.dumps(record)
    _, slow = generate_token("analyst", ["explain"], kdf="pbkdf2")
    p = slow["pbkdf2_sha256"]
    assert p["iterations"] == 600_000 and len(bytes.fromhex(p["salt"])) == 16
    assert "sha256" not in slow


def test_check_returns_the_client_and_enforces_scopes(two_clients: Any) -> None:
    store, bank_token, ops_token = two_clients
    assert store.check(f"Bearer {bank_token}", "predict") == "core-banking"
    assert store.check(f"bearer   {ops_token}  ", "explain") == "fraud-ops"
    error = auth_error(store, f"Bearer {bank_token}", "explain")
    assert error.status == 403
    assert str(error) == "client 'core-banking' may not explain"
    assert (
        error.www_authenticate
        == 'Bearer realm="govml", error="insufficient_scope", scope="explain"'
    )
    assert sorted(store.clients) == ["core-banking", "fraud-ops"]


@pytest.mark.parametrize(
    ("header", "message", "error"),
    [
        (None, "missing bearer token", None),
        ("", "missing bearer token", None),
        ("   ", "missing bearer token", None),
        ("Basic dXNlcjpwYXNz", "expected 'Authorization: Bearer <token>'", "invalid_request"),
        ("Bearer", "expected 'Authorization: Bearer <token>'", "invalid_request"),
        ("Token abc", "expected 'Authorization: Bearer <token>'", "invalid_request"),
        ("Bearer two words", "malformed bearer token", "invalid_token"),
        ("Bearer tok\u00e9n", "malformed bearer token", "invalid_token"),
        ("Bearer " + "a" * 513, "malformed bearer token", "invalid_token"),
        ("Bearer gml_" + "A" * 43, "unknown bearer token", "invalid_token"),
    ],
)
def test_unauthenticated_requests_get_401(
    two_clients: Any, header: str | None, message: str, error: str | None
) -> None:
    store, _, _ = two_clients
    caught = auth_error(store, header)
    assert caught.status == 401 and str(caught) == message
    expected = 'Bearer realm="govml"'
    if error is not None:
        expected += f', error="{error}", error_description="{message}"'
    assert caught.www_authenticate == expected


def test_messages_never_contain_the_token(two_clients: Any) -> None:
    store, bank_token, _ = two_clients
    for header in (f"Bearer {bank_token}x", f"Basic {bank_token}", f"Bearer {bank_token}"):
        for scope in ("predict", "explain"):
            try:
                store.check(header, scope)
            except AuthError as exc:
                assert bank_token not in str(exc) and bank_token not in exc.www_authenticate


def test_a_verified_token_is_cached(two_clients: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    store, bank_token, _ = two_clients
    calls: list[int] = []
    real = hmac.compare_digest

    def counting(a: Any, b: Any) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    store.check(f"Bearer {bank_token}", "predict")
    assert len(calls) == 2  # every sha256 record compared, no early exit at the match
    for _ in range(5):
        store.check(f"Bearer {bank_token}", "predict")
    assert len(calls) == 2  # later checks hit the cache


def test_pbkdf2_runs_once_per_token(monkeypatch: pytest.MonkeyPatch) -> None:
    token = "imported-legacy-token-1"
    slow = hash_record("legacy", ["predict"], token, kdf="pbkdf2", iterations=LOW_ITERATIONS)
    other = hash_record(
        "other", ["predict"], "other-token", kdf="pbkdf2", iterations=LOW_ITERATIONS
    )
    _, fast = generate_token("core-banking", ["predict"])
    store = store_of(fast, slow, other)
    calls: list[int] = []
    real = hashlib.pbkdf2_hmac

    def counting(*args: Any) -> bytes:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(auth.hashlib, "pbkdf2_hmac", counting)
    for _ in range(3):
        assert store.check(f"Bearer {token}", "predict") == "legacy"
    assert len(calls) == 1
    for _ in range(3):
        assert auth_error(store, "Bearer not-a-known-token").status == 401
    assert len(calls) == 1 + 2  # one unknown token: each PBKDF2 record once, then cached


def test_reload_if_changed_revokes(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    token, record = generate_token("core-banking", ["predict"])
    path.write_text(yaml.safe_dump([record]))
    store = TokenStore.load(path, realm="fraud")
    assert store.check(f"Bearer {token}", "predict") == "core-banking"
    assert store.reload_if_changed() is False
    path.write_text("[]\n")
    assert store.reload_if_changed() is True
    error = auth_error(store, f"Bearer {token}")
    assert error.status == 401 and error.www_authenticate.startswith('Bearer realm="fraud"')


def _eventually(condition: Any, limit_s: float = 2.0) -> float:
    """Seconds until ``condition()`` holds (checked every 10 ms), or fail at the limit."""
    began = time.monotonic()
    while not condition():
        assert time.monotonic() - began < limit_s, "never happened"
        time.sleep(0.01)
    return time.monotonic() - began


def _accepted(store: TokenStore, token: str) -> bool:
    try:
        store.check(f"Bearer {token}", "predict")
    except AuthError:
        return False
    return True


@pytest.fixture
def core_banking(tmp_path: Path) -> tuple[Path, str]:
    """A token file with one client, core-banking (predict), and its token."""
    path = tmp_path / "tokens.json"
    return path, add_client(path, "core-banking", ["predict"])


def test_checks_pick_up_a_revoked_and_an_added_token_without_a_reload_call(
    core_banking: tuple[Path, str],
) -> None:
    path, token = core_banking
    store = TokenStore.load(path, reload_seconds=0.2)
    assert _accepted(store, token)
    revoke_client(path, "core-banking")
    assert _eventually(lambda: not _accepted(store, token)) < 0.5
    newer = add_client(path, "fraud-ops", ["predict"])
    assert _eventually(lambda: _accepted(store, newer)) < 0.5
    assert not _accepted(store, token)


def test_the_file_is_looked_at_at_most_once_per_interval(
    core_banking: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, token = core_banking
    store = TokenStore.load(path, reload_seconds=0.5)
    looks: list[Path] = []
    real = auth.file_stamp

    def counting(where: Path | None) -> Any:
        looks.append(where)
        return real(where)

    monkeypatch.setattr(auth, "file_stamp", counting)
    began = time.monotonic()
    for _ in range(10_000):
        store.check(f"Bearer {token}", "predict")
    assert time.monotonic() - began < 0.5
    assert looks == []  # no system call per request
    time.sleep(0.5)  # the re-check interval passing is the behaviour under test (no condition)
    store.check(f"Bearer {token}", "predict")
    store.check(f"Bearer {token}", "predict")
    assert looks == [path]


def test_a_file_that_breaks_refuses_every_token_until_fixed(
    core_banking: tuple[Path, str], caplog: pytest.LogCaptureFixture
) -> None:
    path, token = core_banking
    store = TokenStore.load(path, reload_seconds=0.0)
    good = path.read_text()
    with caplog.at_level(logging.ERROR, logger="serving.auth"):
        path.write_text("[{")
        assert auth_error(store, f"Bearer {token}").status == 401  # fail closed
        assert store.clients == []
    assert f"{path}: not valid JSON" in caplog.text
    assert "refusing every token until the file is fixed" in caplog.text
    path.write_text(good)
    assert _accepted(store, token)
    path.unlink()
    assert not _accepted(store, token)
    path.write_text(good)
    assert _accepted(store, token)


def test_a_deployment_gets_its_token_files_once_and_keeps_its_clients(tmp_path: Path) -> None:
    folder = tmp_path / "fraud-v7"
    files = provision(folder)
    assert (files.tokens, files.service_token) == (
        folder / "tokens.json",
        folder / "service.token",
    )
    for path in (files.tokens, files.service_token):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    service = read_token(files.service_token)
    store = TokenStore.load(files.tokens)
    assert store.check(f"Bearer {service}", "explain") == SERVICE_CLIENT
    assert service not in files.tokens.read_text()
    bank = add_client(files.tokens, "core-banking", ["predict"])
    provision(folder)  # a redeploy of the same version
    assert read_token(files.service_token) == service
    assert [r.name for r in load_records(files.tokens)] == ["govml", "core-banking"]
    files.service_token.write_text("gml_lost\n")  # does not match its record: renewed
    provision(folder)
    renewed = read_token(files.service_token)
    assert renewed not in (service, "gml_lost")
    store = TokenStore.load(files.tokens)
    assert store.check(f"Bearer {renewed}", "predict") == "govml"
    assert store.check(f"Bearer {bank}", "predict") == "core-banking"
    assert auth_error(store, f"Bearer {service}").status == 401


def test_read_token_refuses_what_is_not_a_token(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="absent.token: token file not found"):
        read_token(tmp_path / "absent.token")
    (tmp_path / "bad.token").write_text("two words\n")
    with pytest.raises(ConfigError, match="bad.token: does not hold a bearer token"):
        read_token(tmp_path / "bad.token")


# ----------------------------------------------------------------------------- the file


def test_load_reads_yaml_and_json(tmp_path: Path) -> None:
    token, record = generate_token("core-banking", ["predict"])
    (tmp_path / "t.json").write_text(json.dumps([record]))
    (tmp_path / "t.yaml").write_text(yaml.safe_dump([record]))
    for name in ("t.json", "t.yaml"):
        store = TokenStore.load(tmp_path / name)
        assert store.check(f"Bearer {token}", "predict") == "core-banking"
    (tmp_path / "empty.yaml").write_text("")
    assert load_records(tmp_path / "empty.yaml") == []


_, GOOD = generate_token("core-banking", ["predict"])
_HEX = "ab" * 32


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "x"}, "a token file holds a list of records"),
        ([GOOD | {"token": "plain"}], "[0].token: unknown field"),
        ([{"name": "x", "scopes": ["predict"]}], "[0]: give exactly one of 'sha256' or"),
        ([GOOD | {"pbkdf2_sha256": {"salt": _HEX, "iterations": 600_000, "hash": _HEX}}], "[0]:"),
        ([GOOD | {"sha256": "xyz"}], "[0].sha256: String should match pattern"),
        ([GOOD | {"scopes": []}], "[0].scopes: List should have at least 1 item"),
        ([GOOD | {"scopes": ["Predict!"]}], "[0].scopes[0]: String should match pattern"),
        ([GOOD | {"name": "bad name"}], "[0].name: String should match pattern"),
        ([{"scopes": ["predict"], "sha256": _HEX}], "[0].name: required field is missing"),
        (
            [
                {
                    "name": "x",
                    "scopes": ["p"],
                    "pbkdf2_sha256": {"salt": _HEX, "iterations": 1000, "hash": _HEX},
                }
            ],
            "[0].pbkdf2_sha256.iterations: Input should be greater than or equal to 100000",
        ),
        ([GOOD, GOOD | {"sha256": _HEX}], "client name 'core-banking' appears more than once"),
        ([GOOD, GOOD | {"name": "other"}], "two records hold the same sha256"),
    ],
)
def test_bad_token_files_are_refused_with_the_field(data: Any, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_records(data, "tokens.yaml")
    assert str(caught.value).startswith("tokens.yaml: ")
    assert message in str(caught.value)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="token file not found"):
        TokenStore.load(tmp_path / "absent.yaml")
    (tmp_path / "bad.yaml").write_text("- name: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        TokenStore.load(tmp_path / "bad.yaml")
    (tmp_path / "bad.json").write_text("[{")
    with pytest.raises(ConfigError, match="bad.json: not valid JSON"):
        TokenStore.load(tmp_path / "bad.json")


def test_a_readable_token_file_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(yaml.safe_dump([GOOD]))
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="serving.auth"):
        load_records(path)
    assert "readable by group or others" in caplog.text


def test_hash_record_refuses_bad_input() -> None:
    with pytest.raises(ConfigError, match="a token must be"):
        hash_record("x", ["predict"], "has space")
    with pytest.raises(ConfigError, match="new record.scopes"):
        hash_record("x", [], "token")
    assert TokenRecord.model_validate(hash_record("x", ["predict"], "token")).sha256


# ----------------------------------------------------------------------------- CLI


def test_cli_appends_hashed_records_with_mode_0600(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "secrets" / "tokens.yaml"
    assert main(["new", "core-banking", "--scope", "predict", "--file", str(path)]) == 0
    first = capsys.readouterr()
    token = first.out.strip()
    assert token.startswith("gml_") and first.out.count("\n") == 1
    assert "shown only this once" in first.err and token not in first.err
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    args = ["new", "fraud-ops", "--scope", "predict", "--scope", "explain", "--file", str(path)]
    assert main([*args, "--kdf", "pbkdf2"]) == 0
    second = capsys.readouterr().out.strip()
    text = path.read_text()
    assert token not in text and second not in text
    records = yaml.safe_load(text)
    assert [r["name"] for r in records] == ["core-banking", "fraud-ops"]
    assert "pbkdf2_sha256" in records[1] and records[1]["scopes"] == ["predict", "explain"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    store = TokenStore.load(path)
    assert store.check(f"Bearer {token}", "predict") == "core-banking"
    assert store.check(f"Bearer {second}", "explain") == "fraud-ops"

    assert main(["new", "core-banking", "--scope", "predict", "--file", str(path)]) == 1
    assert "already has a token" in capsys.readouterr().err
    assert main(["revoke", "core-banking", "--file", str(path)]) == 0
    assert store.reload_if_changed()
    assert auth_error(store, f"Bearer {token}").status == 401
    assert main(["revoke", "nobody", "--file", str(path)]) == 1
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_cli_module_entry_point_writes_json(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text("[]")
    path.chmod(0o644)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "serving.auth",
            "new",
            "gateway",
            "--scope",
            "predict",
            "--file",
            str(path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    token = run.stdout.strip()
    records = json.loads(path.read_text())
    assert records == [
        {
            "name": "gateway",
            "scopes": ["predict"],
            "sha256": hashlib.sha256(token.encode()).hexdigest(),
        }
    ]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
