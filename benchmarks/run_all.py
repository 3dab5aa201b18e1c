"""``make bench``: run every benchmark and rewrite BENCHMARKS.md with the figures,
the machine and the command that produced them.

Each ``benchmarks/bench_*.py`` script accepts ``--json PATH`` and writes
``{"title": ..., "command": ..., "markdown": ..., "results": ...}`` there.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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


def _split(text: str) -> dict[str, str]:
    parts = text.split("\n## ")[1:]
    return {p.split("\n", 1)[0].strip(): "## " + p.rstrip() + "\n" for p in parts}


def merge_sections(existing: str, fresh: list[str]) -> list[str]:
    """The file's sections in their order, the fresh ones replacing theirs (or appended)."""
    old = _split(existing)
    new = _split("\n" + "\n".join(fresh))
    merged = [new.pop(title, body) for title, body in old.items()]
    return merged + list(new.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", action="append", help="run only bench_<NAME>.py")
    parser.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args()
    scripts = sorted((ROOT / "benchmarks").glob("bench_*.py"))
    if args.only:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in args.only]
    sections = []
    for script in scripts:
        with tempfile.TemporaryDirectory() as tmp:
            result_file = Path(tmp) / "result.json"
            cmd = [sys.executable, str(script), "--json", str(result_file)]
            print(f"running {script.name} ...", flush=True)
            subprocess.run(cmd, cwd=ROOT, check=True)
            result = json.loads(result_file.read_text())
        sections.append(
            f"## {result['title']}\n\n"
            f"Command: `{result['command']}`\n\n{result['markdown'].strip()}\n"
        )
    if args.only and Path(args.out).exists():  # keep the other sections as they are
        sections = merge_sections(Path(args.out).read_text(), sections)
    header = (
        "# Benchmarks\n\n"
        "Written by `make bench` (`benchmarks/run_all.py`); do not edit by hand.\n\n"
        f"- Date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC\n"
        f"- Machine: {machine()}\n"
        f"- Command: `make bench`\n\n"
    )
    Path(args.out).write_text(header + "\n".join(sections))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
