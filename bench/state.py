"""
What one state store operation costs, in microseconds: the in-process store and Redis (a
``redis-server`` started on a free loopback port, as the tests do), sequentially (latency)
and with 32 operations in flight (throughput of one relay's connection pool).

``.venv/bin/python bench/state.py [--ops N]`` prints one line per store and operation.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

from twisted.internet import reactor  # noqa: E402
from twisted.internet.defer import Deferred, gatherResults  # noqa: E402

from tests.redisproc import start_redis  # noqa: E402
from txrelay.state.memory import MemoryStore  # noqa: E402
from txrelay.state.redis import RedisAddress, RedisStore  # noqa: E402

Op = Callable[[Any, int], Coroutine[Any, Any, Any]]

async def _slot(store: Any, i: int) -> None:
    await store.acquire("bench:streams", f"h{i}", 1 << 30, 60)
    await store.release("bench:streams", f"h{i}")


OPS: dict[str, Op] = {
    "increment (limit)": lambda s, i: s.increment("bench:rpm", 1, 60, limit=1 << 40),
    "acquire+release": _slot,
    "get_count": lambda s, i: s.get_count("bench:rpm"),
    "hash_all (10 fields)": lambda s, i: s.hash_all("bench:keys"),
}


async def measure(store: Any, ops: int) -> list[str]:
    for f in range(10):
        await store.hash_set("bench:keys", f"k{f}", b"x" * 200)
    lines = []
    for name, op in OPS.items():
        await op(store, -1)  # warm (scripts loaded, connections up)
        start = time.perf_counter()
        for i in range(ops):
            await op(store, i)
        sequential = (time.perf_counter() - start) / ops * 1e6
        start = time.perf_counter()
        for base in range(0, ops, 32):
            await gatherResults([Deferred.fromCoroutine(op(store, i))
                                 for i in range(base, min(ops, base + 32))])
        concurrent = (time.perf_counter() - start) / ops * 1e6
        lines.append(f"{store.name:7} {name:22} {sequential:9.1f} µs/op sequential "
                     f"{concurrent:9.1f} µs/op 32 in flight")
    return lines


async def main(ops: int) -> None:
    server = start_redis()
    redis = RedisStore(RedisAddress(port=server.port), reactor, prefix="bench:",
                       timeout=5.0).connect()
    try:
        await redis.ping()
        for store in (MemoryStore(), redis):
            for line in await measure(store, ops):
                print(line, flush=True)
    finally:
        await redis.close()
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=2000, help="operations per measurement")
    args = parser.parse_args()
    from twisted.internet.task import react

    react(lambda r: Deferred.fromCoroutine(main(args.ops)))
