"""Scale: the feature and batch-scoring stages at 1M, 10M (and 50M) transactions with
the local (pandas) and the Dask backend.

Each (backend, size) runs in a fresh process; the parent samples the resident memory of
the whole process tree (the stage process and, for Dask, its LocalCluster workers) every
0.2 s and reports the peak. With ``--memory-budget`` a run whose tree exceeds the budget
is stopped and reported as out of memory; the Dask workers then get
``budget / (workers + 1)`` each (they spill to disk beyond it), so the same budget shows
where the local backend runs out of memory and the Dask one does not.

Stages timed: ``features`` (point-in-time aggregates of the fraud spec, time split, the
three feature tables) and ``score`` (a model trained once on the 1M features scores every
row of the training feature table just written, 70 % of the rows). The data are written
by ``write_fraud`` in 1M-row chunks (never whole in memory) and cached under ``--cache``
(default ``var/bench/scale``).

    python benchmarks/bench_scale.py [--rows 1000000 10000000 50000000] [--memory-budget 14]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

RUN = r"""
import json, sys, time, logging
from pathlib import Path
logging.basicConfig(level=logging.WARNING)
from pipelines.spec import load_spec, Compute
backend, data, out, model, workers, partition_rows, memory_limit = sys.argv[1:8]
spec = load_spec(Path(sys.argv[8]))
times = {}
if backend == "local":
    import pandas as pd
    from pipelines.features import build_features, retype_categories
    from pipelines.training import load_model, score
    t = time.perf_counter(); build_features(spec, Path(data), Path(out) / "features")
    times["features"] = time.perf_counter() - t
    t = time.perf_counter()
    frame = retype_categories(pd.read_parquet(Path(out) / "features" / "train.parquet"), spec)
    s = score(load_model(Path(model)), frame)
    pd.DataFrame({spec.data.id_column: frame[spec.data.id_column], "score": s}).to_parquet(
        Path(out) / "scores.parquet", index=False)
    times["score"] = time.perf_counter() - t
else:
    from pipelines.dask_backend import batch_score, build_features_dask, dask_client
    compute = Compute(backend="dask", workers=int(workers), partition_rows=int(partition_rows),
                      memory_limit=None if memory_limit == "auto" else memory_limit)
    t = time.perf_counter()
    with dask_client(compute) as client:
        times["cluster_start"] = time.perf_counter() - t
        t = time.perf_counter()
        build_features_dask(spec, Path(data), Path(out) / "features", client, int(partition_rows))
        times["features"] = time.perf_counter() - t
        t = time.perf_counter()
        batch_score(spec, Path(model), Path(out) / "features" / "train.parquet",
                    Path(out) / "scores.parquet", client, int(partition_rows))
        times["score"] = time.perf_counter() - t
