"""The model endpoint against MLServer's LightGBM runtime, same model, same client, one run.

* Model: the fraud spec's LightGBM model (17 features, 3 categorical) trained for exactly
  ``--trees`` boosting rounds on generated transactions (features from the pipeline).
* This project: ``python -m serving`` from ``.venv-serving`` with everything on: strict
  input validation against the spec, bearer tokens, Prometheus metrics, the Parquet
  prediction log. Request: the V1 body a bank's system sends, ``{"instances": [{...}]}``
  with named features and category labels. Batches score with the compiled model
  (``serving.compiled``, bit-for-bit ``Booster.predict``), built once before the servers
  start (``python -m serving.compiled warm``, as a deployment would), so each start loads it.
* Peer: ``mlserver start`` (MLServer + mlserver-lightgbm from ``.venv-mlserver``),
  V2 ``/infer`` with one FP64 tensor (categories as codes), no validation, no auth.
  ``parallel_workers: 0`` (inference in the server process: its fastest single-worker
  setting); metrics on its own port as shipped.
* Equal CPU: each server runs alone with one worker process, pinned to CPU 0; the
  client, ``wrk`` (C, keep-alive), is pinned to CPU 1. Each load level runs ``--rounds``
  times, alternating the servers; the median round is reported.
* Batch: rows/s of one request of ``--batch-rows`` rows through this endpoint (V1 JSON
  rows, and V2 JSON columns) against raw ``Booster.predict`` on the same rows as a
  float matrix in the serving environment.

    python benchmarks/bench_serving.py [--duration 10] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import WRK_REQUEST, write_result  # noqa: E402

from tests.support import SERVING_PY, model_server_argv, stop_serving  # noqa: E402

MLSERVER = ROOT / ".venv-mlserver" / "bin" / "mlserver"
SPEC = ROOT / "specs" / "fraud.yaml"

WRK_SCRIPT = (
    WRK_REQUEST
    + r"""done = function(summary, latency, requests)
  io.write(string.format(
    "BENCH {\"requests\": %d, \"seconds\": %f, \"p50_us\": %d, \"p90_us\": %d, " ..
    "\"p99_us\": %d, \"p999_us\": %d, \"max_us\": %d, \"non2xx\": %d, \"socket_errors\": %d}\n",
    summary.requests, summary.duration / 1e6, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""
)

BATCH_RAW = r"""
import json, sys, time, numpy as np, lightgbm as lgb
b = lgb.Booster(model_file=sys.argv[1]); m = np.load(sys.argv[2])
b.predict(m)
times = []
for _ in range(int(sys.argv[3])):
    t = time.perf_counter(); b.predict(m); times.append(time.perf_counter() - t)
print(json.dumps({"seconds": sorted(times)[len(times) // 2], "rows": len(m)}))
"""


def pinned(cpu: int) -> list[str]:
    if (os.cpu_count() or 1) >= 2 and shutil.which("taskset"):
        return ["taskset", "-c", str(cpu)]
    return []


# ----------------------------------------------------------------------------- model
def build_model(work: Path, rows: int, trees: int) -> dict[str, Any]:
    """The fraud model with exactly ``trees`` rounds, its test rows, and request bodies."""
    import lightgbm as lgb
    import numpy as np
    import pandas as pd

    from pipelines.booster_layout import category_lists, typed_frame
    from pipelines.data.manifest import data_path, manifest_path_for
    from pipelines.datasets import materialise
    from pipelines.spec import load_spec
    from pipelines.stages.features import build_features
    from pipelines.stages.ingest import ingest
    from pipelines.training import base_params

    spec = load_spec(SPEC)
    data_dir = work / "data"
    manifest = materialise(spec, data_dir, {"n_rows": rows})
    ingest_dir, features_dir = work / "ingest", work / "features"
    ingest(spec, data_path(manifest_path_for(data_dir, manifest.name), manifest), ingest_dir)
    build_features(spec, ingest_dir / "data.parquet", features_dir)
    meta = json.loads((features_dir / "features.json").read_text())
    features, categorical = list(meta["features"]), list(meta["categorical"])
    train = pd.read_parquet(features_dir / "train.parquet")
    test = pd.read_parquet(features_dir / "test.parquet")
    cats = category_lists(train, categorical)
    x = typed_frame(train, features, cats)
    y = train[spec.data.target].to_numpy().astype("int64")
    params, _ = base_params(spec, y)
    booster = lgb.train(params, lgb.Dataset(x, y), num_boost_round=trees)
    model_dir = work / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(model_dir / "model.txt"))

    complete = test[features].notna().all(axis=1)
    records = json.loads(
        test.loc[complete, features].to_json(orient="records", double_precision=15)
    )
    # JSON floats round-trip; score the same values the servers will parse
    matrix = np.array(
        [
            [cats[f].index(r[f]) if f in categorical else float(r[f]) for f in features]
            for r in records
        ],
        dtype="float64",
    )
    expected = booster.predict(matrix)
    return {
        "model_file": model_dir / "model.txt",
        "features": features,
        "categorical": categorical,
        "records": records,
        "matrix": matrix,
        "expected": expected,
        "trees": booster.num_trees(),
    }


