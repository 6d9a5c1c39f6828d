"""Issue 11.6/11.7 in memory: bounded metric labels, upstream errors, the drain gauge, the
session id on the access line, and twistd's log observer component."""

from __future__ import annotations

import io
import json

from prometheus_client.parser import text_string_to_metric_families
from twisted.application.service import Application, IServiceCollection
from twisted.logger import ILogObserver, Logger
from twisted.web.test.requesthelper import DummyRequest

from txrelay.catalog import Route
from txrelay.config import LogConfig
from txrelay.logs import make_observer
from txrelay.metrics import Metrics, model_label
from txrelay.server.resource import _session_id
from txrelay.tap import _with_log_observer


def _samples(m: Metrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for family in text_string_to_metric_families(m.render().decode()):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_unconfigured_model_names_are_other() -> None:
    assert model_label(Route("demo/anything-at-all", "demo", "anything-at-all", None)) == "other"
    assert model_label(None) == "-"


def test_upstream_errors_are_counted_by_provider_and_kind() -> None:
    m = Metrics()
    route = Route("x/y", "up", "y", None)
    for upstream in (True, False):
        m.observe(operation="messages", status=504, route=route, client="k", seconds=1.0,
                  stream=False, usage=None, error_type="timeout_error",
                  upstream_error=upstream)
    assert _samples(m, "txrelay_upstream_errors_total") == {
        (("kind", "timeout_error"), ("provider", "up")): 1.0}
    assert _samples(m, "txrelay_errors_total") == {
        (("provider", "up"), ("type", "timeout_error")): 2.0}


def test_first_byte_and_first_token_histograms() -> None:
    m = Metrics()
    route = Route("m", "up", "m", None)
    m.observe_first_byte(route, 0.3)
    m.observe_first_token(route, 0.7)
    m.observe_first_byte(None, 9.0)  # unrouted: nothing to attribute it to
    assert _samples(m, "txrelay_upstream_first_byte_seconds_count") == {
        (("provider", "up"),): 1.0}
    assert _samples(m, "txrelay_first_token_seconds_sum") == {
        (("model", "other"), ("provider", "up")): 0.7}


def test_drain_gauge_follows_the_lifecycle() -> None:
    m = Metrics()
    state = {"draining": False}
    m.watch_drain(lambda: state["draining"])
    assert _samples(m, "txrelay_draining") == {(): 0.0}
    state["draining"] = True
    assert _samples(m, "txrelay_draining") == {(): 1.0}


def test_session_id_is_capped_and_printable() -> None:
    r = DummyRequest([b"v1", b"messages"])
    assert _session_id(r) is None
    r.requestHeaders.setRawHeaders(b"x-claude-code-session-id", [b"abc\x1b[31m" + b"z" * 500])
    sid = _session_id(r)
    assert sid is not None and sid.isprintable() and "\x1b" not in sid and len(sid) < 140


def test_twistd_gets_the_json_observer_from_the_application() -> None:
    out = io.StringIO()
    observer = make_observer(LogConfig(level="info", format="json"), out)
    from twisted.application.service import Service
    service = _with_log_observer(Service(), observer)
    app = Application("relay")
    service.setServiceParent(app)
    assert app.getComponent(ILogObserver) is observer
    assert service in list(IServiceCollection(app))
    Logger(observer=app.getComponent(ILogObserver)).info("hello {who}", who="ops")
    assert json.loads(out.getvalue().strip().splitlines()[-1])["who"] == "ops"


def test_sse_writer_records_first_token_time_and_full_usage() -> None:
    from twisted.internet.task import Clock

    from txrelay.server.sse import SSEWriter
    from txrelay.streams import stream_of

    clock = Clock()
    clock.advance(100)
    events = [
        {"type": "message_start", "message": {"usage": {"input_tokens": 7,
                                                         "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0,
         "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "text_delta", "text": "hi"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
         "usage": {"output_tokens": 3}},
        {"type": "message_stop"},
    ]
    request = DummyRequest([b"v1", b"messages"])
    writer = SSEWriter(request, stream_of([]), clock, 10.0)
    writer.write_events(events[:2])
    assert writer.stats.first_content_at is None  # no content yet
    clock.advance(0.25)
    writer.write_events(events[2:])
    assert writer.stats.first_content_at == 100.25
    assert writer.usage == {"input_tokens": 7, "output_tokens": 3}
    assert writer.stats.terminal


def test_body_excerpt_caps_and_redacts_key_shapes() -> None:
    from txrelay.logs import body_excerpt

    raw = b'{"k": "sk-proj-' + b"a" * 30 + b'", "t": "AKIAABCDEFGHIJKLMNOP"}' + b"x" * 100
    out = body_excerpt(raw, 80)
    assert "sk-proj" not in out and "AKIA" not in out and out.count("[REDACTED]") == 2
    assert out.endswith(f"… ({len(raw) - 80} more bytes)")
    assert body_excerpt(b"short", 80) == "short"
