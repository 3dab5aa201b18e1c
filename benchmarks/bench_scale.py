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

``--lifecycle``: the fraud lifecycle's heavy stages on the Dask backend only, one
LocalCluster for the run: ingest (of the generated Parquet file) -> data validation (GX)
-> features -> training (``lightgbm.dask``; ``--num-boost-round`` trees) -> evaluation
-> SHAP explanations -> batch scoring of the training feature table. Time and peak RSS of
the process tree are reported per stage (the parent attributes each 0.2 s sample to the
stage the child announced last). Above ``--train-max-rows`` the training is skipped and
the model trained at the largest size at most that is evaluated, explained and used to
score (reported as such); ``--model-from DIR`` uses a train folder of an earlier run
instead of training. The in-memory sizes of the ingested table and of the three feature
tables (pandas, deep) are estimated from the 1M data set and reported next to the budget.

    python benchmarks/bench_scale.py --lifecycle [--rows 1000000 10000000 50000000]
        [--memory-budget 6] [--num-boost-round 100] [--train-max-rows 10000000]
        [--model-from var/bench/scale/lifecycle/model-10000000]
        [--stages ingest validate features train evaluate explain score]
        [--negative-sample-rate 0.05]

``--negative-sample-rate`` trains on every positive and that seeded share of the
negatives, weighted (``training.negative_sample_rate``): how training fits at 50M.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import psutil  # noqa: E402
from common import write_result  # noqa: E402

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
    from pipelines.features import retype_categories
    from pipelines.stages.features import build_features
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
    from pipelines.backends.dask_core import (
        Cluster, batch_score, build_features_dask, dask_client)
    from pipelines.features import FeaturesInputs
    from pipelines.stages.features import write_features
    compute = Compute(backend="dask", workers=int(workers), partition_rows=int(partition_rows),
                      memory_limit=None if memory_limit == "auto" else memory_limit)
    t = time.perf_counter()
    with dask_client(compute) as client:
        times["cluster_start"] = time.perf_counter() - t
        t = time.perf_counter()
        tables = build_features_dask(spec, FeaturesInputs(Path(data), Path(out) / "features"),
                                     Cluster(client, int(partition_rows)))
        write_features(spec, tables)
        times["features"] = time.perf_counter() - t
        t = time.perf_counter()
        batch_score(spec, Path(model), Path(out) / "features" / "train.parquet",
                    Path(out) / "scores.parquet", client, int(partition_rows))
        times["score"] = time.perf_counter() - t
print("SCALE " + json.dumps(times), flush=True)
"""

LIFECYCLE = r"""
import json, shutil, sys, time, logging
from pathlib import Path
logging.basicConfig(level=logging.WARNING)
from pipelines.spec import load_spec, Compute
from pipelines.backends import (
    DaskBackend, EVALUATE, EXPLAIN, FEATURES, INGEST, TRAIN, VALIDATE_DATA)
from pipelines.backends.dask_core import Cluster, batch_score, dask_client
from pipelines.evaluation import EvaluateInputs
from pipelines.features import FeaturesInputs
from pipelines.ingest import IngestInputs
from pipelines.training import TrainInputs
from pipelines.stages.evaluate import write_evaluation
from pipelines.stages.explain import write_explanation
from pipelines.stages.features import write_features
from pipelines.stages.ingest import write_ingest
from pipelines.stages.train import write_training
from pipelines.stages.validate_data import write_validation
from validation.data_quality import ValidateInputs
from validation.explain import ExplainInputs
raw, out, workers, partition_rows, memory_limit, spec_path, rounds, model_dir = sys.argv[1:9]
stages = sys.argv[9].split(",")
spec = load_spec(Path(spec_path))
spec = spec.model_copy(update={"training": spec.training.model_copy(
    update={"num_boost_round": int(rounds), "negative_sample_rate": float(sys.argv[10])})})
out, pr = Path(out), int(partition_rows)
compute = Compute(backend="dask", workers=int(workers), partition_rows=pr,
                  memory_limit=None if memory_limit == "auto" else memory_limit)