print("SCALE " + json.dumps(times), flush=True)
"""

TRAIN = r"""
import sys
from pathlib import Path
from pipelines.spec import load_spec
from pipelines.features import build_features
from pipelines.training import train
spec = load_spec(Path(sys.argv[3]))
build_features(spec, Path(sys.argv[1]), Path(sys.argv[2]) / "features")
train(spec, Path(sys.argv[2]) / "features", Path(sys.argv[2]) / "train")
"""


def _label(rows: int) -> str:
    return f"{rows // 1_000_000}M" if rows % 1_000_000 == 0 else f"{rows / 1e6:g}M"


def dataset(cache: Path, rows: int) -> Path:
    """The generated fraud data set of ``rows`` rows (written in 1M-row chunks, cached)."""
    from pipelines.data.fraud import FraudConfig, write_fraud

    folder = cache / f"fraud-{rows}"
    files = sorted(folder.glob("*.parquet"))
    if files:
        return files[0]
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    manifest = write_fraud(FraudConfig(n_rows=rows, seed=11, fraud_rate=0.005), folder)
    print(f"  generated {rows:,} rows in {time.perf_counter() - started:.0f} s", flush=True)
    return folder / f"{manifest.name}.parquet"


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += p.memory_info().rss
    return total


def run_one(cmd: list[str], budget: int | None, timeout: float) -> dict[str, Any]:
    """Run ``cmd``; its wall time, peak tree RSS, stage times, or the reason it stopped."""
    started = time.perf_counter()
    popen = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    proc = psutil.Process(popen.pid)
    peak, stopped = 0, None
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(popen.stdout or []), daemon=True)
    reader.start()
    while popen.poll() is None:
        peak = max(peak, _tree_rss(proc))
        if budget is not None and peak > budget:
            stopped = f"out of memory (> {budget / 2**30:.1f} GiB)"
            os.killpg(popen.pid, signal.SIGKILL)
            break
        if time.perf_counter() - started > timeout:
            stopped = f"stopped after {timeout:.0f} s"
            os.killpg(popen.pid, signal.SIGKILL)
            break
        time.sleep(0.2)
    popen.wait()
    reader.join(timeout=5)
    wall = time.perf_counter() - started
    text = "".join(output)
    stages = {}
    for line in text.splitlines():
        if line.startswith("SCALE "):
            stages = json.loads(line[len("SCALE ") :])
    if stopped is None and popen.returncode != 0:
        stopped = f"failed (exit {popen.returncode}): " + text.strip().splitlines()[-1][:200]
    return {"wall_s": wall, "peak_rss_gib": peak / 2**30, "stages": stages, "stopped": stopped}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000, 50_000_000])
    parser.add_argument("--backends", nargs="+", default=["local", "dask"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--partition-rows", type=int, default=1_000_000)
    parser.add_argument(
        "--memory-budget", type=float, default=14.0, help="GiB for the whole process tree"
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    parser.add_argument("--cache", type=Path, default=ROOT / "var" / "bench" / "scale")
    parser.add_argument("--spec", type=Path, default=ROOT / "specs" / "fraud.yaml")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    budget = int(args.memory_budget * 2**30) if args.memory_budget else None
    worker_limit = f"{int(budget / (args.workers + 1))}B" if budget else "auto"
    work = args.cache / "runs"
    model_dir = args.cache / "model"
    model = model_dir / "train" / "model.txt"
    if not model.is_file():  # one model for every scoring run
        small = dataset(args.cache, 1_000_000)
        subprocess.run(
            [sys.executable, "-c", TRAIN, str(small), str(model_dir), str(args.spec)],
            cwd=ROOT, check=True,
        )  # fmt: skip
    results: list[dict[str, Any]] = []
    for rows in sorted(args.rows):
        data = dataset(args.cache, rows)
        for backend in args.backends:
            out = work / f"{backend}-{rows}"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            cmd = [
                *(sys.executable, "-c", RUN, backend, str(data), str(out), str(model)),
                *(str(args.workers), str(args.partition_rows), worker_limit, str(args.spec)),
            ]
            print(f"{backend} {rows:,} rows ...", flush=True)
            result = {"backend": backend, "rows": rows, **run_one(cmd, budget, args.timeout)}
            print("  " + json.dumps(result), flush=True)
            results.append(result)
            shutil.rmtree(out, ignore_errors=True)

    lines = [
        "| backend | transactions | features (s) | scoring (s) | total (s) | peak RSS (GiB) "
        "| note |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        st = r["stages"]
        total = st.get("features", 0) + st.get("score", 0) if st else None
        lines.append(
            f"| {r['backend']} | {_label(r['rows'])} | "
            + (f"{st['features']:.1f}" if "features" in st else "–") + " | "
            + (f"{st['score']:.1f}" if "score" in st else "–") + " | "
            + (f"{total:.1f}" if total else "–") + " | "
            + f"{r['peak_rss_gib']:.2f} | {r['stopped'] or ''} |"
        )  # fmt: skip
    growth = []
    for backend in args.backends:
        done = {r["rows"]: r for r in results if r["backend"] == backend and not r["stopped"]}
        sizes = sorted(done)
        for small, big in zip(sizes, sizes[1:], strict=False):
            t_small = done[small]["stages"]["features"] + done[small]["stages"]["score"]
            t_big = done[big]["stages"]["features"] + done[big]["stages"]["score"]
            growth.append(
                f"- {backend}: {_label(small)} → {_label(big)} ({big / small:g}x data): "
                f"{t_big / t_small:.1f}x time, "
                f"{done[big]['peak_rss_gib'] / max(done[small]['peak_rss_gib'], 1e-9):.1f}x "
                "peak memory"
            )
    notes = (
        f"Stages: features (fraud spec: 11 point-in-time aggregates over 3 entities, "
        "time split, feature tables) and batch scoring of the training table (70 % of the "
        "rows). Dask: LocalCluster "
        f"of {args.workers} worker processes, partitions of {args.partition_rows:,} rows; "
        "peak RSS is the whole process tree (client and workers). "
        + (f"Memory budget {args.memory_budget:g} GiB for the tree (Dask workers "
           f"{worker_limit} each, spilling to disk)." if budget else "No memory budget.")
    )  # fmt: skip
    markdown = "\n".join([notes, "", *lines, "", "Growth (time = features + scoring):", *growth])
    print(markdown)
    if args.json:
        command = "python benchmarks/bench_scale.py " + " ".join(sys.argv[1:])
        args.json.write_text(
            json.dumps(
                {
                    "title": "Scale: local vs Dask backend (features and batch scoring)",
                    "command": command.replace(f"--json {args.json}", "").strip(),
                    "markdown": markdown,
                    "results": results,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