def warm_compiled(work: Path, model: dict[str, Any]) -> None:
    """Build the compiled model into the servers' cache (they load it at start)."""
    done = subprocess.run(
        [*pinned(0), str(SERVING_PY), "-m", "serving.compiled", "warm", str(model["model_file"])],
        cwd=ROOT,
        env={**os.environ, "GOVML_COMPILED_CACHE": str(work / "compiled")},
        capture_output=True,
        text=True,
    )
    print((done.stdout or done.stderr).strip(), flush=True)  # unavailable: Booster.predict


# ----------------------------------------------------------------------------- servers
def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(
                f"server exited ({proc.returncode}); log {log}:\n{log.read_text()[-3000:]}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"server not ready at {url} after {timeout}s; log {log}")


def start_ours(
    work: Path, model: dict[str, Any], port: int, log_format: str
) -> tuple[subprocess.Popen, str]:
    from serving.token_files import write_records
    from serving.token_records import generate_token

    token, record = generate_token("bench-client", ["predict", "explain"])
    tokens = work / "tokens.json"
    write_records(tokens, [record])
    log = work / "ours.log"
    cmd = [
        *pinned(0),
        *model_server_argv(
            "fraud",
            model["model_file"].parent,
            port,
            "--spec",
            str(SPEC),
            "--model_version",
            "bench",
            "--tokens",
            str(tokens),
            "--prediction_log",
            str(work / f"prediction_log_{log_format}"),
            "--prediction_log_format",
            log_format,
            "--max_body_bytes",
            str(64 << 20),
        ),
    ]
    env = {
        **os.environ,
        "GOVML_PREDICTION_LOG_KEY": "bench-" + "k" * 32,
        "GOVML_COMPILED_CACHE": str(work / "compiled"),
    }
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=env,
    )
    wait_ready(f"http://127.0.0.1:{port}/v2/models/fraud/ready", proc, log)
    return proc, token


