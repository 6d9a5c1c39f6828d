"""
The txrelay benchmark: what the relay costs over calling the upstream directly.

Run it with ``bench/run`` (``bench/run --help`` for the flags); ``bench/README.md`` explains what
is measured and how to read the report. It starts everything it needs (nginx as the canned
upstream, a small asyncio upstream for held and huge streams, the relay under test), measures,
stops everything it started, and writes ``bench/results/latest.md`` (plus ``latest.json``; a
full run also updates ``bench/RESULTS.md``).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import platform
import pstats
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from io import StringIO
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV = ROOT / ".venv" / "bin"
WORK = BENCH / ".work"
RESULTS = BENCH / "results"
LUA = BENCH / "post.lua"

sys.path.insert(0, str(BENCH))
import fixtures  # noqa: E402
from streamclient import Conn, Timed  # noqa: E402

CLIENT_KEY = "bench-client-key"
UPSTREAM_KEY = "bench-upstream-key"
RELAY_HEADERS = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"}
DIRECT_HEADERS = {"Authorization": f"Bearer {UPSTREAM_KEY}"}
MIB = 1024 * 1024
#: How long the paced upstream waits after the first content chunk.
PACED_GAP_MS = 5.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: Where bench/RESULTS.md's hand-kept instruction-count section starts (a full run keeps it).
INSTR_MARKER = "<!-- instruction counts: kept by bench/run -->"


def log(msg: str) -> None:
    """Progress on stderr, with a timestamp."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ── processes ───────────────────────────────────────────────────────────────────────────────

class Procs:
    """Every child process the harness started, each in its own process group."""

    def __init__(self) -> None:
        self.running: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str], logfile: Path, *,
              env: dict[str, str] | None = None, stdin: int | None = None,
              stdout: int | None = None) -> subprocess.Popen[bytes]:
        """Start ``argv`` in a new session; its output goes to ``logfile`` unless piped."""
        logfile.parent.mkdir(parents=True, exist_ok=True)
        with open(logfile, "ab") as out:
            p = subprocess.Popen(argv, stdout=stdout if stdout is not None else out, stderr=out,
                                 stdin=stdin if stdin is not None else subprocess.DEVNULL,
                                 env=env, start_new_session=True)
        self.running.append((name, p))
        return p

    def stop(self, p: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
        """SIGTERM the process group of ``p`` (which we started), then SIGKILL if needed."""
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        self.running = [(n, q) for n, q in self.running if q is not p]

    def stop_all(self) -> None:
        """Stop everything still running, newest first."""
        for _, p in reversed(list(self.running)):
            self.stop(p)


def free_port() -> int:
    """A free loopback TCP port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], seconds: float = 20) -> None:
    """Poll until loopback ``port`` accepts TCP; fail if ``proc`` dies or time runs out."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} while starting")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} within {seconds}s")


def wait_http(port: int, path: str, seconds: float, proc: subprocess.Popen[bytes]) -> None:
    """Poll ``GET path`` until it answers 200; fail if ``proc`` dies or time runs out."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} while starting")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", path)
            if c.getresponse().status == 200:
                c.close()
                return
            c.close()
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"nothing answered on 127.0.0.1:{port}{path} within {seconds}s")


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_split(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of ``pid`` so far (from /proc/PID/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far."""
    return sum(cpu_split(pid))


# ── statistics ──────────────────────────────────────────────────────────────────────────────

@dataclass
class Spread:
    """Median with min and max over runs."""

    median: float
    lo: float
    hi: float

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        """The spread of ``values`` (NaN when empty)."""
        if not values:
            nan = float("nan")
            return cls(nan, nan, nan)
        return cls(statistics.median(values), min(values), max(values))

    def fmt(self, f: Callable[[float], str]) -> str:
        """``median [min..max]`` (just the median when there was one run)."""
        if self.lo == self.hi:
            return f(self.median)
        return f"{f(self.median)} [{f(self.lo)}..{f(self.hi)}]"


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0 to 1) of ``values``, nearest rank."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def f_int(v: float) -> str:
    return f"{v:,.0f}"


def f_ms(v: float) -> str:
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def f_ratio(v: float) -> str:
    return f"\u00d7{v:.2f}"


# ── the setup ───────────────────────────────────────────────────────────────────────────────

@dataclass
class Options:
    """What to run, from the command line."""

    quick: bool
    duration: int
    warmup: int
    runs: int
    kind: str
    ttfb_samples: int
    hold: list[int]
    big_mb: int
    big_rate: float
    only: set[str]
    cases: set[str]
    profile: bool
    profile_seconds: int
    compare: str | None
    write_results_md: bool


SECTIONS = ("nonstream", "stream", "ttfb", "memory", "big", "accesslog")


@dataclass
class Env:
    """The running pieces: upstreams, relay, ports, files."""

    procs: Procs
    opts: Options
    kind: str = "demo"
    nginx_port: int = 0
    py_port: int = 0
    relay_port: int = 0
    relay: subprocess.Popen[bytes] | None = None
    #: bench/floor.py (a bare treq pass-through relay): the paced case's third side.
    floor: subprocess.Popen[bytes] | None = None
    floor_port: int = 0
    key_hash: str = ""
    json_prefix: str = "json"
    fixtures: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def bodies(self) -> Path:
        return WORK / "fixtures" / "bodies"

    def body(self, name: str, target: str) -> Path:
        """A request body file: ``name`` like ``small-json``, target ``anthropic``/``chat``."""
        return self.bodies / f"{name}.{target}.json"


def install_hint() -> None:
    missing = [t for t in ("nginx", "wrk") if shutil.which(t) is None]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: run bench/run (it installs them)")


