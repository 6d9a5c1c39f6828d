"""
The drain in memory (7.6): readiness, 529s during the drain, pings through it, and the
ceiling, where every live stream gets an ``overloaded_error`` event and a complete
response, pending non-streamed requests a 529, and the drain ends once that is flushed.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock

from tests.server.conftest import failures
from tests.server.memory import FakeSource, Harness, connect, demo_config
from txrelay.catalog import ModelCatalog
from txrelay.pipeline import Exchange, Reply
from txrelay.server.resource import CEILING_ERROR
from txrelay.service import FLUSH_GRACE, App, RelayService
from txrelay.streams import EventStream
from txrelay.testing import text_events

CEILING = 5.0


@attrs.define(eq=False)
class Backend:
    """Records its close; optionally fails it."""

    fail: bool = False
    closed: bool = False

    def close(self) -> None:
        self.closed = True
        if self.fail:
            raise RuntimeError("close failed")


@attrs.define(eq=False)
class Relay:
    service: RelayService
    reactor: MemoryReactorClock
    sources: list[FakeSource]
    backend: Backend

    def connect(self) -> Any:
        return connect(self.service.site, closing_on=self.reactor)

    def source(self, i: int = -1) -> FakeSource:
        return self.sources[i]


def relay(*, fail_close: bool = False, **server: Any) -> Relay:
    """A RelayService on a fake reactor whose replies come from hand-driven sources."""
    reactor = MemoryReactorClock()
    cfg = demo_config(drain_timeout=CEILING, ping_interval=1.0, **server)
    sources: list[FakeSource] = []

    async def pipeline(exchange: Exchange) -> Reply:
        sources.append(FakeSource())
        return Reply(stream=EventStream(sources[-1]))

    backend = Backend(fail=fail_close)
    app = App(cfg, pipeline, ModelCatalog.from_config(cfg), {"demo": backend})
    service = RelayService(app, reactor)
    service.startService()
    return Relay(service, reactor, sources, backend)


def test_listens_through_endpoints_and_keeps_the_ports() -> None:
    r = relay(listen=["tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.2"])
    assert [s[3] for s in r.reactor.tcpServers] == ["127.0.0.1", "127.0.0.2"]
    assert len(r.service.ports) == 2
    r.service.stopService()
    assert r.service.ports == []


async def never(exchange: Exchange) -> Reply:
    return await Deferred()


class BusyReactor(MemoryReactorClock):
    def listenTCP(self, port: int, factory: Any, backlog: int = 50,
                  interface: str = "") -> Any:
        raise CannotListenError(interface, port, OSError(98, "Address already in use"))


def test_a_busy_port_stops_start_up_with_a_clear_message() -> None:
    cfg = demo_config(listen=["tcp:8123:interface=127.0.0.1"])
    app = App(cfg, never, ModelCatalog.from_config(cfg), {})
    service = RelayService(app, BusyReactor())
    with pytest.raises(SystemExit) as info:
        service.startService()
    message = str(info.value.code)
    assert "cannot listen on 'tcp:8123:interface=127.0.0.1'" in message
    assert "Address already in use" in message


@attrs.define
class RecordingPort:
    stopped: bool = False

    def stopListening(self) -> None:
        self.stopped = True


class PartlyBusyReactor(MemoryReactorClock):
    def __init__(self) -> None:
        super().__init__()
        self.ports: list[RecordingPort] = []

    def listenTCP(self, port: int, factory: Any, backlog: int = 50,
                  interface: str = "") -> Any:
        if interface == "127.0.0.2":
            raise CannotListenError(interface, port, OSError(98, "Address already in use"))
        self.ports.append(RecordingPort())
        return self.ports[-1]


def test_a_port_bound_before_the_failure_is_released() -> None:
    cfg = demo_config(listen=["tcp:8123:interface=127.0.0.1", "tcp:8123:interface=127.0.0.2"])
    reactor = PartlyBusyReactor()
    service = RelayService(App(cfg, never, ModelCatalog.from_config(cfg), {}), reactor)
    with pytest.raises(SystemExit) as info:
        service.startService()
    assert "'tcp:8123:interface=127.0.0.2'" in str(info.value.code)
    assert [p.stopped for p in reactor.ports] == [True] and service.ports == []


@attrs.define
class LateEndpoint:
    result: Deferred[Any] = attrs.Factory(Deferred)

    def listen(self, factory: Any) -> Deferred[Any]:
        return self.result


def test_an_endpoint_that_fails_later_stops_the_reactor(
    monkeypatch: pytest.MonkeyPatch, logged: list[dict[str, Any]],
) -> None:
    endpoint = LateEndpoint()
    monkeypatch.setattr("txrelay.service.serverFromString", lambda reactor, d: endpoint)
    reactor = MemoryReactorClock()
    # A running reactor (Twisted before 26 starts a MemoryReactor with hasStopped true).
    reactor.running, reactor.hasStopped = True, False
    cfg = demo_config(listen=["later:thing"])
    service = RelayService(App(cfg, never, ModelCatalog.from_config(cfg), {}), reactor)
    service.startService()
    assert not reactor.hasStopped
    endpoint.result.errback(CannotListenError("", 1, OSError(13, "Permission denied")))
    assert reactor.hasStopped
    assert [e["description"] for e in failures(logged)] == ["later:thing"]


def test_readiness_and_new_requests_during_the_drain() -> None:
    r = relay()
    idle = r.connect()
    ready_conn, post_conn = r.connect(), r.connect()
    # Two requests still arriving when the drain starts: the connections are not idle.
    ready_conn.send(b"GET /health/ready HTTP/1.1\r\nhost: relay\r\n")
    body = b'{"model": "m", "max_tokens": 5, "messages": []}'
    post_conn.send(b"POST /v1/messages HTTP/1.1\r\nhost: relay\r\ncontent-length: %d\r\n"
                   b"\r\n%s" % (len(body), body[:10]))
    done = r.service.stopService()
    assert idle.closing  # an idle keep-alive connection closes at once
    assert not ready_conn.closing and not post_conn.closing
    ready_conn.send(b"\r\n")
    post_conn.send(body[10:])
    ready, refused = ready_conn.response(), post_conn.response()
    assert ready.status == 503 and ready.json() == {"status": "draining"}
    assert refused.status == 529 and refused.headers["retry-after"]
    assert refused.json()["error"]["type"] == "overloaded_error"
    assert refused.headers["connection"] == "close" and post_conn.closing
    assert ready_conn.closing
    r.reactor.advance(0)
    assert done.called  # nothing was live


def test_live_streams_keep_their_pings_and_get_an_overloaded_error_at_the_ceiling(
    logged: list[dict[str, Any]],
) -> None:
    r = relay()
    stream = r.connect()
    stream.post(stream=True)
    source = r.source()
    assert source.sink is not None
    source.sink.write_events(text_events("abcdef")[:3])
    pending = r.connect()
    pending.post()  # non-streaming, still folding at the ceiling
    done = r.service.stopService()
    r.reactor.pump([0.5] * int((CEILING - 0.5) / 0.5))
    # The three events written carry the one ping a real stream has after message_start.
    assert stream.response().types()[3:].count("ping") == 4  # pings go on while draining
    assert not done.called and not stream.response().complete
    r.reactor.advance(0.5)  # the ceiling
    resp = stream.response()
    assert resp.complete  # chunked terminator written
    assert resp.types()[-1] == "error"
    assert resp.events()[-1]["error"] == CEILING_ERROR.error_object()
    assert source.stopped
    assert not [c for c in r.reactor.getDelayedCalls() if "ping" in repr(c.func)]
    assert stream.channel.requests == []  # finished, its producer unregistered
    folded = pending.response()
    assert folded.status == 529 and folded.complete
    assert folded.json()["error"]["type"] == "overloaded_error"
    assert folded.headers["connection"] == "close"  # marked non-persistent in flight
    assert all(s.stopped for s in r.sources)
    r.reactor.advance(0)  # the connections close once flushed: no fixed wait
    assert done.called and r.backend.closed
    assert not r.service.running
    assert failures(logged) == []


def test_a_drain_ends_as_soon_as_the_live_requests_finish() -> None:
    r = relay()
    stream = r.connect()
    stream.post(stream=True)
    done = r.service.stopService()
    r.reactor.advance(1)
    source = r.source()
    assert source.sink is not None
    source.sink.write_events(text_events("abc"))
    source.sink.end(None)
    resp = stream.response()
    assert resp.complete and resp.types()[-1] == "message_stop"
    assert stream.closing
    r.reactor.advance(0)
    assert done.called
    assert r.reactor.seconds() == 1


def test_connections_that_do_not_flush_are_aborted_after_the_grace(
    logged: list[dict[str, Any]],
) -> None:
    r = relay()
    stuck = connect(r.service.site)  # its close never completes
    stuck.post(stream=True)
    done = r.service.stopService()
    r.reactor.advance(CEILING)
    assert stuck.response().types()[-1] == "error"
    assert not done.called
    r.reactor.advance(FLUSH_GRACE)
    assert stuck.transport.disconnected  # aborted
    assert done.called
    assert any("did not flush" in str(e.get("log_format")) for e in logged)


def test_a_failure_while_stopping_is_logged(logged: list[dict[str, Any]]) -> None:
    r = relay(fail_close=True)
    done = r.service.stopService()
    assert done.called
    logged_failures = failures(logged)
    assert len(logged_failures) == 1
    assert logged_failures[0]["name"] == "demo"
    assert "close failed" in str(logged_failures[0]["log_failure"].value)


def test_abort_all_answers_pending_requests_of_a_bare_resource() -> None:
    waiting: Deferred[Reply] = Deferred()

    async def slow(exchange: Exchange) -> Reply:
        return await waiting

    h = Harness.over(slow)
    conn = h.connect()
    conn.post()
    assert h.resource.lifecycle.abort_all(CEILING_ERROR) == 1
    resp = conn.response()
    assert resp.status == 529 and resp.json()["error"] == CEILING_ERROR.error_object()
    assert not h.resource.lifecycle.live
