"""
The one-read request head (``FrontDoorChannel._one_read_head``) against the line-by-line
path: for valid and damaged heads, whole or split at every byte, pipelined or not, both
paths give the resource the same requests and the client the same bytes.
"""

from __future__ import annotations

import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.web.resource import Resource

from tests.fuzz.conftest import examples
from tests.server.test_channel import KEY, LIMIT, MALFORMED
from txrelay.config import hash_key
from txrelay.server.channel import FrontDoorChannel
from txrelay.server.frontdoor import FrontDoorPolicy
from txrelay.server.site import RelaySite
from txrelay.stages.auth import AuthStage

SETTINGS = settings(max_examples=examples(150), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class Record(Resource):
    """Answers with a fixed body; records every request it is given."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[Any, ...]] = []

    def render(self, request: Any) -> bytes:
        self.seen.append((request.method, request.uri, request.clientproto,
                          list(request.requestHeaders.getAllRawHeaders()),
                          request.content.getvalue()))
        return b"ok"


def run(chunks: list[bytes], fast: bool) -> tuple[list[tuple[Any, ...]], bytes, tuple[Any, ...]]:
    """Feed ``chunks`` to a fresh channel; what the resource saw, what was sent, the state."""
    clock = MemoryReactorClock()
    resource = Record()
    policy = FrontDoorPolicy(max_request_bytes=LIMIT, max_buffered_bytes=4 * LIMIT,
                             max_head_bytes=1024,
                             header_checks=(AuthStage({"k": bytes.fromhex(hash_key(KEY))}),))
    site = RelaySite(resource, max_request_bytes=LIMIT, timeout=75, reactor=clock,
                     front_door=policy)
    channel = site.buildProtocol(None)
    assert isinstance(channel, FrontDoorChannel)
    channel.fast_head = fast
    transport = StringTransport()
    channel.makeConnection(transport)
    for chunk in chunks:
        channel.dataReceived(chunk)
    sent = re.sub(rb"req_[A-Za-z0-9]+", b"req_X", transport.value())
    sent = re.sub(rb"(?im)^date: [^\r\n]*", b"date: X", sent)
    state = (channel._phase, channel._method, channel._target, channel._head_bytes,
             channel._seen_request_line, bool(channel.persistent), channel.line_mode,
             channel._buffer, channel.length, len(channel.requests), transport.disconnecting,
             site.buffer_budget.used, channel._head_received)
    return resource.seen, sent, state


def same_at_every_split(raw: bytes) -> None:
    whole = run([raw], fast=True)
    assert whole == run([raw], fast=False)
    for k in range(1, len(raw)):
        chunks = [raw[:k], raw[k:]]
        assert run(chunks, fast=True) == run(chunks, fast=False), k


AUTH = b"x-api-key: " + KEY.encode()
header_names = st.sampled_from([b"Host", b"host", b"Content-Type", b"Accept", b"X-Thing",
                                b"Expect", b"Connection", b"User-Agent", b"anthropic-beta"])
header_values = st.sampled_from([b"x", b"relay:8080", b"application/json", b"100-continue",
                                 b"close", b"keep-alive", b"a\tb", b" padded ", b"\xc3\xa9",
                                 b""])
headers = st.lists(st.tuples(header_names, header_values).map(lambda t: t[0] + b": " + t[1]),
                   max_size=6)
bodies = st.sampled_from([b"", b"{}", b'{"model":"m"}', b"x" * 300])


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    method, path = draw(st.sampled_from([(b"POST", b"/v1/messages"), (b"GET", b"/health"),
                                         (b"POST", b"/v1/messages/count_tokens?beta=true"),
                                         (b"GET", b"/v1/models")]))
    lines = [method + b" " + path + b" " + draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]))]
    lines += draw(headers)
    if draw(st.booleans()):
        lines.append(AUTH)
    body = draw(bodies)
    if draw(st.booleans()) or body:
        if draw(st.booleans()):
            lines.append(b"Transfer-Encoding: chunked")
            body = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
        else:
            lines.append(b"Content-Length: %d" % len(body))
    order = draw(st.permutations(range(1, len(lines))))
    lines = [lines[0]] + [lines[i] for i in order]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


DAMAGE = [b"\n", b"\r", b"\r\n", b"\x00", b"\x7f", b" ", b"\t", b":", b"\r\n ", b"\r\n\t",
          b"\xff", b"\r\n\r\n", b"a" * 1100]


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    raw = draw(requests())
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(raw)))
        if draw(st.booleans()):
            raw = raw[:at] + draw(st.sampled_from(DAMAGE)) + raw[at:]
        else:
            raw = raw[:at] + raw[at + draw(st.integers(1, 4)):]
    return raw


@SETTINGS
@given(requests())
def test_valid_requests_are_the_same_on_both_paths(raw: bytes) -> None:
    same_at_every_split(raw)


@SETTINGS
@given(damaged())
def test_damaged_requests_are_answered_the_same_on_both_paths(raw: bytes) -> None:
    same_at_every_split(raw)


@SETTINGS
@given(st.lists(requests() | damaged(), min_size=2, max_size=3))
def test_pipelined_requests_are_the_same_on_both_paths(raws: list[bytes]) -> None:
    raw = b"".join(raws)
    assert run([raw], fast=True) == run([raw], fast=False)
    for k in range(1, len(raw), max(1, len(raw) // 40)):
        chunks = [raw[:k], raw[k:]]
        assert run(chunks, fast=True) == run(chunks, fast=False), k


def test_the_front_door_table_is_the_same_on_both_paths() -> None:
    for _, raw, _status in MALFORMED:
        assert run([raw], fast=True) == run([raw], fast=False), raw[:80]
        assert run([raw[:60], raw[60:]], fast=True) == run([raw[:60], raw[60:]], fast=False)


def test_a_plain_head_takes_the_fast_path() -> None:
    raw = b"POST /v1/messages HTTP/1.1\r\nHost: x\r\n" + AUTH + b"\r\nContent-Length: 2\r\n\r\n{}"
    taken: list[bool] = []

    class Spy(FrontDoorChannel):
        def _one_read_head(self, data: bytes) -> bool:
            taken.append(result := super()._one_read_head(data))
            return result

    site = RelaySite(Record(), max_request_bytes=LIMIT, timeout=75,
                     reactor=MemoryReactorClock())
    site.protocol = Spy  # type: ignore[assignment]
    channel = site.buildProtocol(None)
    assert isinstance(channel, Spy)
    channel.makeConnection(StringTransport())
    channel.dataReceived(raw)
    channel.dataReceived(b"GET /health HTTP/1.1\r\n folded\r\n\r\n")
    assert taken == [True, False]
