"""The documents a newcomer reads: README's shape, links that resolve, and a BENCHMARKS.md
that is exactly what benchmarks/report.py makes of benchmarks/results/."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _report() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "benchmarks" / "report.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _documents() -> list[Path]:
    return [ROOT / "README.md", ROOT / "dags" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_readme_is_short_and_starts_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 200
    first_block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()]
    assert commands[:2] == ["make demo", "make test"]


@pytest.mark.parametrize("doc", _documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc: Path) -> None:
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (doc.parent / target.split("#", 1)[0]).resolve()
        if not path.exists():
            broken.append(target)
    assert not broken, f"{doc.relative_to(ROOT)}: broken links {broken}"


def test_the_docs_index_in_the_readme_names_every_page() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [p.name for p in (ROOT / "docs").glob("*.md") if f"(docs/{p.name})" not in readme]
    assert not missing


def test_benchmarks_md_is_generated_from_the_results() -> None:
    report = _report()
    expected = report.render(report.newest(ROOT / "benchmarks" / "results"))
    assert (ROOT / "BENCHMARKS.md").read_text() == expected, (
        "BENCHMARKS.md differs from `python benchmarks/report.py`'s output"
    )


def test_every_benchmark_has_a_result_with_command_machine_table_and_verdicts() -> None:
    report = _report()
    records = report.newest(ROOT / "benchmarks" / "results")
    assert set(records) <= {b.name for b in report.BENCHMARKS}
    for name, record in records.items():
        assert record["command"].startswith("python benchmarks/bench_"), name
        assert record["machine"] and record["date"], name
        assert record["table"]["columns"] and record["table"]["rows"], name
        for row in record["table"]["rows"]:
            assert len(row) == len(record["table"]["columns"]), name
        assert all(c["verdict"] in {"met", "missed"} for c in record["checks"]), name


def test_a_fresh_run_becomes_a_result_with_its_verdict(tmp_path: Path) -> None:
    report = _report()
    gateway = next(b for b in report.BENCHMARKS if b.name == "gateway")
    markdown = (
        "Set-up.\n\n| path | p50 µs |\n|---|---|\n| direct | 200 |\n| gateway | 408 |\n\nMore.\n"
    )
    summary = {"direct": {"p50_us": 200}, "gateway, champion only": {"p50_us": 408}}
    output = {
        "title": "Gateway",
        "command": "python benchmarks/bench_gateway.py",
        "markdown": markdown,
        "results": {"summary": summary},
    }
    import datetime as dt

    record = report.result_record(gateway, output, dt.datetime(2027, 1, 1, tzinfo=dt.UTC))
    assert record["table"] == {
        "columns": ["path", "p50 µs"],
        "rows": [["direct", "200"], ["gateway", "408"]],
    }
    assert [c["verdict"] for c in record["checks"]] == ["met"]
    summary["gateway, champion only"]["p50_us"] = 1400
    missed = report.result_record(gateway, output, dt.datetime(2027, 1, 2, tzinfo=dt.UTC))
    assert report.verdict(missed) == "missed"

    # the newest file of a benchmark wins; other kinds of JSON are ignored
    (tmp_path / "gateway-a.json").write_text(json.dumps(record))
    (tmp_path / "gateway-b.json").write_text(json.dumps(missed))
    (tmp_path / "fingerprint.json").write_text(json.dumps({"files": []}))
    out = tmp_path / "BENCHMARKS.md"
    report.write(tmp_path, out)
    text = out.read_text()
    assert "2027-01-02 00:00 UTC" in text and "2027-01-01" not in text
    assert "| Gateway | 2027-01-02 00:00 UTC | missed |" in text
