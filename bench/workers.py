"""
bench/workers.py: relay throughput with ``server.workers = 1`` and ``= 2`` on this machine
(issue 11.3, issue 13). It starts one ``txrelay serve`` per worker count on free loopback
ports, waits until every worker listens, then per load warms each up and drives them in turn
with ``wrk`` (bounded by ``--duration``; ``--runs`` runs each, interleaved 1 2 2 1 ... so that
the host's changing load hits both alike) and prints, per load and worker count, the median
requests/s, the relay's CPU per request (the sum over the supervisor and every worker
process, from /proc) and where the host's CPU went: the relay, the upstream, wrk and
everything else (/proc/stat).

    .venv/bin/python bench/workers.py [--duration 5] [--workers 1,2] [--loads small,paced]
                                      [--paced-conc 32,320] [--upstream pacedup|pyupstream]
                                      [--runs 2] [--write-results]

``--write-results`` puts the table into bench/RESULTS.md as its "Workers" section (a full
``bench/run`` keeps that section when it rewrites the file).

Loads:

* ``small``: small non-streaming requests to the demo backend (no upstream I/O), c=50: the
  relay's own front end, pipeline and writer.
* ``paced``: streamed answers through the ``openai-chat`` backend: the canned 200-chunk stream
  trickled one SSE event per upstream write, 5 ms apart, as a model streams tokens; one
  stream costs the relay a read, a translation and a write per chunk. At c=32 the pacing
  bounds streams/s (a stream lasts about a second whatever the relay does), so the CPU per
  stream is the number to read; the higher default concurrency is where one worker uses a
  whole core, so that a second worker has something to add.

The paced upstream is bench/pacedup.py by default: one epoll loop with one shared timer tick,
about 2 us of Python per chunk (plus the kernel's loopback delivery), where bench/pyupstream.py
(asyncio, ``--upstream pyupstream``) costs about as much per chunk as the relay and, on 2
cores, took the core a second worker needs.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import fixtures  # noqa: E402
import harness  # noqa: E402

from txrelay.config import hash_key  # noqa: E402

KEY = "bench-workers-key"
UPSTREAM_KEY = "bench-workers-upstream-key"
TRICKLE_MS = 5.0
#: Content chunks in the canned stream (bench/fixtures.py), for chunks/s.
CONTENT_CHUNKS = fixtures.STREAM_CHUNKS
#: Upstream writes per paced stream: the role event, the content chunks, the finish, usage and
#: [DONE] events, and the last (empty) HTTP chunk.
WRITES_PER_STREAM = CONTENT_CHUNKS + 5
LOADS = {"small": "small non-streaming, demo backend",
         "paced": f"paced stream: {CONTENT_CHUNKS} chunks, one per upstream write "
                  f"{TRICKLE_MS:g} ms apart, openai-chat"}
SMALL_CONC = 50
#: The default concurrencies of the paced load: pacing-bound, and one worker on a whole core.
PACED_CONC = "32,320"
UPSTREAMS = ("pacedup", "pyupstream")
#: The heading of this benchmark's section of bench/RESULTS.md.
HEADING = "## Workers (bench/workers.py)"
#: Above this share of one core going to other processes, the report calls the host busy.
BUSY_OTHER_PCT = 15.0
#: Seconds of each wrk run left out of the CPU and rate figures at its start and its end.
SKIP_S = 3
TAIL_S = 1


def command_line(args: argparse.Namespace) -> str:
    """The command that made the results (the options that differ from the defaults)."""
    out = ["bench/workers.py", f"--duration {args.duration}"]
    if args.workers != "1,2":
        out.append(f"--workers {args.workers}")
    if args.loads != ["small", "paced"]:
        out.append(f"--loads {','.join(args.loads)}")
    if args.paced_conc != PACED_CONC:
        out.append(f"--paced-conc {args.paced_conc}")
    if args.upstream != "pacedup":
        out.append(f"--upstream {args.upstream}")
    if args.runs != 2:
        out.append(f"--runs {args.runs}")
    return " ".join(out)


def results_section(table: list[str], args: argparse.Namespace,
                    results: dict[int, dict[tuple[str, int], dict[str, Any]]]) -> str:
    """The "Workers" section of bench/RESULTS.md."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows = [r for by in results.values() for r in by.values()]
    loads = sorted(r["loadavg"] for r in rows)
    other = max(r["pct"]["other"] for r in rows)
    counts = sorted(results)
    paced_rows = [r for by in results.values() for (ld, _), r in by.items() if ld == "paced"]
    if args.upstream == "pacedup":
        upstream = ("bench/pacedup.py: one process, one epoll loop and one shared 5 ms timer "
                    "tick (every stream due in a tick gets its next event in that tick, one "
                    "`send` of a pre-framed chunk each)")
        rate = ("Paced streams/s come from the upstream's own write counter over that window "
                f"(writes / {WRITES_PER_STREAM} per stream): the steady rate, without wrk's "
                "ramp at the start and the streams cut off at the end. Small requests/s are "
                "wrk's, with the relay's CPU over wrk's whole run")
    else:
        upstream = ("bench/pyupstream.py (asyncio: a task wake-up, a timer and a `drain()` "
                    "per chunk and stream)")
        rate = ("Requests/s are wrk's, and relay CPU per request is over wrk's whole run "
                "(ramps included)")
    text = [
        HEADING, "",
        f"Made by `{command_line(args)}` on {when}: `txrelay serve` with `server.workers` = "
        f"{' and '.join(map(str, counts))} (SO_REUSEPORT), all running throughout, one wrk "
        f"thread, a 2 s warm-up per row; each figure is the median of {args.runs} run(s) per "
        "row and worker count, the counts taking turns (1 2 2 1 ...). Paced streams: the "
        f"canned {CONTENT_CHUNKS}-chunk answer, one SSE event per "
        f"upstream write, {TRICKLE_MS:g} ms apart, through the `openai-chat` backend; the "
        f"upstream is {upstream}. chunks/s = streams/s x {CONTENT_CHUNKS}.", "",
        f"Every CPU figure is taken over the middle of each wrk run (from {SKIP_S} s after "
        f"its start to {TAIL_S} s before its end). {rate}. Relay CPU is user+system time of "
        "the supervisor and every worker (/proc), per request. The CPU column splits the 2 "
        "cores (200 %): the relay (all its processes), the upstream, wrk, and the rest of the "
        "host (busy time in /proc/stat minus those three: other jobs, and kernel work charged "
        "to no process).", "",
    ]
    if other > BUSY_OTHER_PCT:
        text += [f"**The machine was busy**: other processes took up to {other:.0f} % of a "
                 f"core during a row (1-minute load average {loads[0]:.1f}..{loads[-1]:.1f} "
                 "on 2 cores, this benchmark's own processes included). req/s and latencies "
                 "are lower bounds and CPU per request is inflated; compare rows whose "
                 "\"other\" share is alike.", ""]
    else:
        text += [f"The host was otherwise quiet: at most {other:.0f} % of a core went to "
                 f"other processes during a row (1-minute load average "
                 f"{loads[0]:.1f}..{loads[-1]:.1f}, this benchmark's own processes "
                 "included).", ""]
    text += [*table, ""]
    notes = []
    paced = [(load, conc) for load, conc in args.rows if load == "paced"]
    if paced and counts[0] == 1 and 2 in counts:
        load, conc = max(paced, key=lambda k: k[1])
        one, two = results[1][load, conc], results[2][load, conc]
        up_us = statistics.median(r["up_us_write"] for r in paced_rows)
        up_sys = statistics.median(r["up_sys_us_write"] for r in paced_rows)
        notes.append(
            f"At c={conc} one worker used {one['pct']['relay']:.0f} % of a core (a worker is "
            "one Python process: 100 % is all it can have) for "
            f"{one['rate']:,.0f} streams/s; two workers used {two['pct']['relay']:.0f} % for "
            f"{two['rate']:,.0f} streams/s ({harness.f_ratio(two['rate'] / one['rate'])}). "
            "The relay cannot have both cores: the upstream and wrk run beside it, and read "
            "or write every chunk too (see the CPU column). The upstream spent "
            f"{up_us:.1f} us of CPU per write (median over the paced rows), {up_sys:.1f} us "
            "of it in the kernel: mostly the loopback delivery of each segment into the "
            "relay's socket, which a network card would do on a real host.")
    notes.append(
        "At c=32 the pacing bounds streams/s (each stream lasts at least 1 s whatever the "
        "relay does): read the CPU per stream there. CPU per paced stream falls as "
        "concurrency rises (more chunks arrive per read once the relay lags behind the 5 ms "
        "tick) and is inflated on a contended host: compare it within this table, not with "
        "bench/run's figures.")
    return "\n".join([*text, *(n + "\n" for n in notes)])


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


