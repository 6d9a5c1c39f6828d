"""
What a stream held open keeps in memory (issue 13): once the pipeline has answered, the
resource keeps the few facts its records need, not the request body or its parsed form.
"""

from __future__ import annotations

import gc
import tracemalloc
import weakref
from typing import Any

from tests.server.memory import MESSAGES_BODY, FakeSource, Harness
from txrelay.catalog import Route
from txrelay.ledger.record import RequestRecord
from txrelay.pipeline import Exchange, Reply
from txrelay.server.admin import describe
from txrelay.streams import EventStream
from txrelay.testing import text_events


def routed(sources: list[FakeSource], seen: list[Any]) -> Any:
    """A pipeline that authenticates, routes and parses like the real one, then streams."""

    async def pipeline(exchange: Exchange) -> Reply:
        exchange.client = "tester"
        exchange.route = Route("sonnet", "demo", "demo-upstream", None)
        request = exchange.require_request()
        seen.append((weakref.ref(exchange), weakref.ref(request)))
        sources.append(FakeSource())
        return Reply(stream=EventStream(sources[-1]))

    return pipeline


def big_body(size: int) -> dict[str, Any]:
    """A request of about ``size`` bytes, in many small objects as a Claude Code turn is."""
    turns = [{"role": "user" if i % 2 == 0 else "assistant",
              "content": [{"type": "text", "text": f"turn {i} " + "x" * 200}]}
             for i in range(size // 260)]
    return {**MESSAGES_BODY, "messages": [*turns, {"role": "user", "content": "go on"}]}


def test_a_committed_stream_keeps_neither_the_exchange_nor_the_request_body(
    logged: list[dict[str, Any]],
) -> None:
    sources: list[FakeSource] = []
    seen: list[Any] = []
    records: list[RequestRecord] = []
    h = Harness.over(routed(sources, seen))
    h.resource.observers = (records.append,)
    h.resource.access_log = True
    h.resource.body_log_bytes = 40
    conn = h.connect()
    conn.post(body=big_body(20_000), stream=True)
    (source,) = sources
    assert source.sink is not None
    source.sink.write_events(text_events("abcdef")[:4])  # committed: the stream is written
    (call,) = h.resource.lifecycle.live
    gc.collect()
    exchange, request = seen[0]
    assert exchange() is None and request() is None
    assert call.exchange is None
    assert call.request.content is None  # twisted.web's copy of the body is gone too
    # /admin/streams still names who asked for what.
    listed = describe(call, h.clock.seconds())
    assert listed["operation"] == "messages" and listed["key"] == "tester"
    assert listed["model_requested"] == "sonnet" and listed["provider"] == "demo"
    source.sink.write_events(text_events("abcdef")[4:])
    source.sink.end(None)
    assert conn.response().complete and conn.response().types()[-1] == "message_stop"
    # The records of the stream are those of the exchange.
    (record,) = records
    assert (record.key, record.model_requested, record.model_served, record.provider) == (
        "tester", "sonnet", "demo-upstream", "demo")
    assert record.stream is True and record.status == 200
    access = [e for e in logged if "request_id={request_id}" in str(e.get("log_format"))]
    assert len(access) == 1
    assert access[0]["client"] == "tester" and access[0]["model"] == "sonnet"
    body = [e for e in logged if "request body" in str(e.get("log_format"))]
    assert len(body) == 1 and body[0]["body"].startswith('{"model": "m"')


def test_an_unrouted_request_still_records_the_model_its_body_named() -> None:
    records: list[RequestRecord] = []

    async def pipeline(exchange: Exchange) -> Reply:
        exchange.require_request()  # parsed, then refused before any route
        return Reply.json({"type": "error"}, status=404)

    h = Harness.over(pipeline)
    h.resource.observers = (records.append,)
    conn = h.connect()
    conn.post(body={**MESSAGES_BODY, "model": "no-such-model"})
    assert conn.response().status == 404
    assert records[0].model_requested == "no-such-model" and records[0].model is None


def test_held_streams_grow_the_heap_by_much_less_than_their_request_bodies() -> None:
    # Bounded by structure, not time: if anything kept the bodies (bytes, or the parsed
    # request: several times their size in Python objects), the heap would grow by more
    # than all the bodies together.
    sources: list[FakeSource] = []
    h = Harness.over(routed(sources, []))
    streams, size = 10, 100_000
    data = big_body(size)
    conns = [h.connect() for _ in range(streams)]
    warm = h.connect()
    warm.post(body=data, stream=True)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for conn in conns:
            conn.post(body=data, stream=True)
        for source in sources[1:]:
            assert source.sink is not None
            source.sink.write_events(text_events("abcdef")[:4])
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(h.resource.lifecycle.live) == streams + 1
    assert grown < streams * size / 4, f"{grown / streams:,.0f} bytes per held stream"


def test_the_chat_translator_of_each_stream_has_no_instance_dict() -> None:
    from txrelay.protocol.openai import ChatStreamTranslator, OpenAIDialect

    translator = ChatStreamTranslator(model="m", input_tokens=1, dialect=OpenAIDialect())
    assert not hasattr(translator, "__dict__")
    assert translator.start()[0]["type"] == "message_start"
