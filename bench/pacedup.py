# -*- test-case-name: tests.test_bench_pacedup -*-
"""
A cheap paced Chat Completions upstream: one process, one epoll loop, one shared timer tick.

``python bench/pacedup.py PORT --fixtures DIR [--trickle-ms 5] [--max-seconds S]`` serves, on
127.0.0.1:PORT, HTTP/1.1 with keep-alive:

* ``POST /trickle/<NAME>/v1/chat/completions`` with ``"stream": true`` in the JSON body: the
  canned stream ``NAME`` from the fixtures (``DIR/NAME/v1/chat/completions``), ``200``
  ``text/event-stream``, chunked, one SSE event per ``send``, ``--trickle-ms`` apart, then the
  terminating chunk one tick later: the same bytes and the same pacing as bench/pyupstream.py's
  ``/trickle/`` path. Without ``"stream": true`` the answer is a small canned JSON completion.
* ``POST /json/<NAME>/v1/chat/completions``: the canned file ``NAME`` as a JSON answer.
* ``GET /health``: ``ok``. ``GET /stats``: counters (streams, chunks, sends that would have
  blocked) and this process's CPU seconds, as JSON.

Why not bench/pyupstream.py: asyncio costs about as much CPU per chunk as the relay does to
relay it (a task wake-up, a ``drain()`` and a timer per chunk and stream), so on a 2-core host
the upstream takes the core a second relay worker needs. Here every stream due in a tick gets
its next event in that tick: a chunk costs one ``send`` of a pre-framed ``bytes`` and a few
bytecodes. A ``send`` that would block (rare: the relay reads as fast as it is fed) keeps the
rest of that chunk and waits for ``EPOLLOUT``; the stream skips ticks meanwhile.

Request bodies may come with ``content-length`` (what the relay sends) or chunked. The process
stops on SIGTERM or SIGINT and after ``--max-seconds``, and prints one line with its totals.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import socket
import sys
import time
from pathlib import Path

CREATED = 1741570283
MODEL = "bench-upstream-model"
MAX_HEAD = 64 * 1024
MAX_BODY = 64 * 1024 * 1024
RECV = 256 * 1024

SSE_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\ncache-control: no-cache\r\n\r\n")
LAST_CHUNK = b"0\r\n\r\n"

IN = select.EPOLLIN | select.EPOLLRDHUP
IN_OUT = IN | select.EPOLLOUT


def framed(data: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def sse_events(data: bytes) -> list[bytes]:
    """A canned SSE answer split into its events, each with its blank line."""
    return [e + b"\n\n" for e in data.split(b"\n\n") if e]


def stream_items(data: bytes) -> list[bytes]:
    """
    What a paced stream sends, one item per tick: the response head with the first event,
    every other event as its own HTTP chunk, then the last (empty) chunk.
    """
    events = [framed(e) for e in sse_events(data)]
    if not events:
        return [SSE_HEAD + LAST_CHUNK]
    return [SSE_HEAD + events[0], *events[1:], LAST_CHUNK]


def response(status: str, ctype: str, body: bytes) -> bytes:
    """A complete response with a ``content-length``."""
    return (b"HTTP/1.1 %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s"
            % (status.encode(), ctype.encode(), len(body), body))


COMPLETION = response("200 OK", "application/json", json.dumps({
    "id": "chatcmpl-pacedup", "object": "chat.completion", "created": CREATED, "model": MODEL,
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "Hello from pacedup."}}],
    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
}, separators=(",", ":")).encode())
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"


class BadRequest(Exception):
    """The bytes on a connection are not an HTTP/1.1 request we can read."""


def parse_request(buf: bytes) -> tuple[str, str, dict[str, str], bytes, int] | None:
    """
    The first complete request in ``buf``: method, path, headers (lower-case names), body and
    how many bytes of ``buf`` it took; None when more bytes are needed.
    """
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > MAX_HEAD:
            raise BadRequest("head too long")
        return None
    try:
        request_line, *lines = buf[:end].decode("latin-1").split("\r\n")
        method, path, _version = request_line.split(" ", 2)
    except ValueError:
        raise BadRequest("bad request line") from None
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep:
            raise BadRequest("bad header line")
        headers[name.strip().lower()] = value.strip()
    start = end + 4
    if "chunked" in headers.get("transfer-encoding", "").lower():
        parsed = dechunk(buf, start)
        if parsed is None:
            return None
        body, used = parsed
        return method, path, headers, body, used
    try:
        length = int(headers.get("content-length", "0") or 0)
    except ValueError:
        raise BadRequest("bad content-length") from None
    if length < 0 or length > MAX_BODY:
        raise BadRequest("bad content-length")
    if len(buf) - start < length:
        return None
    return method, path, headers, buf[start:start + length], start + length


def dechunk(buf: bytes, pos: int) -> tuple[bytes, int] | None:
    """A chunked body starting at ``pos``: its bytes and where it ends (None: incomplete)."""
    parts: list[bytes] = []
    total = 0
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            if len(buf) - pos > 1024:
                raise BadRequest("chunk size line too long")
            return None
        try:
            size = int(buf[pos:eol].split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise BadRequest("bad chunk size") from None
        total += size
        if size < 0 or total > MAX_BODY:
            raise BadRequest("chunked body too large")
        pos = eol + 2
        if size == 0:
            # Trailers (usually none), then the blank line.
            end = buf.find(b"\r\n", pos)
            while end > pos:
                pos = end + 2
                end = buf.find(b"\r\n", pos)
            if end < 0:
                return None
            return b"".join(parts), end + 2
        if len(buf) < pos + size + 2:
            return None
        if buf[pos + size:pos + size + 2] != b"\r\n":
            raise BadRequest("chunk not followed by CRLF")
        parts.append(buf[pos:pos + size])
        pos += size + 2


def wants_stream(body: bytes) -> bool:
    """Whether a Chat Completions request body asks for a stream."""
    try:
        doc = json.loads(body)
    except ValueError:
        return False
    return isinstance(doc, dict) and doc.get("stream") is True


class Conn:
    """One client connection: its input buffer, its stream (if one runs), unsent bytes."""

    __slots__ = ("buf", "close_after", "closed", "fd", "items", "pending", "pos", "send", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.send = sock.send
        self.buf = b""
        #: The stream being sent (None: none) and the index of its next item.
        self.items: list[bytes] | None = None
        self.pos = 0
        #: Bytes a ``send`` did not take; sent on EPOLLOUT before anything else.
        self.pending = b""
        self.closed = False
        self.close_after = False


class Server:
    """The epoll loop, the connections and the paced streams."""

    def __init__(self, port: int, fixtures: Path | None, trickle: float) -> None:
        self.fixtures = fixtures
        self.period = trickle
        self.canned: dict[str, bytes | None] = {}
        self.streams: dict[str, list[bytes] | None] = {}
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(4096)
        self.listener.setblocking(False)
        self.ep = select.epoll()
        self.ep.register(self.listener.fileno(), select.EPOLLIN)
        self.conns: dict[int, Conn] = {}
        #: Streams that get their next item at the next tick.
        self.active: list[Conn] = []
        self.next_tick = 0.0
        self.stopping = False
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.ep.register(self.wake_r.fileno(), select.EPOLLIN)
        self.stats = {"requests": 0, "streams": 0, "streams_done": 0, "chunks": 0,
                      "blocked_sends": 0, "connections": 0}

    # ── the loop ─────────────────────────────────────────────────────────────────────────

    def run(self, max_seconds: float) -> None:
        """Serve until SIGTERM/SIGINT or ``max_seconds``."""
        def on_signal(_signum: int, _frame: object) -> None:
            self.stopping = True

        signal.set_wakeup_fd(self.wake_w.fileno())
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
        end = time.monotonic() + max_seconds
        listen_fd, wake_fd = self.listener.fileno(), self.wake_r.fileno()
        conns, poll, monotonic = self.conns, self.ep.poll, time.monotonic
        while not self.stopping:
            now = monotonic()
            if now >= end:
                break
            timeout = max(0.0, self.next_tick - now) if self.active else 1.0
            for fd, ev in poll(min(timeout, end - now)):
                if fd == listen_fd:
                    self.accept()
                elif fd == wake_fd:
                    self.wake_r.recv(4096)
                else:
                    c = conns.get(fd)
                    if c is None:
                        continue
                    if ev & select.EPOLLOUT:
                        self.flush(c)
                    if ev & (select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLHUP
                             | select.EPOLLERR) and not c.closed:
                        self.readable(c)
            if self.active:
                now = monotonic()
                if now >= self.next_tick:
                    self.tick()
                    self.next_tick += self.period
                    if self.next_tick <= now:  # behind by a whole period: no bursts
                        self.next_tick = now + self.period
        for c in list(conns.values()):
            self.close(c)
        self.ep.close()
        self.listener.close()

    def tick(self) -> None:
        """Send every running stream its next item."""
        keep: list[Conn] = []
        append = keep.append
        chunks = 0
        for c in self.active:
            if c.closed:
                continue
            if c.pending:  # still waiting for EPOLLOUT: skip this tick
                append(c)
                continue
            items = c.items
            assert items is not None
            item = items[c.pos]
            c.pos += 1
            chunks += 1
            self.write(c, item)
            if c.closed:
                continue
            if c.pos < len(items):
                append(c)
            elif not c.pending:
                self.stream_done(c)
        self.active = keep
        self.stats["chunks"] += chunks

    # ── connections ──────────────────────────────────────────────────────────────────────

    def accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # EMFILE and the like: try again on the next event
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c = Conn(sock)
            self.conns[c.fd] = c
            self.ep.register(c.fd, IN)
            self.stats["connections"] += 1

    def close(self, c: Conn) -> None:
        if c.closed:
            return
        c.closed = True
        self.conns.pop(c.fd, None)
        with contextlib.suppress(OSError):
            self.ep.unregister(c.fd)
        c.sock.close()

    def readable(self, c: Conn) -> None:
        try:
            data = c.sock.recv(RECV)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close(c)
            return
        if not data:
            self.close(c)
            return
        c.buf += data
        if c.items is None and not c.pending:
            self.serve(c)

    def blocked(self, c: Conn, rest: bytes) -> None:
        """Keep what a ``send`` did not take and wait until the socket is writable."""
        c.pending = rest
        self.stats["blocked_sends"] += 1
        self.ep.modify(c.fd, IN_OUT)

    def write(self, c: Conn, data: bytes) -> None:
        """Send a whole response (what does not fit waits for EPOLLOUT)."""
        try:
            n = c.send(data)
        except BlockingIOError:
            n = 0
        except OSError:
            self.close(c)
            return
        if n != len(data):
            self.blocked(c, data[n:])

    def flush(self, c: Conn) -> None:
        """EPOLLOUT: send what was left over."""
        try:
            n = c.send(c.pending)
        except BlockingIOError:
            return
        except OSError:
            self.close(c)
            return
        c.pending = c.pending[n:]
        if c.pending:
            return
        self.ep.modify(c.fd, IN)
        if c.items is not None:
            if c.pos >= len(c.items):
                self.stream_done(c)
            return
        if c.close_after:
            self.close(c)
        else:
            self.serve(c)

    def stream_done(self, c: Conn) -> None:
        c.items = None
        c.pos = 0
        self.stats["streams_done"] += 1
        if c.close_after:
            self.close(c)
        elif c.buf:
            self.serve(c)

    # ── requests ─────────────────────────────────────────────────────────────────────────

    def serve(self, c: Conn) -> None:
        """Answer the complete requests in ``c.buf`` until a stream starts or bytes wait."""
        while c.buf and c.items is None and not c.pending and not c.closed:
            try:
                parsed = parse_request(c.buf)
            except BadRequest:
                c.buf = b""
                c.close_after = True
                self.write(c, BAD_REQUEST)
                if not c.pending:
                    self.close(c)
                return
            if parsed is None:
                return
            method, path, headers, body, used = parsed
            c.buf = c.buf[used:]
            self.stats["requests"] += 1
            if headers.get("connection", "").lower() == "close":
                c.close_after = True
            self.route(c, method, path, body)
            if c.close_after and c.items is None and not c.pending:
                self.close(c)

    def route(self, c: Conn, method: str, path: str, body: bytes) -> None:
        parts = path.split("/")
        routed = len(parts) == 6 and path.endswith("/v1/chat/completions") and method == "POST"
        if routed and parts[1] == "trickle":
            items = self.stream(parts[2])
            if items is not None:
                if not wants_stream(body):
                    self.write(c, COMPLETION)
                    return
                self.start_stream(c, items)
                return
        elif routed and parts[1] == "json":
            answer = self.canned_file(parts[2])
            if answer is not None:
                self.write(c, response("200 OK", "application/json", answer))
                return
        elif method == "GET" and path == "/health":
            self.write(c, response("200 OK", "text/plain", b"ok"))
            return
        elif method == "GET" and path == "/stats":
            t = os.times()
            doc = {**self.stats, "active_streams": len(self.active),
                   "cpu_seconds": t.user + t.system}
            self.write(c, response("200 OK", "application/json", json.dumps(doc).encode()))
            return
        self.write(c, NOT_FOUND)

    def start_stream(self, c: Conn, items: list[bytes]) -> None:
        """Send the head and first event now; the rest one per tick."""
        self.stats["streams"] += 1
        self.stats["chunks"] += 1
        c.items, c.pos = items, 1
        if not self.active:
            self.next_tick = time.monotonic() + self.period
        self.write(c, items[0])
        if c.closed:
            return
        if len(items) > 1:
            self.active.append(c)
        elif not c.pending:
            self.stream_done(c)

    def canned_file(self, name: str) -> bytes | None:
        if name not in self.canned:
            path = None if self.fixtures is None or not name.isidentifier() else (
                self.fixtures / name / "v1" / "chat" / "completions")
            self.canned[name] = path.read_bytes() if path is not None and path.exists() else None
        return self.canned[name]

    def stream(self, name: str) -> list[bytes] | None:
        if name not in self.streams:
            data = self.canned_file(name)
            self.streams[name] = None if data is None else stream_items(data)
        return self.streams[name]


def main() -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--fixtures", type=Path, help="the canned answers (bench/fixtures.py)")
    parser.add_argument("--trickle-ms", type=float, default=5.0,
                        help="pause between the events of a /trickle/ stream")
    parser.add_argument("--max-seconds", type=float, default=1800.0,
                        help="exit after this long whatever happens")
    args = parser.parse_args()
    server = Server(args.port, args.fixtures, args.trickle_ms / 1000)
    print(f"pacedup listening on 127.0.0.1:{args.port}", flush=True)
    server.run(args.max_seconds)
    t = os.times()
    cpu = t.user + t.system
    s = server.stats
    print(f"pacedup: {s['streams']} streams, {s['chunks']} chunks, {s['blocked_sends']} "
          f"blocked sends, {cpu:.2f} s CPU ({cpu * 1e6 / max(1, s['chunks']):.1f} us/chunk "
          "including start-up)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
