"""
Instruction counts of the relay for a fixed workload: repeatable on a loaded, shared machine.

``.venv/bin/python bench/instr.py`` starts bench/pyupstream.py and, one at a time, each relay
under test under ``valgrind --tool=callgrind`` with instrumentation off. After a warm-up it
switches instrumentation on (``callgrind_control -i on``), drives a fixed workload, switches it
off and dumps, and reports the relay process's user-space instructions (Ir) per unit of work:

* **paced streams**: ``--streams`` streams of the canned 200-chunk answer, ``--conc`` at a time,
  the upstream writing one SSE event per write ``--trickle-ms`` apart (so every chunk is its
  own upstream read and client write, as a model's token stream is); Ir per stream and per
  chunk (÷ 200);
* **small requests**: ``--small`` non-streaming small requests, ``--conc`` at a time;
* **Claude-Code-sized requests** (``--only cc``, not in the default set): ``--small``
  non-streaming requests with the ~83 KB body of bench/fixtures.py, ``--conc`` at a time.

The relays measured the same way (``--targets``):

* ``txrelay``: this tree's relay, ``txrelay serve`` with a generated configuration
  (openai-chat providers, no access log): Anthropic Messages in, Chat Completions upstream;
* ``floor-treq`` and ``floor-agent``: bench/floor.py, a bare Twisted pass-through relay (no
  parsing, no translation) over treq and over a plain Agent: the floor for any relay on
  this stack. The report gives txrelay as a multiple of each.

``--tool cpu`` runs without valgrind and reads the relay's CPU time from /proc instead (noisy
on a shared machine); ``--tool cprofile`` runs txrelay under cProfile for each workload and
prints where its time goes, grouped by layer (the breakdown in bench/README.md).
Results: stdout (Markdown) and ``bench/results/instr.json``.

Under valgrind the relay runs ~50 times slower, so keep ``--conc * 1000 / --trickle-ms`` small
enough that it keeps up (the defaults do): a relay that falls behind reads several chunks at
once and looks cheaper per chunk than it is. ``--check-pacing`` repeats the stream workload at
twice the gap; the two Ir per chunk should agree within a few per cent.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pstats
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV = ROOT / ".venv" / "bin"
WORK = BENCH / ".work" / "instr"
RESULTS = BENCH / "results"
sys.path.insert(0, str(BENCH))
import fixtures  # noqa: E402
from harness import (  # noqa: E402
    CLIENT_KEY,
    DIRECT_HEADERS,
    RELAY_HEADERS,
    UPSTREAM_KEY,
    Procs,
    cpu_seconds,
    free_port,
    wait_http,
    with_model,
)
from streamclient import Conn  # noqa: E402

CHUNKS = 200
#: ``--relay-src``, if given.
RELAY_SRC: list[str] = []
TARGETS = ("txrelay", "floor-treq", "floor-agent")


def log(msg: str) -> None:
    """Progress on stderr."""
    print(f"[instr {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def relay_toml(port: int, py: int, key_hash: str) -> str:
    """The relay's configuration: a paced stream provider and a JSON one."""
    out = ["[server]", f'listen = ["tcp:{port}:interface=127.0.0.1:backlog=1024"]',
           "access_log = false", "drain_timeout = 1.0", "ping_interval = 10.0", "",
           "[log]", 'level = "info"', "", "[[keys]]", 'name = "bench"',
           f'sha256 = "{key_hash}"']
    for name, url in (("trickle", f"http://127.0.0.1:{py}/trickle/stream/v1"),
                      ("json", f"http://127.0.0.1:{py}/json/json/v1")):
        out += ["", "[[providers]]", f'name = "{name}"', 'kind = "openai-chat"',
                f'base_url = "{url}"', 'api_key = { env = "BENCH_UPSTREAM_KEY" }',
                "max_idle_connections = 256", 'options = { dialect = "openai" }',
                "", "[[models]]", f'id = "bench-{name}"', f'provider = "{name}"',
                f'upstream_model = "{fixtures.UPSTREAM_MODEL}"']
    for stage in ("auth", "model-map", "translate"):
        out += ["", "[[pipeline]]", f'type = "{stage}"']
    return "\n".join(out) + "\n"


