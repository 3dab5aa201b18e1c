"""How long this machine keeps a ready process waiting: the noise floor under every
latency figure measured on it.

With nothing else of ours running, one child process per CPU, pinned to it:

* ``sleep``: sleeps 1 ms, again and again, and records by how much each wake-up is
  late. A server waiting in ``epoll`` for its next request or reply pays this on every
  hop, on top of its own work: a request through the feature transformer and Redis
  wakes six processes in turn (transformer, Redis, transformer, model server,
  transformer, client), one straight to the model server two.
* ``spin``: reads the clock in a tight loop; a gap over 50 µs between two readings is
  time the process did not run. Reported: that time's share of the wall time, the
  number of gaps over 1 ms and the longest, and the part the guest's own scheduler
  accounts for (run-queue wait in ``/proc/self/schedstat``: other guest tasks); the
  rest was taken outside the process's view (the hypervisor descheduling the virtual
  CPU, or interrupts).
* ``work``: the median time of a fixed unit of pure Python work
  (``sum(range(10000))``), to compare the machine's speed between runs (a virtual
  machine's speed drifts with its host's load).

    python benchmarks/machine_jitter.py [--seconds 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from typing import Any

SPIN_GAP_S = 50e-6
SLEEP_S = 1e-3
WORK_UNIT = 10_000


def _pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


def _guest_wait_s() -> float:
    """This process's time runnable but not running, as the guest kernel counts it."""
    try:
        with open("/proc/self/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return float("nan")


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _step_times(cpu: int, seconds: float, step: Callable[[], object]) -> list[float]:
    """``step()`` on ``cpu`` again and again for ``seconds``: each call's time, sorted."""
    _pin(cpu)
    clock = time.perf_counter
    times: list[float] = []
    end = clock() + seconds
    while (started := clock()) < end:
        step()
        times.append(clock() - started)
    times.sort()
    return times


def sleep_probe(cpu: int, seconds: float) -> dict[str, float]:
    """Lateness of 1 ms sleeps on ``cpu`` for ``seconds``, µs."""
    late = [t - SLEEP_S for t in _step_times(cpu, seconds, functools.partial(time.sleep, SLEEP_S))]
    return {
        "wakeups": len(late),
        "p50_us": _percentile(late, 0.50) * 1e6,
        "p99_us": _percentile(late, 0.99) * 1e6,
        "p999_us": _percentile(late, 0.999) * 1e6,
        "max_us": late[-1] * 1e6,
    }


def spin_probe(cpu: int, seconds: float) -> dict[str, float]:
    """Time a busy process on ``cpu`` did not run over ``seconds``."""
    _pin(cpu)
    clock = time.perf_counter
    gaps: list[float] = []
    wait_before = _guest_wait_s()
    last = started = clock()
    end = started + seconds
    while True:
        now = clock()
        if now - last > SPIN_GAP_S:
            gaps.append(now - last)
        last = now
        if now > end:
            break
    wall = last - started
    guest = _guest_wait_s() - wait_before
    lost = sum(gaps)
    return {
        "lost_pct": 100 * lost / wall,
        "guest_wait_pct": 100 * guest / wall,
        "gaps_over_1ms": sum(1 for g in gaps if g > 1e-3),
        "gaps_per_s_over_1ms": sum(1 for g in gaps if g > 1e-3) / wall,
        "max_ms": max(gaps, default=0.0) * 1e3,
    }


def work_probe(cpu: int, seconds: float) -> dict[str, float]:
    """Median and best time of ``sum(range(10000))`` on ``cpu`` over ``seconds``, µs."""
    times = _step_times(cpu, seconds, functools.partial(sum, range(WORK_UNIT)))
    return {"units": len(times), "median_us": _percentile(times, 0.5) * 1e6,
            "best_us": times[0] * 1e6}  # fmt: skip


PROBES = {"sleep": sleep_probe, "spin": spin_probe, "work": work_probe}


def _run(job: tuple[str, int, float]) -> dict[str, float]:
    kind, cpu, seconds = job
    return PROBES[kind](cpu, seconds)


def measure(seconds: float = 10.0, cpus: list[int] | None = None) -> dict[str, Any]:
    """The probes on every CPU (the CPUs at once; ``work`` gets a fifth of ``seconds``)."""
    cpus = cpus if cpus is not None else sorted(os.sched_getaffinity(0))
    out: dict[str, Any] = {"seconds": seconds, "cpus": {}}
    with multiprocessing.get_context("fork").Pool(len(cpus)) as pool:
        for kind in PROBES:
            span = seconds / 5 if kind == "work" else seconds
            got = pool.map(_run, [(kind, cpu, span) for cpu in cpus])
            for cpu, result in zip(cpus, got, strict=True):
                out["cpus"].setdefault(str(cpu), {})[kind] = result
    return out


def summary(result: dict[str, Any]) -> str:
    """One line per CPU for a report."""
    lines = []
    for cpu, r in result["cpus"].items():
        s, b = r["sleep"], r["spin"]
        line = (
            f"CPU {cpu}: 1 ms sleep late by p50 {s['p50_us']:,.0f} / p99 {s['p99_us']:,.0f} / "
            f"p99.9 {s['p999_us']:,.0f} / max {s['max_us']:,.0f} µs; a busy loop lost "
            f"{b['lost_pct']:.2f} % of {result['seconds']:g} s ({b['guest_wait_pct']:.2f} % "
            f"waiting for other guest tasks), {b['gaps_over_1ms']} gaps over 1 ms, the "
            f"longest {b['max_ms']:.1f} ms"
        )
        if "work" in r:
            w = r["work"]
            line += (
                f"; `sum(range({WORK_UNIT}))` median {w['median_us']:.0f} µs "
                f"(best {w['best_us']:.0f})"
            )
        lines.append(line)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="of each probe")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    result = measure(args.seconds)
    print(summary(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
