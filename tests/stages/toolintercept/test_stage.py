"""The tool-intercept stage in memory: splicing, pings, usage, indexes, limits, stop."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import anthropic.types as at
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from txrelay.catalog import ModelCatalog
from txrelay.config import parse_config
from txrelay.interfaces import StageServices
from txrelay.pipeline import Exchange, Reply
from txrelay.protocol import events as ev
from txrelay.protocol.accumulate import MessageAccumulator
from txrelay.protocol.events import StreamGrammar
from txrelay.stages.toolintercept.servertools import decode_content
from txrelay.stages.toolintercept.stage import (
    FetchOptions,
    FixedResult,
    RouteOptions,
    SearchOptions,
    ToolInterceptOptions,
    ToolInterceptStage,
    build_tool_intercept,
)
from txrelay.streams import CollectingSink, stream_of
from txrelay.testing import (
    ManualSource,
    StageResult,
    make_exchange,
    run_stage,
    text_reply,
    tool_reply,
)

SEARCH_TOOL = {"type": "web_search_20250305", "name": "web_search"}
RESULTS = (FixedResult("https://example.com/a", "A page", "Alpha snippet", "2 days ago"),
           FixedResult("https://blocked.com/b", "B page", "Beta snippet"),
           FixedResult("https://www.blocked.com/c", "C page", "Gamma snippet"))
_CONFIG = {
    "providers": [{"name": "test", "kind": "openai-chat", "base_url": "http://127.0.0.1:9/v1"},
                  {"name": "claude", "kind": "demo"}],
    "models": [{"id": "test-model", "provider": "test", "patterns": ["*"]},
               {"id": "native-model", "provider": "claude"}],
    "pipeline": [{"type": "translate"}],
}


def make_stage(clock: Clock, *, delay: float = 0.0, error: str | None = None,
               max_calls: int = 8, native: tuple[str, ...] = ("claude",),
               fetch: FetchOptions | None = None) -> ToolInterceptStage:
    cfg = parse_config(_CONFIG, "test", env={})
    services = StageServices(cfg, ModelCatalog.from_config(cfg), {}, {}, clock)
    options = ToolInterceptOptions(
        native=native, max_calls=max_calls,
        search=SearchOptions("fixed", results=RESULTS, delay=delay, error=error),
        fetch=fetch or FetchOptions())
    return build_tool_intercept(options, services, env={})


def script(*replies: Callable[[], Reply]) -> Callable[[Exchange], Reply]:
    it: Iterator[Callable[[], Reply]] = iter(replies)
    return lambda _: next(it)()


def search(query: Any, tool_id: str = "call_1") -> Callable[[], Reply]:
    return lambda: tool_reply("web_search", {"query": query}, tool_id=tool_id)


def answer(text: str = "Found it.") -> Callable[[], Reply]:
    return lambda: text_reply(text)


def body(*tools: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "search for alpha"}],
            "tools": list(tools), **extra}


def run(stage: ToolInterceptStage, clock: Clock, request: dict[str, Any],
        *replies: Callable[[], Reply]) -> StageResult:
    return run_stage(stage, request, reply=script(*replies), clock=clock)


def sdk_check(result: StageResult) -> at.Message:
    """The events parse as the SDK's stream events, the folded message as its Message."""
    adapter: TypeAdapter[Any] = TypeAdapter(at.RawMessageStreamEvent)
    for e in result.events:
        if e["type"] != "ping":  # the SDK handles pings apart from its event union
            adapter.validate_python(e)
    assert result.message is not None
    return at.Message.model_validate(result.message)