class Workloads:
    """The request bodies and paths of one target."""

    def __init__(self, target: str, bodies: Path) -> None:
        if target == "txrelay":
            self.headers = RELAY_HEADERS
            self.stream = ("/v1/messages", with_model(
                bodies / "small-stream.anthropic.json", "bench-trickle"), b'"text_delta"')
            self.small = ("/v1/messages", with_model(
                bodies / "small-json.anthropic.json", "bench-json"), b"")
            self.cc = ("/v1/messages", with_model(
                bodies / "cc-json.anthropic.json", "bench-json"), b"")
        else:
            self.headers = DIRECT_HEADERS
            self.stream = ("/trickle/stream/v1/chat/completions",
                           (bodies / "small-stream.chat.json").read_bytes(), b"data:")
            self.small = ("/json/json/v1/chat/completions",
                          (bodies / "small-json.chat.json").read_bytes(), b"")
            self.cc = ("/json/json/v1/chat/completions",
                       (bodies / "cc-json.chat.json").read_bytes(), b"")


def drive(port: int, what: tuple[str, bytes, bytes], headers: dict[str, str], n: int,
          conc: int, check: Callable[[bytes], bool]) -> float:
    """``n`` requests, ``conc`` at a time on keep-alive connections; wall seconds."""
    left = [n]
    lock = threading.Lock()
    errors: list[str] = []

    def worker() -> None:
        c = Conn(port, timeout=600)
        try:
            while True:
                with lock:
                    if left[0] <= 0 or errors:
                        return
                    left[0] -= 1
                r = c.post(what[0], what[1], headers, what[2] or b"{")
                if r.status != 200 or not check(r.body):
                    errors.append(f"status {r.status}: {r.body[:300]!r}")
                    return
        except Exception as e:  # reported below
            errors.append(repr(e))
        finally:
            c.close()

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(min(conc, n))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"request failed: {errors[0]}")
    return time.monotonic() - t0


def stream_ok(body: bytes) -> bool:
    return body.count(b"text_delta") >= CHUNKS or body.count(b"data:") >= CHUNKS


def small_ok(body: bytes) -> bool:
    return b"Hello!" in body


def callgrind(args: list[str], pid: int) -> str:
    r = subprocess.run(["callgrind_control", *args, str(pid)], capture_output=True, text=True,
                       timeout=120, check=False)
    return r.stdout + r.stderr


#: C functions whose calls are counted: socket reads and writes, epoll waits and changes.
COUNTED = {"sock_recv": "recv", "sock_send": "send", "select_epoll_poll": "epoll_wait",
           "select_epoll_modify": "epoll_ctl", "select_epoll_register": "epoll_ctl",
           "select_epoll_unregister": "epoll_ctl"}


def calls_in(text: str) -> dict[str, int]:
    """Calls to the :data:`COUNTED` functions in a callgrind dump."""
    names: dict[str, str] = {}
    counts: dict[str, int] = defaultdict(int)
    target = ""
    for line in text.splitlines():
        if line.startswith(("fn=(", "cfn=(")):
            ident, _, name = line.split("=", 1)[1].partition(" ")
            if name:
                names[ident] = name
            if line[0] == "c":
                target = names.get(ident, "")
        elif line.startswith("calls=") and target in COUNTED:
            counts[COUNTED[target]] += int(line[6:].split()[0])
    return dict(counts)