def raise_nofile() -> int:
    """Raise the soft open-files limit to the hard one; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def start_nginx(env: Env) -> None:
    """nginx, serving the canned answers: POST /PREFIX/v1/chat/completions."""
    prefix = WORK / "nginx"
    shutil.rmtree(prefix, ignore_errors=True)
    (prefix / "logs").mkdir(parents=True)
    (prefix / "tmp").mkdir()
    env.nginx_port = free_port()
    root = WORK / "fixtures" / "upstream"
    locations = "\n".join(
        f"    location /{p}/ {{ default_type {t}; error_page 405 =200 $uri; }}"
        for p, t in (("json", "application/json"), ("jsonstream", "text/event-stream"),
                     ("stream", "text/event-stream"), ("tool", "text/event-stream"))
    )
    conf = f"""
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
worker_rlimit_nofile 16384;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/tmp/body;
  proxy_temp_path {prefix}/tmp/proxy;
  fastcgi_temp_path {prefix}/tmp/fastcgi;
  uwsgi_temp_path {prefix}/tmp/uwsgi;
  scgi_temp_path {prefix}/tmp/scgi;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  client_body_buffer_size 1m;
  client_max_body_size 64m;
  tcp_nodelay on;
  types {{ }}
  server {{
    listen 127.0.0.1:{env.nginx_port} backlog=4096;
    root {root};
    location = /health {{ return 200 "ok"; }}
{locations}
  }}
}}
"""
    (prefix / "nginx.conf").write_text(conf)
    p = env.procs.start("nginx", ["nginx", "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
                        WORK / "logs" / "nginx.log")
    wait_http(env.nginx_port, "/health", 10, p)
    # nginx answers POST to a static file with 405 unless told otherwise: check it does not.
    c = Conn(env.nginx_port)
    r = c.post("/stream/v1/chat/completions", b"{}", DIRECT_HEADERS, b"data:")
    c.close()
    if r.status != 200 or not r.body.endswith(b"data: [DONE]\n\n"):
        raise RuntimeError(f"nginx does not serve POST correctly (status {r.status})")


def start_pyupstream(env: Env) -> None:
    """The asyncio upstream for held and huge streams."""
    env.py_port = free_port()
    p = env.procs.start("pyupstream", [sys.executable, str(BENCH / "pyupstream.py"),
                                       str(env.py_port), "--max-seconds", "3600",
                                       "--fixtures", str(WORK / "fixtures" / "upstream"),
                                       "--gap-ms", str(PACED_GAP_MS),
                                       "--trickle-ms", str(TRICKLE_MS)],
                        WORK / "logs" / "pyupstream.log")
    wait_http(env.py_port, "/health", 10, p)


def start_floor(env: Env) -> None:
    """bench/floor.py over treq in front of the asyncio upstream: the pass-through floor."""
    env.floor_port = free_port()
    env.floor = env.procs.start("floor", [sys.executable, str(BENCH / "floor.py"),
                                          str(env.floor_port), f"http://127.0.0.1:{env.py_port}",
                                          "--client", "treq"], WORK / "logs" / "floor.log")
    wait_http(env.floor_port, "/", 20, env.floor)


def relay_config(env: Env, kind: str, port: int, *, access_log: bool = False) -> str:
    """The TOML configuration of the relay under test."""
    n, py = env.nginx_port, env.py_port
    upstreams = {
        "json": f"http://127.0.0.1:{n}/{env.json_prefix}/v1",
        "stream": f"http://127.0.0.1:{n}/stream/v1",
        "tool": f"http://127.0.0.1:{n}/tool/v1",
        "hold": f"http://127.0.0.1:{py}/hold/v1",
        "big": f"http://127.0.0.1:{py}/big/{env.opts.big_mb}/v1",
        "probe": f"http://127.0.0.1:{py}/probe/v1",
        "pstream": f"http://127.0.0.1:{py}/paced/stream/v1",
        "trickle": f"http://127.0.0.1:{py}/trickle/stream/v1",
        "ptool": f"http://127.0.0.1:{py}/paced/tool/v1",
    }
    out = [
        "# Generated by bench/harness.py: the relay under test.",
        "[server]",
        f'listen = ["tcp:{port}:interface=127.0.0.1:backlog=4096"]',
        f"access_log = {'true' if access_log else 'false'}",
        "drain_timeout = 1.0",
        "ping_interval = 10.0",
        "",
        "[log]",
        'level = "info"',
        "",
        "[[keys]]",
        'name = "bench"',
        f'sha256 = "{env.key_hash}"',
    ]
    for name, url in upstreams.items():
        out += ["", "[[providers]]", f'name = "{name}"', f'kind = "{kind}"']
        if kind == "demo":
            out.append("options = { event_delay = 0 }")
        else:
            out += [f'base_url = "{url}"', 'api_key = { env = "BENCH_UPSTREAM_KEY" }',
                    "max_idle_connections = 256", 'options = { dialect = "openai" }']
    for name in upstreams:
        out += ["", "[[models]]", f'id = "bench-{name}"', f'provider = "{name}"',
                f'upstream_model = "{fixtures.UPSTREAM_MODEL}"']
        if name == "stream":
            out.append('patterns = ["*"]')
    for stage in ("auth", "model-map", "translate"):
        out += ["", "[[pipeline]]", f'type = "{stage}"']
    return "\n".join(out) + "\n"


#: A source tree to run the relay from instead of the installed one (``--relay-src``).
RELAY_SRC: list[str] = []


def relay_env(src: str | None = None) -> dict[str, str]:
    """
    The relay's environment: the upstream key, and PYTHONPATH for ``src`` (default: the
    ``--relay-src`` tree, if any).
    """
    env = {**os.environ, "BENCH_UPSTREAM_KEY": UPSTREAM_KEY}
    src = src or (RELAY_SRC[0] if RELAY_SRC else None)
    if src:
        env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def check_config(path: Path, src: str | None = None) -> tuple[bool, str]:
    """Whether ``txrelay check-config`` accepts ``path``, and what it said."""
    r = subprocess.run([str(VENV / "txrelay"), "check-config", str(path)], env=relay_env(src),
                       capture_output=True, text=True, timeout=60, check=False)
    return r.returncode == 0, (r.stdout + r.stderr).strip()


def choose_kind(env: Env) -> str:
    """The provider kind to test: openai-chat when the relay has it (or as asked)."""
    want = env.opts.kind
    if want == "demo":
        return "demo"
    path = WORK / "relay-check.toml"
    path.write_text(relay_config(env, "openai-chat", 1))
    ok, said = check_config(path)
    if ok:
        return "openai-chat"
    if want == "openai-chat":
        raise SystemExit(f"--kind openai-chat: the relay rejects it:\n{said}")
    last = said.splitlines()[-1] if said else "?"
    env.notes.append(
        "**The `openai-chat` provider kind is not available in this tree** "
        f"(`txrelay check-config`: {last}); every relay number below is for "
        "kind = \"demo\" (the embedded offline model, no upstream I/O): it measures the "
        "relay's front end, pipeline and SSE writer only, not the Chat Completions "
        "translation or the upstream client. Memory tests that need a real upstream are n/a."
    )
    return "demo"


def start_relay(env: Env, name: str, *, access_log: bool = False,
                profile_out: Path | None = None,
                src: str | None = None) -> tuple[subprocess.Popen[bytes], int]:
    """Start a relay (from ``src`` if given) with a generated configuration."""
    port = free_port()
    cfg = WORK / f"relay-{name}.toml"
    cfg.write_text(relay_config(env, env.kind, port, access_log=access_log))
    ok, said = check_config(cfg, src)
    if not ok:
        raise RuntimeError(f"the generated configuration is rejected:\n{said}")
    argv = [str(VENV / "txrelay"), "serve", "--config", str(cfg)]
    if profile_out is not None:
        argv = [sys.executable, "-m", "cProfile", "-o", str(profile_out), *argv]
    p = env.procs.start(f"relay-{name}", argv, WORK / "logs" / f"relay-{name}.log",
                        env=relay_env(src))
    wait_http(port, "/health", 30, p)
    return p, port


def relay_pid(p: subprocess.Popen[bytes]) -> int:
    """The relay's own process id."""
    return p.pid


# ── checks ──────────────────────────────────────────────────────────────────────────────────

def relay_post(port: int, body: Path, marker: bytes = b'"text_delta"') -> Timed:
    c = Conn(port)
    try:
        return c.post("/v1/messages", body.read_bytes(), RELAY_HEADERS, marker)
    finally:
        c.close()


def probe_upstream_mode(env: Env) -> None:
    """Does the relay call the upstream with ``stream: false`` for a non-streaming client?"""
    if env.kind == "demo":
        return
    body = json.loads(env.body("small-json", "anthropic").read_bytes())
    body["model"] = "bench-probe"
    path = WORK / "probe.json"
    path.write_text(json.dumps(body))
    r = relay_post(env.relay_port, path)
    if r.status != 200:
        raise RuntimeError(f"probe request failed: {r.status} {r.body[:300]!r}")
    c = http.client.HTTPConnection("127.0.0.1", env.py_port, timeout=5)
    c.request("GET", "/probe/last")
    seen = json.loads(c.getresponse().read())
    c.close()
    if seen["stream"]:
        env.json_prefix = "jsonstream"
        env.notes.append(
            "The relay calls the upstream with `stream: true` even for non-streaming clients "
            "(and accumulates), so its non-streaming provider is pointed at "
            "`/jsonstream/` (the same answer as a short stream); the direct baseline is the "
            "plain JSON completion a client would get.")


def count_events(body: bytes) -> int:
    return body.count(b"event: ") if body.startswith(b"event: ") else body.count(b"\nevent: ")


def verify(env: Env) -> dict[str, Any]:
    """One request per scenario through the relay: status and content must be right."""
    facts: dict[str, Any] = {}
    openai = env.kind != "demo"
    r = relay_post(env.relay_port, env.body("small-json", "anthropic"))
    if r.status != 200:
        raise RuntimeError(f"small-json: relay answered {r.status}: {r.body[:500]!r}")
    msg = json.loads(r.body)
    text = "".join(b.get("text", "") for b in msg.get("content", []))
    if openai and text.strip() != fixtures.json_answer()[1]:
        raise RuntimeError(f"small-json: unexpected text {text!r}")
    for name, marker in (("small-stream", b'"text_delta"'), ("cc-stream", b'"text_delta"'),
                         ("small-tool", b"input_json_delta"), ("cc-json", b"")):
        r = relay_post(env.relay_port, env.body(name, "anthropic"), marker or b"{")
        if r.status != 200:
            raise RuntimeError(f"{name}: relay answered {r.status}: {r.body[:500]!r}")
        if name.endswith("stream") or name.endswith("tool"):
            if b"message_stop" not in r.body:
                raise RuntimeError(f"{name}: the stream did not end with message_stop")
            if openai and marker not in r.body:
                raise RuntimeError(f"{name}: no {marker!r} event in the relay's stream")
            facts[f"{name}.events"] = count_events(r.body)
            facts[f"{name}.bytes"] = len(r.body)
    if openai:
        path = WORK / "verify-trickle.json"
        path.write_bytes(with_model(env.body("small-stream", "anthropic"), "bench-trickle"))
        r = relay_post(env.relay_port, path)
        if r.status != 200 or r.body.count(b'"text_delta"') != fixtures.STREAM_CHUNKS:
            raise RuntimeError(f"trickled stream: {r.status}, "
                               f"{r.body.count(b'text_delta')} text deltas")
        r = relay_post(env.relay_port, env.body("small-stream", "anthropic"))
        deltas = r.body.count(b'"text_delta"')
        facts["small-stream.text_deltas"] = deltas
        if deltas < fixtures.STREAM_CHUNKS // 2:
            env.notes.append(f"The relay's stream had only {deltas} text deltas for "
                             f"{fixtures.STREAM_CHUNKS} upstream chunks (coalescing?).")
    return facts


