"""``govml serving token``: a deployed version's clients, printed once, audited."""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

import pytest

from ops.cli import main
from pipelines.config import load_settings
from serving.auth import TokenStore
from serving.token_files import provision
from serving.token_records import load_records


@pytest.fixture
def var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in [k for k in os.environ if k.startswith("GOVML_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("GOVML_VAR_DIR", str(tmp_path))
    return tmp_path


def _events(kind: str) -> list:
    from registry.audit import events

    return [e for e in events(load_settings().governance_url) if e.kind == kind]


def test_a_client_token_is_printed_once_and_only_its_hash_kept(
    var: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = provision(var / "serving" / "fraud-v7")  # what the deployer made
    new = ["serving", "token", "new", "fraud", "7", "core-banking", "--scope", "predict"]
    assert main(new) == 0
    out, err = capsys.readouterr()
    token = out.strip()
    assert out == token + "\n" and token.startswith("gml_")
    assert "shown only this once" in err and token not in err
    assert token not in files.tokens.read_text()
    assert stat.S_IMODE(files.tokens.stat().st_mode) == 0o600
    assert TokenStore.load(files.tokens).check(f"Bearer {token}", "predict") == "core-banking"
    (issued,) = _events("serving_token_issued")
    assert issued.actor == f"host:{pwd.getpwuid(os.geteuid()).pw_name}"
    assert (issued.model_name, issued.model_version) == ("fraud", "7")
    assert issued.payload == {
        "deployment": "fraud-v7",
        "client": "core-banking",
        "scopes": ["predict"],
        "kdf": "sha256",
    }
    assert token not in str(issued.payload)

    assert main(["serving", "token", "list", "fraud", "7"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split() for line in listed] == [
        ["govml", "predict,explain", "sha256"],
        ["core-banking", "predict", "sha256"],
    ]
    assert main(["serving", "token", "revoke", "fraud", "7", "core-banking"]) == 0
    assert "revoked 'core-banking' on fraud v7" in capsys.readouterr().out
    assert [r.name for r in load_records(files.tokens)] == ["govml"]
    (revoked,) = _events("serving_token_revoked")
    assert revoked.payload == {"deployment": "fraud-v7", "client": "core-banking"}


def test_refusals_are_one_line(var: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serving", "token", "new", "fraud", "9", "x", "--scope", "predict"]) != 0
    err = capsys.readouterr().err
    assert err.startswith("error: fraud v9 has no token file at ") and err.count("\n") == 1
    assert "deploy it first" in err
    provision(var / "serving" / "fraud-v7")
    assert main(["serving", "token", "revoke", "fraud", "7", "govml"]) != 0
    assert "'govml' is the project's own client" in capsys.readouterr().err
    assert main(["serving", "token", "new", "fraud", "7", "govml", "--scope", "predict"]) != 0
    assert "'govml' is the project's own client" in capsys.readouterr().err
    assert main(["serving", "token", "revoke", "fraud", "7", "nobody"]) != 0
    assert "no client named 'nobody'" in capsys.readouterr().err
    assert _events("serving_token_issued") == _events("serving_token_revoked") == []


def test_the_gateway_has_its_own_clients(var: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serving", "gateway-token", "list"]) != 0
    assert "no gateway token file" in capsys.readouterr().err
    args = ["serving", "gateway-token", "new", "core-banking", "--scope", "predict"]
    assert main([*args, "--scope", "explain"]) == 0
    token = capsys.readouterr().out.strip()
    path = var / "serving" / "gateway" / "tokens.json"
    assert TokenStore.load(path).check(f"Bearer {token}", "explain") == "core-banking"
    assert main(["serving", "gateway-token", "revoke", "core-banking"]) == 0
    assert load_records(path) == []
    kinds = [e.payload["deployment"] for e in _events("serving_token_issued")]
    assert kinds == ["gateway"]