def host_busy() -> float:
    """CPU seconds the whole host has been busy (all cores; /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is inside user already).
    return (sum(fields[:8]) - fields[3] - fields[4]) / harness.CLK_TCK


def start_upstream(kind: str, port: int, work: Path, procs: harness.Procs,
                   ) -> subprocess.Popen[bytes]:
    """The paced upstream ``kind`` (pacedup or pyupstream) on ``port``, answering."""
    script = HERE / f"{kind}.py"
    argv = [sys.executable, str(script), str(port), "--max-seconds", "3600",
            "--fixtures", str(work / "fixtures" / "upstream"), "--trickle-ms", str(TRICKLE_MS)]
    up = procs.start(kind, argv, work / f"{kind}.log")
    harness.wait_http(port, "/health", 10, up)
    return up


def child_pid(name: str) -> int | None:
    """A running child of this process whose command is ``name`` (wrk), if any."""
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for pid in children:
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == name:
                    return int(pid)
            except OSError:
                continue
    return None


def upstream_writes(port: int) -> int | None:
    """How many writes bench/pacedup.py has sent so far (None: not pacedup)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", "/stats")
        r = c.getresponse()
        data = r.read()
        return int(json.loads(data)["chunks"]) if r.status == 200 else None
    except (OSError, ValueError, KeyError):
        return None
    finally:
        c.close()


