"""OpenTelemetry spans in memory: the span tree, its links, traceparent in and out."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock

from tests.server.memory import Harness
from txrelay import tracing
from txrelay.config import ConfigError, ProviderConfig, parse_config
from txrelay.pipeline import Exchange, Proceed, Reply, compose
from txrelay.protocol.errors import RelayError
from txrelay.testing import ManualSource, text_events, text_reply
from txrelay.upstream.http import UpstreamClient

pytest.importorskip("opentelemetry.sdk.trace", reason="the tracing extra is not installed")

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_PARENT = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CLIENT_PARENT}-01"


@pytest.fixture()
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    tracing.install(memory)
    yield memory
    old = tracing.detach()
    assert old is not None
    old.provider.shutdown()


@attrs.define
class FakeResponse:
    code: int


class FakeWire(UpstreamClient):
    """An UpstreamClient whose wire is replaced: it records the headers it would send."""

    def __init__(self, code: int = 200, fail: BaseException | None = None) -> None:
        super().__init__(Clock(), ProviderConfig("up", "openai-chat",
                                                 "http://upstream.test/v1"))
        self.code, self.fail = code, fail
        self.sent: list[dict[str, str]] = []

    async def _attempt(self, http: Any, url: str, body: bytes | None, headers: Any, *,
                       retry: bool) -> Any:
        self.sent.append(dict(headers))
        if self.fail is not None:
            raise self.fail
        return FakeResponse(self.code)


def stage(label: str) -> Any:
    async def run(exchange: Exchange, proceed: Proceed) -> Reply:
        return await proceed(exchange)

    run.__name__ = label
    return run


def upstream_terminal(upstream: FakeWire, reply: Reply) -> Proceed:
    async def terminal(exchange: Exchange) -> Reply:
        response = await upstream.post(
            "http://upstream.test/v1/chat/completions?key=sekrit", b"{}",
            {"authorization": "Bearer sk-secret"})
        if response.code >= 400:
            raise RelayError("api_error", "upstream failed", status=502)
        return reply

    return terminal


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {s.name: s for s in spans}


def test_the_span_tree_continues_the_clients_trace_and_sends_it_upstream(
        exporter: InMemorySpanExporter) -> None:
    upstream = FakeWire()
    pipeline = compose([stage("auth"), stage("model-map")],
                       upstream_terminal(upstream, text_reply("hi")),
                       names=["auth", "model-map"])
    conn = Harness.over(pipeline).connect()
    conn.post(headers=[("traceparent", TRACEPARENT), ("tracestate", "vendor=1")])
    assert conn.response().status == 200

    spans = by_name(exporter.get_finished_spans())
    assert set(spans) == {"POST /v1/messages", "auth", "model-map", "POST"}
    server, auth, model_map, client = (spans["POST /v1/messages"], spans["auth"],
                                       spans["model-map"], spans["POST"])
    assert {s.context.trace_id for s in spans.values()} == {int(TRACE_ID, 16)}
    assert server.kind is SpanKind.SERVER and server.parent is not None
    assert server.parent.is_remote and server.parent.span_id == int(CLIENT_PARENT, 16)
    assert server.context.trace_state.get("vendor") == "1"
    assert auth.kind is SpanKind.INTERNAL and auth.parent == server.context
    assert model_map.parent == auth.context
    assert client.kind is SpanKind.CLIENT and client.parent == model_map.context
    assert server.attributes is not None and client.attributes is not None
    assert server.attributes["http.response.status_code"] == 200
    assert client.attributes["http.response.status_code"] == 200
    assert client.attributes["url.path"] == "/v1/chat/completions"
    assert client.attributes["server.address"] == "upstream.test"
    # No secrets: not the query (Gemini keys go there), not a header.
    flat = repr(dict(client.attributes)) + repr(dict(server.attributes))
    assert "sekrit" not in flat and "sk-secret" not in flat

    # The upstream got a traceparent in the client's trace, naming the client span.
    [sent] = upstream.sent
    version, trace_id, parent_id, flags = sent["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "01")
    assert int(parent_id, 16) == client.context.span_id
    assert sent["tracestate"] == "vendor=1"
    assert sent["authorization"] == "Bearer sk-secret"


def test_without_a_traceparent_the_request_starts_a_trace(
        exporter: InMemorySpanExporter) -> None:
    upstream = FakeWire()
    conn = Harness.over(upstream_terminal(upstream, text_reply("hi"))).connect()
    conn.post()
    assert conn.response().status == 200
    spans = by_name(exporter.get_finished_spans())
    assert spans["POST /v1/messages"].parent is None
    trace_id = f"{spans['POST /v1/messages'].context.trace_id:032x}"
    assert upstream.sent[0]["traceparent"].split("-")[1] == trace_id


def test_the_server_span_ends_when_the_stream_ends_not_at_the_headers(
        exporter: InMemorySpanExporter) -> None:
    source = ManualSource()
    pipeline = compose([stage("auth")], lambda _: _ready(Reply(stream=source.stream())),
                       names=["auth"])
    conn = Harness.over(pipeline).connect()
    conn.post(stream=True)
    events = text_events("hello")
    source.send(*events[:2])
    assert conn.responses()[0].status == 200  # headers committed, stream still open
    assert [s.name for s in exporter.get_finished_spans()] == ["auth"]
    source.send(*events[2:])
    source.end()
    server = by_name(exporter.get_finished_spans())["POST /v1/messages"]
    assert server.status.status_code is StatusCode.UNSET
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == 200


def test_a_client_that_leaves_mid_stream_ends_the_server_span(
        exporter: InMemorySpanExporter) -> None:
    source = ManualSource()
    conn = Harness.over(lambda _: _ready(Reply(stream=source.stream()))).connect()
    conn.post(stream=True)
    source.send(*text_events("hello")[:2])
    assert exporter.get_finished_spans() == ()
    conn.lose()
    assert source.stopped
    [server] = exporter.get_finished_spans()
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == 499
    assert server.attributes["txrelay.client_gone"] is True


def test_errors_mark_the_stage_client_and_server_spans(
        exporter: InMemorySpanExporter) -> None:
    upstream = FakeWire(code=503)
    pipeline = compose([stage("auth")], upstream_terminal(upstream, text_reply("hi")),
                       names=["auth"])
    conn = Harness.over(pipeline).connect()
    conn.post()
    assert conn.response().status == 502
    spans = by_name(exporter.get_finished_spans())
    for name, error_type in (("POST", "503"), ("auth", "api_error"),
                             ("POST /v1/messages", "api_error")):
        assert spans[name].status.status_code is StatusCode.ERROR, name
        assert spans[name].attributes is not None
        assert spans[name].attributes["error.type"] == error_type


def test_a_cancelled_upstream_call_ends_its_span(exporter: InMemorySpanExporter) -> None:
    client = FakeWire(fail=CancelledError())
    from twisted.internet.defer import Deferred

    d = Deferred.fromCoroutine(client.post("http://upstream.test/x", b"", {}))
    failures: list[Any] = []
    d.addErrback(failures.append)
    assert failures and failures[0].check(CancelledError)
    [span] = exporter.get_finished_spans()
    assert span.attributes is not None and span.attributes["txrelay.cancelled"] is True


async def _ready(reply: Reply) -> Reply:
    return reply


def test_tracing_off_imports_nothing_and_makes_no_spans() -> None:
    # In a fresh interpreter: building the relay with tracing off loads no OpenTelemetry.
    code = """
