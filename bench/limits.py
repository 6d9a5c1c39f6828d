"""
What the ``limits`` stage costs per request (issue 12.8), with the in-process store and
with a real Redis server.

``.venv/bin/python bench/limits.py`` runs the stage in a loop around a trivial ``proceed``
(a fixed three-event stream, started so the end-of-stream bookkeeping runs too) and prints
µs per request for each configuration, minus the same loop without the stage. With the
in-process store everything completes synchronously (best of 5 repeats). With Redis
(``redis-server`` started on a free loopback port; needs the ``txredisapi`` dependency and
``txrelay.state.redis``) it runs on the reactor: one request at a time (latency: round
trips to Redis included) and 64 at once (throughput). ``--record`` also writes the table into
``bench/RESULTS.md`` under "Limits stage".
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cattrs

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

from twisted.internet.defer import Deferred, ensureDeferred, gatherResults  # noqa: E402

from txrelay.pipeline import Exchange, Reply  # noqa: E402
from txrelay.stages.limits import LimitsOptions, LimitsStage  # noqa: E402
from txrelay.state.memory import MemoryStore  # noqa: E402
from txrelay.streams import CollectingSink, stream_of  # noqa: E402
from txrelay.testing import make_exchange, text_events  # noqa: E402

BIG = 10**12
CONFIGS: dict[str, dict[str, Any]] = {
    "no limits configured": {},
    "requests_per_minute": {"default": {"requests_per_minute": BIG}},
    "every limit, key + group": {
        "keys": [{"name": "alice", "requests_per_minute": BIG, "input_tokens_per_minute": BIG,
                  "output_tokens_per_minute": BIG, "concurrent_streams": BIG,
                  "concurrent_requests": BIG, "tokens_per_day": BIG,
                  "models": ["test-*"]}],
        "groups": [{"name": "team", "keys": ["alice"], "requests_per_minute": BIG,
                    "spend_per_month": 1e9}],
        "prices": [{"model": "*", "input": 3, "output": 15}],
    },
}
EVENTS = text_events("ok", pieces=1)


def exchanges(n: int) -> list[Exchange]:
    """``n`` streaming exchanges of key ``alice``, already parsed (as earlier stages do)."""
    out = []
    for i in range(n):
        ex = make_exchange({"stream": True})
        ex.request_id = f"req_{i}"
        ex.client = "alice"
        assert ex.request is not None
        out.append(ex)
    return out


async def proceed(_: Exchange) -> Reply:
    return Reply(stream=stream_of(EVENTS))


def stage_for(config: dict[str, Any], store: Any, reactor: Any = None) -> LimitsStage:
    options = cattrs.Converter(forbid_extra_keys=True).structure(config, LimitsOptions)
    return LimitsStage(options, store, time.time, reactor)


def run_sync(stage: Any, batch: list[Exchange]) -> None:
    for ex in batch:
        d = Deferred.fromCoroutine(stage(ex, proceed) if stage else proceed(ex))
        reply = d.result  # type: ignore[attr-defined]
        reply.stream.start(CollectingSink())


def best_us(fn: Callable[[], Any], per: int) -> float:
    return min(timeit.repeat(fn, number=1, repeat=5)) / per * 1e6


async def _nothing() -> None:
    return None


def memory_rows(n: int) -> list[tuple[str, str, float]]:
    batch = exchanges(n)
    base = best_us(lambda: run_sync(None, batch), n)
    # A yardstick for how fast this machine is right now.
    rows = [("(yardstick)", "one trivial coroutine through Deferred.fromCoroutine",
             best_us(lambda: [Deferred.fromCoroutine(_nothing()) for _ in range(n)], n))]
    for name, config in CONFIGS.items():
        stage = stage_for(config, MemoryStore())
        rows.append(("memory", name, best_us(lambda s=stage: run_sync(s, batch), n) - base))  # type: ignore[misc]
    return rows


def start_redis() -> tuple[subprocess.Popen[bytes], int, str]:
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    directory = tempfile.mkdtemp(prefix="txrelay-bench-redis-")
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", directory],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as c:
                c.sendall(b"PING\r\n")
                if c.recv(16).startswith(b"+PONG"):
                    return proc, port, directory
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise SystemExit("redis-server did not start")


async def redis_rows(reactor: Any, port: int, n: int) -> list[tuple[str, str, float]]:
    from txrelay.state.redis import RedisAddress, RedisStore

    store = RedisStore(RedisAddress("127.0.0.1", port), reactor, timeout=5.0).connect()
    await store.ping()
    rows = []

    async def one(stage: Any, ex: Exchange) -> None:
        reply = await (stage(ex, proceed) if stage else proceed(ex))
        reply.stream.start(CollectingSink())

    for name, config in CONFIGS.items():
        stage = stage_for(config, store, reactor)
        for ex in exchanges(50):  # warm up: scripts loaded, connections made
            await one(stage, ex)
        batch = exchanges(n)
        started = time.perf_counter()
        for ex in batch:
            await one(stage, ex)
        await store.ping()
        sequential = (time.perf_counter() - started) / n * 1e6
        batch = exchanges(n)
        started = time.perf_counter()
        for i in range(0, n, 64):
            await gatherResults([ensureDeferred(one(stage, ex)) for ex in batch[i:i + 64]])
        await store.ping()
        concurrent = (time.perf_counter() - started) / n * 1e6
        rows.append(("redis, 1 at a time", name, sequential))
        rows.append(("redis, 64 at once", name, concurrent))
    await store.close()
    return rows


def table(rows: list[tuple[str, str, float]]) -> str:
    lines = ["| store | configuration | µs per request |", "|---|---|---:|"]
    lines += [f"| {store} | {name} | {us:,.1f} |" for store, name, us in rows]
    return "\n".join(lines)


def record(text: str) -> None:
    path = BENCH / "RESULTS.md"
    content = path.read_text()
    heading = "## Limits stage"
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    section = (f"{heading}\n\nMade by `bench/limits.py` on {when}. "
               "In-process rows are the stage's cost over the same loop without it (best of "
               "5); Redis rows are wall-clock µs per request through the stage, loopback "
               "round trips included (one request at a time, and 64 in flight).\n\n"
               f"{text}\n")
    if heading in content:
        start = content.index(heading)
        end = content.find("\n## ", start + len(heading))
        content = content[:start] + section + (content[end + 1:] if end != -1 else "")
    else:
        content = content.rstrip("\n") + "\n\n" + section
    path.write_text(content)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=2000, help="requests per measurement")
    parser.add_argument("--no-redis", action="store_true")
    parser.add_argument("--record", action="store_true", help="update bench/RESULTS.md")
    args = parser.parse_args()
    rows = memory_rows(args.n)
    if not args.no_redis:
        from twisted.internet import reactor
        from twisted.internet.task import react

        proc, port, directory = start_redis()
        try:
            result: list[Any] = []

            async def go(r: Any) -> None:
                result.extend(await redis_rows(r, port, args.n))

            try:
                react(lambda r: ensureDeferred(go(r)))
            except SystemExit as e:
                if e.code:
                    raise
            rows += result
        finally:
            proc.kill()
            proc.wait(10)
            shutil.rmtree(directory, ignore_errors=True)
        del reactor
    text = table(rows)
    print(text)
    if args.record:
        record(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
