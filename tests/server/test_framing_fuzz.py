"""
Fuzzing HTTP framing against the relay's site in memory: mutated request heads and chunked
bodies, delivered in random pieces. Whatever arrives, the relay answers (never with a 5xx of
its own, never logging a traceback) or closes cleanly, and holds no timer or buffer after.
"""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from tests.relayproc import DEMO_KEY, config_text
from txrelay.config import parse_config
from txrelay.server.frontdoor import FrontDoorPolicy
from txrelay.server.resource import RelayResource
from txrelay.server.site import RelaySite
from txrelay.service import build_app

_BODY = json.dumps({"model": "sonnet", "max_tokens": 5,
                    "messages": [{"role": "user", "content": "hi"}]}).encode()
_KEY = b"x-api-key: " + DEMO_KEY.encode() + b"\r\n"


def _chunked(body: bytes, sizes: list[int]) -> bytes:
    out, rest = b"", body
    for size in sizes:
        if not rest:
            break
        piece, rest = rest[:size], rest[size:]
        out += b"%x\r\n" % len(piece) + piece + b"\r\n"
    if rest:
        out += b"%x\r\n" % len(rest) + rest + b"\r\n"
    return out + b"0\r\n\r\n"


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """A valid request, in one of the shapes clients send."""
    kind = draw(st.sampled_from(["length", "chunked", "get", "count", "expect"]))
    key = draw(st.sampled_from([_KEY, b"Authorization: Bearer " + DEMO_KEY.encode() + b"\r\n",
                                b"", b"x-api-key: nope\r\n"]))
    head = b"Host: relay\r\ncontent-type: application/json\r\n" + key
    if kind == "get":
        return b"GET /v1/models HTTP/1.1\r\n" + head + b"\r\n"
    path = b"/v1/messages/count_tokens" if kind == "count" else b"/v1/messages"
    line = b"POST " + path + b" HTTP/1.1\r\n"
    if kind == "chunked":
        sizes = draw(st.lists(st.integers(1, 40), max_size=5))
        return line + head + b"Transfer-Encoding: chunked\r\n\r\n" + _chunked(_BODY, sizes)
    if kind == "expect":
        head += b"Expect: 100-continue\r\n"
    return line + head + b"Content-Length: %d\r\n\r\n" % len(_BODY) + _BODY


_TOKENS = [b"\r\n", b"\n", b"\r", b" ", b":", b";", b"\x00", b"\xff", b"\xc3\xa9", b"\t",
           b"0", b"9" * 25, b"f" * 21, b"-1", b"chunked", b"Content-Length: 5\r\n",
           b"Transfer-Encoding: chunked\r\n", b"Content-Length: 99999999999\r\n",
           b"Expect: 100-continue\r\n", b"\r\n\r\n", b"HTTP/1.1", b"a" * 300]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """One or two requests with a few byte-level mutations."""
    data = draw(requests())
    if draw(st.booleans()):
        data += draw(requests())
    for _ in range(draw(st.integers(0, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["insert", "delete", "replace", "truncate", "dup"]))
        token = draw(st.sampled_from(_TOKENS) | st.binary(min_size=1, max_size=4))
        if op == "insert":
            data = data[:at] + token + data[at:]
        elif op == "delete":
            data = data[:at] + data[at + draw(st.integers(1, 8)):]
        elif op == "replace":
            data = data[:at] + token + data[at + len(token):]
        elif op == "truncate":
            data = data[:at]
        else:
            end = min(len(data), at + draw(st.integers(1, 40)))
            data = data[:end] + data[at:end] + data[end:]
    return data


_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3}) ")


def _site(clock: MemoryReactorClock) -> RelaySite:
    cfg = parse_config(tomllib.loads(config_text()), env={})
    app = build_app(cfg, clock)
    resource = RelayResource(app.pipeline, app.catalog, clock, access_log=False)
    policy = FrontDoorPolicy(max_request_bytes=4096, header_checks=app.header_checks)
    return RelaySite(resource, max_request_bytes=4096, timeout=75, reactor=clock,
                     front_door=policy)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(data=mutated(), cuts=st.lists(st.integers(1, 64), max_size=6))
def test_mutated_framing_gets_an_answer_or_a_clean_close(
    data: bytes, cuts: list[int], logged_failures: list[dict[str, Any]],
) -> None:
    logged_failures.clear()
    clock = MemoryReactorClock()
    site = _site(clock)
    channel = site.buildProtocol(None)
    transport = StringTransport()
    assert channel is not None
    channel.makeConnection(transport)
    rest = data
    for cut in cuts:
        if not rest:
            break
        channel.dataReceived(rest[:cut])
        rest = rest[cut:]
        clock.advance(0.01)
    if rest:
        channel.dataReceived(rest)
    for _ in range(120):  # past every deadline, the keep-alive timeout and the abort
        clock.advance(1)
        if transport.disconnected or (transport.disconnecting and not transport.producer):
            break
    out = transport.value()
    assert transport.disconnecting
    if data:
        assert out, data  # something of a request arrived: it got an answer
        first = out.removeprefix(b"HTTP/1.1 100 Continue\r\n\r\n")
        assert first.startswith(b"HTTP/1.1 "), out
        assert b"\r\nrequest-id: req_" in first.split(b"\r\n\r\n", 1)[0].lower(), out
    assert all(int(s) < 500 for s in _STATUS.findall(out)), out
    assert logged_failures == []
    channel.connectionLost(Failure(ConnectionLost()))
    assert site.buffer_budget.used == 0
    assert [c for c in clock.getDelayedCalls() if c.active()] == []


@pytest.mark.parametrize("data", [
    b"POST /v1/messages HTTP/1.1\r\n" + _KEY + b"Transfer-Encoding: chunked\r\n\r\n"
    + _chunked(_BODY, [10, 20])[:-2] + b"Trailer: x\r\n\r\n",
    b"POST /v1/messages HTTP/1.1\r\n" + _KEY + b"Content-Length: %d\r\n\r\n" % len(_BODY)
    + _BODY,
    b"GET /v1/models HTTP/1.1\r\n" + _KEY + b"\r\n",
])
def test_fuzz_baseline_requests_are_served(data: bytes) -> None:
    clock = MemoryReactorClock()
    site = _site(clock)
    channel = site.buildProtocol(None)
    transport = StringTransport()
    assert channel is not None
    channel.makeConnection(transport)
    channel.dataReceived(data)
    clock.advance(1)
    assert _STATUS.findall(transport.value()) == [b"200"]
