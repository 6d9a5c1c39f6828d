"""
The admin endpoints and configuration reload in memory (issue 11.1, 11.4): admin keys,
``POST``/``DELETE /admin/drain``, ``GET /admin/streams``, the end-of-stream check, the
admin listener, readiness after every endpoint, and reload's swap for new requests while
live ones finish on the old configuration and its backends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel

from tests.relayproc import config_text
from tests.server.conftest import failures
from tests.server.memory import FakeSource, connect, demo_config
from txrelay.catalog import ModelCatalog, Route
from txrelay.config import ConfigError, hash_key
from txrelay.pipeline import Exchange, Reply
from txrelay.server.resource import InFlight, Lifecycle
from txrelay.service import App, RelayService
from txrelay.streams import EventStream
from txrelay.tap import load_checked
from txrelay.testing import text_events

ADMIN_KEY = "txrelay-admin-key"
ADMIN = [{"name": "ops", "sha256": hash_key(ADMIN_KEY)}]


@attrs.define(eq=False)
class Backend:
    closed: int = 0
    fail: bool = False

    def close(self) -> None:
        self.closed += 1
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

    def source(self) -> FakeSource:
        return self.sources[-1]

    def admin(self, method: str, path: str, key: str | None = ADMIN_KEY,
              header: str = "authorization", site: Any = None) -> Any:
        conn = connect(site or self.service.site, closing_on=self.reactor)
        lines = [f"{method} {path} HTTP/1.1", "host: relay", "content-length: 0"]
        if key is not None:
            lines.append(f"authorization: Bearer {key}" if header == "authorization"
                         else f"x-api-key: {key}")
        conn.send(("\r\n".join(lines) + "\r\n\r\n").encode())
        return conn.response()


def relay(config_path: str | None = None, **server: Any) -> Relay:
    """A RelayService whose replies come from hand-driven sources, with admin keys."""
    reactor = MemoryReactorClock()
    server.setdefault("admin_keys", ADMIN)
    cfg = demo_config(drain_timeout=5.0, ping_interval=1.0, **server)
    sources: list[FakeSource] = []

    async def pipeline(exchange: Exchange) -> Reply:
        exchange.client = "tester"
        exchange.route = Route("sonnet", "demo", "demo-upstream", None)
        sources.append(FakeSource())
        return Reply(stream=EventStream(sources[-1]))

    backend = Backend()
    app = App(cfg, pipeline, ModelCatalog.from_config(cfg), {"demo": backend})
    service = RelayService(app, reactor, config_path)
    service.startService()
    return Relay(service, reactor, sources, backend)


def error_of(resp: Any) -> dict[str, Any]:
    body = resp.json()
    assert body["type"] == "error" and body["request_id"] == resp.headers["request-id"]
    return body["error"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("path", ["/admin/drain", "/admin/streams", "/admin/reload"])
def test_admin_endpoints_need_an_admin_key(path: str) -> None:
    r = relay()
    method = "POST" if path == "/admin/reload" else "GET"
    missing = r.admin(method, path, key=None)
    assert missing.status == 401 and error_of(missing)["type"] == "authentication_error"
    wrong = r.admin(method, path, key="not-it")
    assert wrong.status == 401 and error_of(wrong)["message"] == "invalid admin key"
    assert not r.service.lifecycle.draining
    assert r.admin("GET", "/admin/drain", header="x-api-key").status == 200


def test_without_admin_keys_the_admin_endpoints_are_refused() -> None:
    r = relay(admin_keys=[])
    resp = r.admin("POST", "/admin/drain")
    assert resp.status == 403 and "server.admin_keys" in error_of(resp)["message"]
    assert not r.service.lifecycle.draining


def test_admin_drain_and_its_undo_without_exiting() -> None:
    r = relay()
    stream = r.connect()
    stream.post(stream=True)
    source = r.source()
    assert source.sink is not None
    source.sink.write_events(text_events("abcdef")[:3])
    started = r.admin("POST", "/admin/drain")
    assert started.status == 200
    assert started.json() == {"draining": True, "stopping": False, "live": 1}
    ready = r.connect()
    ready.get("/health/ready")
    assert ready.response().status == 503
    refused = r.connect()
    refused.post()
    resp = refused.response()
    assert resp.status == 529 and resp.headers["retry-after"]
    assert error_of(resp)["type"] == "overloaded_error"
    # The live stream goes on, with its pings, and ends normally; the relay keeps serving.
    r.reactor.pump([0.5] * 4)
    source.sink.write_events(text_events("abcdef")[3:])
    source.sink.end(None)
    assert stream.response().complete and stream.response().types()[-1] == "message_stop"
    assert "ping" in stream.response().types()[3:]
    assert r.service.running and r.service.ports
    assert r.admin("DELETE", "/admin/drain").json()["draining"] is False
    again = r.connect()
    again.get("/health/ready")
    assert again.response().status == 200
    served = r.connect()
    served.post(stream=True)
    assert r.source().sink is not None  # reached the pipeline


def test_a_shutdown_drain_cannot_be_undone() -> None:
    r = relay()
    stream = r.connect()
    stream.post(stream=True)
    conn = connect(r.service.site, closing_on=r.reactor)
    conn.send(b"DELETE /admin/drain HTTP/1.1\r\nhost: relay\r\ncontent-length: 0\r\n"
              b"authorization: Bearer " + ADMIN_KEY.encode() + b"\r\n")
    r.service.stopService()
    conn.send(b"\r\n")  # arrives on a connection open before the drain
    resp = conn.response()
    assert resp.status == 409 and "cannot be undone" in error_of(resp)["message"]
    assert r.service.lifecycle.draining


def test_admin_streams_lists_live_streams() -> None:
    r = relay()
    stream = r.connect()
    stream.post(stream=True)
    source = r.source()
    assert source.sink is not None
    source.sink.write_events(text_events("abcdef")[:4])
    r.reactor.advance(2.5)
    folded = r.connect()
    folded.post()
    listing = r.admin("GET", "/admin/streams")
    assert listing.status == 200 and listing.headers["cache-control"] == "no-store"
    body = listing.json()
    assert body["count"] == 2 and body["draining"] is False
    first, second = body["streams"]
    written = stream.response().body
    assert first == {
        "request_id": stream.response().headers["request-id"], "operation": "messages",
        "stream": True, "key": "tester", "model_requested": "sonnet",
        "model_served": "demo-upstream", "provider": "demo", "age_seconds": 2.5,
        "bytes_written": len(written), "last_event": "content_block_delta",
        "config_generation": 0,
    }
    # The last write was a ping: counted in the bytes, not as the last event.
    assert written.endswith(b'event: ping\ndata: {"type":"ping"}\n\n')
    assert second["stream"] is False and second["age_seconds"] == 0
    source.sink.write_events(text_events("abcdef")[4:])
    source.sink.end(None)
    assert r.admin("GET", "/admin/streams").json()["count"] == 1


def test_a_stream_cut_without_a_terminal_event_is_logged(
    logged: list[dict[str, Any]],
) -> None:
    r = relay()
    stream = r.connect()
    stream.post(stream=True)
    source = r.source()
    assert source.sink is not None
    source.sink.write_events(text_events("abcdef")[:4])
    r.reactor.advance(3)
    stream.lose()
    cut = [e for e in logged if "without message_stop" in str(e.get("log_format"))]
    assert len(cut) == 1
    assert cut[0]["request_id"] == stream.response().headers["request-id"]
    assert cut[0]["age"] == 3 and cut[0]["last_event"] == "content_block_delta"
    assert cut[0]["why"] == "the client went away"
    # An ordinary event, not an operator warning.
    assert cut[0]["log_level"] == LogLevel.info
    # A complete stream and one ended with an error event are not.
    for end in (None, "error"):
        conn = r.connect()
        conn.post(stream=True)
        sink = r.source().sink
        assert sink is not None
        sink.write_events(text_events("ab")[:3])
        if end is None:
            sink.write_events(text_events("ab")[3:])
            sink.end(None)
        else:
            from txrelay.protocol.errors import api_error
            sink.end(api_error("upstream broke"))
        assert conn.response().complete
    assert len([e for e in logged if "without message_stop" in str(e.get("log_format"))]) == 1


def test_the_admin_listener_serves_admin_alone_and_the_main_one_refuses() -> None:
    r = relay(admin_listen=["tcp:0:interface=127.0.0.1"])
    assert r.service.admin_site is not None
    assert len(r.service.ports) == 2 and r.service.admin_ports
    on_main = r.admin("POST", "/admin/drain")
    assert on_main.status == 403 and "server.admin_listen" in error_of(on_main)["message"]
    assert not r.service.lifecycle.draining
    no_key = r.admin("POST", "/admin/drain", key=None, site=r.service.admin_site)
    assert no_key.status == 401
    assert r.admin("POST", "/admin/drain", site=r.service.admin_site).status == 200
    assert r.service.lifecycle.draining
    api = connect(r.service.admin_site)
    api.post()
    assert api.response().status == 404


def test_readiness_is_sent_once_every_endpoint_listens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pending: list[Deferred[Any]] = []

    @attrs.define
    class LateEndpoint:
        def listen(self, factory: Any) -> Deferred[Any]:
            pending.append(Deferred())
            return pending[-1]

    @attrs.define
    class Port:
        def getHost(self) -> Any:
            return attrs.make_class("Host", {"host": attrs.field(default="127.0.0.1"),
                                             "port": attrs.field(default=1)})()

    notified: list[bytes] = []
    monkeypatch.setattr("txrelay.service.serverFromString", lambda reactor, d: LateEndpoint())
    monkeypatch.setattr("txrelay.service._sd_notify", notified.append)
    cfg = demo_config(listen=["a", "b"], metrics_listen=["c"], admin_listen=["d"],
                      admin_keys=ADMIN)
    service = RelayService(App(cfg, never, ModelCatalog.from_config(cfg), {}),
                           MemoryReactorClock())
    service.startService()
    assert len(pending) == 4
    for d in pending[:3]:
        d.callback(Port())
        assert notified == []
    pending[3].callback(Port())
    assert notified == [b"READY=1\nSTATUS=serving"]


async def never(exchange: Exchange) -> Reply:
    return await Deferred()


def test_settled_fires_once_no_request_of_that_generation_is_live() -> None:
    lifecycle = Lifecycle()
    old, new = InFlight(None, generation=0), InFlight(None, generation=1)  # type: ignore[arg-type]
    lifecycle.live |= {old, new}
    d = lifecycle.settled(0)
    assert not d.called
    lifecycle.forget(old)
    assert d.called
    assert lifecycle.settled(0).called  # nothing of generation 0 left
    later = lifecycle.settled(1)
    assert not later.called
    lifecycle.forget(new)
    assert later.called


# -- reload ------------------------------------------------------------------------------

def write_config(path: Path, **changes: Any) -> None:
    server = {"admin_keys": ADMIN, "listen": ["tcp:0:interface=127.0.0.1"], "access_log": False,
              **changes.pop("server", {})}
    path.write_text(config_text(server=server, **changes))


def test_a_reload_serves_new_requests_from_the_new_file_while_live_ones_finish_on_the_old(
    tmp: Path, logged: list[dict[str, Any]],
) -> None:
    path = tmp / "relay.toml"
    write_config(path)
    r = relay(str(path))
    stream = r.connect()
    stream.post(stream=True)
    source = r.source()
    assert source.sink is not None
    source.sink.write_events(text_events("abcdef")[:3])
    write_config(path, models=[{"id": "fresh-model", "provider": "demo",
                                "aliases": ["fresh"]}])
    resp = r.admin("POST", "/admin/reload")
    assert resp.status == 200
    assert resp.json() == {"reloaded": True, "config_generation": 1, "ignored": [],
                           "certificates_refused": []}
    assert r.service.resource.catalog.resolve("fresh") is not None
    assert r.service.resource.generation == 1
    # The new file's pipeline (real demo models) answers new requests.
    conn = r.connect()
    conn.post(body={"model": "fresh", "max_tokens": 20,
                    "messages": [{"role": "user", "content": "hi"}]},
              headers=[("x-api-key", "txrelay-test-key")])
    r.reactor.advance(0)
    new = conn.response()
    assert new.status == 200, new.body
    assert new.json()["model"] == "fresh"
    listing = r.admin("GET", "/admin/streams").json()["streams"]
    assert [s["config_generation"] for s in listing] == [0]
    # The old backends stay open while the stream started before the reload runs.
    assert r.backend.closed == 0
    source.sink.write_events(text_events("abcdef")[3:])
    source.sink.end(None)
    assert stream.response().complete and stream.response().types()[-1] == "message_stop"
    assert r.backend.closed == 1
    assert failures(logged) == []


def test_an_invalid_file_is_refused_with_every_problem_logged_and_the_old_one_kept(
    tmp: Path, logged: list[dict[str, Any]],
) -> None:
    path = tmp / "relay.toml"
    write_config(path)
    r = relay(str(path))
    before = r.service.app
    write_config(path, models=[{"id": "x", "provider": "nowhere"}],
                 pipeline=[{"type": "auth"}, {"type": "no-such-stage"}])
    with pytest.raises(ConfigError) as info:
        load_checked(str(path))  # what txrelay check-config prints
    expected = info.value.problems
    assert len(expected) >= 3
    resp = r.admin("POST", "/admin/reload")
    assert resp.status == 400
    message = error_of(resp)["message"]
    assert message.startswith("the configuration was not reloaded, the running one is kept")
    assert all(p in message for p in expected)
    refused = [e["problem"] for e in logged if "problem" in e]
    assert refused == expected
    assert r.service.app is before and r.service.resource.generation == 0
    assert r.backend.closed == 0
    stream = r.connect()
    stream.post(stream=True)
    assert r.source().sink is not None  # the old pipeline still serves


def test_settings_that_need_a_restart_are_logged_as_ignored(
    tmp: Path, logged: list[dict[str, Any]],
) -> None:
    path = tmp / "relay.toml"
    write_config(path)
    r = relay(str(path))
    write_config(path, server={"listen": ["tcp:9999:interface=127.0.0.1"],
                               "metrics": False, "ping_interval": 2.5})
    outcome = r.service.reload()
    assert outcome.applied
    assert outcome.ignored == ("server.listen", "server.metrics")
    running = r.service.app.config.server
    assert running.listen == ("tcp:0:interface=127.0.0.1",) and running.metrics
    assert running.ping_interval == 2.5 and r.service.resource.ping_interval == 2.5
    ignored = [e["key"] for e in logged if "needs a restart" in str(e.get("log_format"))]
    assert ignored == ["server.listen", "server.metrics"]


def test_a_reload_swaps_the_keys_the_front_door_checks(tmp: Path) -> None:
    path = tmp / "relay.toml"
    write_config(path)
    r = relay(str(path))
    write_config(path, keys=[{"name": "newcomer", "sha256": hash_key("brand-new-key")}])
    assert r.service.reload().applied
    for key, status in (("txrelay-test-key", 401), ("brand-new-key", 200)):
        conn = r.connect()
        conn.post(body={"model": "sonnet", "max_tokens": 5,
                        "messages": [{"role": "user", "content": "hi"}]},
                  headers=[("x-api-key", key)])
        r.reactor.advance(0)
        assert conn.response().status == status, conn.response().body


def test_reload_without_a_file_or_while_stopping_is_refused(tmp: Path) -> None:
    r = relay()
    outcome = r.service.reload()
    assert not outcome.applied and "not started from a file" in outcome.problems[0]
    path = tmp / "relay.toml"
    write_config(path)
    r = relay(str(path))
    stream = r.connect()
    stream.post(stream=True)
    r.service.stopService()
    outcome = r.service.reload()
    assert not outcome.applied and outcome.problems == ("the relay is shutting down",)
    assert r.service.resource.generation == 0


def test_a_retired_backend_that_fails_to_close_is_logged(
    tmp: Path, logged: list[dict[str, Any]],
) -> None:
    path = tmp / "relay.toml"
    write_config(path)
    r = relay(str(path))

    r.backend.fail = True
    assert r.service.reload().applied
    found = failures(logged)
    assert len(found) == 1 and found[0]["name"] == "demo"
    assert "generation 0" in found[0]["which"]
    assert "close failed" in str(found[0]["log_failure"].value)
    done = r.service.stopService()
    assert done.called and not r.service.running