# ── load: wrk ───────────────────────────────────────────────────────────────────────────────

def wrk(url: str, body: Path, headers: dict[str, str], conc: int, seconds: int) -> dict[str, Any]:
    """One wrk run; its summary as a dict (rps, latencies in ms, errors)."""
    env = {**os.environ, "WRK_BODY": str(body),
           "WRK_HEADERS": "\n".join(f"{k}: {v}" for k, v in headers.items())}
    cmd = ["wrk", "-t1", f"-c{conc}", f"-d{seconds}s", "--timeout", "10s", "-s", str(LUA), url]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60,
                       check=False)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {r.stdout}\n{r.stderr}")
    s = json.loads(line[len("BENCH_JSON "):])
    secs = s["duration_us"] / 1e6
    errors = sum(s[k] for k in s if k.startswith("errors_"))
    return {"requests": s["requests"], "rps": s["requests"] / secs, "p50": s["p50_us"] / 1000,
            "p90": s["p90_us"] / 1000, "p99": s["p99_us"] / 1000, "mean": s["mean_us"] / 1000,
            "errors": errors, "non2xx": s["errors_status"], "seconds": secs}


@dataclass
class WrkCase:
    """One load scenario: a body, which canned answer the direct baseline gets, concurrencies."""

    key: str
    label: str
    body: str
    direct_prefix: str
    concurrencies: tuple[int, ...]
    section: str
    #: The relay model to ask for instead of the body's own (and the direct side is then
    #: bench/pyupstream.py, not nginx).
    relay_model: str | None = None
    #: Shortest run that makes sense (a trickled stream takes about a second).
    min_seconds: int = 1


#: Pause between the events of the trickled stream (bench/pyupstream.py --trickle-ms).
TRICKLE_MS = 5.0

CASES = (
    WrkCase("small", "small, non-streaming", "small-json", "json", (1, 16, 64), "nonstream"),
    WrkCase("cc", "Claude-Code-sized (83 KB), non-streaming", "cc-json", "json", (1, 16, 64),
            "nonstream"),
    WrkCase("stream", "small, streamed 200-chunk answer", "small-stream", "stream", (1, 16),
            "stream"),
    WrkCase("cc-stream", "Claude-Code-sized, streamed 200-chunk answer", "cc-stream", "stream",
            (16,), "stream"),
    WrkCase("tool", "small, streamed Write tool call (50 fragments)", "small-tool", "tool",
            (16,), "stream"),
    WrkCase("trickle", f"small, 200 chunks trickled one per write, {TRICKLE_MS:g} ms apart",
            "small-stream", "trickle/stream", (32,), "stream", relay_model="bench-trickle",
            min_seconds=4),
)


def case_bodies(env: Env, case: WrkCase) -> tuple[Path, Path]:
    """The direct (Chat Completions) and relay (Anthropic) body files of a case."""
    r_body = env.body(case.body, "anthropic")
    if case.relay_model:
        path = WORK / f"{case.body}-{case.relay_model}.json"
        path.write_bytes(with_model(r_body, case.relay_model))
        r_body = path
    return env.body(case.body, "chat"), r_body


def case_direct_url(env: Env, case: WrkCase) -> str:
    """Where the direct side of a case sends its requests."""
    port = env.py_port if case.relay_model else env.nginx_port
    return f"http://127.0.0.1:{port}/{case.direct_prefix}/v1/chat/completions"


def relay_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/v1/messages"


def direct_url(env: Env, prefix: str) -> str:
    return f"http://127.0.0.1:{env.nginx_port}/{prefix}/v1/chat/completions"


def run_case(env: Env, case: WrkCase, conc: int) -> dict[str, Any]:
    """Interleaved runs (direct, relay, direct, relay, …) of one case at one concurrency."""
    assert env.relay is not None
    o = env.opts
    pid = relay_pid(env.relay)
    d_url, r_url = case_direct_url(env, case), relay_url(env.relay_port)
    d_body, r_body = case_bodies(env, case)
    seconds = max(o.duration, case.min_seconds)
    if o.warmup > 0:
        wrk(d_url, d_body, DIRECT_HEADERS, conc, max(o.warmup, case.min_seconds))
        wrk(r_url, r_body, RELAY_HEADERS, conc, max(o.warmup, case.min_seconds))
    # The paced stream also goes through the bare pass-through relay (the floor), interleaved.
    floor = env.floor if case.key == "trickle" and env.floor is not None else None
    f_url = d_url.replace(f":{env.py_port}/", f":{env.floor_port}/")
    if floor is not None and o.warmup > 0:
        wrk(f_url, d_body, DIRECT_HEADERS, conc, max(o.warmup, case.min_seconds))
    direct: list[dict[str, Any]] = []
    relay: list[dict[str, Any]] = []
    floors: list[dict[str, Any]] = []

    def measured(proc_pid: int, url: str, body: Path, headers: dict[str, str]) -> dict[str, Any]:
        u0, s0 = cpu_split(proc_pid)
        r = wrk(url, body, headers, conc, seconds)
        u1, s1 = cpu_split(proc_pid)
        r["cpu"] = (u1 - u0) + (s1 - s0)
        r["sys_share"] = (s1 - s0) / r["cpu"] if r["cpu"] > 0 else float("nan")
        r["cpu_per_req_ms"] = r["cpu"] * 1000 / max(1, r["requests"])
        return r

    for _ in range(o.runs):
        direct.append(wrk(d_url, d_body, DIRECT_HEADERS, conc, seconds))
        relay.append(measured(pid, r_url, r_body, RELAY_HEADERS))
        if floor is not None:
            floors.append(measured(floor.pid, f_url, d_body, DIRECT_HEADERS))
    out = {"case": case.key, "conc": conc, "direct": direct, "relay": relay,
           "rss_after_kib": rss_kib(pid)}
    if floors:
        out["floor"] = floors
    bad = sum(x["errors"] for x in direct + relay)
    if bad:
        env.notes.append(f"{case.key} c={conc}: {bad} wrk errors "
                         f"(non-2xx: {sum(x['non2xx'] for x in direct + relay)}).")
    rr = Spread.of([x["rps"] for x in relay]).median
    dr = Spread.of([x["rps"] for x in direct]).median
    cpu = Spread.of([x["cpu_per_req_ms"] for x in relay]).median
    log(f"  {case.key:9s} c={conc:<3d} direct {dr:9.0f} req/s, relay {rr:8.0f} req/s, "
        f"relay CPU {cpu:.3f} ms/req")
    return out


# ── streaming latency ───────────────────────────────────────────────────────────────────────

@dataclass
class StreamCase:
    """One time-to-first-delta case: a body, where the direct side gets it, the relay model."""

    key: str
    label: str
    body: str
    paced: bool
    relay_model: str
    direct_path: str
    marker: bytes


