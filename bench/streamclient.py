"""
A minimal blocking HTTP/1.1 client that times a response: when its first interesting byte
arrives (a marker such as ``"text_delta"``) and when it ends.

It keeps one keep-alive connection, decodes ``content-length`` and ``chunked`` bodies, and
never buffers more than one response. Used by the harness for time-to-first-text-delta,
full-stream time and checks of what the relay answers.

``python bench/streamclient.py slowread ...`` is the slow-reading client of the large-stream
memory test (see :func:`slow_read`).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from dataclasses import dataclass


class HTTPError(Exception):
    """The server answered in a way the benchmark did not expect."""


@dataclass
class Timed:
    """One timed response."""

    status: int
    #: Nanoseconds from sending the request to the first body byte containing the marker.
    first_ns: int
    #: Nanoseconds from sending the request to the end of the body.
    total_ns: int
    body: bytes


class Conn:
    """One keep-alive connection to ``127.0.0.1:port``."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 30.0) -> None:
        self.port = port
        self.host = host
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.buf = b""

    def _connect(self) -> socket.socket:
        if self.sock is None:
            s = socket.create_connection((self.host, self.port), timeout=self.timeout)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock = s
            self.buf = b""
        return self.sock

    def close(self) -> None:
        """Close the connection."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _recv(self) -> bytes:
        assert self.sock is not None
        data = self.sock.recv(262144)
        if not data:
            raise HTTPError("connection closed mid-response")
        return data

    def post(self, path: str, body: bytes, headers: dict[str, str], marker: bytes) -> Timed:
        """POST ``body`` and read the whole response, timing ``marker``'s first appearance."""
        sock = self._connect()
        head = [f"POST {path} HTTP/1.1", f"Host: {self.host}:{self.port}",
                f"Content-Length: {len(body)}", "Content-Type: application/json"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        t0 = time.perf_counter_ns()
        sock.sendall(request)
        while b"\r\n\r\n" not in self.buf:
            self.buf += self._recv()
        raw_head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = raw_head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        hdrs = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        first_ns = 0
        out = bytearray()

        def seen(data: bytes) -> None:
            nonlocal first_ns
            start = max(0, len(out) - len(marker))
            out.extend(data)
            if not first_ns and marker in out[start:]:
                first_ns = time.perf_counter_ns() - t0

        if "content-length" in hdrs:
            remaining = int(hdrs["content-length"])
            while remaining > 0:
                if not self.buf:
                    self.buf = self._recv()
                take, self.buf = self.buf[:remaining], self.buf[remaining:]
                remaining -= len(take)
                seen(take)
        elif hdrs.get("transfer-encoding", "").lower() == "chunked":
            while True:
                while b"\r\n" not in self.buf:
                    self.buf += self._recv()
                size_line, self.buf = self.buf.split(b"\r\n", 1)
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    while b"\r\n" not in self.buf:
                        self.buf += self._recv()
                    # No trailers expected: drop the final CRLF.
                    self.buf = self.buf.split(b"\r\n", 1)[1]
                    break
                while len(self.buf) < size + 2:
                    if len(self.buf) < size:
                        seen_now = self.buf
                        self.buf = b""
                        seen(seen_now)
                        size -= len(seen_now)
                    self.buf += self._recv()
                seen(self.buf[:size])
                self.buf = self.buf[size + 2:]
        else:
            # Read to close.
            try:
                while True:
                    seen(self._recv())
            except HTTPError:
                pass
            self.close()
        total_ns = time.perf_counter_ns() - t0
        if hdrs.get("connection", "").lower() == "close":
            self.close()
        return Timed(status, first_ns, total_ns, bytes(out))


def slow_read(port: int, path: str, body: bytes, headers: dict[str, str], *, rate: float,
              max_seconds: float, rcvbuf: int) -> dict[str, object]:
    """
    Send one streaming request and read the answer at ``rate`` bytes/s at most.

    Stops at the end of the response or after ``max_seconds``, whichever is first.
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(30)
    s.connect(("127.0.0.1", port))
    head = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}",
            f"Content-Length: {len(body)}", "Content-Type: application/json",
            "Connection: close"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    s.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
    t0 = time.monotonic()
    got = 0
    tail = b""
    complete = False
    step = 16384
    while True:
        now = time.monotonic() - t0
        if now > max_seconds:
            break
        ahead = got / rate - now
        if ahead > 0:
            time.sleep(min(ahead, 0.05))
            continue
        try:
            data = s.recv(step)
        except TimeoutError:
            break
        if not data:
            break
        got += len(data)
        tail = (tail + data)[-64:]
        if b"message_stop" in tail:
            complete = True
    s.close()
    return {"bytes": got, "seconds": time.monotonic() - t0, "complete": complete}


def main() -> int:
    """``streamclient.py slowread PORT PATH BODYFILE --header K:V ... --rate B/s``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sr = sub.add_parser("slowread", help="read one stream slowly; print a JSON summary")
    sr.add_argument("port", type=int)
    sr.add_argument("path")
    sr.add_argument("body")
    sr.add_argument("--header", action="append", default=[])
    sr.add_argument("--rate", type=float, default=20e6, help="bytes per second")
    sr.add_argument("--max-seconds", type=float, default=120.0)
    sr.add_argument("--rcvbuf", type=int, default=65536)
    args = parser.parse_args()
    with open(args.body, "rb") as f:
        body = f.read()
    headers = dict(h.split(":", 1) for h in args.header)
    result = slow_read(args.port, args.path, body, {k: v.strip() for k, v in headers.items()},
                       rate=args.rate, max_seconds=args.max_seconds, rcvbuf=args.rcvbuf)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
