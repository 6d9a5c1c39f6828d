"""Malformed, oversized, unauthenticated and slow HTTP against the real relay, in raw bytes."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.relayproc import DEMO_KEY, Relay, config_text, start_relay
from tests.server.test_channel import LIMIT, MALFORMED

pytestmark = pytest.mark.integration

HEADER_TIMEOUT = 3.0


@pytest.fixture(scope="module")
def strict_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    r = start_relay(tmp_path_factory.mktemp("frontdoor"), config_text(server={
        "listen": ["tcp:0:interface=127.0.0.1:backlog=1024"], "max_request_bytes": LIMIT,
        "header_timeout": HEADER_TIMEOUT, "min_body_rate": 1000, "body_grace": 2}))
    yield r
    r.stop()


def exchange(relay: Relay, data: bytes, *, timeout: float = 5.0) -> tuple[bytes, float]:
    """Send ``data``, read until the relay closes; the bytes read and the seconds it took."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", relay.port), timeout=timeout) as s:
        # The relay may answer and close before taking everything.
        with contextlib.suppress(OSError):
            s.sendall(data)
        return read_all(s), time.monotonic() - started


def read_all(s: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return out
        if not chunk:
            return out
        out += chunk


def assert_answer(raw: bytes, status: int, error_type: str) -> dict[str, Any]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, raw
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith(f"HTTP/1.1 {status} "), raw
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    payload = json.loads(body)
    assert payload["type"] == "error"
    assert payload["error"]["type"] == error_type
    assert payload["request_id"] == headers["request-id"]
    assert headers["request-id"].startswith("req_")
    return payload


_TYPES = {400: "invalid_request_error", 413: "request_too_large",
          414: "invalid_request_error", 431: "invalid_request_error"}


@pytest.mark.parametrize(("data", "status"), [(d, s) for _, d, s in MALFORMED],
                         ids=[name for name, _, _ in MALFORMED])
def test_every_malformed_request_gets_an_answer_at_once(
    strict_relay: Relay, data: bytes, status: int,
) -> None:
    raw, seconds = exchange(strict_relay, data)
    assert_answer(raw, status, _TYPES[status])
    assert seconds < HEADER_TIMEOUT  # answered, not timed out
    assert "Traceback" not in strict_relay.log()


def test_a_huge_declared_body_is_refused_while_it_is_being_sent(strict_relay: Relay) -> None:
    rss_before = strict_relay.rss_kib()
    with socket.create_connection(("127.0.0.1", strict_relay.port), timeout=5) as s:
        s.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: " + DEMO_KEY.encode()
                  + b"\r\nContent-Length: 10000000000\r\n\r\n")
        sent = 0
        try:
            for _ in range(200):
                sent += s.send(b"x" * 65536)
        except OSError:
            pass  # the relay stopped reading and closed
        raw = read_all(s)
    assert_answer(raw, 413, "request_too_large")
    assert sent < 200 * 65536
    assert strict_relay.rss_kib() - rss_before < 20_000


def test_expect_continue_gets_an_early_answer(strict_relay: Relay) -> None:
    head = (b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"content-type: application/json\r\n")
    raw, _ = exchange(strict_relay, head + b"Content-Length: 100\r\n\r\n")
    assert b"100 Continue" not in raw
    assert_answer(raw, 401, "authentication_error")
    raw, _ = exchange(strict_relay, head + b"x-api-key: " + DEMO_KEY.encode()
                      + b"\r\nContent-Length: 100000\r\n\r\n")
    assert b"100 Continue" not in raw
    assert_answer(raw, 413, "request_too_large")

    body = json.dumps({"model": "sonnet", "max_tokens": 5,
                       "messages": [{"role": "user", "content": "x"}]}).encode()
    with socket.create_connection(("127.0.0.1", strict_relay.port), timeout=5) as s:
        s.sendall(head + b"x-api-key: " + DEMO_KEY.encode()
                  + b"\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body))
        assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(body)
        assert read_all(s).startswith(b"HTTP/1.1 200 OK")


def test_unauthenticated_bodies_are_not_read(strict_relay: Relay) -> None:
    raw, _ = exchange(strict_relay, b"POST /v1/messages HTTP/1.1\r\nHost: x\r\n"
                      b"x-api-key: wrong\r\nContent-Length: 4000\r\n\r\n")
    assert_answer(raw, 401, "authentication_error")


def test_slowloris_connections_are_dropped_after_the_header_deadline(
    strict_relay: Relay,
) -> None:
    # 300 connections, each sending one header line a second, never finishing the head.
    conns: dict[socket.socket, float] = {}
    answers: dict[socket.socket, tuple[bytes, float]] = {}
    try:
        for _ in range(300):
            s = socket.create_connection(("127.0.0.1", strict_relay.port), timeout=10)
            s.sendall(b"POST /v1/messages HTTP/1.1\r\n")
            conns[s] = time.monotonic()
        line = 0
        while len(answers) < len(conns) and line < HEADER_TIMEOUT + 5:
            time.sleep(1)
            line += 1
            alive = [s for s in conns if s not in answers]
            readable, _, _ = select.select(alive, [], [], 0)
            for s in alive:
                if s in readable:
                    answers[s] = (read_all(s), time.monotonic() - conns[s])
                else:
                    with contextlib.suppress(OSError):
                        s.sendall(b"X-Slow-%d: 1\r\n" % line)
        assert len(answers) == len(conns)
        for raw, lived in answers.values():
            assert HEADER_TIMEOUT - 0.5 < lived < HEADER_TIMEOUT + 2.5
            assert_answer(raw, 408, "timeout_error")
    finally:
        for s in conns:
            s.close()
    ok, _ = exchange(strict_relay, b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200 OK")


def test_a_trickling_body_is_dropped(strict_relay: Relay) -> None:
    with socket.create_connection(("127.0.0.1", strict_relay.port), timeout=10) as s:
        s.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: " + DEMO_KEY.encode()
                  + b"\r\nContent-Length: 4000\r\n\r\n")
        started = time.monotonic()
        try:
            while time.monotonic() - started < 8:
                s.sendall(b"x")
                time.sleep(0.2)
        except OSError:
            pass
        assert_answer(read_all(s), 408, "timeout_error")
        assert time.monotonic() - started < 6



def test_the_sdk_sees_the_early_401_while_uploading_a_big_body(relay: Relay) -> None:
    import anthropic

    rss_before = relay.rss_kib()
    with (anthropic.Anthropic(base_url=relay.url, api_key="wrong", max_retries=0) as bad,
          pytest.raises(anthropic.AuthenticationError)):
        bad.messages.create(model="sonnet", max_tokens=5,
                            messages=[{"role": "user", "content": "x" * 20_000_000}])
    assert relay.rss_kib() - rss_before < 10_000  # the body was not buffered