STREAM_CASES = (
    StreamCase("small-paced", "small, paced", "small-stream", True, "bench-pstream",
               "/paced/stream/v1/chat/completions", b'"text_delta"'),
    StreamCase("cc-paced", "Claude-Code-sized, paced", "cc-stream", True, "bench-pstream",
               "/paced/stream/v1/chat/completions", b'"text_delta"'),
    StreamCase("tool-paced", "tool call, paced (to the tool_use block start)", "small-tool",
               True, "bench-ptool", "/paced/tool/v1/chat/completions", b'"tool_use"'),
    StreamCase("small-burst", "small, whole answer in one burst (nginx)", "small-stream", False,
               "bench-stream", "/stream/v1/chat/completions", b'"text_delta"'),
    StreamCase("cc-burst", "Claude-Code-sized, whole answer in one burst (nginx)", "cc-stream",
               False, "bench-stream", "/stream/v1/chat/completions", b'"text_delta"'),
)


def with_model(path: Path, model: str) -> bytes:
    """The body in ``path`` with its ``model`` replaced."""
    body = json.loads(path.read_bytes())
    body["model"] = model
    return json.dumps(body, separators=(",", ":")).encode()


def ttfb(env: Env, relay_port: int | None = None) -> list[dict[str, Any]]:
    """Time to the first delta and to the end of the stream, direct vs relay, alternating."""
    out = []
    n = env.opts.ttfb_samples
    for case in STREAM_CASES:
        # The demo model answers everything with text.
        marker = b'"text_delta"' if env.kind == "demo" else case.marker
        d_body = env.body(case.body, "chat").read_bytes()
        r_body = with_model(env.body(case.body, "anthropic"), case.relay_model)
        dc = Conn(env.py_port if case.paced else env.nginx_port)
        rc = Conn(relay_port or env.relay_port)
        try:
            for _ in range(5):
                dc.post(case.direct_path, d_body, DIRECT_HEADERS, b"data:")
                rc.post("/v1/messages", r_body, RELAY_HEADERS, marker)
            d_first, d_total, r_first, r_total = [], [], [], []
            for i in range(n):
                for who in ("d", "r") if i % 2 == 0 else ("r", "d"):
                    if who == "d":
                        t = dc.post(case.direct_path, d_body, DIRECT_HEADERS, b"data:")
                        d_first.append(t.first_ns / 1e6)
                        d_total.append(t.total_ns / 1e6)
                    else:
                        t = rc.post("/v1/messages", r_body, RELAY_HEADERS, marker)
                        if t.status != 200 or not t.first_ns:
                            raise RuntimeError(f"{case.key}: relay stream failed ({t.status})")
                        r_first.append(t.first_ns / 1e6)
                        r_total.append(t.total_ns / 1e6)
        finally:
            dc.close()
            rc.close()
        row: dict[str, Any] = {"name": case.key, "label": case.label, "samples": n}
        for key, vals in (("d_first", d_first), ("d_total", d_total), ("r_first", r_first),
                          ("r_total", r_total)):
            row[key] = statistics.median(vals)
            row[key + "_p90"] = pct(vals, 0.9)
        out.append(row)
        log(f"  {case.key:12s} first: direct {row['d_first']:.3f} ms, relay "
            f"{row['r_first']:.3f} ms; full: direct {row['d_total']:.3f} ms, relay "
            f"{row['r_total']:.3f} ms")
    return out


# ── memory ──────────────────────────────────────────────────────────────────────────────────

def read_line(p: subprocess.Popen[bytes], seconds: float) -> str:
    """One line of ``p``'s stdout, or '' after ``seconds``."""
    assert p.stdout is not None
    ready, _, _ = select.select([p.stdout], [], [], seconds)
    if not ready:
        return ""
    return p.stdout.readline().decode().strip()


def hold_streams(env: Env, n: int) -> dict[str, Any]:
    """RSS of the relay with ``n`` concurrent streams held open by a slow upstream."""
    assert env.relay is not None
    pid = relay_pid(env.relay)
    body = WORK / "hold.json"
    b = json.loads(env.body("small-stream", "anthropic").read_bytes())
    b["model"] = "bench-hold"
    body.write_text(json.dumps(b))
    time.sleep(1)
    before = rss_kib(pid)
    c0 = cpu_seconds(pid)
    argv = [sys.executable, str(BENCH / "holdclient.py"), str(env.relay_port), str(n), str(body),
            "--setup-seconds", "150", "--hold-seconds", "120"]
    argv += [f"--header={k}: {v}" for k, v in RELAY_HEADERS.items()]
    p = env.procs.start(f"hold-{n}", argv, WORK / "logs" / f"holdclient-{n}.log",
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        line = read_line(p, 170)
        if not line.startswith("READY "):
            raise RuntimeError(f"holdclient({n}) did not get ready: {line!r}")
        ready = json.loads(line[6:])
        setup_cpu = cpu_seconds(pid) - c0
        time.sleep(1.5)
        during = rss_kib(pid)
        assert p.stdin is not None
        p.stdin.write(b"close\n")
        p.stdin.flush()
        closed = read_line(p, 60)
    finally:
        env.procs.stop(p)
    # Many streams closed at once take the relay seconds to tear down (it closes the upstream
    # sockets a reactor turn after the disconnects): count what is open 3 s on, then wait
    # (bounded) until the upstream saw every stream closed, so a leak shows as a timeout.
    t_close, c_close = time.monotonic(), cpu_seconds(pid)
    left_open: Any = None
    all_closed_s: float | None = None
    while (waited := time.monotonic() - t_close) < 60:
        open_now = upstream_stats(env).get("open_holds")
        if left_open is None and waited >= 3:
            left_open = open_now
        if open_now == 0 and all_closed_s is None:
            all_closed_s = waited
        if all_closed_s is not None and left_open is not None:
            break
        time.sleep(0.2)
    teardown_cpu = cpu_seconds(pid) - c_close
    after = rss_kib(pid)
    held = int(ready["held"])
    res = {"n": n, "held": held, "failed": ready["failed"], "setup_s": ready["seconds"],
           "rss_before_kib": before, "rss_kib": during, "rss_after_kib": after,
           "kib_per_stream": (during - before) / held if held else float("nan"),
           "cpu_ms_per_stream": setup_cpu * 1000 / held if held else float("nan"),
           "closed": closed == "CLOSED", "upstream_left_open": left_open,
           "upstream_all_closed_s": all_closed_s,
           "teardown_cpu_ms_per_stream": teardown_cpu * 1000 / held if held else float("nan")}
    log(f"  {n} streams: held {held}, RSS {before / 1024:.1f} → {during / 1024:.1f} MiB "
        f"({res['kib_per_stream']:.1f} KiB/stream), after close {after / 1024:.1f} MiB")
    return res


def _all_closed(h: dict[str, Any]) -> str:
    """When the upstream saw the last held stream close, and the relay's teardown CPU."""
    if "upstream_all_closed_s" not in h:  # a report from before these fields
        return ""
    s = h["upstream_all_closed_s"]
    when = f"all closed after {s:.1f} s" if s is not None else "**not all closed after 60 s**"
    return f", {when} (teardown {h['teardown_cpu_ms_per_stream']:.2f} ms CPU per stream)"


def upstream_stats(env: Env) -> dict[str, Any]:
    """The asyncio upstream's counters (open held streams)."""
    c = http.client.HTTPConnection("127.0.0.1", env.py_port, timeout=5)
    try:
        c.request("GET", "/stats")
        return dict(json.loads(c.getresponse().read()))
    except (OSError, ValueError):
        return {}
    finally:
        c.close()


def big_stream(env: Env) -> dict[str, Any]:
    """RSS while relaying a huge stream to a client that reads slowly."""
    assert env.relay is not None
    pid = relay_pid(env.relay)
    o = env.opts
    body = WORK / "big.json"
    b = json.loads(env.body("small-stream", "anthropic").read_bytes())
    b["model"] = "bench-big"
    body.write_text(json.dumps(b))
    before = rss_kib(pid)
    c0 = cpu_seconds(pid)
    max_seconds = o.big_mb * MIB / o.big_rate * 3 + 30
    argv = [sys.executable, str(BENCH / "streamclient.py"), "slowread", str(env.relay_port),
            "/v1/messages", str(body), "--rate", str(o.big_rate), "--max-seconds",
            str(max_seconds)]
    argv += [f"--header={k}: {v}" for k, v in RELAY_HEADERS.items()]
    p = env.procs.start("slowread", argv, WORK / "logs" / "slowread.log",
                        stdout=subprocess.PIPE)
    samples: list[tuple[float, int]] = []
    t0 = time.monotonic()
    try:
        while p.poll() is None and time.monotonic() - t0 < max_seconds + 30:
            samples.append((time.monotonic() - t0, rss_kib(pid)))
            time.sleep(0.2)
        assert p.stdout is not None
        result = json.loads(p.stdout.read().decode() or "{}")
    finally:
        env.procs.stop(p)
    cpu = cpu_seconds(pid) - c0
    rss = [r for _, r in samples] or [before]
    res = {"mb": o.big_mb, "rate_mb_s": o.big_rate / 1e6, "rss_before_kib": before,
           "rss_peak_kib": max(rss), "rss_end_kib": rss[-1], "client": result, "cpu_s": cpu,
           "samples": len(samples)}
    log(f"  big stream: {result.get('bytes', 0) / MIB:.0f} MiB to the client in "
        f"{result.get('seconds', 0):.1f}s, RSS {before / 1024:.1f} → peak "
        f"{max(rss) / 1024:.1f} MiB, complete={result.get('complete')}")
    return res


# ── access log on/off ───────────────────────────────────────────────────────────────────────

def access_log_cost(env: Env) -> dict[str, Any]:
    """The same small load against two relays, access log off and on, interleaved."""
    assert env.relay is not None
    on, on_port = start_relay(env, "accesslog", access_log=True)
    try:
        runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
        body = env.body("small-json", "anthropic")
        if env.opts.warmup > 0:
            for port in (env.relay_port, on_port):
                wrk(relay_url(port), body, RELAY_HEADERS, 16, env.opts.warmup)
        for _ in range(env.opts.runs):
            for label, proc, port in (("off", env.relay, env.relay_port), ("on", on, on_port)):
                c0 = cpu_seconds(proc.pid)
                r = wrk(relay_url(port), body, RELAY_HEADERS, 16, env.opts.duration)
                r["cpu_per_req_ms"] = (cpu_seconds(proc.pid) - c0) * 1000 / max(1, r["requests"])
                runs[label].append(r)
    finally:
        env.procs.stop(on)
    res = {k: {"rps": Spread.of([x["rps"] for x in v]),
               "cpu": Spread.of([x["cpu_per_req_ms"] for x in v]),
               "p50": Spread.of([x["p50"] for x in v])} for k, v in runs.items()}
    log(f"  access log off {res['off']['rps'].median:.0f} req/s "
        f"({res['off']['cpu'].median:.3f} ms CPU), on {res['on']['rps'].median:.0f} req/s "
        f"({res['on']['cpu'].median:.3f} ms CPU)")
    return res


# ── machine and report ──────────────────────────────────────────────────────────────────────

def machine() -> dict[str, str]:
    """What the numbers were measured on."""
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    twisted_v = subprocess.run([str(VENV / "python"), "-c",
                                "import twisted; print(twisted.__version__)"],
                               capture_output=True, text=True, check=False).stdout.strip()
    txrelay_v = subprocess.run([str(VENV / "txrelay"), "--version"], capture_output=True,
                               text=True, check=False, env=relay_env()).stdout.strip()
    if RELAY_SRC:
        txrelay_v += f" from {RELAY_SRC[0]} (--relay-src)"
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "txrelay"],
                           capture_output=True, text=True, check=False).stdout.strip()
    nginx_v = subprocess.run(["nginx", "-v"], capture_output=True, text=True,
                             check=False).stderr.strip().split("/")[-1]
    wrk_v = subprocess.run(["wrk", "-v"], capture_output=True, text=True,
                           check=False).stdout.split()[1:2]
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": f"{int(mem) / MIB:.1f} GiB",
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version() + " (" + platform.python_implementation() + ")",
        "twisted": twisted_v,
        "txrelay": f"{txrelay_v} @ {rev}{' + uncommitted changes in txrelay/' if dirty else ''}",
        "nginx": nginx_v,
        "wrk": wrk_v[0] if wrk_v else "?",
        "load average at start (1/5/15 min)": "{:.2f} / {:.2f} / {:.2f}".format(*os.getloadavg()),
    }


