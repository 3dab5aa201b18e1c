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

MODEL_SUFFIXES = (".lgb", ".txt", ".onnx", ".pkl", ".joblib")
VOLATILE_PARTS = ("timings", "logs")
# Great Expectations names each validation page by its run time.
RUN_TIME = re.compile(r"\d{8}T\d{6}\.\d+Z")


def _env(var_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOVML_", "AIRFLOW"))}
    env["GOVML_VAR_DIR"] = str(var_dir)
    env.update(stack.airflow_env(load_settings(env)))
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{var_dir / 'mlflow' / 'mlflow.db'}"
    return env


def run_lifecycle(rows: int, var_dir: Path) -> Path:
    """Run the fraud DAG once; return its run folder."""
    env = _env(var_dir)
    settings = load_settings(env)
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        stack.prepare_stores(settings)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    run_after = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "dags.govml_airflow.run_dag",
            str(ROOT / "specs" / "fraud.yaml"),
            "--conf",
            json.dumps({"n_rows": rows}),
            "--run-after",
            run_after.isoformat(),
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    return settings.runs_dir / "fraud" / safe_run_id(f"manual__{run_after.isoformat()}")


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