def start_mlserver(work: Path, model: dict[str, Any], port: int) -> subprocess.Popen:
    root = work / "mlserver"
    (root / "fraud").mkdir(parents=True, exist_ok=True)
    shutil.copy(model["model_file"], root / "fraud" / "model.txt")
    (root / "fraud" / "model-settings.json").write_text(
        json.dumps(
            {
                "name": "fraud",
                "implementation": "mlserver_lightgbm.LightGBMModel",
                "parameters": {"uri": "./model.txt"},
            }
        )
    )
    (root / "settings.json").write_text(
        json.dumps(
            {
                "http_port": port,
                "grpc_port": port + 1,
                "metrics_port": port + 2,
                "parallel_workers": 0,
                "debug": False,
            }
        )
    )
    log = work / "mlserver.log"
    proc = subprocess.Popen(
        [*pinned(0), str(MLSERVER), "start", str(root)],
        cwd=root,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_ready(f"http://127.0.0.1:{port}/v2/models/fraud/ready", proc, log)
    return proc


def post(
    url: str,
    body: bytes,
    token: str | None = None,
    timeout: float = 120,
    json_length: int | None = None,
) -> dict:
    headers = {"Content-Type": "application/json"}
    if json_length is not None:  # the V2 binary tensor extension
        headers["Content-Type"] = "application/octet-stream"
        headers["Inference-Header-Content-Length"] = str(json_length)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body, headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


# ----------------------------------------------------------------------------- load
def wrk(url: str, body: Path, token: str | None, connections: int, seconds: float) -> dict:
    script = body.with_suffix(".lua")
    script.write_text(WRK_SCRIPT)
    env = {**os.environ, "BENCH_BODY": str(body), "BENCH_TOKEN": token or ""}
    cmd = [
        *pinned(1),
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("BENCH "))
    result = json.loads(line[len("BENCH ") :])
    result["rps"] = result["requests"] / result["seconds"]
    return result


def median_round(rounds: list[dict]) -> dict:
    rps = statistics.median(r["rps"] for r in rounds)
    best = min(rounds, key=lambda r: abs(r["rps"] - rps))
    return {**best, "rounds_rps": [round(r["rps"]) for r in rounds]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000, help="generated transactions")
    parser.add_argument("--trees", type=int, default=300)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", default="1,8")
    parser.add_argument("--batch-rows", type=int, default=10_000)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    for need, hint in (
        (SERVING_PY, "make setup"),
        (MLSERVER, "make bench (builds .venv-mlserver)"),
    ):
        if not need.exists():
            raise SystemExit(f"{need} missing: run {hint}")
    if not shutil.which("wrk"):
        raise SystemExit("wrk not found: apt-get install wrk (make bench installs it as root)")

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        work = Path(tmp)
        print("training the benchmark model ...", flush=True)
        model = build_model(work, args.rows, args.trees)
        warm_compiled(work, model)
        features, categorical = model["features"], model["categorical"]
        record = model["records"][0]
        v1_one = work / "v1_one.json"
        v1_one.write_text(json.dumps({"instances": [record]}))
        v2_one = work / "v2_one.json"
        v2_one.write_text(
            json.dumps(
                {
                    "inputs": [
                        {
                            "name": "input-0",
                            "shape": [1, len(features)],
                            "datatype": "FP64",
                            "data": model["matrix"][0].tolist(),
                        }
                    ]
                }
            )
        )
        ours_url = "http://127.0.0.1:18091/v1/models/fraud:predict"
        peer_url = "http://127.0.0.1:18092/v2/models/fraud/infer"
        levels = [int(c) for c in args.connections.split(",")]
        sides = ("parquet", "jsonl", "peer")
        results: dict[str, dict[int, list[dict]]] = {side: {} for side in sides}
        sent = dict.fromkeys(sides, 0)  # requests (rows) sent to each server
        check: dict[str, Any] = {}
        for round_ in range(args.rounds):
            order = sides[round_ % 3 :] + sides[: round_ % 3]
            for side in order:
                if side == "peer":
                    proc, token = start_mlserver(work, model, 18092), None
                    url, body = peer_url, v2_one
                else:
                    proc, token = start_ours(work, model, 18091, side)
                    url, body = ours_url, v1_one
                try:
                    got = post(url, body.read_bytes(), token)
                    sent[side] += 1
                    score = (
                        got["outputs"][0]["data"][0] if side == "peer" else got["predictions"][0]
                    )
                    check[side] = score == float(model["expected"][0])
                    sent[side] += wrk(url, body, token, 1, 2)["requests"]  # warm-up
                    for c in levels:
                        res = wrk(url, body, token, c, args.duration)
                        sent[side] += res["requests"]
                        results[side].setdefault(c, []).append(res)
                        print(
                            f"round {round_ + 1} {side} c={c}: {res['rps']:.0f} req/s "
                            f"p50 {res['p50_us']} µs p99 {res['p99_us']} µs",
                            flush=True,
                        )
                    if side == "jsonl" and round_ == 0:
                        batch = batch_scoring(work, model, url, token, args.batch_rows)
                        sent[side] += batch["rows_sent"]
                        metrics = (
                            urllib.request.urlopen("http://127.0.0.1:18091/metrics", timeout=10)
                            .read()
                            .decode()
                        )
                finally:
                    stop_serving(proc)
        logged = {
            "parquet": sum(
                pq.ParquetFile(f).metadata.num_rows
                for f in (work / "prediction_log_parquet").glob("*.parquet")
            ),
            "jsonl": sum(
                sum(1 for _ in f.open("rb"))
                for f in (work / "prediction_log_jsonl").glob("*.jsonl")
            ),
        }
        summary = {
            side: {c: median_round(rs) for c, rs in per.items()} for side, per in results.items()
        }
    out = {
        "model": {"trees": model["trees"], "features": len(features), "categorical": categorical},
        "scores_identical": check,
        "single_row": summary,
        "batch": batch,
        "prediction_log_rows": logged,
        "rows_sent": {k: v for k, v in sent.items() if k != "peer"},
        "metrics_exposed": "govml_request_seconds_bucket" in metrics,
    }
    markdown = render(out, args)
    print(markdown)
    if args.json:
        write_result(
            args.json,
            {
                "title": "Model endpoint vs MLServer (LightGBM runtime)",
                "command": "python benchmarks/bench_serving.py "
                f"--rows {args.rows} --trees {args.trees} --duration {args.duration:g} "
                f"--rounds {args.rounds} --connections {args.connections} "
                f"--batch-rows {args.batch_rows}",
                "markdown": markdown,
                "results": out,
            },
            default=str,
        )
    return 0


def batch_scoring(
    work: Path, model: dict[str, Any], url: str, token: str, rows: int, repeats: int = 5
) -> dict[str, Any]:
    import numpy as np

    n = min(rows, len(model["records"]))
    matrix = model["matrix"][:n]
    np.save(work / "batch.npy", matrix)
    raw = json.loads(
        subprocess.run(
            [
                *pinned(0),
                str(SERVING_PY),
                "-c",
                BATCH_RAW,
                str(model["model_file"]),
                str(work / "batch.npy"),
                str(repeats),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    v1 = json.dumps({"instances": model["records"][:n]}).encode()
    v2 = json.dumps(
        {
            "inputs": [
                {
                    "name": f,
                    "shape": [n],
                    "datatype": "BYTES" if f in model["categorical"] else "FP64",
                    "data": [r[f] for r in model["records"][:n]],
                }
                for f in model["features"]
            ]
        }
    ).encode()
    v2_url = url.replace("/v1/models/fraud:predict", "/v2/models/fraud/infer")
    binary, head = v2_binary(model, n)
    out = {"rows": n, "raw_seconds": raw["seconds"], "raw_rows_per_s": n / raw["seconds"]}
    out["rows_sent"] = 0
    for name, target, body, json_length in (
        ("v1_rows", url, v1, None),
        ("v2_columns", v2_url, v2, None),
        ("v2_binary", v2_url, binary, head),
    ):
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            got = post(target, body, token, json_length=json_length)
            times.append(time.perf_counter() - started)
            out["rows_sent"] += n
        scores = got["predictions"] if name == "v1_rows" else got["outputs"][0]["data"]
        seconds = statistics.median(times)
        out[name] = {
            "seconds": seconds,
            "rows_per_s": n / seconds,
            "ratio_to_raw": raw["seconds"] / seconds,
            "identical": bool(np.array_equal(np.asarray(scores), model["expected"][:n])),
        }
    return out


def v2_binary(model: dict[str, Any], n: int) -> tuple[bytes, int]:
    """V2 binary tensor extension: named inputs, FP64 numbers, category labels as BYTES."""
    import struct

    import numpy as np

    header: dict[str, Any] = {"inputs": []}
    chunks = []
    for f in model["features"]:
        values = [r[f] for r in model["records"][:n]]
        if f in model["categorical"]:
            data = b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)
            kind = "BYTES"
        else:
            data = np.asarray(values, dtype="<f8").tobytes()
            kind = "FP64"
        header["inputs"].append(
            {
                "name": f,
                "shape": [n],
                "datatype": kind,
                "parameters": {"binary_data_size": len(data)},
            }
        )
        chunks.append(data)
    head = json.dumps(header).encode()
    return head + b"".join(chunks), len(head)


def render(out: dict[str, Any], args: argparse.Namespace) -> str:
    labels = {
        "parquet": "govml, Parquet log",
        "jsonl": "govml, JSONL log",
        "peer": "MLServer",
    }
    lines = [
        f"LightGBM fraud model: {out['model']['trees']} trees, {out['model']['features']} "
        f"features ({len(out['model']['categorical'])} categorical). Each server alone, one "
        "process, pinned to CPU 0; `wrk` (1 thread, keep-alive) pinned to CPU 1. "
        f"{args.rounds} rounds of {args.duration:g} s per level, server order rotating; "
        "the median round (by throughput) is shown.",
        "",
        "govml: KServe `ModelServer` with this project's model, V1 body with named features "
        "and category labels, strict validation against the spec, bearer token, Prometheus "
        "metrics, prediction log (Parquet, or JSONL). MLServer 1.7.1 + mlserver-lightgbm: "
        "V2 body with one FP64 tensor (categories as codes), `parallel_workers: 0`, no "
        "validation, no auth, no prediction log.",
        "",
        "| connections | server | req/s | p50 µs | p90 µs | p99 µs | p99.9 µs | failed "
        "| rounds req/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    single = out["single_row"]
    for c in sorted(single["peer"]):
        for side in ("parquet", "jsonl", "peer"):
            r = single[side][c]
            lines.append(
                f"| {c} | {labels[side]} | {r['rps']:,.0f} | {r['p50_us']} | {r['p90_us']} | "
                f"{r['p99_us']} | {r['p999_us']} | {r['non2xx'] + r['socket_errors']} | "
                f"{', '.join(f'{x:,}' for x in r['rounds_rps'])} |"
            )
    lines.append("")
    for c in sorted(single["peer"]):
        p = single["peer"][c]
        for side in ("parquet", "jsonl"):
            o = single[side][c]
            verdict = "at most" if o["p99_us"] <= p["p99_us"] else "ABOVE"
            lines.append(
                f"- {c} connection(s), {labels[side]}: throughput {o['rps'] / p['rps']:.2f}x "
                f"MLServer's; p99 {o['p99_us']} µs vs {p['p99_us']} µs ({verdict} the peer's)."
            )
    lines.append(f"- Scores identical to `Booster.predict`: {out['scores_identical']}.")
    for side in ("parquet", "jsonl"):
        lines.append(
            f"- Prediction log ({side}): {out['prediction_log_rows'][side]:,} rows written for "
            f"{out['rows_sent'][side]:,} rows scored as counted by the client (every request, "
            "warm-up and batch rows included; requests still in flight when a `wrk` run ends "
            "are scored and logged, not counted)."
        )
    b = out["batch"]
    lines += [
        "",
        f"Batch scoring, {b['rows']:,} rows in one request (median of 5), govml with the "
        "JSONL log (its default) and its compiled model (`serving.compiled`: lleaves, "
        "trees summed in LightGBM's order, verified bit-for-bit against `Booster.predict` "
        "when built; built before the servers start, as at deployment), "
        "against raw `Booster.predict` on the same rows as a float matrix in "
        "one process pinned to CPU 0:",
        "",
        "| path | seconds | rows/s | vs raw `Booster.predict` | scores identical |",
        "|---|---|---|---|---|",
        f"| raw `Booster.predict` | {b['raw_seconds']:.4f} | {b['raw_rows_per_s']:,.0f} "
        "| 100% | - |",
    ]
    for name, label in (
        ("v1_rows", "endpoint, V1 rows (JSON)"),
        ("v2_columns", "endpoint, V2 named columns (JSON)"),
        ("v2_binary", "endpoint, V2 named columns (binary tensor extension)"),
    ):
        r = b[name]
        lines.append(
            f"| {label} | {r['seconds']:.4f} | {r['rows_per_s']:,.0f} | "
            f"{r['ratio_to_raw']:.0%} | {r['identical']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