@dataclass
class Report:
    """Collects results and renders the Markdown report."""

    env: Env
    info: dict[str, str]
    facts: dict[str, Any] = field(default_factory=dict)
    cases: list[dict[str, Any]] = field(default_factory=list)
    ttfb: list[dict[str, Any]] = field(default_factory=list)
    idle_rss_kib: int = 0
    idle_rss_after_kib: int = 0
    holds: list[dict[str, Any]] = field(default_factory=list)
    big: dict[str, Any] | None = None
    access: dict[str, Any] | None = None
    started: float = field(default_factory=time.monotonic)

    def case(self, key: str, conc: int) -> dict[str, Any] | None:
        return next((c for c in self.cases if c["case"] == key and c["conc"] == conc), None)

    def spread(self, key: str, conc: int, who: str, metric: str) -> Spread:
        c = self.case(key, conc)
        return Spread.of([x[metric] for x in c[who]]) if c else Spread.of([])

    def render(self) -> str:
        o = self.env.opts
        w: list[str] = []
        add = w.append
        add("# txrelay benchmark: the relay's cost over calling the upstream directly\n")
        add(f"Made by `bench/run{' --quick' if o.quick else ''}` in "
            f"{(time.monotonic() - self.started) / 60:.1f} min. See bench/README.md for what "
            "each number means.\n")
        add("| machine | |\n|---|---|")
        for k, v in self.info.items():
            add(f"| {k} | {v} |")
        add("| load average at end (1/5/15 min) | {:.2f} / {:.2f} / {:.2f} |".format(
            *os.getloadavg()))
        add(f"| provider kind | `{self.env.kind}` |")
        add(f"| load | wrk -t1, {o.duration:g} s per run, {o.runs} interleaved run(s) per "
            f"side, {o.warmup:g} s warm-up; relay and load generator share the "
            f"{self.info['cores']} cores |")
        add("")
        if self.env.notes:
            add("**Notes**\n")
            for n in self.env.notes:
                add(f"- {n}")
            add("")
        self._headline(add)
        self._targets(add)
        self._nonstream(add)
        self._stream(add)
        self._ttfb(add)
        self._memory(add)
        self._access(add)
        add("Cells are the median over runs, [min..max] when there was more than one. "
            "Ratios are relay ÷ direct of the medians. Relay CPU is user+system time of the "
            "relay process (from /proc/PID/stat) during the run, divided by the requests.\n")
        return "\n".join(w)

    def _headline(self, add: Callable[[str], None]) -> None:
        """The paced stream at c=32: what one core's capacity for real token streams hangs on."""
        c = self.case("trickle", 32)
        if not c:
            return
        chunks = fixtures.STREAM_CHUNKS
        add(f"## Headline: paced stream, {chunks} chunks one per read ({TRICKLE_MS:g} ms apart), "
            "c=32\n")
        add("Direct, relayed and (the floor) through a bare Twisted pass-through relay "
            "(bench/floor.py, treq, no parsing), interleaved run by run.\n")
        add("| side | streams/s | p50 ms | p99 ms | CPU ms per stream | µs per chunk | "
            "\u00d7 floor | of it kernel |")
        add("|---|---:|---:|---:|---:|---:|---:|---:|")
        floor_cpu = (Spread.of([x["cpu_per_req_ms"] for x in c["floor"]]).median
                     if c.get("floor") else None)
        for who, label in (("direct", "direct (upstream itself)"), ("relay", "**txrelay**"),
                           ("floor", "floor (bare treq pass-through)")):
            runs = c.get(who)
            if not runs:
                continue
            cells = [label] + [Spread.of([x[m] for x in runs]).fmt(f)
                               for m, f in (("rps", f_int), ("p50", f_ms), ("p99", f_ms))]
            if who == "direct":
                cells += ["", "", "", ""]
            else:
                cpu = Spread.of([x["cpu_per_req_ms"] for x in runs])
                per_chunk = Spread.of([x["cpu_per_req_ms"] * 1000 / chunks for x in runs])
                cells += [cpu.fmt(f_ms), per_chunk.fmt(lambda v: f"{v:.1f}"),
                          f_ratio(cpu.median / floor_cpu) if floor_cpu else "",
                          f"{Spread.of([x['sys_share'] for x in runs]).median:.0%}"]
            add("| " + " | ".join(cells) + " |")
        add("")

    def _targets(self, add: Callable[[str], None]) -> None:
        rows: list[tuple[str, str, str, str]] = []

        def row(what: str, target: str, value: float | None, limit: float,
                fmt: Callable[[float], str]) -> None:
            if value is None or math.isnan(value):
                rows.append((what, target, "not measured", "n/a"))
            else:
                rows.append((what, target, fmt(value), "PASS" if value <= limit else "**FAIL**"))

        def ms(v: float) -> str:
            return f"{v:.3f} ms"

        def med(key: str, conc: int, who: str, metric: str) -> float | None:
            c = self.case(key, conc)
            return Spread.of([x[metric] for x in c[who]]).median if c and c.get(who) else None

        row("relay CPU per small non-streaming request (c=16)", "≤ 0.3 ms",
            med("small", 16, "relay", "cpu_per_req_ms"), 0.3, ms)
        row("relay CPU per Claude-Code-sized request (83 KB, non-streaming, c=16)", "≤ 1.5 ms",
            med("cc", 16, "relay", "cpu_per_req_ms"), 1.5, ms)
        row("relay CPU per Claude-Code-sized streamed request (83 KB + 200 chunks, c=16)",
            "≤ 2.5 ms", med("cc-stream", 16, "relay", "cpu_per_req_ms"), 2.5, ms)
        row("relay CPU per streamed answer of 200 chunks, all in one burst (c=16)", "≤ 1.5 ms",
            med("stream", 16, "relay", "cpu_per_req_ms"), 1.5, ms)
        row(f"relay CPU per streamed answer of 200 chunks, one chunk per read "
            f"({TRICKLE_MS:g} ms apart, c=32)", "≤ 3 ms (15 µs per chunk)",
            med("trickle", 32, "relay", "cpu_per_req_ms"), 3.0, ms)
        paced, floor = med("trickle", 32, "relay", "cpu_per_req_ms"), med(
            "trickle", 32, "floor", "cpu_per_req_ms")
        row("the same, as a multiple of the bare pass-through floor (same runs)",
            "\u2264 \u00d71.5", paced / floor if paced is not None and floor else None, 1.5,
            f_ratio)
        d, r = med("small", 1, "direct", "p50"), med("small", 1, "relay", "p50")
        row("added latency at concurrency 1 (p50, small)", "≤ 0.7 ms",
            r - d if r is not None and d is not None else None, 0.7, ms)
        for t in self.ttfb:
            if t["name"] in ("small-paced", "cc-paced"):
                label = "small" if t["name"] == "small-paced" else "Claude-Code-sized"
                row(f"added time to first text delta (median, {label}, paced upstream)",
                    "≤ 1 ms", t["r_first"] - t["d_first"], 1.0, ms)
        row("idle RSS (fresh relay)", "≤ 60 MiB",
            self.idle_rss_kib / 1024 if self.idle_rss_kib else None, 60,
            lambda v: f"{v:.1f} MiB")
        big_hold = max(self.holds, key=lambda h: h["n"]) if self.holds else None
        if big_hold and big_hold["held"]:
            est = (big_hold["rss_before_kib"] + big_hold["kib_per_stream"] * 10_000) / 1024
            row(f"RSS with 10,000 open idle streams (measured {big_hold['held']:,}, "
                "scaled to 10,000)", "≤ 1024 MiB", est, 1024, lambda v: f"{v:.0f} MiB")
        else:
            row("RSS with 10,000 open idle streams", "≤ 1 GiB", None, 0, ms)
        if self.big and self.env.kind != "demo":
            growth = (self.big["rss_peak_kib"] - self.big["rss_before_kib"]) / 1024
            row(f"RSS growth relaying {self.big['mb']} MB to a slow client", "flat (≤ 16 MiB)",
                growth, 16, lambda v: f"{v:+.1f} MiB")
        else:
            row("RSS flat while relaying to a slow client", "flat", None, 0, ms)
        add("## Targets\n")
        add("| what | target | measured | |\n|---|---|---|---|")
        for what, target, value, status in rows:
            add(f"| {what} | {target} | {value} | {status} |")
        add("")

    def _nonstream(self, add: Callable[[str], None]) -> None:
        cases = [c for c in self.cases if c["case"] in ("small", "cc")]
        if not cases:
            return
        add("## Non-streaming requests\n")
        add("| request | conc | direct req/s | relay req/s | ratio | direct p50 ms | "
            "relay p50 ms | ratio | direct p99 ms | relay p99 ms | ratio | relay CPU ms/req | "
            "of it kernel |")
        add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for c in cases:
            self._wrk_row(add, c)
        add("")

    def _wrk_row(self, add: Callable[[str], None], c: dict[str, Any]) -> None:
        k, n = c["case"], c["conc"]
        cells = [next(x.label for x in CASES if x.key == k), str(n)]
        for metric, fmt in (("rps", f_int), ("p50", f_ms), ("p99", f_ms)):
            d = self.spread(k, n, "direct", metric)
            r = self.spread(k, n, "relay", metric)
            cells += [d.fmt(fmt), r.fmt(fmt), f_ratio(r.median / d.median)]
        cells.append(self.spread(k, n, "relay", "cpu_per_req_ms").fmt(f_ms))
        cells.append(f"{self.spread(k, n, 'relay', 'sys_share').median:.0%}")
        add("| " + " | ".join(cells) + " |")

    def _stream(self, add: Callable[[str], None]) -> None:
        cases = [c for c in self.cases if c["case"] in ("stream", "cc-stream", "tool", "trickle")]
        if not cases:
            return
        add("## Streamed answers (whole streams per second)\n")
        add("| request | conc | direct streams/s | relay streams/s | ratio | direct p50 ms | "
            "relay p50 ms | ratio | direct p99 ms | relay p99 ms | ratio | relay CPU ms/stream | "
            "of it kernel |")
        add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for c in cases:
            self._wrk_row(add, c)
        add("")
        ev = self.facts.get("small-stream.events")
        for key, conc in (("stream", 16), ("trickle", 32)):
            c = self.case(key, conc)
            if ev and c:
                per = [x["requests"] * ev / x["cpu"] for x in c["relay"] if x["cpu"] > 0]
                add(f"Translated events per relay CPU second ({key}, c={conc}, {ev} SSE events "
                    f"per answer): **{Spread.of(per).fmt(f_int)}**.\n")

    def _ttfb(self, add: Callable[[str], None]) -> None:
        if not self.ttfb:
            return
        add("## Time to first delta and full-stream time (sequential, keep-alive)\n")
        add("Direct: the first `data:` chunk from the upstream. Relay: the first `text_delta` "
            "event (for the tool call: the `tool_use` content_block_start; its arguments "
            "only come with the rest). Median (p90) in ms over "
            f"{self.ttfb[0]['samples']} alternating samples each. *Paced*: bench/pyupstream.py "
            f"sends the role and first content chunk, then the rest {PACED_GAP_MS:g} ms later, "
            "as a model would, so the relay's first delta costs only the first chunk's path. "
            "*Burst*: nginx sends the whole 200-chunk answer at once, so the relay translates "
            "all of it before the first delta leaves.\n")
        add("| stream | direct first | relay first | added | direct full | relay full | added |")
        add("|---|---:|---:|---:|---:|---:|---:|")
        for t in self.ttfb:
            add(f"| {t['label']} | {t['d_first']:.3f} ({t['d_first_p90']:.3f}) | "
                f"{t['r_first']:.3f} ({t['r_first_p90']:.3f}) | "
                f"{t['r_first'] - t['d_first']:+.3f} | {t['d_total']:.3f} ({t['d_total_p90']:.3f})"
                f" | {t['r_total']:.3f} ({t['r_total_p90']:.3f}) | "
                f"{t['r_total'] - t['d_total']:+.3f} |")
        add("")

    def _memory(self, add: Callable[[str], None]) -> None:
        add("## Memory (relay RSS)\n")
        add("In the order measured. Python keeps freed memory in its own pools, so RSS does "
            "not fall back after a test; each row's *before* is the RSS just before it.\n")
        add("| state | RSS MiB | |\n|---|---:|---|")
        if self.idle_rss_kib:
            add(f"| idle, fresh (before any request) | {self.idle_rss_kib / 1024:.1f} | |")
        if self.idle_rss_after_kib:
            add(f"| idle, after the load runs | {self.idle_rss_after_kib / 1024:.1f} | |")
        if self.big:
            b = self.big
            cl = b["client"]
            add(f"| relaying {b['mb']} MB to a client reading {b['rate_mb_s']:.0f} MB/s | "
                f"{b['rss_peak_kib'] / 1024:.1f} peak | {b['rss_before_kib'] / 1024:.1f} "
                f"before, {b['rss_end_kib'] / 1024:.1f} at the end; client got "
                f"{cl.get('bytes', 0) / MIB:.0f} MiB in {cl.get('seconds', 0):.1f} s "
                f"(complete: {cl.get('complete')}); relay CPU {b['cpu_s']:.1f} s |")
        for h in self.holds:
            add(f"| {h['held']:,} open streams (of {h['n']:,} asked) | {h['rss_kib'] / 1024:.1f} |"
                f" {h['kib_per_stream']:.1f} KiB and {h['cpu_ms_per_stream']:.2f} ms CPU per "
                f"stream; {h['rss_before_kib'] / 1024:.1f} before, "
                f"{h['rss_after_kib'] / 1024:.1f} after closing; upstream streams still open "
                f"3 s after the clients left: {h.get('upstream_left_open')}"
                f"{_all_closed(h)} |")
        add("")
        if self.cases:
            trail = ", ".join(f"{c['case']} c={c['conc']}: {c['rss_after_kib'] / 1024:.1f}"
                              for c in self.cases)
            add(f"Relay RSS (MiB) after each load case, in order (a leak shows as steady "
                f"growth): {trail}.\n")

    def _access(self, add: Callable[[str], None]) -> None:
        if not self.access:
            return
        add("## Access log off vs on (small non-streaming, c=16, two relays interleaved)\n")
        add("| access_log | req/s | p50 ms | relay CPU ms/req |\n|---|---:|---:|---:|")
        for k in ("off", "on"):
            a = self.access[k]
            add(f"| {k} | {a['rps'].fmt(f_int)} | {a['p50'].fmt(f_ms)} | {a['cpu'].fmt(f_ms)} |")
        add("")


