"""The govml CLI: one command, subcommands with --help, one-line user errors."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from ops.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]
GOVML = ROOT / ".venv" / "bin" / "govml"


def _subcommands(parser, prefix=()):  # noqa: ANN001, ANN202
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from _subcommands(sub, (*prefix, name))


def test_every_subcommand_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    commands = list(_subcommands(build_parser()))
    assert ("spec", "validate") in commands and ("stack", "down") in commands
    for command in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([*command, "--help"])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: govml " + " ".join(command)), command


def test_console_script_is_installed() -> None:
    result = subprocess.run([str(GOVML), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for word in ("spec", "data", "stack", "demo", "config"):
        assert word in result.stdout


def _bad_spec(tmp_path: Path) -> Path:
    data = yaml.safe_load((ROOT / "specs" / "credit.yaml").read_text())
    data["features"]["raw"].append("sex")
    path = tmp_path / "credit_bad.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_bad_spec_is_one_line_and_nonzero(tmp_path: Path) -> None:
    path = _bad_spec(tmp_path)
    result = subprocess.run(
        [str(GOVML), "spec", "validate", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.strip() == "error: 1 of 1 spec(s) invalid"
    fail_line = result.stdout.strip()
    assert "\n" not in fail_line
    assert fail_line.startswith(f"FAIL {path}: features.raw[12]: 'sex' is a protected attribute")


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(GOVML), "--debug", "spec", "show", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "SpecError" in result.stderr


def test_unknown_spec_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["spec", "show", "mortgage"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no spec named 'mortgage' in ")


def test_shipped_specs_validate(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["spec", "validate"]) == 0
    out = capsys.readouterr().out
    assert out.count("ok   ") >= 3


@pytest.mark.parametrize("value", ["-5", "0", "many"])
def test_bad_cli_argument_is_refused(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "generate", "fraud", "--rows", value])
    assert exit_info.value.code == 2
    assert "--rows" in capsys.readouterr().err


def test_config_hides_passwords(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GOVML_GOVERNANCE_URL", "postgresql+psycopg://gov:s3cret@db:5432/gov")
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out and "gov:***@db:5432/gov" in out


def test_bad_setting_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GOVML_AIRFLOW_PORT", "http")
    assert main(["config"]) == 1
    assert capsys.readouterr().err.strip() == "error: GOVML_AIRFLOW_PORT='http': not a port number"


def test_the_run_table_shows_failed_stages_as_failed() -> None:
    from rich.console import Console

    from ops.lifecycle_runner import stage_table, stages_until
    from pipelines.spec import load_spec

    spec = load_spec(ROOT / "specs" / "credit.yaml")
    states = {"champion": "success", "ingest": "success", "validate_data": "failed"}
    states |= {s: "upstream_failed" for s in ("features", "train", "gates", "register")}
    console = Console(width=100, record=True, color_system=None)
    console.print(stage_table(spec, states, {"ingest": 2.0}, stages_until("register")))
    rows = {
        line.split("│")[1].strip(): line.split("│")[2].strip()
        for line in console.export_text().splitlines()
        if line.count("│") == 4
    }
    assert rows["ingest"] == "done" and rows["validate_data"] == "FAILED"
    assert rows["gates"] == "not run" and rows["register"] == "not run"
    assert rows["lineage"] == "waiting" and "request_approval" not in rows
