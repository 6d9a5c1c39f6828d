"""
An in-memory harness for the server layer: the real :class:`RelaySite` and resource over
:class:`StringTransport` connections on a :class:`MemoryReactorClock`, responses parsed
with h11 so that HTTP framing (chunked terminator, ``Connection: close``) is checked too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import attrs
import h11
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel

from txrelay.catalog import ModelCatalog
from txrelay.config import RelayConfig, parse_config
from txrelay.metrics import Metrics
from txrelay.pipeline import Proceed
from txrelay.server.resource import Lifecycle, RelayResource
from txrelay.server.site import RelaySite
from txrelay.streams import EventSink

MESSAGES_BODY = {"model": "m", "max_tokens": 10,
                 "messages": [{"role": "user", "content": "hi"}]}


def demo_config(**server: Any) -> RelayConfig:
    """A minimal valid configuration on the demo backend."""
    return parse_config({
        "server": {"listen": ["tcp:0:interface=127.0.0.1"], "access_log": False, **server},
        "providers": [{"name": "demo", "kind": "demo"}],
        "models": [{"id": "m", "provider": "demo"}],
        "pipeline": [{"type": "model-map"}, {"type": "translate"}],
    }, env={})


@attrs.define(eq=False)
class FakeSource:
    """An event source the test drives by hand, recording what the server asked of it."""

    sink: EventSink | None = None
    paused: bool = False
    stopped: bool = False
    pauses: int = 0
    resumes: int = 0

    def start(self, sink: EventSink) -> None:
        self.sink = sink

    def pause(self) -> None:
        self.paused = True
        self.pauses += 1

    def resume(self) -> None:
        self.paused = False
        self.resumes += 1

    def stop(self) -> None:
        self.stopped = True


@attrs.define
class Response:
    """One parsed HTTP response."""

    status: int
    headers: dict[str, str]
    body: bytes
    #: The body's framing ended properly (content-length reached or chunked terminator).
    complete: bool

    def json(self) -> Any:
        return json.loads(self.body)

    def events(self) -> list[dict[str, Any]]:
        """The SSE events of the body, each checked to name its own type."""
        out = []
        for block in self.body.decode().split("\n\n"):
            if not block.strip():
                continue
            fields = dict(line.split(": ", 1) for line in block.split("\n"))
            data = json.loads(fields["data"])
            assert fields["event"] == data["type"], block
            out.append(data)
        return out

    def types(self) -> list[str]:
        return [e["type"] for e in self.events()]


@attrs.define(eq=False)
class Connection:
    """A client connection to the site, over a StringTransport."""

    channel: HTTPChannel
    transport: StringTransport
    _read: int = 0

    def send(self, data: bytes) -> None:
        self.channel.dataReceived(data)

    def post(self, path: str = "/v1/messages", body: Any = None, *,
             headers: Iterable[tuple[str, str]] = (), stream: bool = False) -> None:
        """Send one POST with a JSON body (``MESSAGES_BODY`` by default)."""
        payload = dict(MESSAGES_BODY if body is None else body)
        if stream:
            payload["stream"] = True
        data = json.dumps(payload).encode()
        head = [f"POST {path} HTTP/1.1", "host: relay", "content-type: application/json",
                f"content-length: {len(data)}", *(f"{k}: {v}" for k, v in headers)]
        self.send(("\r\n".join(head) + "\r\n\r\n").encode() + data)

    def get(self, path: str) -> None:
        self.send(f"GET {path} HTTP/1.1\r\nhost: relay\r\n\r\n".encode())

    def lose(self) -> None:
        """The client goes away."""
        self.channel.connectionLost(Failure(ConnectionDone()))

    @property
    def closing(self) -> bool:
        """The server asked to close the connection (loseConnection or abort)."""
        return bool(self.transport.disconnecting)

    def responses(self) -> list[Response]:
        """Every response written so far, parsed by h11 (the last may be incomplete)."""
        conn = h11.Connection(h11.CLIENT)

        def ask() -> None:  # h11 parses a response only after "sending" a request
            conn.send(h11.Request(method="GET", target="/", headers=[("host", "relay")]))
            conn.send(h11.EndOfMessage())

        ask()
        data = self.transport.value()
        if not data:
            return []
        conn.receive_data(data)  # (h11 takes b"" for end of file)
        out: list[Response] = []
        while True:
            event = conn.next_event()
            if event is h11.PAUSED and conn.states == {h11.CLIENT: h11.DONE,
                                                       h11.SERVER: h11.DONE}:
                conn.start_next_cycle()
                ask()
                continue
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return out
            if isinstance(event, h11.Response):
                out.append(Response(event.status_code,
                                    {k.decode(): v.decode("latin-1")
                                     for k, v in event.headers}, b"", False))
            elif isinstance(event, h11.Data):
                out[-1].body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                out[-1].complete = True
            elif isinstance(event, h11.ConnectionClosed):
                return out

    def response(self) -> Response:
        """The only (or last) response."""
        found = self.responses()
        assert found, f"no response yet: {self.transport.value()!r}"
        return found[-1]


@attrs.define(eq=False)
class Harness:
    """
    A resource and its site. The resource's timers (pings) run on ``clock``, the site's
    (idle connections) on its own reactor, so a test sees exactly the timers the resource
    left behind.
    """

    clock: Clock
    resource: RelayResource
    site: RelaySite

    @classmethod
    def over(cls, pipeline: Proceed, *, ping_interval: float = 10.0,
             metrics: bool = False, lifecycle: Lifecycle | None = None) -> Harness:
        clock = Clock()
        cfg = demo_config()
        resource = RelayResource(pipeline, ModelCatalog.from_config(cfg), clock,
                                 ping_interval, False, lifecycle or Lifecycle(),
                                 Metrics() if metrics else None)
        site = RelaySite(resource, max_request_bytes=1 << 20, timeout=75,
                         reactor=MemoryReactorClock())
        return cls(clock, resource, site)

    def connect(self) -> Connection:
        return connect(self.site)


class ClosingTransport(StringTransport):
    """A StringTransport whose close reaches the protocol on the next reactor turn."""

    def __init__(self, reactor: Clock, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reactor = reactor
        self.protocol: Any = None

    def loseConnection(self) -> None:
        if self.disconnecting:
            return
        super().loseConnection()
        self.reactor.callLater(0, self.protocol.connectionLost, Failure(ConnectionDone()))


def connect(site: RelaySite, closing_on: Clock | None = None) -> Connection:
    """
    Open one in-memory client connection to ``site``; with ``closing_on``, a close
    requested by the server completes (``connectionLost``) when that clock next runs.
    """
    address = IPv4Address("TCP", "127.0.0.1", 40000)
    channel = site.buildProtocol(address)
    assert channel is not None
    transport: StringTransport
    if closing_on is not None:
        transport = ClosingTransport(closing_on, peerAddress=address)
        transport.protocol = channel
    else:
        transport = StringTransport(peerAddress=address)
    channel.makeConnection(transport)
    return Connection(channel, transport)  # type: ignore[arg-type]
