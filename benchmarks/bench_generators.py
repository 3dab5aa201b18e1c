"""Benchmark the vectorised fraud generator against a per-customer loop simulator.

For each ``--rows`` size, ``write_fraud`` (generate + write Parquet + manifest) runs in
a fresh subprocess, which reports its wall time and peak RSS (``ru_maxrss``), so the
sizes do not share a memory high-water mark.

The peer is a straightforward Python + pandas simulator in the style of the
Fraud-Detection-Handbook (Le Borgne et al., "Reproducible Machine Learning for Credit
Card Fraud Detection - Practical Handbook", chapter "Transaction data simulator"):
customer and terminal profiles built row by row, a loop per customer and per day that
draws each transaction in Python, ``pd.concat`` of the per-customer frames, then fraud
scenarios applied day by day. It runs on a smaller size (``--peer-rows``) and is
compared per row.

Usage::

    python benchmarks/bench_generators.py --rows 1000000 10000000 --json bench.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pipelines.data.fraud import write_fraud  # noqa: E402
from pipelines.data.fraud_config import FraudConfig  # noqa: E402

log = logging.getLogger("bench_generators")

DEFAULT_ROWS = (1_000_000, 10_000_000)
DEFAULT_PEER_ROWS = 100_000
DEFAULT_CHUNK_ROWS = 1_000_000


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


# ----------------------------------------------------------------------------- peer


def _peer_customer_profiles(n_customers: int, rng: np.random.RandomState) -> pd.DataFrame:
    rows = []
    for customer_id in range(n_customers):
        x, y = rng.uniform(0, 100), rng.uniform(0, 100)
        mean_amount = rng.uniform(5, 100)
        std_amount = mean_amount / 2
        mean_nb_tx_per_day = rng.uniform(0, 4)
        rows.append([customer_id, x, y, mean_amount, std_amount, mean_nb_tx_per_day])
    return pd.DataFrame(
        rows,
        columns=["CUSTOMER_ID", "x", "y", "mean_amount", "std_amount", "mean_nb_tx_per_day"],
    )


def _peer_terminal_profiles(n_terminals: int, rng: np.random.RandomState) -> pd.DataFrame:
    rows = [[t, rng.uniform(0, 100), rng.uniform(0, 100)] for t in range(n_terminals)]
    return pd.DataFrame(rows, columns=["TERMINAL_ID", "x", "y"])


def _peer_terminals_within_radius(
    customer: pd.Series, terminals_xy: np.ndarray, radius: float
) -> list[int]:
    d = np.sqrt(((terminals_xy - customer[["x", "y"]].to_numpy(float)) ** 2).sum(axis=1))
    return list(np.where(d < radius)[0])


def _peer_customer_transactions(
    customer: pd.Series, nb_days: int, rng: np.random.RandomState
) -> pd.DataFrame:
    tx = []
    for day in range(nb_days):
        nb_tx = rng.poisson(customer["mean_nb_tx_per_day"])
        for _ in range(nb_tx):
            time_tx = int(rng.normal(86_400 / 2, 20_000))
            if 0 < time_tx < 86_400:
                amount = rng.normal(customer["mean_amount"], customer["std_amount"])
                if amount < 0:
                    amount = rng.uniform(0, customer["mean_amount"] * 2)
                amount = np.round(amount, decimals=2)
                if len(customer["available_terminals"]) > 0:
                    terminal_id = rng.choice(customer["available_terminals"])
                    tx.append(
                        [time_tx + day * 86_400, day, customer["CUSTOMER_ID"], terminal_id, amount]
                    )
    return pd.DataFrame(
        tx, columns=["TX_TIME_SECONDS", "TX_TIME_DAYS", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT"]
    )


def _peer_add_frauds(
    customers: pd.DataFrame,
    terminals: pd.DataFrame,
    tx: pd.DataFrame,
    nb_days: int,
    rng: np.random.RandomState,
) -> pd.DataFrame:
    tx["TX_FRAUD"] = 0
    tx["TX_FRAUD_SCENARIO"] = 0
    # scenario 1: any amount above 220 is fraud
    tx.loc[tx.TX_AMOUNT > 220, ["TX_FRAUD", "TX_FRAUD_SCENARIO"]] = [1, 1]
    for day in range(nb_days):
        # scenario 2: two compromised terminals per day, all their tx for 28 days
        compromised = rng.choice(terminals.TERMINAL_ID, size=2, replace=False)
        hit = tx.TX_TIME_DAYS.between(day, day + 27) & tx.TERMINAL_ID.isin(compromised)
        tx.loc[hit, ["TX_FRAUD", "TX_FRAUD_SCENARIO"]] = [1, 2]
        # scenario 3: three compromised customers per day, 1/3 of their tx x5 for 14 days
        victims = rng.choice(customers.CUSTOMER_ID, size=3, replace=False)
        window = tx[tx.TX_TIME_DAYS.between(day, day + 13) & tx.CUSTOMER_ID.isin(victims)]
        if len(window):
            picked = rng.choice(window.index, size=max(1, len(window) // 3), replace=False)
            tx.loc[picked, "TX_AMOUNT"] = tx.loc[picked, "TX_AMOUNT"] * 5
            tx.loc[picked, ["TX_FRAUD", "TX_FRAUD_SCENARIO"]] = [1, 3]
    return tx


def peer_generate(n_rows: int, nb_days: int = 30, seed: int = 0) -> pd.DataFrame:
    """Handbook-style simulator sized to give about ``n_rows`` transactions."""
    rng = np.random.RandomState(seed)
    n_customers = max(10, round(n_rows / (2.0 * nb_days * 0.985)))  # ~2 tx/day, 98.5 % kept
    n_terminals = max(10, n_customers * 2)
    customers = _peer_customer_profiles(n_customers, rng)
    terminals = _peer_terminal_profiles(n_terminals, rng)
    terminals_xy = terminals[["x", "y"]].to_numpy(float)
    customers["available_terminals"] = customers.apply(
        lambda c: _peer_terminals_within_radius(c, terminals_xy, radius=5), axis=1
    )
    frames = [
        _peer_customer_transactions(customers.iloc[i], nb_days, rng) for i in range(n_customers)
    ]
    tx = pd.concat([f for f in frames if len(f)], ignore_index=True).astype(
        {
            "TX_TIME_SECONDS": "int64",
            "TX_TIME_DAYS": "int64",
            "CUSTOMER_ID": "int64",
            "TERMINAL_ID": "int64",
            "TX_AMOUNT": "float64",
        }
    )
    tx = tx.sort_values("TX_TIME_SECONDS").reset_index(drop=True)
    tx["TX_DATETIME"] = pd.to_datetime(tx.TX_TIME_SECONDS, unit="s", origin="2026-01-01")
    tx["TRANSACTION_ID"] = np.arange(len(tx))
    return _peer_add_frauds(customers, terminals, tx, nb_days, rng)


# ----------------------------------------------------------------------------- workers


def _worker(kind: str, rows: int, out: Path, chunk_rows: int, seed: int) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if kind == "govml":
        manifest = write_fraud(FraudConfig(n_rows=rows, seed=seed), out, chunk_rows=chunk_rows)
        actual, path, sha = manifest.rows, out / manifest.path, manifest.sha256
        fraud_rate = 0.002
    else:
        df = peer_generate(rows, seed=seed)
        path = out / "peer.parquet"
        df.to_parquet(path, index=False)
        actual, sha = len(df), ""
        fraud_rate = float(df["TX_FRAUD"].mean())
    wall = time.perf_counter() - t0
    return {
        "generator": kind,
        "rows": int(actual),
        "wall_s": round(wall, 3),
        "rows_per_s": round(actual / wall, 1),
        "peak_rss_mib": round(_peak_rss_mib(), 1),
        "file_mib": round(path.stat().st_size / 2**20, 2),
        "sha256": sha,
        "fraud_rate": round(fraud_rate, 5),
    }


def _run_in_subprocess(
    kind: str, rows: int, out: Path, chunk_rows: int, seed: int
) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        kind,
        "--rows",
        str(rows),
        "--out",
        str(out),
        "--chunk-rows",
        str(chunk_rows),
        "--seed",
        str(seed),
    ]
    log.info("running %s at %d rows", kind, rows)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} benchmark at {rows} rows failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(rows: list[int], out: Path, peer_rows: int, chunk_rows: int, seed: int) -> dict[str, Any]:
    """Run every measurement; return the results as a JSON-serialisable dict."""
    results = [_run_in_subprocess("govml", n, out / f"govml_{n}", chunk_rows, seed) for n in rows]
    peer = (
        _run_in_subprocess("peer", peer_rows, out / "peer", chunk_rows, seed)
        if peer_rows > 0
        else None
    )
    if peer is not None:
        for r in results:
            r["speedup_vs_peer"] = round(r["rows_per_s"] / peer["rows_per_s"], 1)
    return {
        "title": "Synthetic fraud data generator (write_fraud)",
        "benchmark": "fraud_generator",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "cpus": _cpu_count(),
        "chunk_rows": chunk_rows,
        "seed": seed,
        "results": results,
        "peer": peer,
    }


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def markdown(report: dict[str, Any]) -> str:
    """The results as a markdown table."""
    lines = [
        "| generator | rows | wall (s) | rows/s | peak RSS (MiB) | file (MiB) | vs peer |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["results"]:
        lines.append(
            f"| govml write_fraud | {r['rows']:,} | {r['wall_s']:.1f} | {r['rows_per_s']:,.0f} "
            f"| {r['peak_rss_mib']:,.0f} | {r['file_mib']:,.1f} "
            f"| {r.get('speedup_vs_peer', '-')}x |"
        )
    peer = report.get("peer")
    if peer:
        lines.append(
            f"| handbook-style loop (peer) | {peer['rows']:,} | {peer['wall_s']:.1f} "
            f"| {peer['rows_per_s']:,.0f} | {peer['peak_rss_mib']:,.0f} "
            f"| {peer['file_mib']:,.1f} | 1.0x |"
        )
    if peer:
        lines += [
            "",
            f"Peer: a per-customer, per-day Python loop in the style of the Fraud-Detection-"
            f"Handbook simulator, run at {peer['rows']:,} rows and compared per row. "
            f"Each run is a fresh process; peak RSS is its `ru_maxrss`. "
            f"{report['cpus']} CPUs, Parquet zstd, row groups of {report['chunk_rows']:,}.",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=list(DEFAULT_ROWS))
    parser.add_argument("--out", type=Path, default=None, help="output dir (default: temp)")
    parser.add_argument("--json", type=Path, default=None, help="write results as JSON here")
    parser.add_argument("--peer-rows", type=int, default=DEFAULT_PEER_ROWS)
    parser.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", choices=["govml", "peer"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        result = _worker(args.worker, args.rows[0], args.out, args.chunk_rows, args.seed)
        sys.stdout.write(json.dumps(result) + "\n")
        return 0

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = args.out or Path(tempfile.mkdtemp(prefix="govml-bench-"))
    try:
        report = run(args.rows, out, args.peer_rows, args.chunk_rows, args.seed)
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
    command = "python benchmarks/bench_generators.py " + " ".join(
        ["--rows", *map(str, args.rows), "--peer-rows", str(args.peer_rows)]
        + ["--chunk-rows", str(args.chunk_rows), "--seed", str(args.seed)]
    )
    report["command"] = command
    report["markdown"] = markdown(report)
    sys.stdout.write(report["markdown"] + "\n")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