def dumped(outdir: Path, before: set[Path]) -> tuple[int, dict[str, int]]:
    """Ir and counted calls in the newest callgrind dump not in ``before``."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        new = sorted(set(outdir.glob("callgrind.out.*")) - before,
                     key=lambda p: p.stat().st_mtime)
        for p in reversed(new):
            text = p.read_text(errors="replace")
            m = re.search(r"^totals: (\d+)", text, re.M)
            if m:
                return int(m.group(1)), calls_in(text)
        time.sleep(0.5)
    raise RuntimeError("callgrind wrote no dump")


class Target:
    """One relay process under test."""

    def __init__(self, name: str, tool: str, py_port: int, key_hash: str, procs: Procs,
                 prof: Path | None = None) -> None:
        self.name, self.tool, self.procs = name, tool, procs
        self.port = free_port()
        self.outdir = WORK / name
        shutil.rmtree(self.outdir, ignore_errors=True)
        self.outdir.mkdir(parents=True)
        env = {**os.environ, "BENCH_UPSTREAM_KEY": UPSTREAM_KEY}
        if name == "txrelay":
            cfg = self.outdir / "relay.toml"
            cfg.write_text(relay_toml(self.port, py_port, key_hash))
            # sys.path[0] is the working directory (this tree) with ``-m`` and the editable
            # install comes before PYTHONPATH, so --relay-src goes first explicitly.
            src = RELAY_SRC[0] if RELAY_SRC else str(ROOT)
            argv = [str(VENV / "python"), "-c",
                    f"import sys; sys.path.insert(0, {src!r}); import txrelay; "
                    "print('txrelay from', txrelay.__file__, flush=True); "
                    "from txrelay.cli import main; sys.exit(main())",
                    "serve", "--config", str(cfg)]
        else:
            argv = [str(VENV / "python"), str(BENCH / "floor.py"), str(self.port),
                    f"http://127.0.0.1:{py_port}", "--client", name.split("-")[1]]
        if prof is not None:
            argv = [argv[0], str(BENCH / "profiled.py"), str(prof), *argv[1:]]
        if tool == "callgrind":
            argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                    f"--callgrind-out-file={self.outdir}/callgrind.out.%p", *argv]
        self.proc = procs.start(name, argv, self.outdir / "log.txt", env=env)
        wait_http(self.port, "/health" if name == "txrelay" else "/", 600, self.proc)
        self.pid = self.proc.pid

    def measure(self, run: Callable[[], float]) -> tuple[float, float, dict[str, int]]:
        """
        (cost, wall seconds, system calls) of ``run``: Ir and the calls to socket and
        epoll functions under callgrind, else CPU seconds and no calls.
        """
        if self.tool == "callgrind":
            before = set(self.outdir.glob("callgrind.out.*"))
            callgrind(["-i", "on"], self.pid)
            wall = run()
            callgrind(["-d"], self.pid)  # (a dump taken after "-i off" sums to 0)
            callgrind(["-i", "off"], self.pid)
            ir, calls = dumped(self.outdir, before)
            return float(ir), wall, calls
        c0 = cpu_seconds(self.pid)
        wall = run()
        return cpu_seconds(self.pid) - c0, wall, {}

    def stop(self) -> None:
        self.procs.stop(self.proc, timeout=120)


def layer_of(filename: str, func: str) -> str:
    """The layer a profiled function belongs to, for the per-layer breakdown."""
    f = filename.replace("\\", "/")
    rules = (
        ("txrelay/protocol/sse.py", "SSE parse/encode (txrelay.protocol.sse)"),
        ("txrelay/protocol/openai/", "translation (txrelay.protocol.openai)"),
        ("txrelay/protocol/", "protocol, other (txrelay.protocol)"),
        ("txrelay/server/sse.py", "SSE writer (txrelay.server.sse)"),
        ("txrelay/server/", "request handling (txrelay.server)"),
        ("txrelay/upstream/", "upstream plumbing (txrelay.upstream)"),
        ("txrelay/leanreactor.py", "reactor dispatch and timers"),
        ("txrelay/logs.py", "logging and metrics"),
        ("txrelay/metrics", "logging and metrics"),
        ("txrelay/", "txrelay, other (pipeline, stages, streams)"),
        ("twisted/logger/", "logging and metrics"),
        ("prometheus_client/", "logging and metrics"),
        ("treq/", "treq"),
        ("hyperlink/", "treq"),
        ("idna/", "treq"),
        ("twisted/web/_newclient.py", "Twisted HTTP client (parsing, chunked decoding)"),
        ("twisted/web/client.py", "Twisted HTTP client (parsing, chunked decoding)"),
        ("twisted/web/", "twisted.web server (Request, chunked framing, headers)"),
        ("twisted/internet/defer.py", "Deferred machinery"),
        ("twisted/internet/tcp.py", "TCP transport"),
        ("twisted/internet/abstract.py", "TCP transport"),
        ("twisted/internet/base.py", "reactor dispatch and timers"),
        ("twisted/internet/epollreactor.py", "reactor dispatch and timers"),
        ("twisted/internet/posixbase.py", "reactor dispatch and timers"),
        ("twisted/python/log.py", "reactor dispatch and timers"),
        ("twisted/python/context.py", "reactor dispatch and timers"),
        ("twisted/", "Twisted, other"),
        ("json/", "JSON (stdlib)"),
    )
    for prefix, layer in rules:
        if prefix in f:
            return layer
    if filename == "~":
        if "poll" in func:
            return "epoll wait (mostly idle)"
        if any(k in func for k in ("send", "recv", "socket", "epoll")):
            return "socket calls"
        if "json" in func or "orjson" in func or "dumps" in func or "loads" in func:
            return "JSON (stdlib)"
        return "builtins (str/bytes/dict methods)"
    return "other Python"


def _decoder_lines() -> range:
    """The lines of twisted.web.http's chunked decoder (the client's body decoding)."""
    import inspect

    from twisted.web import http
    lines, start = inspect.getsourcelines(http._ChunkedTransferDecoder)
    return range(start, start + len(lines))


def breakdown(prof: Path, per: int) -> list[tuple[str, float]]:
    """µs of own time per unit of work, per layer (epoll waiting left out)."""
    st = pstats.Stats(str(prof))
    layers: dict[str, float] = defaultdict(float)
    decoder = _decoder_lines()
    for (filename, line, func), stat in st.stats.items():  # type: ignore[attr-defined]
        if filename.endswith("twisted/web/http.py") and line in decoder:
            layers["Twisted HTTP client (parsing, chunked decoding)"] += stat[2]
            continue
        if filename.endswith("twisted/protocols/basic.py"):
            layers["LineReceiver (HTTP/1.1 head parsing, both sides)"] += stat[2]
            continue
        layers[layer_of(filename, func)] += stat[2]
    layers.pop("epoll wait (mostly idle)", None)
    return sorted(((k, v * 1e6 / per) for k, v in layers.items()), key=lambda kv: -kv[1])


def main(argv: list[str]) -> int:
    """Entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tool", choices=("callgrind", "cpu", "cprofile"), default="callgrind")
    p.add_argument("--targets", default=",".join(TARGETS))
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--small", type=int, default=200)
    p.add_argument("--conc", type=int, default=2)
    p.add_argument("--trickle-ms", type=float, default=40.0)
    p.add_argument("--relay-src", help="run txrelay from this directory (holding a txrelay/ "
                   "package, e.g. an older commit's) instead of this tree")
    p.add_argument("--check-pacing", action="store_true")
    p.add_argument("--only", default="stream,small", help="workloads: stream,small,cc")
    o = p.parse_args(argv)
    if o.relay_src:
        RELAY_SRC.append(os.path.abspath(o.relay_src))
    results_src = o.relay_src or "this tree"
    if o.tool == "callgrind" and shutil.which("callgrind_control") is None:
        raise SystemExit("valgrind is missing: apt-get install valgrind")
    targets = [t for t in o.targets.split(",") if t]
    only = set(o.only.split(","))
    WORK.mkdir(parents=True, exist_ok=True)
    fx = fixtures.write_all(WORK / "fixtures")
    del fx
    bodies = WORK / "fixtures" / "bodies"
    key_hash = subprocess.run([str(VENV / "txrelay"), "hash-key", CLIENT_KEY],
                              capture_output=True, text=True, check=True).stdout.strip()
    procs = Procs()
    results: dict[str, Any] = {"tool": o.tool, "streams": o.streams, "small": o.small,
                               "conc": o.conc, "trickle_ms": o.trickle_ms,
                               "load": os.getloadavg(), "relay_src": results_src,
                               "targets": {}}

    def bye(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, bye)
    try:
        py_port = free_port()
        up = procs.start("pyupstream", [str(VENV / "python"), str(BENCH / "pyupstream.py"),
                                        str(py_port), "--max-seconds", "3600", "--fixtures",
                                        str(WORK / "fixtures" / "upstream"), "--trickle-ms",
                                        str(o.trickle_ms)], WORK / "pyupstream.log")
        wait_http(py_port, "/health", 20, up)
        if o.tool == "cprofile":
            return profile_layers(o, procs, py_port, key_hash, bodies, only)
        for name in targets:
            log(f"{name}: starting ({o.tool})")
            t = Target(name, o.tool, py_port, key_hash, procs)
            w = Workloads(name, bodies)
            try:
                res: dict[str, Any] = {}
                drive(t.port, w.stream, w.headers, 1, 1, stream_ok)  # warm-up
                drive(t.port, w.small, w.headers, 20, o.conc, small_ok)
                if "stream" in only:
                    cost, wall, calls = t.measure(lambda t=t, w=w: drive(  # type: ignore[misc]
                        t.port, w.stream, w.headers, o.streams, o.conc, stream_ok))
                    n = o.streams * CHUNKS
                    res["stream"] = {"per_stream": cost / o.streams, "per_chunk": cost / n,
                                     "wall": wall,
                                     "calls_per_chunk": {k: v / n for k, v in calls.items()}}
                    log(f"{name}: stream {cost / o.streams:,.0f} per stream ({wall:.1f} s), "
                        f"calls per chunk {res['stream']['calls_per_chunk']}")
                if "small" in only:
                    cost, wall, calls = t.measure(lambda t=t, w=w: drive(  # type: ignore[misc]
                        t.port, w.small, w.headers, o.small, o.conc, small_ok))
                    res["small"] = {"per_request": cost / o.small, "wall": wall,
                                    "calls_per_request": {k: v / o.small
                                                          for k, v in calls.items()}}
                    log(f"{name}: small {cost / o.small:,.0f} per request ({wall:.1f} s)")
                if "cc" in only:
                    drive(t.port, w.cc, w.headers, 5, o.conc, small_ok)
                    cost, wall, calls = t.measure(lambda t=t, w=w: drive(  # type: ignore[misc]
                        t.port, w.cc, w.headers, o.small, o.conc, small_ok))
                    res["cc"] = {"per_request": cost / o.small, "wall": wall,
                                 "calls_per_request": {k: v / o.small
                                                       for k, v in calls.items()}}
                    log(f"{name}: cc {cost / o.small:,.0f} per request ({wall:.1f} s)")
                results["targets"][name] = res
            finally:
                t.stop()
        if o.check_pacing and "txrelay" in targets:
            results["pacing_check"] = pacing_check(o, procs, key_hash, bodies)
    finally:
        procs.stop_all()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "instr.json").write_text(json.dumps(results, indent=2))
    print(render(results))
    return 0


