"""txrelay.leanreactor: the epoll reactor's cheaper loop dispatches, times and stops as before."""

from __future__ import annotations

import select
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet import error, protocol
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.pollreactor import PollReactor
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.python import log as legacy_log
from twisted.python.failure import Failure

from txrelay import leanreactor
from txrelay.leanreactor import LeanEPollReactor, install
from txrelay.logs import set_level


@pytest.fixture()
def events() -> Iterator[list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []
    observer: Any = seen.append
    globalLogPublisher.addObserver(observer)
    yield seen
    globalLogPublisher.removeObserver(observer)


@pytest.fixture()
def dispatch_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts Twisted's per-event ``log.callWithLogger`` wrapper (its own loop calls it)."""
    calls: list[int] = []
    real: Any = legacy_log.callWithLogger

    def counting(*a: Any, **kw: Any) -> Any:
        calls.append(a[4])
        return real(*a, **kw)

    monkeypatch.setattr(legacy_log, "callWithLogger", counting)
    return calls


def run(r: Any, limit: float = 10.0) -> None:
    """Run ``r`` until something stops it; fail if ``limit`` seconds pass first."""
    late = r.callLater(limit, r.stop)
    r.run(installSignalHandlers=False)
    assert late.called == 0, "the reactor did not stop in time"


def lean() -> Any:
    r = EPollReactor()
    assert install(r)
    return r


def test_twisted_private_contract() -> None:
    """If this fails, a Twisted upgrade changed what ``leanreactor`` relies on."""
    r: Any = EPollReactor()
    for name in ("_started", "_justStopped", "_newTimedCalls", "_pendingTimedCalls",
                 "_cancellations", "threadCallQueue", "running", "_poller", "_selectables",
                 "_doReadOrWrite", "_disconnectSelectable", "runUntilCurrent", "timeout",
                 "seconds", "_POLL_IN", "_POLL_OUT"):
        assert hasattr(r, name), name
    assert r._POLL_IN == select.EPOLLIN and r._POLL_OUT == select.EPOLLOUT
    assert isinstance(r._selectables, dict) and isinstance(r.threadCallQueue, list)
    assert r._started is False and r._justStopped is False and r._cancellations == 0
    # The loop this replaces: doIteration is doPoll, mainLoop is ReactorBase's.
    assert EPollReactor.doIteration is EPollReactor.doPoll
    assert "mainLoop" not in vars(EPollReactor)
    # callLater queues in _newTimedCalls; a turn moves it to the _pendingTimedCalls heap.
    call = r.callLater(100, lambda: None)
    assert r._newTimedCalls == [call] and r._pendingTimedCalls == []
    r.runUntilCurrent()
    assert r._newTimedCalls == [] and r._pendingTimedCalls == [call]
    assert call.time == pytest.approx(r.seconds() + 100, abs=1)
    call.cancel()
    assert r._cancellations == 1
    r.callFromThread(lambda: None)
    assert len(r.threadCallQueue) == 1
    # A reactor never run cannot be stopped; one started then stopped sets _justStopped.
    r.callWhenRunning(r.stop)
    r.callWhenRunning(lambda: stopping.append(r._justStopped))
    stopping: list[bool] = []
    r.run(installSignalHandlers=False)
    assert stopping == [True]


def test_install_only_on_the_plain_epoll_reactor(events: list[dict[str, Any]]) -> None:
    set_level("debug")
    try:
        r: Any = EPollReactor()
        assert install(r) and type(r) is LeanEPollReactor
        assert install(r)  # twice: still lean
        assert install(r, enabled=False) is False and type(r) is EPollReactor
        assert install(r, enabled=False) is False and type(r) is EPollReactor
        for other in (MemoryReactorClock(), PollReactor(),
                      type("Sub", (EPollReactor,), {})()):
            kind = type(other)
            assert install(other) is False and type(other) is kind
    finally:
        set_level("info")
    said = [e["log_format"] for e in events if e.get("log_namespace") == leanreactor.__name__]
    assert said.count("txrelay: lean reactor loop installed on the epoll reactor") == 1
    assert said.count("txrelay: lean reactor loop off (server.lean_reactor = false)") == 2
    assert said.count("txrelay: lean reactor loop not installed: {kind} is not "
                      "EPollReactor") == 3


class Echo(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class Client(protocol.Protocol):
    def __init__(self, payload: bytes, done: list[Any]) -> None:
        self.payload, self.done, self.got = payload, done, b""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.payload)

    def dataReceived(self, data: bytes) -> None:
        self.got += data
        if len(self.got) == len(self.payload):
            assert self.transport is not None
            self.transport.loseConnection()


def echo_round(r: Any, payload: bytes) -> tuple[bytes, list[Any]]:
    """Echo ``payload`` through a server on ``r``; the server's connectionLost reasons."""
    lost: list[Any] = []

    class Server(Echo):
        def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
            lost.append(reason.value)
            r.callLater(0, r.stop)

    port = r.listenTCP(0, protocol.Factory.forProtocol(Server), interface="127.0.0.1")
    client = Client(payload, lost)
    protocol.ClientCreator(r, lambda: client).connectTCP("127.0.0.1", port.getHost().port)
    run(r)
    return client.got, lost


@pytest.mark.parametrize("lean_loop", [True, False])
def test_reads_and_writes_dispatch(lean_loop: bool, dispatch_calls: list[int]) -> None:
    r: Any = EPollReactor()
    assert install(r, enabled=lean_loop) is lean_loop
    payload = b"x" * 3_000_000  # more than the socket buffers take: several doWrite turns
    got, lost = echo_round(r, payload)
    assert got == payload
    assert len(lost) == 1 and isinstance(lost[0], error.ConnectionDone)  # the client's FIN
    if lean_loop:  # no plain read or write went through the per-event log context
        assert all(e not in (select.EPOLLIN, select.EPOLLOUT) for e in dispatch_calls)
    else:  # the switch really gives Twisted's loop back
        assert dispatch_calls.count(select.EPOLLIN) > 1
        assert dispatch_calls.count(select.EPOLLOUT) > 1


def test_a_raising_handler_is_logged_and_the_loop_goes_on(events: list[dict[str, Any]]) -> None:
    r = lean()
    lost: list[Any] = []

    class Boom(protocol.Protocol):
        def dataReceived(self, data: bytes) -> None:
            raise ZeroDivisionError("handler bug")

        def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
            lost.append(reason.value)
            raise KeyError("connectionLost bug too")

    port = r.listenTCP(0, protocol.Factory.forProtocol(Boom), interface="127.0.0.1")
    sock = socket.create_connection(("127.0.0.1", port.getHost().port))
    sock.sendall(b"hello")
    fired: list[str] = []
    # After the broken connection: a timer still fires and a second connection still echoes.
    r.callLater(0.3, fired.append, "timer")
    run_after = r.callLater(0.3, lambda: None)
    assert run_after.active()
    port2 = r.listenTCP(0, protocol.Factory.forProtocol(Echo), interface="127.0.0.1")
    client = Client(b"still here", [])
    r.callLater(0.3, lambda: protocol.ClientCreator(r, lambda: client).connectTCP(
        "127.0.0.1", port2.getHost().port))
    r.callLater(1.0, r.stop)
    run(r)
    sock.close()
    assert len(lost) == 1 and isinstance(lost[0], ZeroDivisionError)
    assert fired == ["timer"] and client.got == b"still here"
    # Legacy log.err events, as Twisted's own loop logs them (keys as the observer gets them).
    failures = [e for e in events if e.get("log_failure", e.get("failure")) is not None]
    kinds = [e.get("log_failure", e.get("failure")).type  # type: ignore[union-attr]
             for e in failures]
    assert ZeroDivisionError in kinds and KeyError in kinds
    prefixes = {e.get("log_system", e.get("system")) for e in failures}
    assert prefixes == {"Boom,0,127.0.0.1"}  # the descriptor's logPrefix, as Twisted logs it


class Registered:
    """A bare descriptor on one end of a socket pair, recording what the reactor calls."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.calls: list[str] = []
        self.lost: list[Any] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return "Registered"

    def doRead(self) -> None:
        self.calls.append("read")
        self.sock.recv(100)

    def doWrite(self) -> None:
        self.calls.append("write")

    def connectionLost(self, reason: Failure) -> None:
        self.lost.append(reason.value)


def test_hangup_and_error_still_disconnect(dispatch_calls: list[int]) -> None:
    r = lean()
    listener = socket.create_server(("127.0.0.1", 0))
    sock = socket.create_connection(listener.getsockname())
    peer, _ = listener.accept()
    sock.setblocking(False)
    # Only registered for writing (and sent nothing): the reset peer is EPOLLERR|EPOLLHUP
    # without EPOLLIN, the path that disconnects with ConnectionLost.
    d = Registered(sock)

    def reset_peer() -> None:
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()

    def check() -> None:
        if d.lost:
            r.stop()
        else:
            r.callLater(0.02, check)

    r.callWhenRunning(reset_peer)
    r.callLater(0.2, r.addWriter, d)
    r.callLater(0.2, check)
    run(r)
    for s in (sock, listener):
        s.close()
    assert len(d.lost) == 1 and isinstance(d.lost[0], error.ConnectionLost)
    assert d not in r.getWriters() and d not in r.getReaders()
    assert any(e & select.EPOLLHUP for e in dispatch_calls)  # Twisted's own handling


def test_peer_close_of_a_reader_is_a_clean_disconnect() -> None:
    r = lean()
    a, b = socket.socketpair()
    a.setblocking(False)

    class Reader(Registered):
        def doRead(self) -> Any:
            self.calls.append("read")
            return a.recv(100) or error.ConnectionDone()

    d = Reader(a)
    r.addReader(d)
    r.callLater(0.05, b.close)
    r.callLater(0.3, r.stop)
    run(r)
    a.close()
    assert len(d.lost) == 1 and isinstance(d.lost[0], error.ConnectionDone)
    assert d not in r.getReaders()


def test_timers_fire_cancel_reset_and_threads_call_in() -> None:
    r = lean()
    seen: list[str] = []
    r.callLater(0.05, seen.append, "b")
    r.callLater(0.01, seen.append, "a")
    r.callLater(0.02, seen.append, "cancelled").cancel()
    later = r.callLater(0.03, seen.append, "delayed")
    later.delay(0.1)
    moved = r.callLater(10, seen.append, "reset")
    moved.reset(0.08)
    r.callLater(0.06, lambda: threading.Thread(
        target=r.callFromThread, args=(seen.append, "thread")).start())
    r.callLater(0.1, lambda: r.callLater(0, seen.append, "zero"))
    # Many cancelled timers far ahead are compacted away, as Twisted does.
    for _ in range(200):
        r.callLater(1000, seen.append, "never").cancel()
    shutdown: list[str] = []
    r.addSystemEventTrigger("before", "shutdown", shutdown.append, "before")
    r.callLater(0.3, r.stop)
    run(r)
    assert seen[:2] == ["a", "b"]
    assert sorted(seen) == sorted(["a", "b", "delayed", "reset", "thread", "zero"])
    assert seen.index("reset") < seen.index("delayed")
    assert shutdown == ["before"]
    assert len(r._pendingTimedCalls) < 100


def test_an_error_escaping_a_turn_is_logged_and_the_loop_goes_on(
        events: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    r = lean()
    real_poll = r._poller.poll
    raised: list[bool] = []

    class Poller:
        def poll(self, *a: Any) -> Any:
            if not raised:
                raised.append(True)
                raise RuntimeError("poller bug")
            return real_poll(*a)

    monkeypatch.setattr(r, "_poller", Poller())
    fired: list[int] = []
    r.callLater(0.05, fired.append, 1)
    r.callLater(0.1, r.stop)
    run(r)
    assert raised and fired == [1]
    assert any(e.get("log_format") == "Unexpected error in main loop"
               and e["log_failure"].type is RuntimeError for e in events)


def test_the_loop_sleeps_until_the_next_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    r = lean()
    waits: list[Any] = []
    real = r.doIteration

    def recording(t: Any) -> None:
        waits.append(t)
        real(t)

    monkeypatch.setattr(r, "doIteration", recording)
    r.callLater(0.2, r.stop)
    run(r)
    # Once running, no turn busy-waits: every wait is up to the next timer, or None.
    timed = [w for w in waits if w]
    assert timed and all(0 < w <= 10.0 for w in timed)
    assert len(waits) < 20


@pytest.mark.parametrize(("serve", "enabled"), [(False, True), (True, True), (True, False)])
def test_twistd_and_serve_install_it_per_the_switch(tmp_path: Any, serve: bool,
                                                    enabled: bool) -> None:
    import urllib.request

    from tests.relayproc import config_text, start_relay

    cfg = config_text(server={"lean_reactor": enabled}) + '\n[log]\nlevel = "debug"\n'
    relay = start_relay(tmp_path, cfg, serve=serve)
    try:
        with urllib.request.urlopen(relay.url + "/health", timeout=10) as answer:
            assert answer.status == 200
    finally:
        code = relay.stop()
    assert code == 0
    text = relay.log()
    assert ("lean reactor loop installed on the epoll reactor" in text) is enabled
    assert ("lean reactor loop off (server.lean_reactor = false)" in text) is not enabled
