"""
The tool-intercept stage end to end: the real relay in front of the fake Chat Completions
upstream (scripted to call the search or fetch function, then answer), a fake SearXNG and
a fake web site on loopback, with the official anthropic SDK as the client.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import anthropic.types as at
import pytest

from tests.fakeupstream import (
    FakeOpenAI,
    Handler,
    Recorded,
    Responder,
    json_response,
    sse,
    text_stream,
    tool_stream,
)
from tests.fakeweb import FakeSite, html, minimal_pdf, redirect, searxng
from tests.relayproc import DEMO_KEY, Relay, config_text, start_relay

pytestmark = pytest.mark.integration

def _completion(message: dict[str, Any], finish: str, usage: dict[str, Any]) -> dict[str, Any]:
    return {"id": "chatcmpl-fake", "object": "chat.completion", "created": 1700000000,
            "model": "fake-model", "usage": usage,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}]}


def call(name: str, arguments: str, call_id: str = "call_abc") -> Responder:
    """The upstream calls a function: streamed or not, as the relay asked."""
    whole = _completion({"role": "assistant", "content": None, "tool_calls": [
        {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]},
        "tool_calls", {"prompt_tokens": 50, "completion_tokens": 20, "total_tokens": 70})
    return _either(sse(tool_stream(name, arguments, call_id=call_id)), json_response(whole))


def say(text: str) -> Responder:
    """The upstream answers ``text``: streamed or not, as the relay asked."""
    whole = _completion({"role": "assistant", "content": text}, "stop", {
        "prompt_tokens": 100, "completion_tokens": 7, "total_tokens": 107,
        "prompt_tokens_details": {"cached_tokens": 60}})
    return _either(sse(text_stream(text)), json_response(whole))


def _either(streamed: Responder, whole: Responder) -> Responder:
    def respond(h: Handler, rec: Recorded) -> None:
        (streamed if rec.body.get("stream") else whole)(h, rec)
    return respond


SEARCH = {"type": "web_search_20250305", "name": "web_search"}
FETCH = {"type": "web_fetch_20250910", "name": "web_fetch"}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    f = FakeOpenAI().start()
    yield f
    f.stop()


@pytest.fixture(scope="module")
def secret() -> Iterator[FakeSite]:
    """What must stay unreachable: a service on 127.0.0.1."""
    site = FakeSite("127.0.0.1", {"/secret": html("<p>internal admin page</p>")}).start()
    yield site
    site.stop()


@pytest.fixture(scope="module")
def web(secret: FakeSite) -> Iterator[FakeSite]:
    """The 'public' web site, on 127.0.0.2 (opened with allow_networks)."""
    site = FakeSite("127.0.0.2").start()
    site.pages.update({
        "/page.html": html("<html><head><title>Relay notes</title><style>p{}</style></head>"
                           "<body><nav>menu</nav><main><h1>Twisted relays</h1>"
                           "<p>Twisted relays stream with backpressure.</p></main></body>"
                           "</html>"),
        "/doc.pdf": (200, {"content-type": "application/pdf"}, minimal_pdf("Hello PDF world")),
        "/moved": redirect("/page.html"),
        "/evil": redirect(f"{secret.url}/secret"),
    })
    yield site
    site.stop()


@pytest.fixture(scope="module")
def searx(web: FakeSite) -> Iterator[FakeSite]:
    site = FakeSite("127.0.0.1", {"/search": searxng([
        {"url": f"{web.url}/page.html", "title": "Relay notes",
         "content": "Twisted relays stream with backpressure.", "publishedDate": "2026-11-01"},
        {"url": "https://blocked.example/x", "title": "Blocked", "content": "nope"},
        {"url": "https://docs.example/y", "title": "Docs", "content": "the docs"},
    ])}).start()
    yield site
    site.stop()


@pytest.fixture(scope="module")
def relay(fake: FakeOpenAI, searx: FakeSite, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Relay]:
    options = {
        "search": {"provider": "searxng", "url": searx.url, "timeout": 5},
        "fetch": {"allow_networks": ["127.0.0.2/32"], "timeout": 5},
    }
    cfg = config_text(
        server={"ping_interval": 0.5},
        providers=[{"name": "up", "kind": "openai-chat", "base_url": fake.url,
                    "options": {"dialect": "openai"}}],
        models=[{"id": "claude-sonnet-4-6", "provider": "up", "upstream_model": "gpt-fake",
                 "patterns": ["claude-*"]}],
        pipeline=[{"type": "auth"}, {"type": "tool-intercept", "options": options},
                  {"type": "model-map"}, {"type": "translate"}],
    )
    r = start_relay(tmp_path_factory.mktemp("intercept"), cfg)
    yield r
    r.stop()


@pytest.fixture()
def client(relay: Relay) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=relay.url, api_key=DEMO_KEY, max_retries=0) as c:
        yield c


@pytest.fixture(autouse=True)
def clean(fake: FakeOpenAI, web: FakeSite, secret: FakeSite, searx: FakeSite) -> Iterator[None]:
    fake.script.clear()
    fake.requests.clear()
    for site in (web, secret, searx):
        site.hits.clear()
    yield
    fake.script.clear()


def ask(client: anthropic.Anthropic, text: str, tools: list[dict[str, Any]], *,
        stream: bool) -> tuple[at.Message, list[Any]]:
    kwargs: dict[str, Any] = {"model": "claude-sonnet-4-6", "max_tokens": 1000,
                              "messages": [{"role": "user", "content": text}], "tools": tools}
    if not stream:
        return client.messages.create(**kwargs), []
    with client.messages.stream(**kwargs) as s:
        events = list(s)
        return s.get_final_message(), events


def tool_messages(fake: FakeOpenAI) -> list[dict[str, Any]]:
    return [m for m in fake.requests[-1].body["messages"] if m["role"] == "tool"]


@pytest.mark.parametrize("stream", [True, False])
def test_web_search_through_searxng(client: anthropic.Anthropic, fake: FakeOpenAI,
                                    searx: FakeSite, web: FakeSite, stream: bool) -> None:
    fake.push(call("web_search", '{"query": "twisted relay"}'),
              say("Twisted relays stream with backpressure [1]."))
    message, events = ask(client, "How do Twisted relays stream?", [SEARCH], stream=stream)
    assert [b.type for b in message.content] == ["server_tool_use", "web_search_tool_result",
                                                 "text"]
    use, result = message.content[0], message.content[1]
    assert isinstance(use, at.ServerToolUseBlock) and use.input == {"query": "twisted relay"}
    assert isinstance(result, at.WebSearchToolResultBlock) and result.tool_use_id == use.id
    assert isinstance(result.content, list)
    assert result.content[0].url == f"{web.url}/page.html"
    assert result.content[0].page_age == "2026-11-01"
    assert message.stop_reason == "end_turn"
    assert message.usage.server_tool_use is not None
    assert message.usage.server_tool_use.web_search_requests == 1
    # 50 + 100 prompt tokens over the two upstream calls (60 of the second cached)
    assert message.usage.input_tokens == 90 and message.usage.cache_read_input_tokens == 60
    assert [h.query["q"] for h in searx.hits] == [["twisted relay"]]
    # the model got the results as the function's answer
    assert len(fake.requests) == 2
    offered = fake.requests[0].body["tools"]
    assert [t["function"]["name"] for t in offered] == ["web_search"]
    (tool,) = tool_messages(fake)
    assert "Twisted relays stream with backpressure." in tool["content"]
    if stream:
        kinds = [e.type for e in events]
        assert kinds.count("message_start") == 1
        starts = [e.index for e in events if e.type == "content_block_start"]
        assert starts == [0, 1, 2]


@pytest.mark.parametrize("stream", [True, False])
def test_web_fetch_html_and_pdf(client: anthropic.Anthropic, fake: FakeOpenAI,
                                web: FakeSite, stream: bool) -> None:
    page, pdf = f"{web.url}/moved", f"{web.url}/doc.pdf"
    fake.push(call("web_fetch", json.dumps({"url": page})),
              call("web_fetch", json.dumps({"url": pdf}), call_id="call_2"),
              say("Both read."))
    message, _ = ask(client, f"Read {page} and {pdf}", [FETCH], stream=stream)
    assert [b.type for b in message.content] == [
        "server_tool_use", "web_fetch_tool_result", "server_tool_use", "web_fetch_tool_result",
        "text"]
    first, second = message.content[1], message.content[3]
    assert isinstance(first, at.WebFetchToolResultBlock)
    assert isinstance(first.content, at.WebFetchBlock)
    assert first.content.url == page
    assert first.content.content.title == "Relay notes"
    assert isinstance(first.content.content.source, at.PlainTextSource)
    assert first.content.content.source.data == (
        "Twisted relays\nTwisted relays stream with backpressure.")
    assert isinstance(second, at.WebFetchToolResultBlock)
    assert isinstance(second.content, at.WebFetchBlock)
    assert isinstance(second.content.content.source, at.PlainTextSource)
    assert second.content.content.source.data == "Hello PDF world"
    assert message.usage.server_tool_use is not None
    assert message.usage.server_tool_use.web_fetch_requests == 2
    # the redirect was followed on the checked address, with the name's Host header
    assert [h.path for h in web.hits] == ["/moved", "/page.html", "/doc.pdf"]
    assert all(h.host == f"127.0.0.2:{web.port}" for h in web.hits)


@pytest.mark.parametrize("stream", [True, False])
def test_ssrf_through_a_redirect_is_refused(client: anthropic.Anthropic, fake: FakeOpenAI,
                                            web: FakeSite, secret: FakeSite,
                                            stream: bool) -> None:
    evil = f"{web.url}/evil"
    fake.push(call("web_fetch", json.dumps({"url": evil})),
              say("I could not read it."))
    message, _ = ask(client, f"Summarise {evil}", [FETCH], stream=stream)
    result = message.content[1]
    assert isinstance(result, at.WebFetchToolResultBlock)
    assert isinstance(result.content, at.WebFetchToolResultErrorBlock)
    assert result.content.error_code == "url_not_allowed"
    assert secret.hits == []  # 127.0.0.1 was never contacted
    assert [h.path for h in web.hits] == ["/evil"]
    (tool,) = tool_messages(fake)
    assert "url_not_allowed" in tool["content"] and "internal admin" not in tool["content"]


def test_direct_loopback_and_unlisted_urls_are_refused(client: anthropic.Anthropic,
                                                       fake: FakeOpenAI,
                                                       secret: FakeSite) -> None:
    direct = f"{secret.url}/secret"
    fake.push(call("web_fetch", json.dumps({"url": direct})),
              call("web_fetch", json.dumps({"url": "http://127.0.0.2:1/x"}), call_id="call_2"),
              say("No."))
    message, _ = ask(client, f"Open {direct}", [FETCH], stream=False)
    codes = [b.content.error_code for b in message.content
             if isinstance(b, at.WebFetchToolResultBlock)
             and isinstance(b.content, at.WebFetchToolResultErrorBlock)]
    assert codes == ["url_not_allowed", "url_not_in_prior_context"]
    assert secret.hits == []


def test_max_uses_and_blocked_domains(client: anthropic.Anthropic, fake: FakeOpenAI,
                                      searx: FakeSite) -> None:
    tool = dict(SEARCH, max_uses=1, blocked_domains=["blocked.example"])
    fake.push(call("web_search", '{"query": "one"}'),
              call("web_search", '{"query": "two"}', call_id="call_2"),
              say("Done."))
    message, _ = ask(client, "search twice", [tool], stream=True)
    first, second = message.content[1], message.content[3]
    assert isinstance(first, at.WebSearchToolResultBlock) and isinstance(first.content, list)
    assert [r.title for r in first.content] == ["Relay notes", "Docs"]
    assert isinstance(second, at.WebSearchToolResultBlock)
    assert isinstance(second.content, at.WebSearchToolResultError)
    assert second.content.error_code == "max_uses_exceeded"
    assert len(searx.hits) == 1
    assert message.usage.server_tool_use is not None
    assert message.usage.server_tool_use.web_search_requests == 1


def test_client_web_tools_pass_through_as_tool_use(client: anthropic.Anthropic,
                                                   fake: FakeOpenAI, searx: FakeSite) -> None:
    """Claude Code's WebSearch/WebFetch are client tools: the client runs them."""
    tools = [{"name": "WebSearch", "description": "Search the web",
              "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}}},
             {"name": "WebFetch", "description": "Fetch a URL",
              "input_schema": {"type": "object", "properties": {"url": {"type": "string"}}}}]
    fake.push(call("WebSearch", '{"query": "x"}'))
    message, _ = ask(client, "search", tools, stream=True)
    assert [b.type for b in message.content] == ["tool_use"]
    assert message.stop_reason == "tool_use"
    assert len(fake.requests) == 1 and searx.hits == []


def test_pings_while_a_slow_search_runs(relay: Relay, fake: FakeOpenAI, searx: FakeSite) -> None:
    """The raw stream: pings between the call's block and its result (ping_interval 0.5 s)."""
    answer = searx.pages["/search"]

    def slow(site: FakeSite) -> Any:
        time.sleep(1.3)
        return answer(site) if callable(answer) else answer

    searx.pages["/search"] = slow
    try:
        fake.push(call("web_search", '{"query": "slow"}'), say("Done."))
        body = {"model": "claude-sonnet-4-6", "max_tokens": 100, "stream": True, "tools": [SEARCH],
                "messages": [{"role": "user", "content": "search slowly"}]}
        conn = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=10)
        conn.request("POST", "/v1/messages", json.dumps(body),
                     {"x-api-key": DEMO_KEY, "content-type": "application/json"})
        text = conn.getresponse().read().decode()
        conn.close()
        names = [line[len("event: "):] for line in text.splitlines()
                 if line.startswith("event: ")]
    finally:
        searx.pages["/search"] = answer
    first_stop = names.index("content_block_stop")
    waited = names[first_stop + 1:names.index("content_block_start", first_stop)]
    assert len(waited) >= 2 and set(waited) == {"ping"}
    assert names.count("message_start") == 1 and names[-1] == "message_stop"