import sys
from twisted.internet.task import Clock
from txrelay.config import parse_config
from txrelay.service import build_app
from txrelay import tracing
cfg = parse_config({"server": {"listen": ["tcp:0"]}, "providers": [{"name": "demo",
    "kind": "demo"}], "models": [{"id": "m", "provider": "demo"}],
    "pipeline": [{"type": "translate"}]}, env={})
build_app(cfg, Clock())
assert tracing.active() is None
print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def _config(tracing_table: dict[str, Any]) -> Any:
    return parse_config({
        "server": {"listen": ["tcp:0"]}, "providers": [{"name": "demo", "kind": "demo"}],
        "models": [{"id": "m", "provider": "demo"}], "pipeline": [{"type": "translate"}],
        "tracing": tracing_table}, env={})


def test_the_tracing_table_is_checked_strictly() -> None:
    cfg = _config({"enabled": True, "exporter": "otlp",
                   "endpoint": "http://127.0.0.1:4318/v1/traces", "sample_ratio": 0.5,
                   "service_name": "relay-a"})
    assert cfg.tracing == tracing.TracingConfig(True, "otlp",
                                                "http://127.0.0.1:4318/v1/traces",
                                                "relay-a", 0.5)
    assert _config({}).tracing.enabled is False
    for table, words in (({"enabled": True}, "tracing.endpoint: required"),
                         ({"sample_ratio": 1.5}, "tracing.sample_ratio: must be between"),
                         ({"exporter": "jaeger"}, "exporter"),
                         ({"endpoint": "nope"}, "tracing.endpoint: not a URL"),
                         ({"exporter": "console", "endpoint": "http://x/v1/traces"},
                          "only used by the otlp exporter"),
                         ({"enabled": True, "exporter": "console", "colour": "red"},
                          "colour")):
        with pytest.raises(ConfigError) as e:
            _config(table)
        assert words in str(e.value), (table, str(e.value))


def test_configure_turns_tracing_on_and_off() -> None:
    tracing.configure(tracing.TracingConfig(enabled=True, exporter="console"))
    try:
        first = tracing.active()
        assert first is not None
        tracing.configure(tracing.TracingConfig(enabled=True, exporter="console"))
        assert tracing.active() is first  # the same config: kept
    finally:
        tracing.configure(tracing.TracingConfig())
    assert tracing.active() is None


def test_tracing_on_without_opentelemetry_is_a_configuration_error() -> None:
    # In a fresh interpreter where OpenTelemetry cannot be imported.
    code = """
import sys
sys.modules["opentelemetry"] = None
from txrelay.config import ConfigError, parse_config
from twisted.internet.task import Clock
from txrelay.service import build_app
cfg = parse_config({"server": {"listen": ["tcp:0"]}, "providers": [{"name": "demo",
    "kind": "demo"}], "models": [{"id": "m", "provider": "demo"}],
    "pipeline": [{"type": "translate"}],
    "tracing": {"enabled": True, "exporter": "console"}}, env={})
build_app(cfg, None)  # validating only: fine without the extra
try:
    build_app(cfg, Clock())
except ConfigError as e:
    print(e)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert "tracing.enabled: OpenTelemetry is not installed" in out.stdout


def test_a_malformed_traceparent_starts_a_new_trace(exporter: InMemorySpanExporter) -> None:
    upstream = FakeWire()
    conn = Harness.over(upstream_terminal(upstream, text_reply("hi"))).connect()
    conn.post(headers=[("traceparent", "00-not-a-trace-01"), ("tracestate", "a=1")])
    assert conn.response().status == 200
    server = by_name(exporter.get_finished_spans())["POST /v1/messages"]
    assert server.parent is None
    assert upstream.sent[0]["traceparent"].split("-")[1] == f"{server.context.trace_id:032x}"
    assert "tracestate" not in upstream.sent[0]  # a state without its trace is dropped
