"""BENCHMARKS.md from ``benchmarks/results/*.json``, and ``make bench``.

``python benchmarks/report.py`` reads the newest result file of each benchmark and writes
BENCHMARKS.md: per benchmark the command, the machine, one table and the target with a
met/missed verdict. ``python benchmarks/report.py run [--only NAME]`` (``make bench``) runs
the ``benchmarks/bench_*.py`` scripts with ``--json``, writes one result file per benchmark,
``benchmarks/results/<name>-<UTC time>.json``, then writes BENCHMARKS.md.

A result file holds ``benchmark``, ``title``, ``date`` (UTC), ``machine``, ``command``,
``table`` (``columns`` and ``rows``, as strings), ``checks`` (each a ``target``, what was
``measured`` and a ``verdict``: ``met`` or ``missed``; empty when the benchmark sets no
target), optionally ``docs`` (the page with the analysis), ``source`` (where the figures
come from) and ``results`` (the script's raw figures).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
OUT = ROOT / "BENCHMARKS.md"

Check = dict[str, str]


def _check(target: str, measured: str, ok: bool) -> Check:
    return {"target": target, "measured": measured, "verdict": "met" if ok else "missed"}


def _lifecycle(results: dict[str, Any]) -> list[Check]:
    total = results["airflow"]["total"]
    share = 100 * results["overhead_s"] / total
    return [
        _check(
            "orchestration overhead < 15 % of the run",
            f"{share:.1f} % ({results['overhead_s']:.1f} s of {total:.1f} s)",
            share < 15,
        ),
        _check("whole run < 600 s", f"{total:.1f} s", total < 600),
        *_lifecycle_issue22(results),
    ]


def _lifecycle_issue22(results: dict[str, Any]) -> list[Check]:
    """Issue 22's targets: the DAG at most 1.3x the plain script (registration in both),
    ``register`` at most 5 s at 1M rows. Older records hold neither figure."""
    checks: list[Check] = []
    if "ratio" in results:
        ratio = results["ratio"]
        checks.append(
            _check(
                "DAG ≤ 1.3x the plain script, registration in both", f"{ratio:.2f}x", ratio <= 1.3
            )
        )
    register_s = results.get("airflow", {}).get("stages", {}).get("register")
    if register_s is not None and "ratio" in results:
        checks.append(
            _check("`register` ≤ 5 s at 1M rows", f"{register_s:.1f} s", register_s <= 5.0)
        )
    return checks


def _serving(results: dict[str, Any]) -> list[Check]:
    single = results["single_row"]
    checks = []
    for side in ("jsonl", "parquet"):
        for c in sorted(single["peer"], key=int):
            ours, peer = single[side][c], single["peer"][c]
            checks.append(
                _check(
                    f"{c} connection(s), {side} log: throughput and p99 at least as good as "
                    "MLServer's",
                    f"{ours['rps'] / peer['rps']:.2f}x its throughput, p99 {ours['p99_us']} "
                    f"vs {peer['p99_us']} µs",
                    ours["rps"] >= peer["rps"] and ours["p99_us"] <= peer["p99_us"],
                )
            )
    return checks


def _gateway(results: dict[str, Any]) -> list[Check]:
    summary = results["summary"]
    direct = summary["direct"]["p50_us"]
    worst = max(r["p50_us"] - direct for name, r in summary.items() if name != "direct")
    return [_check("largest p50 the gateway adds < 1,000 µs", f"{worst} µs", worst < 1000)]


def _drift(results: dict[str, Any]) -> list[Check]:
    speedup = results["speedup"]
    return [_check("at least 10x Evidently's speed", f"{speedup}x", speedup >= 10)]


def _features(results: dict[str, Any]) -> list[Check]:
    checks = []
    off, on = results.get("offline"), results.get("online")
    if off:
        speedup = off["rows_per_s"] / off["peer_rows_per_s"]
        checks += [
            _check(
                "offline: at least 1,000,000 rows/s",
                f"{off['rows_per_s']:,.0f} rows/s",
                off["rows_per_s"] >= 1_000_000,
            ),
            _check("offline: at least 5x the pandas peer", f"{speedup:.1f}x", speedup >= 5),
        ]
    if on:
        for kind, label in (("memory", "in-process"), ("redis", "Redis")):
            p99 = median(r[kind]["p99_us"] - r["direct"]["p99_us"] for r in on["rounds"])
            checks.append(
                _check(
                    f"online, {label} store: added p99 < 2,000 µs at 500 tx/s (median over rounds)",
                    f"{p99:,.0f} µs",
                    p99 < 2000,
                )
            )
    return checks


def _scale_lifecycle(results: list[dict[str, Any]]) -> list[Check]:
    def seconds(r: dict[str, Any]) -> float:
        return sum(v for k, v in r["stages"].items() if k not in ("test_roc_auc", "cluster_start"))

    done = {r["rows"]: seconds(r) for r in results if not r.get("stopped")}
    if 1_000_000 not in done or 10_000_000 not in done:
        return []
    growth = done[10_000_000] / done[1_000_000]
    return [_check("1M → 10M transactions (10x data): at most 12x the time", f"{growth:.1f}x",
                   growth <= 12)]  # fmt: skip


@dataclass(frozen=True)
class Benchmark:
    name: str
    script: str
    args: tuple[str, ...] = ()
    checks: Callable[[Any], list[Check]] | None = None
    docs: str = ""


BENCHMARKS = (
    Benchmark("generators", "bench_generators.py", docs="docs/data.md"),
    Benchmark("lifecycle", "bench_lifecycle.py", checks=_lifecycle, docs="docs/lifecycle.md"),
    Benchmark("serving", "bench_serving.py", checks=_serving, docs="docs/serving.md"),
    Benchmark("gateway", "bench_gateway.py", checks=_gateway, docs="docs/rollout.md"),
    Benchmark("drift", "bench_drift.py", checks=_drift, docs="docs/monitoring.md"),
    Benchmark("scale", "bench_scale.py", docs="docs/scale-out.md"),
    Benchmark(
        "scale_lifecycle",
        "bench_scale.py",
        ("--lifecycle",),
        checks=_scale_lifecycle,
        docs="docs/scale-out.md",
    ),
    Benchmark("features", "bench_features.py", checks=_features, docs="docs/features.md"),
    Benchmark("audit", "bench_audit.py", docs="docs/approvals.md"),
    Benchmark("stack_run", "bench_stack_run.py", docs="docs/scale-out.md"),
)


# ----------------------------------------------------------------------------- running
def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem_gib:.0f} GiB RAM, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


def first_table(markdown: str) -> dict[str, list[Any]]:
    """The first Markdown table of a script's report, as columns and rows of strings."""
    block: list[str] = []
    for line in markdown.splitlines():
        if line.strip().startswith("|"):
            block.append(line.strip())
        elif block:
            break
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in block]
    if len(cells) < 2:
        return {"columns": [], "rows": []}
    return {"columns": cells[0], "rows": cells[2:]}


