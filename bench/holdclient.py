"""
Open N concurrent streaming requests to the relay and keep them open.

``python bench/holdclient.py PORT N BODYFILE --header K:V ...`` connects N clients (at most
``--parallel`` connecting at once), sends each a streaming ``POST /v1/messages`` and reads
until the marker (the first ``text_delta``) arrived, then stops reading. It prints
``READY {json}`` once all are open (or ``--setup-seconds`` passed), then waits for a line on
stdin (or ``--hold-seconds``), closes every connection, and prints ``CLOSED``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time


async def _one(port: int, request: bytes, marker: bytes, sem: asyncio.Semaphore,
               timeout: float) -> asyncio.StreamWriter | None:
    async with sem:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port), timeout)
        except (TimeoutError, OSError):
            return None
        try:
            writer.write(request)
            seen = b""
            deadline = time.monotonic() + timeout
            while marker not in seen:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                data = await asyncio.wait_for(reader.read(65536), left)
                if not data:
                    raise ConnectionError("closed")
                seen = seen[-len(marker):] + data
        except (TimeoutError, OSError, ConnectionError):
            writer.close()
            return None
        return writer


async def run(args: argparse.Namespace) -> int:
    with open(args.body, "rb") as f:
        body = f.read()
    head = ["POST /v1/messages HTTP/1.1", f"Host: 127.0.0.1:{args.port}",
            f"Content-Length: {len(body)}", "Content-Type: application/json"]
    head += [h.strip() for h in args.header]
    request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
    marker = args.marker.encode()
    sem = asyncio.Semaphore(args.parallel)
    t0 = time.monotonic()
    tasks = [asyncio.ensure_future(_one(args.port, request, marker, sem, args.setup_seconds))
             for _ in range(args.n)]
    done, pending = await asyncio.wait(tasks, timeout=args.setup_seconds)
    for t in pending:
        t.cancel()
    writers = [t.result() for t in done if not t.cancelled() and t.exception() is None]
    held = [w for w in writers if w is not None]
    print("READY " + json.dumps({"held": len(held), "failed": args.n - len(held),
                                 "seconds": round(time.monotonic() - t0, 2)}), flush=True)
    # Hold until stdin has a line (or closes), bounded by --hold-seconds.
    told = asyncio.Event()
    asyncio.get_running_loop().add_reader(sys.stdin.fileno(), told.set)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(told.wait(), args.hold_seconds)
    for w in held:
        w.close()
    for w in held:
        with contextlib.suppress(Exception):
            await w.wait_closed()
    print("CLOSED", flush=True)
    return 0


def main() -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("port", type=int)
    parser.add_argument("n", type=int)
    parser.add_argument("body")
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--marker", default='"text_delta"')
    parser.add_argument("--parallel", type=int, default=200)
    parser.add_argument("--setup-seconds", type=float, default=120.0)
    parser.add_argument("--hold-seconds", type=float, default=120.0)
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