def pacing_check(o: argparse.Namespace, procs: Procs, key_hash: str,
                 bodies: Path) -> dict[str, float]:
    """txrelay's cost per chunk at twice the gap: it should not change."""
    py_port = free_port()
    up = procs.start("pyupstream-slow", [str(VENV / "python"), str(BENCH / "pyupstream.py"),
                                         str(py_port), "--max-seconds", "3600", "--fixtures",
                                         str(WORK / "fixtures" / "upstream"), "--trickle-ms",
                                         str(o.trickle_ms * 2)], WORK / "pyupstream-slow.log")
    wait_http(py_port, "/health", 20, up)
    t = Target("txrelay", o.tool, py_port, key_hash, procs)
    w = Workloads("txrelay", bodies)
    try:
        drive(t.port, w.stream, w.headers, 1, 1, stream_ok)
        cost, _, calls = t.measure(lambda: drive(t.port, w.stream, w.headers, o.streams,
                                                 o.conc, stream_ok))
    finally:
        t.stop()
        procs.stop(up)
    n = o.streams * CHUNKS
    return {"trickle_ms": o.trickle_ms * 2, "per_chunk": cost / n,
            "recv_per_chunk": calls.get("recv", 0) / n}


def profile_layers(o: argparse.Namespace, procs: Procs, py_port: int, key_hash: str,
                   bodies: Path, only: set[str]) -> int:
    """txrelay under cProfile, once per workload: µs per unit by layer."""
    out = []
    for kind in ("stream", "small", "cc"):
        if kind not in only:
            continue
        prof = WORK / f"cprofile-{kind}.prof"
        prof.unlink(missing_ok=True)
        t = Target("txrelay", "cpu", py_port, key_hash, procs, prof=prof)
        w = Workloads("txrelay", bodies)
        n = o.streams if kind == "stream" else o.small
        try:
            drive(t.port, w.stream, w.headers, 1, 1, stream_ok)  # warm-up
            drive(t.port, w.small, w.headers, 20, o.conc, small_ok)
            os.kill(t.pid, signal.SIGUSR1)
            if kind == "stream":
                drive(t.port, w.stream, w.headers, n, o.conc, stream_ok)
            else:
                drive(t.port, w.cc if kind == "cc" else w.small, w.headers, n, o.conc,
                      small_ok)
            os.kill(t.pid, signal.SIGUSR2)
        finally:
            t.stop()
        deadline = time.monotonic() + 60
        while not prof.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        per = n * CHUNKS if kind == "stream" else n
        unit = "chunk" if kind == "stream" else "request"
        rows = breakdown(prof, per)
        total = sum(v for _, v in rows)
        out.append(f"\n### {kind}: µs of own time per {unit} under cProfile "
                   f"({n} {'streams' if kind == 'stream' else 'requests'}, conc {o.conc})\n")
        out.append("| layer | µs | share |\n|---|---:|---:|")
        out += [f"| {k} | {v:.1f} | {v * 100 / total:.0f}% |" for k, v in rows if v >= 0.05]
        out.append(f"| **total** | **{total:.1f}** | |")
        shutil.copy(prof, RESULTS / prof.name) if RESULTS.exists() else None
    print("\n".join(out))
    return 0


