"""What the fraud lifecycle writes, as a fingerprint to compare across refactors.

Runs the fraud DAG through ``dag.test()`` (as ``govml run`` does with the stack down)
on generated data with the spec's seed, in a throw-away state folder, and prints one
JSON object: the run folder's file list (timing and log files excluded: they differ
from run to run) and the SHA-256 of every model file. Two checkouts that print the
same object write the same run folder and the same model.

    python benchmarks/lifecycle_fingerprint.py [--rows 20000] [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ops import stack  # noqa: E402
from pipelines.config import load_settings  # noqa: E402
from pipelines.runs import safe_run_id  # noqa: E402
from tests.support import prepare_stores  # noqa: E402

MODEL_SUFFIXES = (".lgb", ".txt", ".onnx", ".pkl", ".joblib")
VOLATILE_PARTS = ("timings", "logs")
# Great Expectations names each validation page by its run time.
RUN_TIME = re.compile(r"\d{8}T\d{6}\.\d+Z")


RUN_AFTER = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)  # the run's logical date


def lifecycle_env(var_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a ``dag.test()`` run in the state folder ``var_dir`` (its own
    Airflow metadata DB, MLflow on SQLite), ``extra`` on top."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOVML_", "AIRFLOW"))}
    env["GOVML_VAR_DIR"] = str(var_dir)
    env.update(stack.airflow_env(load_settings(env)))
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{var_dir / 'mlflow' / 'mlflow.db'}"
    env.update(extra)
    return env


def run_fraud_dag(rows: int, env: dict[str, str]) -> subprocess.CompletedProcess:
    """The fraud DAG through ``dag.test()`` on ``rows`` generated rows, logical date
    :data:`RUN_AFTER` (its run folder: :func:`run_folder`)."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "dags.govml_airflow.run_dag",
            str(ROOT / "specs" / "fraud.yaml"),
            "--conf",
            json.dumps({"n_rows": rows}),
            "--run-after",
            RUN_AFTER.isoformat(),
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )


def run_folder(env: dict[str, str]) -> Path:
    """The run folder of :func:`run_fraud_dag` in ``env``."""
    runs = load_settings(env).runs_dir
    return runs / "fraud" / safe_run_id(f"manual__{RUN_AFTER.isoformat()}")


def run_lifecycle(rows: int, var_dir: Path) -> Path:
    """Run the fraud DAG once; return its run folder."""
    env = lifecycle_env(var_dir)
    prepare_stores(env)
    run_fraud_dag(rows, env)
    return run_folder(env)


def fingerprint(run_dir: Path) -> dict:
    """The run folder's stable file list and its models' SHA-256."""
    files = sorted(
        RUN_TIME.sub("<time>", str(p.relative_to(run_dir)))
        for p in run_dir.rglob("*")
        if p.is_file() and not set(VOLATILE_PARTS) & set(p.relative_to(run_dir).parts)
    )
    models = {
        name: hashlib.sha256((run_dir / name).read_bytes()).hexdigest()
        for name in files
        if name.endswith(MODEL_SUFFIXES) and name.startswith("train/")
    }
    return {"files": files, "models": models}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="govml-fingerprint-") as tmp:
        run_dir = run_lifecycle(args.rows, Path(tmp) / "var")
        if not run_dir.is_dir():
            print(f"error: the run wrote no run folder at {run_dir}", file=sys.stderr)
            return 1
        result = fingerprint(run_dir)
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
