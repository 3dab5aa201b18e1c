"""The two environments come from committed lock files that agree on shared pins."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REQ = ROOT / "requirements"


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-\[\]]+)==([^\s;]+)", line)
        if m:
            pins[re.sub(r"\[.*\]", "", m.group(1)).lower().replace("_", "-")] = m.group(2)
    return pins


def test_shared_pins_are_identical_in_both_locks() -> None:
    shared = _pins(REQ / "common-constraints.txt")
    orch = _pins(REQ / "orchestration.lock")
    serving = _pins(REQ / "serving.lock")
    assert {"numpy", "pandas", "lightgbm", "scikit-learn"} <= set(shared)
    for name, version in shared.items():
        assert orch.get(name) == version, f"orchestration.lock: {name} {orch.get(name)}"
        assert serving.get(name) == version, f"serving.lock: {name} {serving.get(name)}"
    assert int(shared["pandas"].split(".")[0]) < 3


def test_each_environment_has_its_stack() -> None:
    orch = _pins(REQ / "orchestration.lock")
    serving = _pins(REQ / "serving.lock")
    assert orch["apache-airflow"].startswith("3.3.")
    for name in (
        "apache-airflow-providers-standard",
        "apache-airflow-providers-openlineage",
        "great-expectations",
        "fairlearn",
        "shap",
        "sqlalchemy",
        "psycopg",
    ):
        assert name in orch, name
    assert orch["mlflow"].startswith("3.")
    assert orch["great-expectations"].startswith("1.")
    assert orch["sqlalchemy"].startswith("2.")
    assert "kserve" in serving and "mlflow-skinny" in serving
    assert "apache-airflow" not in serving
    # the reason for two environments
    assert int(serving["psutil"].split(".")[0]) < 6
    assert tuple(map(int, orch["psutil"].split(".")[:2])) >= (6, 1)


def test_make_setup_is_idempotent() -> None:
    """After `make setup` (every target runs it first), nothing is left to do."""
    import subprocess

    result = subprocess.run(["make", "-q", "setup"], cwd=ROOT, capture_output=True, timeout=60)
    assert result.returncode == 0, "make setup would rebuild an environment that is current"
    dry = subprocess.run(["make", "-n", "setup"], cwd=ROOT, capture_output=True, text=True)
    assert "uv pip sync" not in dry.stdout