def sample(pids: list[int], up_pid: int | None, wrk_pid: int, up_port: int,
           ) -> dict[str, float]:
    """CPU seconds so far of the relay, the upstream, wrk and the host; the upstream's writes."""
    writes = upstream_writes(up_port) if up_pid else None
    up_user, up_sys = harness.cpu_split(up_pid) if up_pid else (0.0, 0.0)
    return {"t": time.monotonic(), "relay": cpu(pids),
            "upstream": up_user + up_sys, "upstream_sys": up_sys,
            "wrk": harness.cpu_seconds(wrk_pid), "host": host_busy(),
            "writes": float("nan") if writes is None else float(writes)}


def run_row(url: str, body: Path, headers: dict[str, str], conc: int, seconds: int,
            pids: list[int], up_pid: int | None, up_port: int) -> dict[str, Any]:
    """
    One wrk run, with the CPU of every side sampled over its steady middle: from SKIP_S after
    the start to TAIL_S before the end (streams start together and take seconds at the high
    concurrencies: the first and last seconds are ramps).
    """
    out: dict[str, Any] = {}
    failed: list[BaseException] = []

    def drive() -> None:
        try:
            out.update(harness.wrk(url, body, headers, conc, seconds))
        except BaseException as e:  # re-raised in the caller's thread
            failed.append(e)

    thread = threading.Thread(target=drive, name="wrk", daemon=True)
    relay_start = cpu(pids)
    thread.start()
    deadline = time.monotonic() + 10
    wrk_pid = None
    while wrk_pid is None and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
        wrk_pid = child_pid("wrk")
    if wrk_pid is None:
        thread.join(seconds + 70)
        raise RuntimeError(f"wrk did not start: {failed[0] if failed else 'no process'}")
    time.sleep(SKIP_S)
    a = sample(pids, up_pid, wrk_pid, up_port)
    time.sleep(seconds - SKIP_S - TAIL_S)
    b = sample(pids, up_pid, wrk_pid, up_port)
    thread.join(seconds + 70)
    if failed:
        raise failed[0]
    if thread.is_alive():
        raise RuntimeError("wrk did not finish")
    relay_whole = cpu(pids) - relay_start
    d = {k: b[k] - a[k] for k in a}
    wall = d["t"]
    if d["writes"] == d["writes"]:  # pacedup: the steady-state rate, from its own counter
        out["rate"] = d["writes"] / WRITES_PER_STREAM / wall
        out["rate_from"] = "upstream"
    else:
        out["rate"] = out["rps"]
        out["rate_from"] = "wrk"
    n = max(1e-9, out["rate"] * wall)
    # wrk counts requests over its whole run: divide the relay's CPU over that run by them.
    out["cpu_ms"] = (d["relay"] * 1000 / n if out["rate_from"] == "upstream"
                     else relay_whole * 1000 / max(1, out["requests"]))
    out["up_us_write"] = d["upstream"] * 1e6 / (n * WRITES_PER_STREAM)
    out["up_sys_us_write"] = d["upstream_sys"] * 1e6 / (n * WRITES_PER_STREAM)
    out["pct"] = {"relay": 100 * d["relay"] / wall, "upstream": 100 * d["upstream"] / wall,
                  "wrk": 100 * d["wrk"] / wall,
                  "other": max(0.0, 100 * (d["host"] - d["relay"] - d["upstream"] - d["wrk"])
                               / wall)}
    return out