def test_search_runs_and_the_turn_continues() -> None:
    clock = Clock()
    stage = make_stage(clock, delay=25)
    result = run(stage, clock, body(SEARCH_TOOL), search("alpha"), answer())
    assert result.error is None
    assert len(result.calls) == 2
    # the model was offered a function tool in place of the server tool
    first = result.calls[0].require_request()
    assert first.tools == [{"name": "web_search", "description": first.tools[0]["description"],
                            "input_schema": {"type": "object", "required": ["query"],
                                             "properties": {"query": {
                                                 "type": "string",
                                                 "description": "The search query"}}}}]
    message = sdk_check(result)
    kinds = [b.type for b in message.content]
    assert kinds == ["server_tool_use", "web_search_tool_result", "text"]
    use, found = message.content[0], message.content[1]
    assert isinstance(use, at.ServerToolUseBlock) and use.id.startswith("srvtoolu_")
    assert use.input == {"query": "alpha"} and use.name == "web_search"
    assert isinstance(found, at.WebSearchToolResultBlock) and found.tool_use_id == use.id
    assert isinstance(found.content, list)
    assert [r.url for r in found.content] == [r.url for r in RESULTS]
    assert found.content[0].page_age == "2 days ago"
    assert decode_content(found.content[0].encrypted_content) == "Alpha snippet"
    assert message.stop_reason == "end_turn"
    # usage summed over both calls, with the search counted
    assert message.usage.input_tokens == 20 and message.usage.output_tokens == 10
    assert message.usage.server_tool_use is not None
    assert message.usage.server_tool_use.web_search_requests == 1
    assert message.usage.server_tool_use.web_fetch_requests == 0
    # one message_start, block indexes without gaps, pings while the search ran
    types = [e["type"] for e in result.events]
    assert types.count("message_start") == 1 and types.count("message_delta") == 1
    starts = [e["index"] for e in result.events if e["type"] == "content_block_start"]
    assert starts == [0, 1, 2]
    stop0 = next(i for i, e in enumerate(result.events)
                 if e["type"] == "content_block_stop" and e["index"] == 0)
    start1 = next(i for i, e in enumerate(result.events)
                  if e["type"] == "content_block_start" and e["index"] == 1)
    assert types[stop0 + 1:start1] == ["ping", "ping"]  # 25 s of search, a ping every 10 s
    # the second call saw the call and its result as tool_use / tool_result
    second = result.calls[1].require_request()
    assistant, user = second.messages[-2], second.messages[-1]
    assert assistant.role == "assistant" and assistant.blocks()[0]["type"] == "tool_use"
    assert assistant.blocks()[0]["id"] == use.id
    assert user.role == "user" and user.blocks()[0]["type"] == "tool_result"
    assert user.blocks()[0]["tool_use_id"] == use.id
    assert "Alpha snippet" in user.blocks()[0]["content"]
    assert not clock.getDelayedCalls()


def test_max_uses_gives_the_documented_error_and_the_model_answers() -> None:
    clock = Clock()
    tool = dict(SEARCH_TOOL, max_uses=1)
    result = run(make_stage(clock), clock, body(tool), search("alpha", "c1"),
                 search("beta", "c2"), answer())
    message = sdk_check(result)
    assert len(result.calls) == 3
    assert [b.type for b in message.content] == [
        "server_tool_use", "web_search_tool_result", "server_tool_use",
        "web_search_tool_result", "text"]
    second = message.content[3]
    assert isinstance(second, at.WebSearchToolResultBlock)
    assert isinstance(second.content, at.WebSearchToolResultError)
    assert second.content.error_code == "max_uses_exceeded"
    assert message.usage.server_tool_use is not None
    assert message.usage.server_tool_use.web_search_requests == 1
    last = result.calls[2].require_request().messages[-1].blocks()[0]
    assert last["is_error"] is True and "max_uses_exceeded" in last["content"]


def test_blocked_domains_are_removed_with_their_subdomains() -> None:
    clock = Clock()
    tool = dict(SEARCH_TOOL, blocked_domains=["blocked.com"])
    message = sdk_check(run(make_stage(clock), clock, body(tool), search("x"), answer()))
    found = message.content[1]
    assert isinstance(found, at.WebSearchToolResultBlock) and isinstance(found.content, list)
    assert [r.url for r in found.content] == ["https://example.com/a"]


