"""Latency the gateway adds: the same requests straight to a model server and through
``serving.gateway`` in front of it, one run, side by side.

The model server (the fraud model of ``bench_serving.py``, JSONL prediction log, tokens)
is pinned to CPU 0; the gateway and ``wrk`` (1 connection) share CPU 1. Rounds alternate
direct and gateway runs; the median round is reported. Variants: the gateway with only a
champion, with a 50 % sticky challenger split (the entity header varies per request), and
with a shadow that mirrors every request. As deployed: the gateway checks its client's
bearer token and calls the model server with the server's own token (``token_file``).

    python benchmarks/bench_gateway.py [--duration 10] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_serving as serving_bench  # noqa: E402
from common import WRK_REQUEST, write_result  # noqa: E402

ROOT = serving_bench.ROOT
sys.path.insert(0, str(ROOT))

from serving.gateway_routes import write_routes  # noqa: E402
from serving.token_files import write_records, write_token  # noqa: E402
from serving.token_records import generate_token  # noqa: E402

WRK_ENTITIES = (
    WRK_REQUEST
    + r"""local n = 0
request = function()
  n = n + 1
  wrk.headers["X-Govml-Entity"] = "card-" .. n
  return wrk.format()
end
"""
)


def start_gateway(work: Path, routes: dict, port: int, tokens: Path) -> subprocess.Popen:
    path = work / "routes.json"
    write_routes(path, routes)
    log = work / "gateway.log"
    proc = subprocess.Popen(
        [*serving_bench.pinned(1), str(serving_bench.SERVING_PY), "-m", "serving.gateway",
         "--routes", str(path), "--port", str(port), "--shadow_log", str(work / "shadow.jsonl"),
         "--tokens", str(tokens)],
        cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    serving_bench.wait_ready(f"http://127.0.0.1:{port}/healthz", proc, log)
    return proc


def run_wrk(url: str, body: Path, token: str, seconds: float, entities: bool) -> dict[str, Any]:
    if not entities:
        return serving_bench.wrk(url, body, token, 1, seconds)
    script = body.with_name("entities.lua")
    script.write_text(WRK_ENTITIES + "done = " + serving_bench.WRK_SCRIPT.split("done = ", 1)[1])
    env = {**os.environ, "BENCH_BODY": str(body), "BENCH_TOKEN": token}
    out = subprocess.run(
        [*serving_bench.pinned(1), "wrk", "-t1", "-c1", f"-d{max(1, round(seconds))}s",
         "--latency", "-s", str(script), url],
        env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    line = next(x for x in out.splitlines() if x.startswith("BENCH "))
    result = json.loads(line[len("BENCH ") :])
    result["rps"] = result["requests"] / result["seconds"]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        work = Path(tmp)
        print("training the benchmark model ...", flush=True)
        model = serving_bench.build_model(work, 50_000, 300)
        body = work / "v1_one.json"
        body.write_text(json.dumps({"instances": [model["records"][0]]}))
        server, token = serving_bench.start_ours(work, model, 18191, "jsonl")
        upstream_token = work / "upstream.token"  # the server's token, for the gateway
        write_token(upstream_token, token)
        gateway_token, record = generate_token("bench-gateway-client", ["predict"])
        write_records(work / "gateway-tokens.json", [record])
        champion = {"url": "http://127.0.0.1:18191", "version": "1",
                    "token_file": str(upstream_token)}  # fmt: skip
        variants = {
            "gateway, champion only": {"champion": champion},
            "gateway, 50% sticky split": {
                "champion": champion,
                "challenger": {**champion, "version": "1b"},
                "challenger_percent": 50,
            },
            "gateway, shadow mirror": {
                "champion": champion,
                "shadow": {**champion, "version": "s"},
            },
        }
        results: dict[str, list[dict]] = {"direct": [], **{k: [] for k in variants}}
        try:
            direct_url = "http://127.0.0.1:18191/v1/models/fraud:predict"
            serving_bench.wrk(direct_url, body, token, 1, 2)  # warm-up
            for round_ in range(args.rounds):
                res = run_wrk(direct_url, body, token, args.duration, False)
                results["direct"].append(res)
                print(f"round {round_ + 1} direct: p50 {res['p50_us']} µs", flush=True)
                for name, route in variants.items():
                    gateway = start_gateway(
                        work, {"models": {"fraud": route}}, 18192, work / "gateway-tokens.json"
                    )
                    try:
                        url = "http://127.0.0.1:18192/v1/models/fraud:predict"
                        run_wrk(url, body, gateway_token, 2, True)  # warm-up
                        res = run_wrk(url, body, gateway_token, args.duration, True)
                        results[name].append(res)
                        print(f"round {round_ + 1} {name}: p50 {res['p50_us']} µs", flush=True)
                    finally:
                        os.killpg(gateway.pid, signal.SIGTERM)
                        gateway.wait(30)
        finally:
            serving_bench.stop_serving(server)
    summary = {name: serving_bench.median_round(rs) for name, rs in results.items()}
    direct = summary["direct"]
    lines = [
        "The fraud model server (JSONL log, tokens, strict input) pinned to CPU 0; the "
        "gateway and `wrk` (1 connection, keep-alive; a new `X-Govml-Entity` per request) "
        f"on CPU 1. {args.rounds} rounds of {args.duration:g} s, median round. The shadow "
        "variant mirrors to the same model server, which then scores every request twice.",
        "",
        "| path | req/s | p50 µs | p90 µs | p99 µs | added p50 µs | added p99 µs | failed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in summary.items():
        added50 = r["p50_us"] - direct["p50_us"]
        added99 = r["p99_us"] - direct["p99_us"]
        lines.append(
            f"| {name} | {r['rps']:,.0f} | {r['p50_us']} | {r['p90_us']} | {r['p99_us']} | "
            f"{'-' if name == 'direct' else added50} | {'-' if name == 'direct' else added99} | "
            f"{r['non2xx'] + r['socket_errors']} |"
        )
    worst = max(summary[n]["p50_us"] - direct["p50_us"] for n in variants)
    lines += ["", f"Largest p50 the gateway adds: {worst} µs (target: under 1,000 µs)."]
    markdown = "\n".join(lines) + "\n"
    print(markdown)
    if args.json:
        write_result(
            args.json,
            {
                "title": "Gateway: latency added in front of a model server",
                "command": f"python benchmarks/bench_gateway.py --duration {args.duration:g} "
                f"--rounds {args.rounds}",
                "markdown": markdown,
                "results": {
                    "summary": summary,
                    "rounds": {k: [r["p50_us"] for r in v] for k, v in results.items()},
                },
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
