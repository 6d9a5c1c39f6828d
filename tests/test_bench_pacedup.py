"""bench/pacedup.py, the benchmark's paced upstream: its request parsing and response framing."""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_pacedup", ROOT / "bench" / "pacedup.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pacedup = _load()

CANNED = b"".join(b'data: {"n":%d}\n\n' % i for i in range(5)) + b"data: [DONE]\n\n"


def _request(body: bytes, chunked: bool, pieces: int = 1) -> bytes:
    head = b"POST /trickle/stream/v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
    if not chunked:
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    step = max(1, -(-len(body) // pieces))
    parts = [body[i:i + step] for i in range(0, len(body), step)]
    return (head + b"Transfer-Encoding: chunked\r\n\r\n"
            + b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n")


@given(body=st.binary(max_size=300), chunked=st.booleans(), pieces=st.integers(1, 5))
def test_a_request_parses_only_once_complete_and_takes_exactly_its_bytes(
        body: bytes, chunked: bool, pieces: int) -> None:
    one = _request(body, chunked, pieces)
    data = one + b"GET /health HTTP/1.1\r\n\r\n"
    for cut in range(len(one)):
        assert pacedup.parse_request(data[:cut]) is None
    method, path, headers, got, used = pacedup.parse_request(data)
    assert (method, path, got, used) == ("POST", "/trickle/stream/v1/chat/completions", body,
                                         len(one))
    assert headers["host"] == "x"
    assert pacedup.parse_request(data[used:])[:2] == ("GET", "/health")


@pytest.mark.parametrize("raw", [
    b"nonsense\r\n\r\n",
    b"POST / HTTP/1.1\r\nno colon here\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: many\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcd\r\n",
])
def test_malformed_requests_are_refused(raw: bytes) -> None:
    with pytest.raises(pacedup.BadRequest):
        pacedup.parse_request(raw)


def _dechunk(data: bytes) -> bytes:
    body, end = pacedup.dechunk(data, 0)
    assert end == len(data)
    return bytes(body)


def test_stream_items_are_the_canned_answer_one_event_per_http_chunk() -> None:
    items = pacedup.stream_items(CANNED)
    assert items[0].startswith(pacedup.SSE_HEAD)
    assert items[-1] == b"0\r\n\r\n"
    events = [items[0][len(pacedup.SSE_HEAD):], *items[1:-1]]
    assert [_dechunk(e + b"0\r\n\r\n") for e in events] == pacedup.sse_events(CANNED)
    assert _dechunk(b"".join(events) + items[-1]) == CANNED
    assert len(events) == CANNED.count(b"\n\n")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_server_streams_paced_answers_on_a_kept_alive_connection(tmp_path: Path) -> None:
    canned = tmp_path / "stream" / "v1" / "chat"
    canned.mkdir(parents=True)
    (canned / "completions").write_bytes(CANNED)
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "pacedup.py"), str(port), "--fixtures",
         str(tmp_path), "--trickle-ms", "1", "--max-seconds", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith(b"pacedup listening on")
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        path = "/trickle/stream/v1/chat/completions"
        c.request("POST", path, json.dumps({"stream": True}))
        r = c.getresponse()
        assert (r.status, r.getheader("content-type")) == (200, "text/event-stream")
        assert r.read() == CANNED
        c.request("POST", path, json.dumps({"stream": False}))  # same connection
        r = c.getresponse()
        assert json.loads(r.read())["object"] == "chat.completion"
        c.request("POST", "/trickle/nothing/v1/chat/completions", b"{}")
        r = c.getresponse()
        assert r.status == 404
        r.read()
        c.request("GET", "/stats")
        stats = json.loads(c.getresponse().read())
        assert (stats["requests"], stats["streams"], stats["streams_done"]) == (4, 1, 1)
        assert stats["chunks"] == len(pacedup.stream_items(CANNED))
        assert stats["connections"] == 1
        c.close()
        os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.returncode == 0
        assert proc.stdout.read().startswith(b"pacedup: 1 streams,")
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()