def streams_active(relay: Relay) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=5)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith("txrelay_streams_active")]
    assert values, "no txrelay_streams_active gauge"
    return sum(values)


def test_a_client_leaving_during_the_search_releases_the_turn(
        relay: Relay, fake: FakeOpenAI, searx: FakeSite) -> None:
    answer = searx.pages["/search"]

    def slow(site: FakeSite) -> Any:
        time.sleep(1.0)
        return answer(site) if callable(answer) else answer

    searx.pages["/search"] = slow
    try:
        fake.push(call("web_search", '{"query": "leave"}'), say("never asked"))
        body = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 100, "stream": True,
                           "tools": [SEARCH],
                           "messages": [{"role": "user", "content": "search, then I go"}]})
        sock = socket.create_connection(("127.0.0.1", relay.port), timeout=5)
        sock.sendall(f"POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: {DEMO_KEY}\r\n"
                     f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
                     f"{body}".encode())
        seen = b""
        while b"content_block_stop" not in seen:
            seen += sock.recv(65536)
        sock.close()  # gone while the relay searches
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (searx.hits == [] or streams_active(relay)):
            time.sleep(0.1)
        time.sleep(1.5)  # the search's answer arrives (or not) after the client left
        assert streams_active(relay) == 0
        assert len(fake.requests) == 1  # the continuation was never sent
        assert len(fake.script) == 1
    finally:
        searx.pages["/search"] = answer
