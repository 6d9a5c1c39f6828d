"""
bench/workers.py: relay throughput with ``server.workers = 1`` and ``= 2`` on this machine
(issue 11.3). Each run starts ``txrelay serve`` on a free loopback port with the demo
backend, waits until every worker listens, warms up, then drives it with ``wrk`` (bounded
by ``--duration``) and prints requests/s per worker count.

    .venv/bin/python bench/workers.py [--duration 5] [--connections 50] [--workers 1,2]

Non-streaming and streaming requests (``--stream``) are both small demo answers, so this
measures the relay's own CPU per request; wrk shares the cores with the relay.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from txrelay.config import hash_key

HERE = Path(__file__).resolve().parent
KEY = "bench-workers-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(port: int, workers: int) -> str:
    return f"""[server]
listen = ["tcp:{port}:interface=127.0.0.1"]
reuse_port = true
workers = {workers}
access_log = false

[[keys]]
name = "bench"
sha256 = "{hash_key(KEY)}"

[[providers]]
name = "demo"
kind = "demo"

[[models]]
id = "claude-sonnet-4-6"
provider = "demo"
patterns = ["claude-*"]

[[pipeline]]
type = "auth"
[[pipeline]]
type = "model-map"
[[pipeline]]
type = "translate"
"""


def run_wrk(port: int, body: Path, duration: int, connections: int) -> dict[str, float]:
    env = {**os.environ, "WRK_BODY": str(body), "WRK_HEADERS": f"x-api-key: {KEY}"}
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "-s", str(HERE / "post.lua"),
         f"http://127.0.0.1:{port}/v1/messages"],
        env=env, capture_output=True, text=True, timeout=duration + 30, check=True).stdout
    m = re.search(r"BENCH_JSON (\{.*\})", out)
    if m is None:
        raise SystemExit(f"wrk printed no summary:\n{out}")
    raw = json.loads(m.group(1))
    errors = sum(v for k, v in raw.items() if k.startswith("errors_"))
    return {"rps": raw["requests"] / (raw["duration_us"] / 1e6), "errors": errors,
            "p50_ms": raw["p50_us"] / 1000, "p99_ms": raw["p99_us"] / 1000}


def measure(workers: int, args: argparse.Namespace, work: Path) -> dict[str, float]:
    port = free_port()
    cfg = work / f"relay-{workers}.toml"
    cfg.write_text(config(port, workers))
    log = work / f"relay-{workers}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "txrelay", "serve", "--config",
                                 str(cfg)], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while log.read_text().count("txrelay listening on") < workers:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"relay did not start:\n{log.read_text()}")
            time.sleep(0.1)
        body = work / "body.json"
        body.write_text(json.dumps({
            "model": "claude-sonnet-4-6", "max_tokens": 64, "stream": args.stream,
            "messages": [{"role": "user", "content": "hello"}]}))
        run_wrk(port, body, 1, args.connections)  # warm-up
        return run_wrk(port, body, args.duration, args.connections)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--stream", action="store_true")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("bench/workers.py needs wrk (apt-get install wrk, or bench/run)")
    counts = [int(n) for n in args.workers.split(",")]
    with tempfile.TemporaryDirectory(prefix="txrelay-workers-") as tmp:
        results = {n: measure(n, args, Path(tmp)) for n in counts}
    base = results[counts[0]]["rps"]
    print(f"| workers | req/s | vs {counts[0]} | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|---|")
    for n, r in results.items():
        print(f"| {n} | {r['rps']:.0f} | {r['rps'] / base:.2f} | {r['p50_ms']:.1f} | "
              f"{r['p99_ms']:.1f} | {r['errors']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