@dataclass(frozen=True)
class Relay:
    """A running ``txrelay serve`` under test."""

    workers: int
    proc: subprocess.Popen[bytes]
    url: str
    #: The supervisor and its workers.
    pids: list[int]


def start_relay(workers: int, work: Path, upstream_port: int, procs: harness.Procs) -> Relay:
    """``txrelay serve`` with ``workers`` workers, once every worker listens."""
    port = harness.free_port()
    cfg = work / f"relay-{workers}.toml"
    cfg.write_text(config(port, workers, upstream_port))
    log = work / f"relay-{workers}.log"
    proc = procs.start(f"relay-{workers}", [sys.executable, "-m", "txrelay", "serve",
                                            "--config", str(cfg)], log,
                       env={**os.environ, "BENCH_UPSTREAM_KEY": UPSTREAM_KEY})
    deadline = time.monotonic() + 60
    while log.read_text().count("txrelay listening on") < workers:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"relay did not start:\n{log.read_text()}")
        time.sleep(0.1)
    return Relay(workers, proc, harness.relay_url(port), relay_pids(proc.pid))


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each figure over ``runs`` of one row (errors: the sum)."""
    out: dict[str, Any] = {k: statistics.median(r[k] for r in runs) for k, v in runs[0].items()
                           if isinstance(v, int | float)}
    out["pct"] = {k: statistics.median(r["pct"][k] for r in runs) for k in runs[0]["pct"]}
    out["errors"] = sum(r["errors"] for r in runs)
    out["rate_from"] = runs[0]["rate_from"]
    out["runs"] = len(runs)
    return out


def measure(counts: list[int], args: argparse.Namespace, work: Path, upstream_port: int,
            up_pid: int | None, procs: harness.Procs, bodies: dict[str, Path],
            ) -> dict[int, dict[tuple[str, int], dict[str, Any]]]:
    """
    Every load against a relay per worker count, all running at once; the counts take turns,
    run by run (1 2 2 1 ...), so that the host's changing load hits them alike.
    """
    relays = [start_relay(n, work, upstream_port, procs) for n in counts]
    headers = {"x-api-key": KEY}
    results: dict[int, dict[tuple[str, int], dict[str, Any]]] = {n: {} for n in counts}
    try:
        for load, conc in args.rows:
            # A paced stream lasts a second or more; past c=32 they queue for longer.
            seconds = SKIP_S + TAIL_S + max(args.duration,
                                            1 if load == "small" else 4 if conc <= 32 else 8)
            for relay in relays:
                harness.wrk(relay.url, bodies[load], headers, conc, 2)  # warm-up
            runs: dict[int, list[dict[str, Any]]] = {n: [] for n in counts}
            for i in range(args.runs):
                for relay in relays if i % 2 == 0 else relays[::-1]:
                    r_load = float(Path("/proc/loadavg").read_text().split()[0])
                    up = up_pid if load == "paced" else None
                    r = run_row(relay.url, bodies[load], headers, conc, seconds, relay.pids, up,
                                upstream_port)
                    r["loadavg"] = r_load
                    runs[relay.workers].append(r)
                    p = r["pct"]
                    harness.log(
                        f"workers={relay.workers} {load} c={conc} run {i + 1}: "
                        f"{r['rate']:.0f} req/s ({r['rate_from']}; wrk {r['rps']:.0f}), "
                        f"{r['cpu_ms']:.3f} ms CPU/req, CPU % relay {p['relay']:.0f} upstream "
                        f"{p['upstream']:.0f} wrk {p['wrk']:.0f} other {p['other']:.0f}, "
                        f"upstream {r['up_us_write']:.1f} us/write "
                        f"({r['up_sys_us_write']:.1f} system), {r['errors']} errors, "
                        f"load {r_load:.2f}")
            for n in counts:
                results[n][load, conc] = combine(runs[n])
    finally:
        for relay in relays:
            procs.stop(relay.proc, timeout=30)
    return results


def render(args: argparse.Namespace, counts: list[int],
           results: dict[int, dict[tuple[str, int], dict[str, Any]]]) -> list[str]:
    """The Markdown table."""
    table = [f"| load | conc | workers | req/s | vs {counts[0]} | chunks/s | p50 ms | p99 ms | "
             "relay CPU ms/req | CPU % relay / upstream / wrk / other | errors | "
             "host load avg |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for load, conc in args.rows:
        label = LOADS[load]
        base = results[counts[0]][load, conc]["rate"]
        for n in counts:
            r = results[n][load, conc]
            ratio = harness.f_ratio(r["rate"] / base) if base else "n/a"
            chunks = f"{r['rate'] * CONTENT_CHUNKS:,.0f}" if load == "paced" else "-"
            p = r["pct"]
            split = (f"{p['relay']:.0f} / {p['upstream']:.0f} / {p['wrk']:.0f} / "
                     f"{p['other']:.0f}")
            table.append(f"| {label} | {conc} | {n} | {r['rate']:,.0f} | {ratio} | {chunks} | "
                         f"{r['p50']:.1f} | {r['p99']:.1f} | {r['cpu_ms']:.3f} | {split} | "
                         f"{r['errors']:.0f} | {r['loadavg']:.1f} |")
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--loads", default="small,paced")
    parser.add_argument("--paced-conc", default=PACED_CONC)
    parser.add_argument("--runs", type=int, default=2,
                        help="runs per row and worker count, interleaved (1 2 2 1 ...)")
    parser.add_argument("--upstream", choices=UPSTREAMS, default="pacedup",
                        help="the paced upstream: bench/pacedup.py (epoll, cheap) or "
                             "bench/pyupstream.py (asyncio)")
    parser.add_argument("--write-results", action="store_true",
                        help="write the table into bench/RESULTS.md")
    args = parser.parse_args()
    args.loads = [x for x in args.loads.split(",") if x]
    args.rows = [(load, conc) for load in args.loads
                 for conc in ([SMALL_CONC] if load == "small"
                              else [int(c) for c in args.paced_conc.split(",")])]
    if unknown := set(args.loads) - set(LOADS):
        raise SystemExit(f"unknown load(s): {', '.join(sorted(unknown))}")
    if shutil.which("wrk") is None:
        raise SystemExit("bench/workers.py needs wrk (apt-get install wrk, or bench/run)")
    harness.raise_nofile()
    counts = [int(n) for n in args.workers.split(",")]
    procs = harness.Procs()
    with harness.signals_to_exit():
        try:
            with tempfile.TemporaryDirectory(prefix="txrelay-workers-bench-") as tmp:
                work = Path(tmp)
                fixtures.write_all(work / "fixtures")
                small = work / "small.json"
                small.write_text(json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 64,
                                             "messages": [{"role": "user",
                                                           "content": "hello"}]}))
                paced = work / "paced.json"
                paced.write_bytes(harness.with_model(
                    work / "fixtures" / "bodies" / "small-stream.anthropic.json",
                    "bench-trickle"))
                upstream_port = harness.free_port()
                up_pid = None
                if "paced" in args.loads:
                    up_pid = start_upstream(args.upstream, upstream_port, work, procs).pid
                bodies = {"small": small, "paced": paced}
                results = measure(counts, args, work, upstream_port, up_pid, procs, bodies)
        finally:
            procs.stop_all()
    table = render(args, counts, results)
    print("\n".join(table))
    if args.write_results:
        write_results(results_section(table, args, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
