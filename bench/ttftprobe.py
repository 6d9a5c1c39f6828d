"""
Where the relay's time to first text delta goes: one request, step by step, in microseconds.

``python bench/ttftprobe.py [--samples N] [--cases small,cc]`` starts bench/pyupstream.py
(the paced upstream: role and first content chunk at once, the rest 5 ms later) and a relay
whose hot-path functions are wrapped with wall-clock probes (``--serve``, an internal mode:
the probes are installed here, never in txrelay itself). It sends N sequential streaming
requests on one keep-alive connection, alternating with the same request sent to the
upstream directly, and prints a Markdown table: for each step between two probes, the median
over the requests of its duration, then the relay's and the direct first-delta times.

Each probe costs about a microsecond (a ``perf_counter_ns`` and a list append), so the sum is
a little above the unprobed relay's; ``bench/run --only ttfb`` measures the real figure.
The steps are medians taken separately, so they need not add up exactly to the total.
It also counts reactor turns (``epoll_wait`` calls) between the request's last byte and the
upstream write, and between the upstream's first answer byte and the first client write:
both must be 0 (no ``callLater(0)``, no cooperator, no write waiting for the next turn).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

#: (probe, label) in path order: each row is the step from the previous probe to this one.
STEPS: tuple[tuple[str, str], ...] = (
    ("client.bytes_in", "client request bytes read (relay woken by the client's send)"),
    ("http.allHeadersReceived.out", "request line and headers parsed (twisted.web, front-door "
                                    "checks)"),
    ("http.allContentReceived", "body read (the 83 KB body takes several reads)"),
    ("resource.render", "twisted.web Request.process, site, resource lookup"),
    ("stage.auth", "resource: request id, InFlight, Exchange (header copy), first stage"),
    ("parse_request", "auth and model-map stages"),
    ("parse_request.out", "body parsed and validated (orjson.loads, validate.py, "
                          "MessagesRequest)"),
    ("check_capabilities", "translate stage, router (targets, breakers, board)"),
    ("check_capabilities.out", "capabilities checked"),
    ("codec.prepare", "token estimate"),
    ("codec.prepare.out", "Chat Completions body built and serialised "
                          "(openai/request.py, dumps)"),
    ("treq.request", "upstream headers, UpstreamSource, the hop into http.py"),
    ("Agent.request", "treq: URL, headers, body producer"),
    ("HTTP11ClientProtocol.request", "Agent: URI, endpoint (idna), pool (reused connection)"),
    ("HTTP11ClientProtocol.request.out", "request serialised (twisted.web._newclient)"),
    ("upstream.write_now", "back out of treq, first-byte timer armed"),
    ("upstream.write_now.out", "send(): the upstream request, one segment (kernel, waking "
                               "the upstream)"),
    ("doRead.Client", "(the upstream works; the relay finishes the request's turn and "
                      "waits)"),
    ("HTTPClientParser.allHeadersReceived", "upstream response head parsed "
                                            "(twisted.web._newclient)"),
    ("source.response", "treq response, Deferreds back to the backend"),
    ("source.dataReceived", "deliverBody: the first body bytes reach UpstreamSource"),
    ("source._mark_ready", "SSE parse and translation of the first chunks"),
    ("resource._stream", "commit: Deferreds up through the stages to the resource"),
    ("client.write_now", "SSE writer: response headers, first events encoded"),
    ("client.write_now.out", "send(): the first text delta (kernel, waking the client)"),
)


# ── the probed relay (--serve) ─────────────────────────────────────────────────────────────

def serve(out: str, argv: list[str]) -> int:
    """Install the probes, then run ``txrelay`` with ``argv``; SIGUSR2 writes ``out``."""
    ns = time.perf_counter_ns
    events: list[tuple[str, int]] = []
    requests: list[list[tuple[str, int]]] = []

    def wrap(obj: Any, name: str, label: str, out: bool = True) -> None:
        f = getattr(obj, name)

        @functools.wraps(f)
        def probed(*a: Any, **k: Any) -> Any:
            events.append((label, ns()))
            try:
                return f(*a, **k)
            finally:
                if out:
                    events.append((label + ".out", ns()))
        setattr(obj, name, probed)

    def awrap(obj: Any, name: str, label: str) -> None:
        f = getattr(obj, name)

        @functools.wraps(f)
        async def probed(*a: Any, **k: Any) -> Any:
            events.append((label, ns()))
            return await f(*a, **k)
        setattr(obj, name, probed)

    import treq.client
    from twisted.internet import epollreactor, tcp
    from twisted.web import _newclient, client, http, server

    import txrelay.upstream.http as uphttp
    import txrelay.upstream.httpbackend as backend
    import txrelay.upstream.openai as upopenai
    from txrelay import pipeline
    from txrelay.server import channel, resource
    from txrelay.stages import auth, translate
    from txrelay.upstream import streaming

    data_received = channel.FrontDoorChannel.dataReceived

    def channel_data(self: Any, data: bytes) -> None:
        if data.startswith((b"POST ", b"GET ")):
            if events:
                requests.append(list(events))
            events.clear()
        events.append(("client.bytes_in", ns()))
        data_received(self, data)
    channel.FrontDoorChannel.dataReceived = channel_data  # type: ignore[method-assign]

    wrap(http.HTTPChannel, "allHeadersReceived", "http.allHeadersReceived")
    wrap(http.HTTPChannel, "allContentReceived", "http.allContentReceived")
    wrap(resource.RelayResource, "render", "resource.render")
    awrap(auth.AuthStage, "__call__", "stage.auth")
    wrap(pipeline, "parse_request", "parse_request")
    wrap(translate, "check_capabilities", "check_capabilities")
    wrap(upopenai.OpenAIChatCodec, "prepare", "codec.prepare")
    wrap(treq.client.HTTPClient, "request", "treq.request")
    wrap(client.Agent, "request", "Agent.request")
    wrap(_newclient.HTTP11ClientProtocol, "request", "HTTP11ClientProtocol.request")
    wrap(uphttp, "write_now", "upstream.write_now")
    wrap(_newclient.HTTPClientParser, "allHeadersReceived",
         "HTTPClientParser.allHeadersReceived")
    wrap(streaming.UpstreamSource, "response", "source.response")
    wrap(streaming.UpstreamSource, "dataReceived", "source.dataReceived")
    wrap(streaming.UpstreamSource, "_mark_ready", "source._mark_ready")
    wrap(resource.RelayResource, "_stream", "resource._stream", out=False)
    wrap(channel, "write_now", "client.write_now")
    wrap(server.Request, "process", "server.Request.process")
    del backend  # imported so that its module-level names are the ones probed

    do_read = tcp.Connection.doRead

    def probed_read(self: Any) -> Any:
        events.append(("doRead." + type(self).__name__, ns()))
        return do_read(self)
    tcp.Connection.doRead = probed_read  # type: ignore[method-assign]
    do_poll = epollreactor.EPollReactor.doPoll

    busy = os.environ.get("TTFTPROBE_BUSY_POLL") == "1"

    def probed_poll(self: Any, timeout: Any) -> None:
        events.append(("epoll_wait", ns()))
        # --busy-poll: never sleep in epoll_wait, so the relay's caches stay warm
        do_poll(self, 0 if busy else timeout)
    epollreactor.EPollReactor.doPoll = probed_poll  # type: ignore[method-assign]

    def dump(_sig: int, _frame: Any) -> None:
        Path(out).write_text(json.dumps(requests))
    signal.signal(signal.SIGUSR2, dump)
    from txrelay.cli import main
    return main(argv)


# ── the driver ─────────────────────────────────────────────────────────────────────────────

def _first(timeline: list[tuple[str, int]], label: str, after: int) -> int | None:
    for name, t in timeline:
        if name == label and t >= after:
            return t
    return None


def steps_of(timeline: list[tuple[str, int]]) -> dict[str, float] | None:
    """The µs of each step of one request's timeline (None if a probe is missing)."""
    out: dict[str, float] = {}
    prev = timeline[0][1]
    t0 = prev
    for label, _ in STEPS:
        t = prev if label == "client.bytes_in" else _first(timeline, label, prev)
        if t is None:
            return None
        out[label] = (t - prev) / 1000
        prev = t
    out["total"] = (prev - t0) / 1000
    sent = out_at = None
    for name, t in timeline:
        if name == "http.allContentReceived" and sent is None:
            sent = t
        if name == "upstream.write_now" and out_at is None:
            out_at = t
    back = _first(timeline, "doRead.Client", t0)
    first_write = _first(timeline, "client.write_now", back or t0)
    polls = [t for name, t in timeline if name == "epoll_wait"]
    if sent and out_at:
        out["turns_to_upstream"] = sum(1 for t in polls if sent < t < out_at)
    if back and first_write:
        out["turns_to_client"] = sum(1 for t in polls if back < t < first_write)
    return out