def render(r: dict[str, Any]) -> str:
    """The Markdown table."""
    unit = "Ir" if r["tool"] == "callgrind" else "CPU s"
    scale = 1.0 if r["tool"] == "callgrind" else 1e6
    t = r["targets"]
    lines = [f"instr.py --tool {r['tool']}: {r['streams']} paced streams ({CHUNKS} chunks, "
             f"{r['trickle_ms']:g} ms apart) and {r['small']} small requests, conc "
             f"{r['conc']}; txrelay from {r.get('relay_src', 'this tree')}; load average "
             f"{r['load'][0]:.2f}", ""]
    u = "Ir" if unit == "Ir" else "µs CPU"
    lines.append(f"| relay | {u} per stream | {u} per chunk | recv / send / epoll_wait / "
                 f"epoll_ctl per chunk | {u} per small request | the same calls per request |")
    lines.append("|---|---:|---:|---:|---:|---:|")

    def calls(c: dict[str, float]) -> str:
        return " / ".join(f"{c.get(k, 0):.2f}" for k in ("recv", "send", "epoll_wait",
                                                          "epoll_ctl")) if c else ""

    for name, v in t.items():
        s = v.get("stream", {})
        m = v.get("small", {})
        lines.append(f"| {name} | {s.get('per_stream', 0) * scale:,.0f} | "
                     f"{s.get('per_chunk', 0) * scale:,.0f} | "
                     f"{calls(s.get('calls_per_chunk', {}))} | "
                     f"{m.get('per_request', 0) * scale:,.0f} | "
                     f"{calls(m.get('calls_per_request', {}))} |")
    if "txrelay" in t:
        for floor in ("floor-treq", "floor-agent"):
            if floor in t:
                parts = []
                for key, metric in (("stream", "per_stream"), ("small", "per_request")):
                    a, b = t["txrelay"].get(key, {}), t[floor].get(key, {})
                    if a and b and b[metric]:
                        parts.append(f"{key} x{a[metric] / b[metric]:.2f}")
                lines.append(f"\ntxrelay ÷ {floor}: {', '.join(parts)}")
    cc = {name: v["cc"]["per_request"] for name, v in t.items() if "cc" in v}
    if cc:
        lines.append("\nClaude-Code-sized request (83 KB, non-streaming): " + ", ".join(
            f"{name} {v * scale:,.0f} {u}" for name, v in cc.items()))
    if "pacing_check" in r:
        pc = r["pacing_check"]
        lines.append(f"\npacing check: txrelay {pc['per_chunk'] * scale:,.0f} {u} per chunk at "
                     f"{pc['trickle_ms']:g} ms apart ({pc['recv_per_chunk']:.2f} recv per chunk)")
    return "\n".join(lines)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main(sys.argv[1:]))