def test_allowed_domains_keep_only_those() -> None:
    clock = Clock()
    tool = dict(SEARCH_TOOL, allowed_domains=["blocked.com"])
    message = sdk_check(run(make_stage(clock), clock, body(tool), search("x"), answer()))
    found = message.content[1]
    assert isinstance(found, at.WebSearchToolResultBlock) and isinstance(found.content, list)
    assert [r.url for r in found.content] == ["https://blocked.com/b",
                                              "https://www.blocked.com/c"]


def test_allowed_and_blocked_together_is_a_400() -> None:
    clock = Clock()
    tool = dict(SEARCH_TOOL, allowed_domains=["a.com"], blocked_domains=["b.com"])
    result = run(make_stage(clock), clock, body(tool), answer())
    assert result.error is not None and result.error.status == 400
    assert "allowed_domains and blocked_domains" in result.error.message


@pytest.mark.parametrize(("query", "code"), [("", "invalid_tool_input"),
                                             (42, "invalid_tool_input"),
                                             ("q" * 401, "query_too_long")])
def test_bad_queries_get_error_codes(query: Any, code: str) -> None:
    clock = Clock()
    message = sdk_check(run(make_stage(clock), clock, body(SEARCH_TOOL), search(query),
                            answer()))
    found = message.content[1]
    assert isinstance(found, at.WebSearchToolResultBlock)
    assert isinstance(found.content, at.WebSearchToolResultError)
    assert found.content.error_code == code
    assert message.usage.server_tool_use is not None
    assert message.usage.server_tool_use.web_search_requests == 0


@pytest.mark.parametrize("code", ["too_many_requests", "unavailable"])
def test_provider_failures_become_error_codes(code: str) -> None:
    clock = Clock()
    message = sdk_check(run(make_stage(clock, error=code), clock, body(SEARCH_TOOL),
                            search("x"), answer()))
    found = message.content[1]
    assert isinstance(found, at.WebSearchToolResultBlock)
    assert isinstance(found.content, at.WebSearchToolResultError)
    assert found.content.error_code == code


def test_a_turn_past_max_calls_pauses() -> None:
    clock = Clock()
    result = run(make_stage(clock, max_calls=2), clock, body(SEARCH_TOOL),
                 search("a", "c1"), search("b", "c2"))
    message = sdk_check(result)
    assert len(result.calls) == 2
    assert message.stop_reason == "pause_turn"
    assert [b.type for b in message.content] == ["server_tool_use", "web_search_tool_result"] * 2