train_dir = Path(model_dir) if model_dir != "-" else out / "train"
times = {}
t = time.perf_counter()
print("STAGE cluster_start", flush=True)
with dask_client(compute) as client:
    times["cluster_start"] = time.perf_counter() - t
    dask = DaskBackend(Cluster(client, pr))
    data = out / "ingest" / "data.parquet"
    steps = {
        "ingest": lambda: write_ingest(spec, out / "ingest", dask.run(
            INGEST, spec, IngestInputs(Path(raw), out / "ingest"))),
        "validate": lambda: write_validation(spec, out / "validate", dask.run(
            VALIDATE_DATA, spec, ValidateInputs(data, out / "validate"))),
        "features": lambda: write_features(spec, dask.run(
            FEATURES, spec, FeaturesInputs(data, out / "features"))),
        "train": lambda: write_training(spec, train_dir, dask.run(
            TRAIN, spec, TrainInputs(out / "features"))),
        "evaluate": lambda: write_evaluation(spec, out / "evaluate", dask.run(
            EVALUATE, spec, EvaluateInputs(out / "features", train_dir))),
        "explain": lambda: write_explanation(spec, out / "explain", dask.run(
            EXPLAIN, spec, ExplainInputs(out / "features", train_dir, out / "evaluate"))),
        "score": lambda: batch_score(spec, train_dir / "model.txt",
                                     out / "features" / "train.parquet",
                                     out / "scores.parquet", client, pr),
    }
    for name in stages:
        print("STAGE " + name, flush=True)
        t = time.perf_counter()
        steps[name]()
        times[name] = time.perf_counter() - t
        print("TIMED " + json.dumps({name: times[name]}), flush=True)
print("STAGE done", flush=True)
auc = json.loads((out / "evaluate" / "metrics.json").read_text())["candidate"]["roc_auc"] \
    if (out / "evaluate" / "metrics.json").is_file() else None
print("SCALE " + json.dumps({**times, "test_roc_auc": auc}), flush=True)
"""

TRAIN = r"""
import sys
from pathlib import Path
from pipelines.spec import load_spec
from pipelines.stages.features import build_features
from pipelines.stages.train import train
spec = load_spec(Path(sys.argv[3]))
build_features(spec, Path(sys.argv[1]), Path(sys.argv[2]) / "features")
train(spec, Path(sys.argv[2]) / "features", Path(sys.argv[2]) / "train")
"""


def _label(rows: int) -> str:
    return f"{rows // 1_000_000}M" if rows % 1_000_000 == 0 else f"{rows / 1e6:g}M"


def budget_note(args: argparse.Namespace, budget: int | None, worker_limit: str) -> str:
    """The memory-budget sentence of a report's notes."""
    if not budget:
        return "No memory budget."
    return (
        f"Memory budget {args.memory_budget:g} GiB for the tree (Dask workers "
        f"{worker_limit} each, spilling to disk)."
    )


@dataclass(frozen=True)
class Report:
    """One benchmark report: its title, the notes above the table (the memory budget's
    sentence is added), the table's lines, the growth heading and lines, the results."""

    title: str
    notes: str
    table: list[str]
    growth_heading: str
    growth: list[str]
    results: list


def publish(args: argparse.Namespace, report: Report, budget_sentence: str) -> None:
    """Print the report; with ``--json``, also write the result file, with the command line
    that made it (less ``--json``)."""
    notes = report.notes + budget_sentence
    markdown = "\n".join([notes, "", *report.table, "", report.growth_heading, *report.growth])
    print(markdown)
    if not args.json:
        return
    command = "python benchmarks/bench_scale.py " + " ".join(sys.argv[1:])
    write_result(
        args.json,
        {
            "title": report.title,
            "command": command.replace(f"--json {args.json}", "").strip(),
            "markdown": markdown,
            "results": report.results,
        },
        indent=2,
    )


def growth_lines(
    done: dict[int, dict],
    times: Callable[[dict, dict], tuple[float, float, str]],
    prefix: str = "",
) -> list[str]:
    """One line per step between successive sizes of ``done`` (rows → result): how much
    the time grew (``times(small, big)``: the small and big seconds, and a note on what
    was timed) and the peak memory."""
    sizes = sorted(done)
    lines = []
    for small, big in zip(sizes, sizes[1:], strict=False):
        t_small, t_big, timed = times(done[small], done[big])
        lines.append(
            f"- {prefix}{_label(small)} → {_label(big)} ({big / small:g}x data{timed}): "
            f"{t_big / t_small:.1f}x time, "
            f"{done[big]['peak_rss_gib'] / max(done[small]['peak_rss_gib'], 1e-9):.1f}x "
            "peak memory"
        )
    return lines


def dataset(cache: Path, rows: int) -> Path:
    """The generated fraud data set of ``rows`` rows (written in 1M-row chunks, cached)."""
    from pipelines.data.fraud import write_fraud
    from pipelines.data.fraud_config import FraudConfig

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