def to_jsonable(obj: Any) -> Any:
    if isinstance(obj, Spread):
        return {"median": obj.median, "min": obj.lo, "max": obj.hi}
    if isinstance(obj, dict):
        return {k: to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    return obj


# ── profiling ───────────────────────────────────────────────────────────────────────────────

#: (case key, concurrency) of the profiled scenarios.
PROFILE_CASES = (("stream", 16), ("trickle", 32), ("cc", 16), ("cc-stream", 16), ("small", 16))


def pstats_text(prof: Path, requests: int, scenario: str) -> str:
    """Top functions by cumulative and own time, all and txrelay's own."""
    buf = StringIO()
    st = pstats.Stats(str(prof), stream=buf)
    total = st.total_tt  # type: ignore[attr-defined]
    buf.write(f"# {scenario}: {requests} requests, {total:.2f} s profiled CPU "
              f"({total * 1000 / max(1, requests):.3f} ms/request under cProfile)\n\n")
    for title, key, restrict in (("own time, all code", "tottime", ()),
                                 ("own time, txrelay only", "tottime", ("txrelay/",)),
                                 ("cumulative, all code", "cumulative", ()),
                                 ("cumulative, txrelay only", "cumulative", ("txrelay/",))):
        buf.write(f"\n## top by {title}\n")
        st.sort_stats(key)
        st.print_stats(*restrict, 40)
    return buf.getvalue()


def profile(env: Env) -> None:
    """Run the relay under a profiler for each profiled scenario; write the tops."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    secs = env.opts.profile_seconds
    for name, conc in PROFILE_CASES:
        case = next(c for c in CASES if c.key == name)
        _, body = case_bodies(env, case)
        out = WORK / f"profile-{name}.prof"
        out.unlink(missing_ok=True)
        p, port = start_relay(env, f"profile-{name}", profile_out=out)
        try:
            wrk(relay_url(port), body, RELAY_HEADERS, conc, max(1, case.min_seconds))
            r = wrk(relay_url(port), body, RELAY_HEADERS, conc, max(secs, case.min_seconds))
        finally:
            env.procs.stop(p, timeout=60)
        deadline = time.monotonic() + 30
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        if not out.exists():
            log(f"  {name}: the profiler wrote nothing ({out})")
            continue
        dest = RESULTS / f"profile-{name}.txt"
        dest.write_text(pstats_text(out, r["requests"], name))
        shutil.copy(out, RESULTS / f"profile-{name}.prof")
        log(f"  {name}: {r['requests']} requests profiled → {dest.relative_to(ROOT)}")


# ── A/B comparison ──────────────────────────────────────────────────────────────────────

def compare(env: Env, src_b: str) -> str:
    """
    Relay A (the installed tree, or --relay-src) against relay B (``src_b``), same load,
    interleaved A, B, B, A, … so that machine noise hits both alike. Returns Markdown.
    """
    assert env.relay is not None
    o = env.opts
    b_proc, b_port = start_relay(env, "compare", src=src_b)
    sides = (("A", env.relay, env.relay_port), ("B", b_proc, b_port))
    lines = ["# txrelay A/B comparison\n",
             f"A: `{RELAY_SRC[0] if RELAY_SRC else ROOT}`, B: `{src_b}`; {o.runs} runs of "
             f"{o.duration} s per side and case, interleaved (A B B A …). Median [min..max].\n",
             "| case | conc | A req/s | B req/s | B/A | A p50 ms | B p50 ms | A CPU ms/req | "
             "B CPU ms/req | B/A CPU |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    try:
        for case in CASES:
            if case.section not in o.only or case.key not in o.cases:
                continue
            _, body = case_bodies(env, case)
            seconds = max(o.duration, case.min_seconds)
            for conc in case.concurrencies:
                runs: dict[str, list[dict[str, Any]]] = {"A": [], "B": []}
                for _, _, port in sides:
                    wrk(relay_url(port), body, RELAY_HEADERS, conc,
                        max(1, o.warmup, case.min_seconds))
                for i in range(o.runs):
                    for label, proc, port in sides if i % 2 == 0 else sides[::-1]:
                        pid = relay_pid(proc)
                        c0 = cpu_seconds(pid)
                        r = wrk(relay_url(port), body, RELAY_HEADERS, conc, seconds)
                        r["cpu_per_req_ms"] = ((cpu_seconds(pid) - c0) * 1000
                                               / max(1, r["requests"]))
                        runs[label].append(r)
                sp = {k: {m: Spread.of([x[m] for x in v]) for m in ("rps", "p50",
                                                                    "cpu_per_req_ms")}
                      for k, v in runs.items()}
                a, b = sp["A"], sp["B"]
                lines.append(
                    f"| {case.key} | {conc} | {a['rps'].fmt(f_int)} | {b['rps'].fmt(f_int)} | "
                    f"{f_ratio(b['rps'].median / a['rps'].median)} | {a['p50'].fmt(f_ms)} | "
                    f"{b['p50'].fmt(f_ms)} | {a['cpu_per_req_ms'].fmt(f_ms)} | "
                    f"{b['cpu_per_req_ms'].fmt(f_ms)} | "
                    f"{f_ratio(b['cpu_per_req_ms'].median / a['cpu_per_req_ms'].median)} |")
                log(f"  {case.key:9s} c={conc:<3d} CPU ms/req A "
                    f"{a['cpu_per_req_ms'].median:.3f}, B {b['cpu_per_req_ms'].median:.3f}")
        if "ttfb" in o.only:
            lines += ["", "| stream | A first ms | B first ms | A full ms | B full ms |",
                      "|---|---:|---:|---:|---:|"]
            ta, tb = ttfb(env, env.relay_port), ttfb(env, b_port)
            for x, y in zip(ta, tb, strict=True):
                lines.append(f"| {x['label']} | {x['r_first']:.3f} | {y['r_first']:.3f} | "
                             f"{x['r_total']:.3f} | {y['r_total']:.3f} |")
    finally:
        env.procs.stop(b_proc)
    return "\n".join(lines) + "\n"


# ── main ────────────────────────────────────────────────────────────────────────────────────

def parse_args(argv: list[str]) -> Options:
    p = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run in under 2 minutes")
    p.add_argument("--duration", type=int, help="whole seconds per wrk run (5; quick 1)")
    p.add_argument("--runs", type=int, help="interleaved runs per side (3; quick 2)")
    p.add_argument("--warmup", type=int, help="warm-up seconds per side and case (1; quick 0)")
    p.add_argument("--kind", choices=("auto", "demo", "openai-chat"), default="auto",
                   help="provider kind under test (auto: openai-chat if the relay has it)")
    p.add_argument("--ttfb-samples", type=int, help="streams per side for TTFB (100; quick 30)")
    p.add_argument("--hold", help="open-stream counts, comma-separated (1000,10000; quick 1000)")
    p.add_argument("--big-mb", type=int, help="size of the slow-client stream (200; quick 50)")
    p.add_argument("--big-rate", type=float, help="slow client's bytes/s (25e6; quick 50e6)")
    p.add_argument("--only", help=f"comma-separated sections of: {', '.join(SECTIONS)}")
    p.add_argument("--cases", help="comma-separated load cases to run (of: "
                                   f"{', '.join(c.key for c in CASES)}); default all")
    p.add_argument("--profile", action="store_true", help="profile instead of benchmarking")
    p.add_argument("--profile-seconds", type=int, default=8)
    p.add_argument("--compare", metavar="DIR",
                   help="A/B mode: compare the relay against one run from DIR (a tree holding "
                        "a txrelay/ package); writes bench/results/compare.md")
    p.add_argument("--relay-src", help="run the relay from this directory (it holds a txrelay/ "
                                       "package, e.g. a patched copy) instead of the installed "
                                       "one; for A/B comparisons")
    a = p.parse_args(argv)
    q = a.quick
    if a.relay_src:
        src = Path(a.relay_src).resolve()
        if not (src / "txrelay" / "__init__.py").exists():
            p.error(f"--relay-src: no txrelay package in {src}")
        RELAY_SRC[:] = [str(src)]
    if a.compare and not (Path(a.compare) / "txrelay" / "__init__.py").exists():
        p.error(f"--compare: no txrelay package in {a.compare}")
    only = set(a.only.split(",")) if a.only else set(SECTIONS)
    unknown = only - set(SECTIONS)
    if unknown:
        p.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    unknown = set(a.cases.split(",") if a.cases else ()) - {c.key for c in CASES}
    if unknown:
        p.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    return Options(
        quick=q,
        duration=a.duration or (1 if q else 5),
        warmup=a.warmup if a.warmup is not None else (0 if q else 1),
        runs=a.runs or (2 if q else 3),
        kind=a.kind,
        ttfb_samples=a.ttfb_samples or (30 if q else 100),
        hold=[int(x) for x in (a.hold or ("1000" if q else "1000,10000")).split(",") if x],
        big_mb=a.big_mb or (50 if q else 200),
        big_rate=a.big_rate or (50e6 if q else 25e6),
        only=only,
        cases=set(a.cases.split(",")) if a.cases else {c.key for c in CASES},
        profile=a.profile,
        profile_seconds=a.profile_seconds,
        compare=str(Path(a.compare).resolve()) if a.compare else None,
        write_results_md=not q and not a.only and not a.cases and not a.profile
        and not a.relay_src and not a.compare and not (
            a.duration or a.runs or a.hold or a.big_mb),
    )


@contextlib.contextmanager
def signals_to_exit() -> Iterator[None]:
    """SIGTERM/SIGHUP end the run like Ctrl-C does, so the cleanup runs."""
    def bye(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    old = {s: signal.signal(s, bye) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def run(env: Env) -> Report:
    """The whole benchmark; returns the filled report."""
    o = env.opts
    report = Report(env, machine())
    if env.relay is not None:
        report.idle_rss_kib = rss_kib(relay_pid(env.relay))
    report.facts = verify(env)
    # One warm-up for both sides (connection pools, caches), whatever --warmup says.
    wrk(direct_url(env, "json"), env.body("small-json", "chat"), DIRECT_HEADERS, 16, 1)
    wrk(relay_url(env.relay_port), env.body("small-json", "anthropic"), RELAY_HEADERS, 16, 1)
    if "nonstream" in o.only or "stream" in o.only:
        for case in CASES:
            if case.section not in o.only or case.key not in o.cases:
                continue
            for conc in case.concurrencies:
                report.cases.append(run_case(env, case, conc))
    if "ttfb" in o.only:
        log("streaming latency")
        report.ttfb = ttfb(env)
    if "accesslog" in o.only:
        log("access log off/on")
        report.access = access_log_cost(env)
    assert env.relay is not None
    time.sleep(1)
    report.idle_rss_after_kib = rss_kib(relay_pid(env.relay))
    if "big" in o.only and env.kind != "demo":
        log(f"memory: {o.big_mb} MB to a slow client")
        report.big = big_stream(env)
    if "memory" in o.only:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        cap = (hard - 256) // 2  # the relay holds two sockets per stream
        for n in o.hold:
            m = min(n, cap)
            if m < n:
                env.notes.append(
                    f"Open streams: {n:,} asked, {m:,} measured: the relay needs two sockets "
                    f"per stream and the open-files hard limit here is {hard:,} (only root with "
                    "CAP_SYS_RESOURCE can raise it). The 10,000 target row scales the measured "
                    "KiB per stream to 10,000.")
            log(f"memory: {m} held streams")
            report.holds.append(hold_streams(env, m))
    return report


def main(argv: list[str]) -> int:
    """Entry point of bench/run."""
    opts = parse_args(argv)
    install_hint()
    raise_nofile()
    procs = Procs()
    env = Env(procs, opts)
    t0 = time.monotonic()
    with signals_to_exit():
        try:
            WORK.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(WORK / "logs", ignore_errors=True)
            env.fixtures = fixtures.write_all(WORK / "fixtures")
            env.key_hash = subprocess.run([str(VENV / "txrelay"), "hash-key", CLIENT_KEY],
                                          capture_output=True, text=True, check=True,
                                          timeout=60).stdout.strip()
            log("starting nginx and the asyncio upstream")
            start_nginx(env)
            start_pyupstream(env)
            if "stream" in opts.only and "trickle" in opts.cases:
                start_floor(env)
            env.kind = choose_kind(env)
            log(f"provider kind: {env.kind}")
            env.relay, env.relay_port = start_relay(env, "main")
            probe_upstream_mode(env)
            if env.json_prefix != "json":
                procs.stop(env.relay)
                env.relay, env.relay_port = start_relay(env, "main")
            time.sleep(1)
            if opts.compare:
                log(f"A/B comparison with {opts.compare}")
                text = compare(env, opts.compare)
                RESULTS.mkdir(parents=True, exist_ok=True)
                (RESULTS / "compare.md").write_text(text)
                print(text)
                return 0
            if opts.profile:
                procs.stop(env.relay)
                env.relay = None
                log("profiling with cProfile")
                profile(env)
                return 0
            report = run(env)
        finally:
            procs.stop_all()
    text = report.render()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.md").write_text(text)
    raw = {"machine": report.info, "kind": env.kind, "facts": report.facts,
           "fixtures": env.fixtures, "cases": report.cases, "ttfb": report.ttfb,
           "idle_rss_kib": report.idle_rss_kib, "idle_rss_after_kib": report.idle_rss_after_kib,
           "holds": report.holds, "big": report.big, "access": report.access,
           "notes": env.notes}
    (RESULTS / "latest.json").write_text(json.dumps(to_jsonable(raw), indent=1))
    if opts.write_results_md:
        # Sections other tools write are theirs: bench/workers.py's and the
        # instruction-count history (bench/instr.py) and bench/limits.py's are kept, from the
        # first one on.
        old = (BENCH / "RESULTS.md").read_text() if (BENCH / "RESULTS.md").exists() else ""
        marks = [i for i in (old.find("\n## Limits stage"),
                             old.find("\n## Workers (bench/workers.py)"),
                             old.find(INSTR_MARKER)) if i >= 0]
        kept = old[min(marks):] if marks else ""
        (BENCH / "RESULTS.md").write_text(text + ("\n" + kept.lstrip("\n") if kept else ""))
    log(f"done in {time.monotonic() - t0:.0f}s: {(RESULTS / 'latest.md').relative_to(ROOT)}"
        + (" and bench/RESULTS.md" if opts.write_results_md else ""))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