def test_client_tools_flow_untouched() -> None:
    """Claude Code's WebSearch is a client tool: same request, an ordinary tool_use."""
    clock = Clock()
    client_tool = {"name": "WebSearch", "description": "search",
                   "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}}}
    request = body(client_tool)
    result = run(make_stage(clock), clock, request,
                 lambda: tool_reply("WebSearch", {"query": "x"}))
    assert len(result.calls) == 1 and not result.calls[0].body_replaced
    assert result.message is not None
    assert [b["type"] for b in result.message["content"]] == ["tool_use"]
    assert result.message["content"][0]["name"] == "WebSearch"
    assert result.message["stop_reason"] == "tool_use"
    assert "server_tool_use" not in result.message["usage"]


def test_a_client_tool_named_like_the_function_is_not_intercepted() -> None:
    """The matcher is exact: a custom tool called web_search is the client's."""
    clock = Clock()
    custom = {"name": "web_search", "input_schema": {"type": "object"}}
    result = run(make_stage(clock), clock, body(custom), search("x"))
    assert len(result.calls) == 1 and not result.calls[0].body_replaced
    assert result.message is not None
    assert result.message["content"][0]["type"] == "tool_use"


def test_server_and_client_calls_together_end_the_turn_for_the_client() -> None:
    clock = Clock()
    client_tool = {"name": "Read", "input_schema": {"type": "object"}}

    def both() -> Reply:
        events = [ev.message_start("msg_x", "m", ev.empty_usage(10)),
                  ev.tool_use_block_start(0, "call_s", "web_search"),
                  ev.input_json_delta(0, '{"query": "q"}'), ev.block_stop(0),
                  ev.tool_use_block_start(1, "call_c", "Read"),
                  ev.input_json_delta(1, '{"path": "/x"}'), ev.block_stop(1),
                  ev.message_delta("tool_use", None, {"output_tokens": 9}), ev.message_stop()]
        return Reply(stream=stream_of(events))

    result = run(make_stage(clock), clock, body(SEARCH_TOOL, client_tool), both)
    message = sdk_check(result)
    assert len(result.calls) == 1
    assert [b.type for b in message.content] == ["server_tool_use", "tool_use",
                                                 "web_search_tool_result"]
    assert message.stop_reason == "tool_use"


def test_native_providers_are_left_alone() -> None:
    clock = Clock()
    request = body(SEARCH_TOOL, model="native-model")
    exchange = make_exchange(request)
    exchange.route = None  # the stage resolves the route itself when it runs first
    result = run_stage(make_stage(clock), exchange, reply=script(answer()), clock=clock)
    assert len(result.calls) == 1 and not result.calls[0].body_replaced
    assert result.calls[0].require_request().tools == [SEARCH_TOOL]


def test_echoed_history_reaches_the_backend_as_tool_pairs() -> None:
    """A later turn: the client sends back the server blocks; the model sees their text."""
    clock = Clock()
    first = run(make_stage(clock), clock, body(SEARCH_TOOL), search("alpha"), answer())
    assert first.message is not None
    history = {"messages": [
        {"role": "user", "content": "search for alpha"},
        {"role": "assistant", "content": first.message["content"]},
        {"role": "user", "content": "and what did it say?"}], "tools": [SEARCH_TOOL]}
    second = run(make_stage(clock), clock, history, answer("It said alpha."))
    sent = second.calls[0].require_request().messages
    assert [m.role for m in sent] == ["user", "assistant", "user", "assistant", "user"]
    assert sent[1].blocks()[0]["type"] == "tool_use"
    assert sent[2].blocks()[0]["type"] == "tool_result"
    assert "Alpha snippet" in sent[2].blocks()[0]["content"]
    assert sent[3].blocks()[0]["type"] == "text"


def test_stop_while_the_tool_runs_releases_everything() -> None:
    clock = Clock()
    stage = make_stage(clock, delay=60)
    calls: list[Exchange] = []

    async def proceed(ex: Exchange) -> Reply:
        calls.append(ex)
        return search("alpha")()

    d = Deferred.fromCoroutine(stage(make_exchange(body(SEARCH_TOOL)), proceed))
    replies: list[Reply] = []
    d.addCallback(replies.append)
    assert replies and replies[0].stream is not None
    sink = CollectingSink()
    replies[0].stream.start(sink)
    clock.advance(15)  # the search is running; one ping went out (after the call's own)
    assert [e["type"] for e in sink.events][-2:] == ["content_block_stop", "ping"]
    replies[0].stream.stop()
    assert not clock.getDelayedCalls()  # the search's timer and the ping timer are gone
    clock.advance(120)
    assert len(calls) == 1 and not sink.ended


def test_count_tokens_passes_through() -> None:
    clock = Clock()
    stage = make_stage(clock)
    exchange = make_exchange(body(SEARCH_TOOL))
    exchange.operation = "count_tokens"
    seen: list[Exchange] = []

    async def proceed(ex: Exchange) -> Reply:
        seen.append(ex)
        return Reply.json({"input_tokens": 3})

    d = Deferred.fromCoroutine(stage(exchange, proceed))
    out: list[Reply] = []
    d.addCallback(out.append)
    assert out and seen == [exchange]


def test_a_forced_search_is_forced_once() -> None:
    clock = Clock()
    request = body(SEARCH_TOOL, tool_choice={"type": "tool", "name": "web_search",
                                             "disable_parallel_tool_use": True})
    result = run(make_stage(clock), clock, request, search("a"), answer())
    assert result.calls[0].require_request().tool_choice == {
        "type": "tool", "name": "web_search", "disable_parallel_tool_use": True}
    assert result.calls[1].require_request().tool_choice == {
        "type": "auto", "disable_parallel_tool_use": True}


def test_the_last_calls_stop_reason_and_sequence_are_forwarded() -> None:
    clock = Clock()

    def cut() -> Reply:
        events = [ev.message_start("msg_y", "m", ev.empty_usage(7)), ev.text_block_start(0),
                  ev.text_delta(0, "partial"), ev.block_stop(0),
                  ev.message_delta("stop_sequence", "END", {"output_tokens": 3}),
                  ev.message_stop()]
        return Reply(stream=stream_of(events))

    message = sdk_check(run(make_stage(clock), clock, body(SEARCH_TOOL), search("a"), cut))
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == "END"
    assert message.usage.output_tokens == 8 and message.usage.input_tokens == 17


def test_backpressure_reaches_the_live_call() -> None:
    """Pause and resume reach the continuation call while it streams; stop ends it."""
    clock = Clock()
    stage = make_stage(clock)
    second = ManualSource()
    replies = iter([search("alpha")(), Reply(stream=second.stream())])

    async def proceed(ex: Exchange) -> Reply:
        return next(replies)

    out: list[Reply] = []
    Deferred.fromCoroutine(stage(make_exchange(body(SEARCH_TOOL)), proceed)).addCallback(
        out.append)
    sink = CollectingSink()
    out[0].stream.start(sink)  # type: ignore[union-attr]
    clock.advance(0)
    assert second.started
    out[0].stream.pause()  # type: ignore[union-attr]
    assert second.paused
    out[0].stream.resume()  # type: ignore[union-attr]
    assert second.flow == ["pause", "resume"]
    second.send(ev.message_start("msg_z", "m", ev.empty_usage(1)), ev.text_block_start(0))
    assert sink.events[-1] == ev.text_block_start(2)  # numbered after the server blocks
    out[0].stream.stop()  # type: ignore[union-attr]
    assert second.stopped and not clock.getDelayedCalls()


def test_routes_choose_the_search_per_model() -> None:
    clock = Clock()
    cfg = parse_config(_CONFIG, "test", env={})
    services = StageServices(cfg, ModelCatalog.from_config(cfg), {}, {}, clock)
    special = SearchOptions("fixed", results=(FixedResult("https://special.example/", "S"),))
    options = ToolInterceptOptions(
        search=SearchOptions("fixed", results=RESULTS),
        routes=(RouteOptions(models=("special-*",), search=special),
                RouteOptions(providers=("test",), fetch=FetchOptions(enabled=False))))
    stage = build_tool_intercept(options, services, env={})

    def urls(model: str) -> list[str]:
        exchange = make_exchange(body(SEARCH_TOOL, model=model))
        exchange.route = None
        result = run_stage(stage, exchange, reply=script(search("q"), answer()), clock=clock)
        message = sdk_check(result)
        found = message.content[1]
        assert isinstance(found, at.WebSearchToolResultBlock)
        assert isinstance(found.content, list)
        return [r.url for r in found.content]

    assert urls("special-1") == ["https://special.example/"]
    assert urls("other") == [r.url for r in RESULTS]  # second route: default search
    fetch_only = make_exchange(body({"type": "web_fetch_20250910", "name": "web_fetch"}))
    result = run_stage(stage, fetch_only, reply=script(answer()), clock=clock)
    assert not result.calls[0].body_replaced  # fetch is off on that route: left alone


def two_searches() -> Reply:
    events = [ev.message_start("msg_x", "m", ev.empty_usage(10))]
    for i, query in enumerate(("one", "two")):
        events += [ev.tool_use_block_start(i, f"call_{i}", "web_search"),
                   ev.input_json_delta(i, json.dumps({"query": query})), ev.block_stop(i)]
    events += [ev.message_delta("tool_use", None, {"output_tokens": 9}), ev.message_stop()]
    return Reply(stream=stream_of(events))


def test_parallel_calls_run_together_and_count_uses_in_order() -> None:
    clock = Clock()
    stage = make_stage(clock, delay=30)
    tool = dict(SEARCH_TOOL, max_uses=1)
    start = clock.seconds()
    result = run(stage, clock, body(tool), two_searches, answer())
    assert clock.seconds() - start == 30  # one search's time, not two
    message = sdk_check(result)
    assert [b.type for b in message.content] == [
        "server_tool_use", "server_tool_use", "web_search_tool_result",
        "web_search_tool_result", "text"]
    first, second = message.content[2], message.content[3]
    assert isinstance(first, at.WebSearchToolResultBlock) and isinstance(first.content, list)
    assert first.tool_use_id == message.content[0].id  # type: ignore[union-attr]
    assert isinstance(second, at.WebSearchToolResultBlock)
    assert isinstance(second.content, at.WebSearchToolResultError)
    assert second.content.error_code == "max_uses_exceeded"


def test_stop_during_parallel_calls_cancels_them_all() -> None:
    clock = Clock()
    stage = make_stage(clock, delay=60)

    async def proceed(ex: Exchange) -> Reply:
        return two_searches()

    out: list[Reply] = []
    Deferred.fromCoroutine(stage(make_exchange(body(SEARCH_TOOL)), proceed)).addCallback(
        out.append)
    sink = CollectingSink()
    out[0].stream.start(sink)  # type: ignore[union-attr]
    assert len(clock.getDelayedCalls()) == 3  # two searches and the ping timer
    out[0].stream.stop()  # type: ignore[union-attr]
    assert not clock.getDelayedCalls()


def _events_of(reply: Reply) -> list[Any]:
    assert reply.stream is not None
    sink = CollectingSink()
    reply.stream.start(sink)
    return sink.events


@settings(max_examples=40)
@given(st.lists(st.integers(1, 4), min_size=12, max_size=12),
       st.lists(st.integers(1, 4), min_size=12, max_size=12))
def test_any_batching_of_the_calls_gives_the_same_message(first_cuts: list[int],
                                                          second_cuts: list[int]) -> None:
    """However the upstream batches its events, the client's stream is the same message."""
    clock = Clock()
    stage = make_stage(clock, delay=5)
    scripted = [_events_of(search("alpha")()), _events_of(answer("Found it, really.")())]
    sources = [ManualSource(), ManualSource()]
    replies = iter([Reply(stream=s.stream()) for s in sources])

    async def proceed(ex: Exchange) -> Reply:
        return next(replies)

    out: list[Reply] = []
    Deferred.fromCoroutine(stage(make_exchange(body(SEARCH_TOOL)), proceed)).addCallback(
        out.append)
    sink = CollectingSink()
    out[0].stream.start(sink)  # type: ignore[union-attr]
    for source, events, cuts in zip(sources, scripted, (first_cuts, second_cuts), strict=True):
        clock.advance(5)
        rest = list(events)
        for cut in cuts:
            if rest:
                source.send(*rest[:cut])
                rest = rest[cut:]
        if rest:
            source.send(*rest)
        source.end()
    clock.advance(5)
    assert sink.ended and sink.error is None
    grammar, acc = StreamGrammar(), MessageAccumulator()
    for e in sink.events:
        grammar.feed(e)
        acc.feed(e)
    grammar.close()
    message = acc.result()
    assert [b["type"] for b in message["content"]] == [
        "server_tool_use", "web_search_tool_result", "text"]
    assert message["content"][2]["text"] == "Found it, really."
    assert message["usage"]["server_tool_use"] == {"web_search_requests": 1,
                                                   "web_fetch_requests": 0}
    assert not clock.getDelayedCalls()