def run_one(
    cmd: list[str], budget: int | None, timeout: float, echo: bool = False
) -> dict[str, Any]:
    """Run ``cmd``; its wall time, peak tree RSS, stage times, or the reason it stopped."""
    started = time.perf_counter()
    popen = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    proc = psutil.Process(popen.pid)
    peak, stopped = 0, None
    output: list[str] = []
    current = ["start"]
    stage_peaks: dict[str, int] = {}

    def read() -> None:
        for line in popen.stdout or []:
            output.append(line)
            if line.startswith("STAGE "):
                current[0] = line.split()[1]
            if echo and line.startswith(("STAGE ", "TIMED ")):
                print("    " + line.strip(), flush=True)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while popen.poll() is None:
        rss = _tree_rss(proc)
        peak = max(peak, rss)
        stage_peaks[current[0]] = max(stage_peaks.get(current[0], 0), rss)
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
    return {
        "wall_s": wall,
        "peak_rss_gib": peak / 2**30,
        "stages": stages,
        "stage_peak_rss_gib": {k: v / 2**30 for k, v in stage_peaks.items()},
        "stopped": stopped,
        "log": [  # e.g. Dask's warnings about spilling or restarted workers
            line.rstrip()[:300]
            for line in text.splitlines()
            if line.strip() and not line.startswith(("STAGE ", "TIMED ", "SCALE "))
        ][-40:],
    }


LIFECYCLE_STAGES = ("ingest", "validate", "features", "train", "evaluate", "explain", "score")


SIZES = r"""
import sys, tempfile
from pathlib import Path
import pandas as pd
from pipelines.spec import load_spec
from pipelines.stages.ingest import ingest
from pipelines.features import SPLITS, read_split
from pipelines.stages.features import build_features
spec = load_spec(Path(sys.argv[2]))
with tempfile.TemporaryDirectory() as tmp:
    ingest(spec, Path(sys.argv[1]), Path(tmp) / "ingest")
    data = Path(tmp) / "ingest" / "data.parquet"
    build_features(spec, data, Path(tmp) / "features")
    table = pd.read_parquet(data).memory_usage(deep=True, index=False).sum()
    features = sum(read_split(spec, Path(tmp) / "features", s)
                   .memory_usage(deep=True, index=False).sum() for s in SPLITS)
print(table, features)
"""


@functools.cache
def _sizes_per_million(cache: Path, spec_path: Path) -> tuple[int, int]:
    small = dataset(cache, 1_000_000)
    done = subprocess.run(
        [sys.executable, "-c", SIZES, str(small), str(spec_path)],
        cwd=ROOT, check=True, capture_output=True, text=True,
    )  # fmt: skip
    table, features = done.stdout.split()
    return int(table), int(features)


def in_memory_gib(cache: Path, spec_path: Path, rows: int) -> tuple[float, float]:
    """(ingested table, the three feature tables): pandas sizes (deep) in GiB at ``rows``
    rows, scaled from the 1M data set."""
    table, features = _sizes_per_million(cache, spec_path)
    scale = rows / 1_000_000 / 2**30
    return table * scale, features * scale


