"""docker/: the images install from the committed lock files, run as a non-root
user, and start entrypoints that exist; the compose stack is complete.

No Docker engine runs on these machines, so the files are parsed, not built.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


@pytest.mark.parametrize(
    ("dockerfile", "lock", "entry_module"),
    [
        ("orchestration.Dockerfile", "requirements/orchestration.lock", None),
        ("serving.Dockerfile", "requirements/serving.lock", "serving"),
    ],
)
def test_dockerfile(dockerfile: str, lock: str, entry_module: str | None) -> None:
    steps = _instructions(DOCKER / dockerfile)
    known = {
        "FROM",
        "ENV",
        "RUN",
        "WORKDIR",
        "COPY",
        "USER",
        "EXPOSE",
        "ENTRYPOINT",
        "CMD",
        "ARG",
        "LABEL",
    }
    assert all(word in known for word, _ in steps), [w for w, _ in steps if w not in known]
    assert steps[0][0] == "FROM" and "python:3.11" in steps[0][1]
    copies = [shlex.split(args) for word, args in steps if word == "COPY"]
    for src_dst in copies:
        for src in src_dst[:-1]:
            assert (ROOT / src).exists(), f"{dockerfile}: COPY source {src} does not exist"
    assert any(lock in c for c in copies), f"{dockerfile} must copy {lock}"
    runs = " ".join(args for word, args in steps if word == "RUN")
    assert f"uv pip sync --system --no-cache {lock}" in runs
    users = [args for word, args in steps if word == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    entry = _exec_form(next(args for word, args in steps if word == "ENTRYPOINT"))
    if entry_module is None:
        assert entry == ["airflow"]
        scripts = ROOT / ".venv" / "bin"
        assert (scripts / "airflow").exists()
    else:
        assert entry == ["python", "-m", entry_module]
        assert (ROOT / entry_module / "__main__.py").exists()
    assert (ROOT / lock).exists()


def test_compose_stack_is_complete() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    for name in (
        "postgres",
        "minio",
        "mlflow",
        "airflow-api-server",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "model-server",
    ):
        assert name in services, name
    for name, svc in services.items():
        build = svc.get("build")
        if build:
            assert (DOCKER / build["context"] / build["dockerfile"]).resolve().exists(), name
    assert services["airflow-scheduler"]["command"] == ["scheduler"]
    env = services["airflow-api-server"]["environment"]
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg://")
    assert "minio" in services["mlflow"]["depends_on"]
    assert any("s3://" in arg for arg in services["mlflow"]["command"])
    for mount in services["postgres"]["volumes"]:
        host = mount.split(":")[0]
        if host.startswith("./"):
            assert (DOCKER / host).exists(), host


def test_compose_has_no_inline_secrets() -> None:
    text = (DOCKER / "compose.yaml").read_text()
    for match in re.finditer(r"(PASSWORD|SECRET)[A-Z_]*:\s*(\S+)", text):
        assert match.group(2).startswith("${"), f"inline secret: {match.group(0)}"
    example = (DOCKER / "env.example").read_text()
    assert "POSTGRES_PASSWORD=" in example