def run_case(name: str, body: bytes, chat_body: bytes, relay: int, upstream: int,
             samples: int) -> tuple[float, float]:
    """Alternate direct and relayed requests; the medians of both first-delta times."""
    from streamclient import Conn
    relay_headers = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"}
    direct_headers = {"Authorization": f"Bearer {UPSTREAM_KEY}"}
    rc, dc = Conn(relay), Conn(upstream)
    path = "/paced/stream/v1/chat/completions"
    direct: list[float] = []
    relayed: list[float] = []
    try:
        for _ in range(samples):
            t = rc.post("/v1/messages", body, relay_headers, b'"text_delta"')
            if t.status != 200 or not t.first_ns:
                raise RuntimeError(f"{name}: relay answered {t.status}")
            relayed.append(t.first_ns / 1000)
            direct.append(dc.post(path, chat_body, direct_headers, b"data:").first_ns / 1000)
    finally:
        rc.close()
        dc.close()
    return statistics.median(relayed), statistics.median(direct)


CLIENT_KEY = "bench-client-key"
UPSTREAM_KEY = "bench-upstream-key"


def main() -> int:
    """Entry point."""
    if len(sys.argv) > 2 and sys.argv[1] == "--serve":
        return serve(sys.argv[2], sys.argv[3:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--cases", default="small,cc")
    p.add_argument("--busy-poll", action="store_true",
                   help="experiment: the relay polls without sleeping (one core at 100 %%), "
                        "so its code and data stay in the CPU caches between requests")
    a = p.parse_args()
    import fixtures
    from harness import free_port, wait_port
    venv = BENCH.parent / ".venv" / "bin"
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="ttftprobe-") as tmp:
        work = Path(tmp)
        fixtures.write_all(work / "fixtures")
        bodies = work / "fixtures" / "bodies"
        up, port = free_port(), free_port()
        key_hash = subprocess.run([str(venv / "txrelay"), "hash-key", CLIENT_KEY], check=True,
                                  capture_output=True, text=True).stdout.strip()
        cfg = work / "relay.toml"
        cfg.write_text(
            f'[server]\nlisten = ["tcp:{port}:interface=127.0.0.1"]\naccess_log = false\n'
            f'[log]\nlevel = "warn"\n[[keys]]\nname = "bench"\nsha256 = "{key_hash}"\n'
            '[[providers]]\nname = "pstream"\nkind = "openai-chat"\n'
            f'base_url = "http://127.0.0.1:{up}/paced/stream/v1"\n'
            'api_key = { env = "BENCH_UPSTREAM_KEY" }\noptions = { dialect = "openai" }\n'
            '[[models]]\nid = "bench-pstream"\nprovider = "pstream"\n'
            f'upstream_model = "{fixtures.UPSTREAM_MODEL}"\npatterns = ["*"]\n'
            '[[pipeline]]\ntype = "auth"\n[[pipeline]]\ntype = "model-map"\n'
            '[[pipeline]]\ntype = "translate"\n')
        out = work / "timelines.json"
        env = {**os.environ, "BENCH_UPSTREAM_KEY": UPSTREAM_KEY,
               "TTFTPROBE_BUSY_POLL": "1" if a.busy_poll else "0"}
        try:
            procs.append(subprocess.Popen(
                [sys.executable, str(BENCH / "pyupstream.py"), str(up), "--max-seconds", "900",
                 "--fixtures", str(work / "fixtures" / "upstream"), "--gap-ms", "5"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
            relay = subprocess.Popen(
                [sys.executable, __file__, "--serve", str(out), "serve", "--config", str(cfg)],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True)
            procs.append(relay)
            wait_port(up, procs[0])
            wait_port(port, relay)
            load = os.getloadavg()
            print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
                  f"{a.samples} requests per case after {a.warmup} warm-up\n")
            for case in a.cases.split(","):
                stem = {"small": "small-stream", "cc": "cc-stream"}[case]
                raw = json.loads((bodies / f"{stem}.anthropic.json").read_bytes())
                raw["model"] = "bench-pstream"
                body = json.dumps(raw, separators=(",", ":")).encode()
                chat = (bodies / f"{stem}.chat.json").read_bytes()
                run_case(case, body, chat, port, up, a.warmup)
                relay_first, direct_first = run_case(case, body, chat, port, up, a.samples)
                time.sleep(0.2)
                relay.send_signal(signal.SIGUSR2)
                time.sleep(0.5)
                timelines = json.loads(out.read_text())[-a.samples:]
                report(case, len(body), timelines, relay_first, direct_first)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
    return 0


def report(case: str, size: int, timelines: list[list[tuple[str, int]]],
           relay_first: float, direct_first: float) -> None:
    """Print one case's table."""
    rows = [s for s in (steps_of(t) for t in timelines) if s is not None]
    if not rows:
        print(f"{case}: no complete timeline")
        return

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rows if key in r)
    print(f"### {case} ({size:,} bytes), {len(rows)} requests\n")
    print("| step | µs (median) |")
    print("|---|---:|")
    for label, what in STEPS[1:]:
        print(f"| {what} | {med(label):.0f} |")
    print(f"| **client bytes in → first text delta sent (probed)** | **{med('total'):.0f}** |")
    print(f"\nreactor turns: request → upstream write {med('turns_to_upstream'):.0f}, "
          f"upstream answer → first client write {med('turns_to_client'):.0f}")
    print(f"first text delta at the client: relay {relay_first:.0f} µs, direct "
          f"{direct_first:.0f} µs, added {relay_first - direct_first:+.0f} µs\n")


if __name__ == "__main__":
    sys.exit(main())
