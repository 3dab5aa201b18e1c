"""A small HTTP load generator for the latency benchmarks (no dependencies).

    python benchmarks/load_client.py PORT PATH BODIES --rate 500      # open loop
    python benchmarks/load_client.py PORT PATH BODIES --connections 8 # closed loop

``--token-file FILE``: send ``Authorization: Bearer`` with the token in FILE (the
project's servers answer nothing else; a file keeps it off the command line).

``BODIES`` holds one request body per line; each is sent once, in order. Open loop:
request ``i`` is sent at ``start + i / rate`` whether or not earlier ones were answered
(a new keep-alive connection only when all are busy), so a slow server shows as
latency, not as fewer requests. Closed loop: each connection sends its next body as
soon as the previous answer arrives. Latency is measured from just before the request
is written to the last byte of the answer. The cyclic GC is off while it runs (a
pause would show up as server latency). Prints one JSON line: requests, seconds,
rps, p50/p90/p99/max in µs, failed (non-200 answers).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
from pathlib import Path


class Connection:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, head: bytes, body: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        self.writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        status = int((await self.reader.readline()).split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await self.reader.readexactly(length)
        return status


def head_of(path: str, token: str | None = None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" + auth
    ).encode()


async def open_loop(port: int, head: bytes, bodies: list[bytes], rate: float) -> dict:
    idle: list[Connection] = []
    latencies: list[float] = []
    failed = 0

    async def one(body: bytes) -> None:
        nonlocal failed
        connection = idle.pop() if idle else Connection(port)
        started = time.perf_counter()
        status = await connection.post(head, body)
        latencies.append(time.perf_counter() - started)
        failed += status != 200
        idle.append(connection)

    tasks = []
    start = time.perf_counter()
    for i, body in enumerate(bodies):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(body)))
    await asyncio.gather(*tasks)
    return summary(latencies, failed, time.perf_counter() - start)


async def closed_loop(port: int, head: bytes, bodies: list[bytes], connections: int) -> dict:
    latencies: list[float] = []
    failed = 0
    queue = iter(bodies)

    async def worker() -> None:
        nonlocal failed
        connection = Connection(port)
        for body in queue:
            started = time.perf_counter()
            status = await connection.post(head, body)
            latencies.append(time.perf_counter() - started)
            failed += status != 200

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return summary(latencies, failed, time.perf_counter() - start)


def summary(latencies: list[float], failed: int, seconds: float) -> dict:
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6

    return {
        "requests": len(ordered),
        "seconds": seconds,
        "rps": len(ordered) / seconds,
        "p50_us": pct(0.50),
        "p90_us": pct(0.90),
        "p99_us": pct(0.99),
        "max_us": ordered[-1] * 1e6,
        "failed": failed,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("port", type=int)
    parser.add_argument("path")
    parser.add_argument("bodies")
    parser.add_argument("--rate", type=float, default=None)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--token-file", default=None, help="file holding the bearer token")
    args = parser.parse_args()
    bodies = Path(args.bodies).read_bytes().splitlines()
    token = Path(args.token_file).read_text().strip() if args.token_file else None
    head = head_of(args.path, token)
    gc.collect()
    gc.freeze()
    gc.disable()
    if args.rate:
        result = asyncio.run(open_loop(args.port, head, bodies, args.rate))
    else:
        result = asyncio.run(closed_loop(args.port, head, bodies, args.connections))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