def result_record(bench: Benchmark, output: dict[str, Any], when: dt.datetime) -> dict[str, Any]:
    """One result file's content from a script's ``--json`` output."""
    raw = output.get("results", output)
    checks: list[Check] = []
    if bench.checks is not None:
        try:
            checks = bench.checks(raw)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            checks = [{"target": "see the script", "measured": f"not computed ({exc!r})",
                       "verdict": "missed"}]  # fmt: skip
    return {
        "benchmark": bench.name,
        "title": output["title"],
        "date": f"{when:%Y-%m-%d %H:%M} UTC",
        "machine": machine(),
        "command": output["command"],
        "table": first_table(output.get("markdown", "")),
        "checks": checks,
        "docs": bench.docs,
        "source": "make bench",
        "results": raw,
    }


def run(names: list[str] | None) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    for bench in BENCHMARKS:
        stem = bench.script.removesuffix(".py").removeprefix("bench_")
        if names and bench.name not in names and stem not in names:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "result.json"
            cmd = [sys.executable, str(ROOT / "benchmarks" / bench.script), *bench.args]
            print(f"running {bench.name}: {' '.join(cmd[1:])} ...", flush=True)
            subprocess.run([*cmd, "--json", str(out)], cwd=ROOT, check=True)
            output = json.loads(out.read_text())
        when = dt.datetime.now(dt.UTC)
        record = result_record(bench, output, when)
        path = RESULTS / f"{bench.name}-{when:%Y%m%dT%H%M%S}.json"
        path.write_text(json.dumps(record, indent=2, default=str) + "\n")
        print(f"wrote {path.relative_to(ROOT)}", flush=True)


# ----------------------------------------------------------------------------- report
def newest(results_dir: Path) -> dict[str, dict[str, Any]]:
    """The newest result of each benchmark (by its date, then its file name)."""
    found: dict[str, tuple[tuple[str, str], dict[str, Any]]] = {}
    for path in sorted(results_dir.glob("*.json")):
        record = json.loads(path.read_text())
        if "benchmark" not in record or "table" not in record:
            continue  # another kind of file (e.g. a lifecycle fingerprint)
        key = (record["date"], path.name)
        if record["benchmark"] not in found or key > found[record["benchmark"]][0]:
            found[record["benchmark"]] = (key, record)
    return {name: record for name, (_, record) in found.items()}


def verdict(record: dict[str, Any]) -> str:
    checks = record.get("checks") or []
    if not checks:
        return "no target"
    return "met" if all(c["verdict"] == "met" for c in checks) else "missed"


def _table(table: dict[str, list[Any]]) -> list[str]:
    columns = table["columns"]
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in table["rows"]]
    return lines


def section(record: dict[str, Any]) -> str:
    lines = [
        f"## {record['title']}",
        "",
        f"- Command: `{record['command']}`",
        f"- Measured: {record['date']} ({record.get('source', 'make bench')})",
        f"- Machine: {record['machine']}",
    ]
    if record.get("docs"):
        lines.append(f"- Analysis: [{record['docs']}]({record['docs']})")
    lines += ["", *_table(record["table"]), ""]
    checks = record.get("checks") or []
    if not checks:
        lines.append("Target: none set.")
    for c in checks:
        lines.append(f"- Target: {c['target']}. Measured: {c['measured']}: **{c['verdict']}**.")
    return "\n".join(lines) + "\n"


def render(records: dict[str, dict[str, Any]]) -> str:
    order = [b.name for b in BENCHMARKS] + sorted(set(records) - {b.name for b in BENCHMARKS})
    present = [records[name] for name in order if name in records]
    lines = [
        "# Benchmarks",
        "",
        "Generated by `benchmarks/report.py` from the newest file of each benchmark in "
        "`benchmarks/results/` (written by `make bench`, `make bench ONLY=NAME` for one); "
        "do not edit by hand. The run history is those files; what the figures mean is in "
        "the docs page each section links.",
        "",
        "| benchmark | measured | verdict |",
        "| --- | --- | --- |",
        *(f"| {r['title']} | {r['date']} | {verdict(r)} |" for r in present),
        "",
    ]
    return "\n".join(lines) + "\n" + "\n".join(section(r) for r in present)


def write(results_dir: Path, out: Path) -> None:
    out.write_text(render(newest(results_dir)))
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", nargs="?", choices=["run"], help="run the benchmarks first")
    parser.add_argument("--only", action="append", help="with run: only this benchmark")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args.only)
    write(args.results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
