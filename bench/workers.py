"""
bench/workers.py: relay throughput with ``server.workers = 1`` and ``= 2`` on this machine
(issue 11.3). Each run starts ``txrelay serve`` on a free loopback port, waits until every
worker listens, warms up, then drives it with ``wrk`` (bounded by ``--duration``) and
prints, per load and worker count, requests/s and the relay's CPU per request: the sum over
the supervisor and every worker process, from /proc.

    .venv/bin/python bench/workers.py [--duration 5] [--workers 1,2] [--loads small,paced]
                                      [--paced-conc 32,128] [--write-results]

``--write-results`` puts the table into bench/RESULTS.md as its "Workers" section (a full
``bench/run`` keeps that section when it rewrites the file).

Loads:

* ``small``: small non-streaming requests to the demo backend (no upstream I/O), c=50: the
  relay's own front end, pipeline and writer.
* ``paced``: streamed answers through the ``openai-chat`` backend from bench/pyupstream.py's
  trickled stream (200 chunks, one SSE event per upstream write, 5 ms apart, as a model
  streams tokens), c=32 (and more with ``--paced-conc``): one stream costs a read, a
  translation and a write per chunk. At c=32 the pacing bounds streams/s (a stream lasts
  about a second whatever the relay does), so the CPU per stream is the number to read; a
  higher concurrency makes the relay the bottleneck.

wrk and the upstream share the cores with the relay, so two workers cannot reach twice one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import fixtures  # noqa: E402
import harness  # noqa: E402

from txrelay.config import hash_key  # noqa: E402

KEY = "bench-workers-key"
UPSTREAM_KEY = "bench-workers-upstream-key"
TRICKLE_MS = 5.0
LOADS = {"small": "small non-streaming, demo backend",
         "paced": f"paced stream: 200 chunks, one per upstream write {TRICKLE_MS:g} ms apart, "
                  "openai-chat"}
SMALL_CONC = 50
#: The heading of this benchmark's section of bench/RESULTS.md.
HEADING = "## Workers (bench/workers.py)"


def results_section(table: list[str], args: argparse.Namespace, loads: list[float]) -> str:
    """The "Workers" section of bench/RESULTS.md (``loads``: the host's load averages)."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    loads = sorted(loads)
    return "\n".join([
        HEADING, "",
        f"Made by `bench/workers.py --duration {args.duration}` on {when}: `txrelay serve` with "
        "`server.workers` = 1 and 2 (SO_REUSEPORT), one wrk thread, 2 s warm-up per row. "
        "Relay CPU is user+system time of the supervisor and every worker (/proc), per "
        "request. Paced streams: bench/pyupstream.py's trickled answer (200 chunks, one per "
        "write, 5 ms apart) through the `openai-chat` backend.", "",
        f"**The machine was busy** (other jobs ran beside it; 1-minute load average "
        f"{loads[0]:.1f}..{loads[-1]:.1f} on 2 cores): req/s and latencies here are "
        "lower bounds and do not show how far a second worker scales on an idle host; "
        "CPU per request is the steadier number. wrk and the upstream share the 2 cores "
        "with the relay, so 2 workers cannot double one in any case.", "",
        *table, "",
        "At c=32 the pacing bounds streams/s (each lasts at least 1 s whatever the relay "
        "does), so only a higher concurrency can show a second worker's gain. CPU per paced "
        "stream falls as concurrency rises (more chunks arrive per read) and is inflated on a "
        "contended host: compare it within this table, not with bench/run's figures.", ""])


def write_results(section: str) -> None:
    """Put ``section`` into bench/RESULTS.md, replacing an earlier one."""
    path = HERE / "RESULTS.md"
    text = path.read_text() if path.exists() else ""
    start = text.find(HEADING)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        # The section ends at the next heading or at bench/run's instruction-count marker.
        ends = [i for i in (text.find("\n## ", start + len(HEADING)),
                            text.find("\n<!-- ", start + len(HEADING))) if i >= 0]
        end = min(ends) if ends else -1
        text = text[:start] + section.rstrip("\n") + "\n" + (text[end:] if end >= 0 else "")
    path.write_text(text)


def config(port: int, workers: int, upstream_port: int) -> str:
    """The relay's configuration: the demo backend and the trickled Chat Completions one."""
    return f"""[server]
listen = ["tcp:{port}:interface=127.0.0.1:backlog=4096"]
reuse_port = true
workers = {workers}
access_log = false
drain_timeout = 2.0

[[keys]]
name = "bench"
sha256 = "{hash_key(KEY)}"

[[providers]]
name = "demo"
kind = "demo"
options = {{ event_delay = 0 }}

[[providers]]
name = "trickle"
kind = "openai-chat"
base_url = "http://127.0.0.1:{upstream_port}/trickle/stream/v1"
api_key = {{ env = "BENCH_UPSTREAM_KEY" }}
max_idle_connections = 256
options = {{ dialect = "openai" }}

[[models]]
id = "bench-trickle"
provider = "trickle"
upstream_model = "{fixtures.UPSTREAM_MODEL}"

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


def relay_pids(pid: int) -> list[int]:
    """The relay process and its workers (a supervisor's children)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *(int(c) for c in children)]


def cpu(pids: list[int]) -> float:
    """CPU seconds of ``pids`` so far, summed."""
    return sum(harness.cpu_seconds(p) for p in pids)


def measure(workers: int, args: argparse.Namespace, work: Path, upstream_port: int,
            procs: harness.Procs, bodies: dict[str, Path],
            ) -> dict[tuple[str, int], dict[str, float]]:
    """Every load against a relay with ``workers`` workers."""
    port = harness.free_port()
    cfg = work / f"relay-{workers}.toml"
    cfg.write_text(config(port, workers, upstream_port))
    log = work / f"relay-{workers}.log"
    proc = procs.start(f"relay-{workers}", [sys.executable, "-m", "txrelay", "serve",
                                            "--config", str(cfg)], log,
                       env={**os.environ, "BENCH_UPSTREAM_KEY": UPSTREAM_KEY})
    try:
        deadline = time.monotonic() + 60
        while log.read_text().count("txrelay listening on") < workers:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"relay did not start:\n{log.read_text()}")
            time.sleep(0.1)
        pids = relay_pids(proc.pid)
        url = harness.relay_url(port)
        headers = {"x-api-key": KEY}
        out = {}
        for load, conc in args.runs:
            # A paced stream lasts a second or more; past c=32 they queue for longer.
            seconds = max(args.duration, 1 if load == "small" else 4 if conc <= 32 else 10)
            harness.wrk(url, bodies[load], headers, conc, 2)  # warm-up
            before = cpu(pids)
            r_load = float(Path("/proc/loadavg").read_text().split()[0])
            r = harness.wrk(url, bodies[load], headers, conc, seconds)
            r["cpu_ms"] = (cpu(pids) - before) * 1000 / max(1, r["requests"])
            r["loadavg"] = r_load
            out[load, conc] = r
            harness.log(f"workers={workers} {load} c={conc}: {r['rps']:.0f} req/s, "
                        f"{r['cpu_ms']:.3f} ms CPU/req, {r['errors']} errors")
        return out
    finally:
        procs.stop(proc, timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--loads", default="small,paced")
    parser.add_argument("--paced-conc", default="32,128")
    parser.add_argument("--write-results", action="store_true",
                        help="write the table into bench/RESULTS.md")
    args = parser.parse_args()
    args.loads = [x for x in args.loads.split(",") if x]
    args.runs = [(load, conc) for load in args.loads
                 for conc in ([SMALL_CONC] if load == "small"
                              else [int(c) for c in args.paced_conc.split(",")])]
    if unknown := set(args.loads) - set(LOADS):
        raise SystemExit(f"unknown load(s): {', '.join(sorted(unknown))}")
    if shutil.which("wrk") is None:
        raise SystemExit("bench/workers.py needs wrk (apt-get install wrk, or bench/run)")
    harness.raise_nofile()
    counts = [int(n) for n in args.workers.split(",")]
    procs = harness.Procs()
    try:
        with tempfile.TemporaryDirectory(prefix="txrelay-workers-bench-") as tmp:
            work = Path(tmp)
            fixtures.write_all(work / "fixtures")
            small = work / "small.json"
            small.write_text(json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 64,
                                         "messages": [{"role": "user", "content": "hello"}]}))
            paced = work / "paced.json"
            paced.write_bytes(harness.with_model(
                work / "fixtures" / "bodies" / "small-stream.anthropic.json", "bench-trickle"))
            upstream_port = harness.free_port()
            up = procs.start("pyupstream", [
                sys.executable, str(HERE / "pyupstream.py"), str(upstream_port),
                "--max-seconds", "3600", "--fixtures", str(work / "fixtures" / "upstream"),
                "--trickle-ms", str(TRICKLE_MS)], work / "pyupstream.log")
            harness.wait_http(upstream_port, "/health", 10, up)
            bodies = {"small": small, "paced": paced}
            results = {n: measure(n, args, work, upstream_port, procs, bodies)
                       for n in counts}
    finally:
        procs.stop_all()
    table = [f"| load | conc | workers | req/s | vs {counts[0]} | p50 ms | p99 ms | "
             "relay CPU ms/req | errors | host load avg |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for load, conc in args.runs:
        label = LOADS[load]
        base = results[counts[0]][load, conc]["rps"]
        for n in counts:
            r = results[n][load, conc]
            ratio = harness.f_ratio(r["rps"] / base) if base else "n/a"
            table.append(f"| {label} | {conc} | {n} | {r['rps']:,.0f} | {ratio} | "
                         f"{r['p50']:.1f} | {r['p99']:.1f} | {r['cpu_ms']:.3f} | "
                         f"{r['errors']:.0f} | {r['loadavg']:.1f} |")
    print("\n".join(table))
    if args.write_results:
        write_results(results_section(table, args, [r["loadavg"] for by in results.values()
                                                    for r in by.values()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
