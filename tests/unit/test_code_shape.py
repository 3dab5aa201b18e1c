"""benchmarks/code_shape.py on a tiny fake tree: each count finds what it should."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "code_shape.py"


def _function(name: str, lines: int, doc: str = "") -> str:
    body = "".join(f"    x{i} = {i}\n" for i in range(lines - 2))
    return f'def {name}():\n    """{doc}"""\n{body}\n'


def _tree(root: Path) -> None:
    (root / "alpha").mkdir()
    (root / "beta").mkdir()
    (root / "dagsdir" / "helpers").mkdir(parents=True)
    (root / "alpha" / "__init__.py").write_text("")
    (root / "alpha" / "big.py").write_text("x = 1\n" * 501)
    (root / "alpha" / "funcs.py").write_text(
        _function("too_long", 61)
        + _function("long_with_reason", 80, "Many steps.\n\n    Long because: one table.\n")
        + _function("short", 60)
        + "_hidden = 1\n"
    )
    (root / "alpha" / "one.py").write_text("from alpha import two\n")
    (root / "alpha" / "two.py").write_text("from . import one\nfrom .funcs import _hidden\n")
    (root / "beta" / "__init__.py").write_text("")
    (root / "beta" / "user.py").write_text(
        "from alpha.funcs import _hidden, short\n"
        "import alpha.funcs as f\n"
        "from alpha import funcs\n"
        "y = f._hidden + funcs._hidden + funcs.__name__.__len__()\n"
    )
    (root / "dagsdir" / "dag_file.py").write_text("from alpha.funcs import _hidden\n")
    (root / "dagsdir" / "helpers" / "__init__.py").write_text("")


def _run(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--root", str(root), "--no-duplicates", *extra]
        + ["--packages", "alpha", "beta", "dagsdir"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_counts_on_a_tiny_tree(tmp_path: Path) -> None:
    _tree(tmp_path)
    done = _run(tmp_path, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    counts = {k: v["count"] for k, v in result["counts"].items()}
    assert counts == {
        "long_modules": 1,
        "long_functions": 1,
        "private_imports": 4,
        "import_cycles": 1,
        "repeated_code_pairs": None,
    }
    details = result["details"]
    assert details["long_modules"] == ["alpha/big.py (501 lines)"]
    assert details["long_functions"] == ["alpha/funcs.py:1 too_long (61 lines)"]
    assert (
        sorted(p.split(" ")[1] for p in details["private_imports"]) == ["alpha.funcs._hidden"] * 4
    )
    assert {p.split(":")[0] for p in details["private_imports"]} == {
        "beta/user.py",
        "dagsdir/dag_file.py",
    }
    assert details["private_imports_same_package"] == ["alpha/two.py:2 alpha.funcs._hidden"]
    assert details["import_cycles"] == [["alpha.one", "alpha.two"]]
    assert result["counts"]["long_modules"]["status"] == "missed"
    assert result["counts"]["repeated_code_pairs"]["status"] == "n/a"


def test_check_fails_only_when_a_target_is_missed(tmp_path: Path) -> None:
    _tree(tmp_path)
    table = _run(tmp_path)
    assert table.returncode == 0
    assert "long_modules" in table.stdout and "not available" in table.stdout
    assert _run(tmp_path, "--check").returncode == 1
    clean = tmp_path / "clean"
    (clean / "alpha").mkdir(parents=True)
    (clean / "alpha" / "__init__.py").write_text("")
    (clean / "alpha" / "ok.py").write_text(_function("short", 10))
    assert _run(clean, "--check").returncode == 0
