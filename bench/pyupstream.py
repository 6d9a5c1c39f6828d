"""
A small asyncio Chat Completions upstream for the tests nginx cannot play.

``python bench/pyupstream.py PORT [--max-seconds S]`` serves, on 127.0.0.1:PORT:

* ``POST /hold/v1/chat/completions``: answers 200 with a role chunk and one text chunk, then
  holds the stream open (sends nothing more) until the client closes it or ``--hold-seconds``
  pass. For measuring the relay's memory per open stream.
* ``POST /big/<MB>/v1/chat/completions``: streams ``MB`` mebibytes of text chunks (4 KiB of
  content each) as fast as the reader takes them (``drain()``: it never buffers ahead), then
  the finish chunk, usage and ``[DONE]``. For the slow-client memory test.
* ``POST /paced/<NAME>/v1/chat/completions``: the canned stream ``NAME`` from the fixtures
  (``--fixtures``), chunked: the head and the events up to the first content chunk at once,
  the rest ``--gap-ms`` later. Time to first delta then measures only the first chunk's path
  (nginx sends a whole 54 KB answer in one write, so the relay translates it all at once).
* ``POST /trickle/<NAME>/v1/chat/completions``: the canned stream ``NAME``, one SSE event per
  write, ``--trickle-ms`` apart, as a model streams tokens: the relay then pays its per-read
  costs (a recv, a translation, a send) once per chunk instead of once per answer.
* ``POST /json/<NAME>/v1/chat/completions``: the canned file ``NAME`` as a JSON answer with a
  ``content-length`` (the small non-streaming request of bench/instr.py, without nginx).
* ``GET /stats``: ``{"open_holds": N, ...}``.
* ``POST /probe/v1/chat/completions``: answers like a real upstream (a short stream if the
  body says ``"stream": true``, else a JSON completion) and remembers the body's ``stream``
  flag; ``GET /probe/last`` returns ``{"stream": …, "count": N}``.

Every connection and the process itself end by themselves: ``--max-seconds`` bounds the run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

CREATED = 1741570283
MODEL = "bench-upstream-model"


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {"id": "chatcmpl-benchpy", "object": "chat.completion.chunk", "created": CREATED,
            "model": MODEL, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                         "finish_reason": finish}], "usage": None}
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def _tail(completion_tokens: int) -> bytes:
    usage = {"id": "chatcmpl-benchpy", "object": "chat.completion.chunk", "created": CREATED,
             "model": MODEL, "choices": [],
             "usage": {"prompt_tokens": 10, "completion_tokens": completion_tokens,
                       "total_tokens": 10 + completion_tokens}}
    return (_chunk({}, "stop") + b"data: " + json.dumps(usage, separators=(",", ":")).encode()
            + b"\n\ndata: [DONE]\n\n")


def _framed(data: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


_SSE_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
             b"transfer-encoding: chunked\r\ncache-control: no-cache\r\n\r\n")


class Upstream:
    """The server's state: the last probe seen."""

    def __init__(self, hold_seconds: float, fixtures: Path | None, gap: float,
                 trickle: float) -> None:
        self.hold_seconds = hold_seconds
        self.fixtures = fixtures
        self.gap = gap
        self.trickle = trickle
        self.events: dict[str, list[bytes]] = {}
        self.paced: dict[str, tuple[bytes, bytes]] = {}
        self.probe_stream: bool | None = None
        self.probe_count = 0
        self.open_holds = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve requests on one connection until it closes."""
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *header_lines = head.decode("latin-1").split("\r\n")
                method, path, _ = request_line.split(" ", 2)
                headers = {}
                for line in header_lines:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                length = int(headers.get("content-length", "0") or 0)
                body = await reader.readexactly(length) if length else b""
                keep = await self.route(method, path, body, reader, writer)
                if not keep:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def route(self, method: str, path: str, body: bytes,
                    reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; return whether the connection stays open."""
        if method == "GET" and path == "/probe/last":
            data = json.dumps({"stream": self.probe_stream, "count": self.probe_count}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                         b"content-length: %d\r\n\r\n%s" % (len(data), data))
            await writer.drain()
            return True
        if method == "GET" and path == "/stats":
            data = json.dumps({"open_holds": self.open_holds,
                               "probe_count": self.probe_count}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                         b"content-length: %d\r\n\r\n%s" % (len(data), data))
            await writer.drain()
            return True
        if method == "GET" and path == "/health":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
            return True
        if path == "/probe/v1/chat/completions":
            return await self.probe(body, writer)
        if path == "/hold/v1/chat/completions":
            await self.hold(reader, writer)
            return False
        parts = path.split("/")
        if len(parts) == 6 and parts[1] == "big" and path.endswith("/v1/chat/completions"):
            await self.big(int(parts[2]), writer)
            return True
        if len(parts) == 6 and parts[1] == "trickle" and path.endswith("/v1/chat/completions"):
            events = self._events(parts[2])
            if events is not None:
                writer.write(_SSE_HEAD)
                for e in events:
                    writer.write(_framed(e))
                    await writer.drain()
                    await asyncio.sleep(self.trickle)
                writer.write(b"0\r\n\r\n")
                await writer.drain()
                return True
        if len(parts) == 6 and parts[1] == "json" and path.endswith("/v1/chat/completions"):
            answer = self._canned(parts[2])
            if answer is not None:
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n%s" % (len(answer), answer))
                await writer.drain()
                return True
        if len(parts) == 6 and parts[1] == "paced" and path.endswith("/v1/chat/completions"):
            split = self._paced(parts[2])
            if split is not None:
                writer.write(_SSE_HEAD + _framed(split[0]))
                await writer.drain()
                await asyncio.sleep(self.gap)
                writer.write(_framed(split[1]) + b"0\r\n\r\n")
                await writer.drain()
                return True
        writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        return True

    def _canned(self, name: str) -> bytes | None:
        if self.fixtures is None or not name.isidentifier():
            return None
        path = self.fixtures / name / "v1" / "chat" / "completions"
        return path.read_bytes() if path.exists() else None

    def _events(self, name: str) -> list[bytes] | None:
        """The canned stream ``name`` as a list of SSE events."""
        if name not in self.events:
            data = self._canned(name)
            if data is None:
                return None
            self.events[name] = [e + b"\n\n" for e in data.split(b"\n\n") if e]
        return self.events[name]

    def _paced(self, name: str) -> tuple[bytes, bytes] | None:
        """The canned stream ``name`` split after its first content chunk."""
        if name not in self.paced:
            data = self._canned(name)
            if data is None:
                return None
            events = data.split(b"\n\n")
            # The first event is the role chunk; the second carries the first content.
            head = b"\n\n".join(events[:2]) + b"\n\n"
            self.paced[name] = (head, data[len(head):])
        return self.paced[name]

    async def probe(self, body: bytes, writer: asyncio.StreamWriter) -> bool:
        try:
            stream = bool(json.loads(body).get("stream"))
        except ValueError:
            stream = False
        self.probe_stream = stream
        self.probe_count += 1
        text = "Hello from the probe upstream."
        if stream:
            data = _chunk({"role": "assistant", "content": ""}) + _chunk({"content": text})
            writer.write(_SSE_HEAD + _framed(data + _tail(6)) + b"0\r\n\r\n")
        else:
            answer = json.dumps({
                "id": "chatcmpl-probe", "object": "chat.completion", "created": CREATED,
                "model": MODEL, "choices": [{"index": 0, "finish_reason": "stop",
                                             "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 6, "total_tokens": 16},
            }).encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                         b"content-length: %d\r\n\r\n%s" % (len(answer), answer))
        await writer.drain()
        return True

    async def hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = _chunk({"role": "assistant", "content": ""}) + _chunk({"content": "held "})
        writer.write(_SSE_HEAD + _framed(first))
        await writer.drain()
        self.open_holds += 1
        try:
            # Wait for the client (the relay) to close, bounded by hold_seconds.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(reader.read(1), self.hold_seconds)
        finally:
            self.open_holds -= 1

    async def big(self, mebibytes: int, writer: asyncio.StreamWriter) -> None:
        piece = _framed(_chunk({"content": ("0123456789abcdef" * 256)}))  # 4 KiB of content
        total = mebibytes * 1024 * 1024 // 4096
        writer.write(_SSE_HEAD + _framed(_chunk({"role": "assistant", "content": ""})))
        batch = 16
        sent = 0
        while sent < total:
            n = min(batch, total - sent)
            writer.write(piece * n)
            sent += n
            await writer.drain()
        writer.write(_framed(_tail(total)) + b"0\r\n\r\n")
        await writer.drain()


async def serve(port: int, max_seconds: float, up: Upstream) -> None:
    """Run until ``max_seconds`` pass or SIGTERM/SIGINT."""
    server = await asyncio.start_server(up.handle, "127.0.0.1", port, backlog=4096,
                                        limit=1 << 20)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        stop.set()
        # Whatever the open connections do, be gone shortly.
        loop.call_later(2.0, os._exit, 0)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    print(f"pyupstream listening on 127.0.0.1:{port}", flush=True)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), max_seconds)
    server.close()


def main() -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--max-seconds", type=float, default=1800.0,
                        help="exit after this long whatever happens")
    parser.add_argument("--hold-seconds", type=float, default=600.0,
                        help="longest time a /hold stream stays open")
    parser.add_argument("--fixtures", type=Path, help="the canned answers (for /paced/)")
    parser.add_argument("--gap-ms", type=float, default=5.0,
                        help="pause after the first content chunk of a /paced/ stream")
    parser.add_argument("--trickle-ms", type=float, default=5.0,
                        help="pause between the events of a /trickle/ stream")
    args = parser.parse_args()
    up = Upstream(args.hold_seconds, args.fixtures, args.gap_ms / 1000, args.trickle_ms / 1000)
    asyncio.run(serve(args.port, args.max_seconds, up))
    return 0


if __name__ == "__main__":
    sys.exit(main())