def lifecycle(args: argparse.Namespace, budget: int | None, worker_limit: str) -> Report:
    """``--lifecycle``: the Dask lifecycle stages per size, time and peak RSS per stage."""
    work = args.cache / "lifecycle"
    results: list[dict[str, Any]] = []
    trained: dict[int, Path] = {}
    for rows in sorted(args.rows):
        data = dataset(args.cache, rows)
        size, feature_size = in_memory_gib(args.cache, args.spec, rows)
        out = work / f"dask-{rows}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        stages = list(args.stages)
        model_dir = "-"
        reused = None
        if args.model_from is not None and "train" in stages:
            stages.remove("train")
            model_dir, reused = str(args.model_from), -1
        elif rows > args.train_max_rows and "train" in stages:
            stages.remove("train")
            small = max((r for r in trained if r <= args.train_max_rows), default=None)
            if small is None:
                raise SystemExit(f"{rows:,} rows: no model trained at <= {args.train_max_rows:,}")
            model_dir, reused = str(trained[small]), small
        cmd = [
            *(sys.executable, "-c", LIFECYCLE, str(data), str(out), str(args.workers)),
            *(str(args.partition_rows), worker_limit, str(args.spec), str(args.num_boost_round)),
            *(model_dir, ",".join(stages), str(args.negative_sample_rate)),
        ]
        print(
            f"dask lifecycle {rows:,} rows (in memory: table {size:.2f} GiB, feature tables "
            f"{feature_size:.2f} GiB) ...",
            flush=True,
        )
        result = {
            "rows": rows,
            "in_memory_gib": size,
            "features_in_memory_gib": feature_size,
            "model_from_rows": reused,
            **run_one(cmd, budget, args.timeout, echo=True),
        }
        print("  " + json.dumps(result), flush=True)
        results.append(result)
        if "train" in stages and not result["stopped"]:
            keep = work / f"model-{rows}"
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(out / "train", keep)
            trained[rows] = keep
        for sub in ("ingest", "features", "scores.parquet"):  # keep disk use bounded
            target = out / sub
            if target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
            elif target.exists():
                target.unlink()

    names = [s for s in ("cluster_start", *LIFECYCLE_STAGES)]
    head = " | ".join(f"{n} s (GiB)" for n in names)
    lines = [
        f"| transactions | table / features in memory (GiB) | {head} | total s "
        "| peak RSS (GiB) | note |",
        "| ---: | ---: |" + " ---: |" * len(names) + " ---: | ---: | --- |",
    ]
    for r in results:
        st, peaks = r["stages"], r["stage_peak_rss_gib"]
        cells = []
        for n in names:
            if n in st:
                cells.append(f"{st[n]:.1f} ({peaks.get(n, 0):.2f})")
            elif n == "train" and r["model_from_rows"]:
                source = r["model_from_rows"]
                cells.append(f"model of {_label(source)}" if source > 0 else "given model")
            else:
                cells.append("–")
        total = sum(st.get(n, 0) for n in LIFECYCLE_STAGES)
        note = r["stopped"] or ""
        if st.get("test_roc_auc") is not None:
            note = (note + f" test ROC-AUC {st['test_roc_auc']:.4f}").strip()
        lines.append(
            f"| {_label(r['rows'])} | {r['in_memory_gib']:.2f} / "
            f"{r['features_in_memory_gib']:.2f} | " + " | ".join(cells)
            + f" | {total:.1f} | {r['peak_rss_gib']:.2f} | {note} |"
        )  # fmt: skip

    def same_stages(small: dict, big: dict) -> tuple[float, float, str]:
        common = [n for n in LIFECYCLE_STAGES if n in small["stages"] and n in big["stages"]]
        return (
            sum(small["stages"][n] for n in common),
            sum(big["stages"][n] for n in common),
            f", stages {', '.join(common)}",
        )

    growth = growth_lines({r["rows"]: r for r in results if not r["stopped"]}, same_stages)
    notes = (
        "Dask backend, fraud spec, LocalCluster of "
        f"{args.workers} worker processes (one for the run), partitions of "
        f"{args.partition_rows:,} rows; training {args.num_boost_round} trees "
        f"(lightgbm.dask) on every positive and a seeded {args.negative_sample_rate:g} of "
        "the negatives (weighted; training.negative_sample_rate)"
        + (f", skipped above {args.train_max_rows:,} rows (the model of the largest trained "
           "size is used)" if args.train_max_rows < max(args.rows) else "")
        + ". Per stage: seconds (peak RSS of the process tree "
        "in GiB). 'in memory': the pandas sizes of the ingested table and of the three feature "
        "tables (estimated from 1M rows). "
    )  # fmt: skip
    return Report(
        "Scale: the fraud lifecycle on the Dask backend (out of core)",
        notes, lines, "Growth (same stages):", growth, results,
    )  # fmt: skip


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
    parser.add_argument("--lifecycle", action="store_true", help="the Dask lifecycle stages")
    parser.add_argument("--num-boost-round", type=int, default=100, help="(--lifecycle)")
    parser.add_argument("--train-max-rows", type=int, default=10_000_000, help="(--lifecycle)")
    parser.add_argument(
        "--negative-sample-rate",
        type=float,
        default=1.0,
        help="(--lifecycle) training.negative_sample_rate for the training stage",
    )
    parser.add_argument("--stages", nargs="+", default=list(LIFECYCLE_STAGES))
    parser.add_argument(
        "--model-from", type=Path, help="(--lifecycle) a train folder to use instead of training"
    )
    args = parser.parse_args()
    budget = int(args.memory_budget * 2**30) if args.memory_budget else None
    worker_limit = f"{int(budget / (args.workers + 1))}B" if budget else "auto"
    report = (lifecycle if args.lifecycle else compare_backends)(args, budget, worker_limit)
    publish(args, report, budget_note(args, budget, worker_limit))
    return 0


def compare_backends(args: argparse.Namespace, budget: int | None, worker_limit: str) -> Report:
    """Features and batch scoring per backend and size: time and peak RSS."""
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

    def features_and_score(small: dict, big: dict) -> tuple[float, float, str]:
        def seconds(run: dict) -> float:
            return run["stages"]["features"] + run["stages"]["score"]

        return seconds(small), seconds(big), ""

    growth = []
    for backend in args.backends:
        done = {r["rows"]: r for r in results if r["backend"] == backend and not r["stopped"]}
        growth += growth_lines(done, features_and_score, prefix=f"{backend}: ")
    notes = (
        f"Stages: features (fraud spec: 11 point-in-time aggregates over 3 entities, "
        "time split, feature tables) and batch scoring of the training table (70 % of the "
        "rows). Dask: LocalCluster "
        f"of {args.workers} worker processes, partitions of {args.partition_rows:,} rows; "
        "peak RSS is the whole process tree (client and workers). "
    )  # fmt: skip
    return Report(
        "Scale: local vs Dask backend (features and batch scoring)",
        notes, lines, "Growth (time = features + scoring):", growth, results,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
