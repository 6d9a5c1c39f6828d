"""
The anthropic pass-through backend end to end: the real relay (twistd) in front of a fake
Anthropic upstream (and a fake Vertex AI endpoint, and a fake Chat Completions server for a
conversation that changes backend), with the official anthropic SDK as the client.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from tests.fakeanthropic import (
    UPSTREAM_MODEL,
    FakeAnthropic,
    endless_deltas,
    error_answer,
    frame,
    frames,
    json_answer,
    message_json,
    raw_stream,
    text_events,
)
from tests.fakeupstream import FakeOpenAI, Sent, chunk, sse
from tests.relayproc import DEMO_KEY, Relay, config_text, start_relay

pytestmark = pytest.mark.integration

UPSTREAM_KEY = "sk-ant-upstream-secret-key"
VERTEX_TOKEN = "ya29.static-vertex-token"
BETAS = "claude-code-20250219,context-1m-2025-08-07,context-management-2025-06-27,old-beta-1"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAnthropic]:
    f = FakeAnthropic().start()
    yield f
    f.stop()


@pytest.fixture(scope="module")
def oai() -> Iterator[FakeOpenAI]:
    f = FakeOpenAI().start()
    yield f
    f.stop()


@pytest.fixture(scope="module")
def relay(fake: FakeAnthropic, oai: FakeOpenAI,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    cfg = config_text(
        server={"ping_interval": 0.5},
        providers=[
            {"name": "ant", "kind": "anthropic", "base_url": fake.url,
             "api_key": {"env": "TXRELAY_TEST_ANT_KEY"},
             "timeouts": {"connect": 2, "first_byte": 5, "idle": 3},
             "options": {"strip_betas": ["context-management-2025-06-27"],
                         "rewrite_betas": {"old-beta-1": "new-beta-2"},
                         "strip_fields": ["context_management"],
                         "models_from_upstream": True}},
            {"name": "vtx", "kind": "anthropic", "base_url": fake.url + "/v1",
             "api_key": {"env": "TXRELAY_TEST_VERTEX_TOKEN"},
             "options": {"api": "vertex", "project": "proj-1", "location": "us-east5"}},
            {"name": "oai", "kind": "openai-chat", "base_url": oai.url},
        ],
        models=[
            {"id": "claude-sonnet-4-6", "provider": "ant", "upstream_model": UPSTREAM_MODEL,
             "patterns": ["claude-*"], "max_tokens": 64000},
            {"id": "vertex-sonnet", "provider": "vtx", "upstream_model": "claude-sonnet-4-6"},
            {"id": "oai-model", "provider": "oai", "upstream_model": "gpt-fake"},
        ],
    )
    r = start_relay(tmp_path_factory.mktemp("anthropic"), cfg,
                    env={"TXRELAY_TEST_ANT_KEY": UPSTREAM_KEY,
                         "TXRELAY_TEST_VERTEX_TOKEN": VERTEX_TOKEN})
    yield r
    r.stop()


@pytest.fixture()
def client(relay: Relay) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=relay.url, api_key=DEMO_KEY, max_retries=0,
                             default_headers={"anthropic-beta": BETAS}) as c:
        yield c


@pytest.fixture(autouse=True)
def clean_script(fake: FakeAnthropic, oai: FakeOpenAI) -> Iterator[None]:
    fake.script.clear()
    oai.script.clear()
    yield
    fake.script.clear()


def user(text: str = "hi") -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def raw_stream_bytes(client: anthropic.Anthropic, **kwargs: Any) -> tuple[bytes, Any]:
    with client.messages.with_streaming_response.create(stream=True, **kwargs) as resp:
        return b"".join(resp.iter_bytes()), resp.headers


def split_frames(data: bytes) -> list[bytes]:
    return [f + b"\n\n" for f in data.split(b"\n\n") if f]


def test_stream_passes_through_byte_for_byte(client: anthropic.Anthropic,
                                             fake: FakeAnthropic) -> None:
    events = text_events("The quick brown fox jumps over the lazy dog.", pieces=5,
                         thinking="Let me think.")
    upstream = frames(events)
    fake.push(raw_stream(upstream, pieces=len(upstream) // 7))  # frames split anywhere
    got, headers = raw_stream_bytes(
        client, model="claude-sonnet-4-6", max_tokens=100, messages=user(),
        extra_body={"context_management": {"edits": [{"type": "clear_thinking_20251015"}]},
                    "output_config": {"effort": "high"}})
    sent, received = split_frames(upstream), split_frames(got)
    # Every frame but message_start exactly as the upstream sent it (pings included).
    assert received[1:] == sent[1:]
    start = json.loads(received[0].split(b"data: ", 1)[1])
    assert start["message"]["model"] == "claude-sonnet-4-6"   # R-X5: the requested name
    assert start["message"]["id"] == events[0]["message"]["id"]
    assert headers["content-type"].startswith("text/event-stream")
    rec = fake.requests[-1]
    assert rec.path == "/v1/messages"
    assert rec.headers["x-api-key"] == UPSTREAM_KEY
    assert "authorization" not in rec.headers
    assert DEMO_KEY not in json.dumps(rec.headers)
    assert rec.headers["anthropic-version"] == "2026-10-21"  # what this SDK sends
    assert rec.headers["anthropic-beta"] == (
        "claude-code-20250219,context-1m-2025-08-07,new-beta-2")
    assert rec.body["model"] == UPSTREAM_MODEL
    assert "context_management" not in rec.body
    assert rec.body["output_config"] == {"effort": "high"}
    assert rec.body["stream"] is True


def test_sdk_stream_helpers_and_crlf_framing(client: anthropic.Anthropic,
                                             fake: FakeAnthropic) -> None:
    upstream = frames(text_events("CRLF framed answer", pieces=4), eol="\r\n")
    fake.push(raw_stream(upstream, pieces=9))
    got, _ = raw_stream_bytes(client, model="claude-sonnet-4-6", max_tokens=10,
                              messages=user())
    assert got[got.index(b"event: ping"):] == upstream[upstream.index(b"event: ping"):]
    fake.push(raw_stream(upstream, pieces=9))
    with client.messages.stream(model="claude-sonnet-4-6", max_tokens=10,
                                messages=user()) as st:
        assert st.get_final_text() == "CRLF framed answer"
        message = st.get_final_message()
    assert message.model == "claude-sonnet-4-6"
    assert message.usage.output_tokens == 9


def test_body_forwarded_unchanged_but_for_the_model(relay: Relay,
                                                    fake: FakeAnthropic) -> None:
    body = (b'{"model": "claude-sonnet-4-6", "max_tokens": 10, "stream": false,\n'
            b' "messages": [{"role": "user", "content": "caf\\u00e9"}], "x_future": [1.50]}')
    fake.push(json_answer(message_json("ok")))
    req = urllib.request.Request(relay.url + "/v1/messages", data=body, headers={
        "x-api-key": DEMO_KEY, "content-type": "application/json",
        "anthropic-version": "2026-10-21"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
        assert json.loads(r.read())["model"] == "claude-sonnet-4-6"
    rec = fake.requests[-1]
    assert rec.headers["anthropic-version"] == "2026-10-21"
    assert "anthropic-beta" not in rec.headers
    assert rec.body == {**json.loads(body), "model": UPSTREAM_MODEL}
    fake.push(json_answer(message_json("ok")))
    req = urllib.request.Request(relay.url + "/v1/messages", data=body.replace(
        b'"max_tokens": 10', b'"max_tokens": 128000'), headers={
        "x-api-key": DEMO_KEY, "content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
    assert fake.requests[-1].body["max_tokens"] == 64000  # models.max_tokens clamps


def test_non_streaming(client: anthropic.Anthropic, fake: FakeAnthropic) -> None:
    answer = message_json("plain answer")
    answer["content"] = [
        {"type": "thinking", "thinking": "hmm", "signature": "EqQBCkYIBRgCKkDsig"},
        *answer["content"],
        {"type": "tool_use", "id": "toolu_01A", "name": "Read", "input": {"path": "/x"}}]
    answer["stop_reason"] = "tool_use"
    answer["container"] = {"id": "container_1", "expires_at": "2026-12-02T04:00:00Z"}
    fake.push(json_answer(answer, headers={"anthropic-ratelimit-requests-remaining": "41"}))
    resp = client.messages.with_raw_response.create(
        model="claude-sonnet-4-6", max_tokens=10, messages=user())
    message = resp.parse()
    assert message.content[1].text == "plain answer"  # type: ignore[union-attr]
    assert message.model == "claude-sonnet-4-6"
    # Every field as the upstream sent it, but the model (R-X5).
    assert resp.http_response.json() == {**answer, "model": "claude-sonnet-4-6"}
    assert resp.headers["anthropic-ratelimit-requests-remaining"] == "41"
    assert fake.requests[-1].body.get("stream") is None


def test_max_tokens_zero_goes_upstream(client: anthropic.Anthropic, fake: FakeAnthropic) -> None:
    # Pre-warming Anthropic's prompt cache: only this kind has a cache to warm.
    answer = message_json("")
    answer["content"], answer["stop_reason"] = [], "max_tokens"
    fake.push(json_answer(answer))
    before = len(fake.requests)
    message = client.messages.create(model="claude-sonnet-4-6", max_tokens=0, messages=user())
    assert message.content == [] and message.stop_reason == "max_tokens"
    assert len(fake.requests) == before + 1
    assert fake.requests[-1].body["max_tokens"] == 0


@pytest.mark.parametrize("stream", [True, False])
def test_rate_limit_returned_unmodified(client: anthropic.Anthropic, fake: FakeAnthropic,
                                        stream: bool) -> None:
    fake.push(error_answer(429, "rate_limit_error",
                           "Number of request tokens has exceeded your per-minute rate limit",
                           headers={"retry-after": "17", "x-should-retry": "true",
                                    "anthropic-ratelimit-tokens-remaining": "0",
                                    "anthropic-ratelimit-tokens-reset": "2026-12-02T03:00:00Z"}))
    with pytest.raises(anthropic.RateLimitError) as info:
        client.messages.create(model="claude-sonnet-4-6", max_tokens=10, messages=user(),
                               stream=stream)
    e = info.value
    assert e.status_code == 429
    assert e.response.headers["retry-after"] == "17"
    assert e.response.headers["x-should-retry"] == "true"
    assert e.response.headers["anthropic-ratelimit-tokens-remaining"] == "0"
    assert e.response.headers["anthropic-ratelimit-tokens-reset"] == "2026-12-02T03:00:00Z"
    assert e.body == {"type": "error", "error": {
        "type": "rate_limit_error",
        "message": "Number of request tokens has exceeded your per-minute rate limit"},
        "request_id": "req_upstream0123456789"}
    assert e.response.headers["request-id"].startswith("req_")


def test_overloaded_and_bad_request_keep_their_wording(client: anthropic.Anthropic,
                                                       fake: FakeAnthropic) -> None:
    fake.push(error_answer(529, "overloaded_error", "Overloaded"))
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.create(model="claude-sonnet-4-6", max_tokens=10, messages=user(),
                               stream=True)
    assert info.value.status_code == 529
    assert info.value.body["error"]["message"] == "Overloaded"  # type: ignore[index]
    wording = ('messages: Unexpected role "system". The Messages API accepts a top-level '
               '`system` parameter, not "system" as an input message role.')
    fake.push(error_answer(400, "invalid_request_error", wording))
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(model="claude-sonnet-4-6", max_tokens=10, messages=user())
    assert bad.value.body["error"]["message"] == wording  # type: ignore[index]


def test_error_event_before_content_is_an_http_error(client: anthropic.Anthropic,
                                                     fake: FakeAnthropic) -> None:
    fake.push(raw_stream(frames([text_events("")[0], {"type": "ping"}, {
        "type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}])))
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.create(model="claude-sonnet-4-6", max_tokens=10, messages=user(),
                               stream=True)
    assert info.value.status_code == 529
    assert info.value.body["error"] == {  # type: ignore[index]
        "type": "overloaded_error", "message": "Overloaded"}


def test_error_event_after_content_is_relayed(client: anthropic.Anthropic,
                                              fake: FakeAnthropic) -> None:
    head = text_events("partial")[:4]
    fake.push(raw_stream(frames([*head, {"type": "error", "error": {
        "type": "api_error", "message": "Internal server error"}}])))
    got, _ = raw_stream_bytes(client, model="claude-sonnet-4-6", max_tokens=10,
                              messages=user())
    last = split_frames(got)[-1]
    assert last.startswith(b"event: error\n")
    assert json.loads(last.split(b"data: ", 1)[1])["error"] == {
        "type": "api_error", "message": "Internal server error"}


def test_cut_stream_is_an_error(client: anthropic.Anthropic, fake: FakeAnthropic) -> None:
    fake.push(raw_stream(frames(text_events("cut short")[:5])))
    got, _ = raw_stream_bytes(client, model="claude-sonnet-4-6", max_tokens=10,
                              messages=user())
    last = split_frames(got)[-1]
    assert last.startswith(b"event: error")
    assert b"before message_stop" in last


def test_relay_signatures_are_removed_from_history(client: anthropic.Anthropic,
                                                   fake: FakeAnthropic) -> None:
    history = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "relay made this", "signature": "txr1.oai.abc"},
            {"type": "redacted_thinking", "data": "txr1.orx.eyJ0eXBlIjoieCJ9"},
            {"type": "text", "text": "answer one"}]},
        {"role": "user", "content": "second"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "real", "signature": "EqQBCkYIBRgCKkDsig"},
            {"type": "text", "text": "answer two"}]},
        {"role": "user", "content": "third"},
    ]
    client.messages.create(model="claude-sonnet-4-6", max_tokens=10, messages=history,
                           thinking={"type": "enabled", "budget_tokens": 1024})
    sent = fake.requests[-1].body
    assert sent["messages"][1]["content"] == [{"type": "text", "text": "answer one"}]
    assert sent["messages"][3] == history[3]                   # Anthropic's own: kept
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert "txr1." not in json.dumps(sent)


def test_count_tokens_from_the_upstream(client: anthropic.Anthropic,
                                        fake: FakeAnthropic) -> None:
    fake.push(json_answer({"input_tokens": 4321}))
    count = client.messages.count_tokens(model="claude-sonnet-4-6", messages=user())
    assert count.input_tokens == 4321
    rec = fake.requests[-1]
    assert rec.path == "/v1/messages/count_tokens"
    assert rec.body["model"] == UPSTREAM_MODEL
    assert rec.headers["x-api-key"] == UPSTREAM_KEY
    fake.push(error_answer(400, "invalid_request_error", "messages: at least one message"))
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.count_tokens(model="claude-sonnet-4-6", messages=user())
    assert info.value.body["error"]["message"] == "messages: at least one message"  # type: ignore[index]


def test_models_from_the_upstream(client: anthropic.Anthropic, fake: FakeAnthropic) -> None:
    listing = {"data": [{"type": "model", "id": "claude-up-9", "display_name": "Up 9",
                         "created_at": "2026-01-01T00:00:00Z"}],
               "has_more": False, "first_id": "claude-up-9", "last_id": "claude-up-9"}
    fake.push(json_answer(listing))
    page = client.models.list(limit=5)
    assert [m.id for m in page.data] == ["claude-up-9"]
    rec = fake.requests[-1]
    assert rec.path == "/v1/models?limit=5"
    assert rec.headers["x-api-key"] == UPSTREAM_KEY
    assert DEMO_KEY not in json.dumps(rec.headers)


def test_vertex_transport(client: anthropic.Anthropic, fake: FakeAnthropic) -> None:
    upstream = frames(text_events("from vertex"))
    fake.push(raw_stream(upstream))
    got, _ = raw_stream_bytes(client, model="vertex-sonnet", max_tokens=10, messages=user())
    assert split_frames(got)[1:] == split_frames(upstream)[1:]
    rec = fake.requests[-1]
    assert rec.path == ("/v1/projects/proj-1/locations/us-east5/publishers/anthropic/models/"
                        "claude-sonnet-4-6:streamRawPredict")
    assert rec.headers["authorization"] == f"Bearer {VERTEX_TOKEN}"
    assert "x-api-key" not in rec.headers and "anthropic-version" not in rec.headers
    assert "model" not in rec.body
    assert rec.body["anthropic_version"] == "vertex-2023-10-16"
    fake.push(json_answer(message_json("vertex plain")))
    message = client.messages.create(model="vertex-sonnet", max_tokens=10, messages=user())
    assert message.model == "vertex-sonnet"
    assert fake.requests[-1].path.endswith("/claude-sonnet-4-6:rawPredict")
    fake.push(json_answer({"input_tokens": 7}))
    assert client.messages.count_tokens(model="vertex-sonnet",
                                        messages=user()).input_tokens == 7
    rec = fake.requests[-1]
    assert rec.path.endswith("/publishers/anthropic/models/count-tokens:rawPredict")
    assert rec.body["model"] == "claude-sonnet-4-6"


def test_conversation_moves_from_openai_chat_to_anthropic(
        client: anthropic.Anthropic, fake: FakeAnthropic, oai: FakeOpenAI) -> None:
    oai.push(sse([chunk({"role": "assistant", "reasoning_content": "thinking on oai"}),
                  chunk({"content": "oai says hi"}), chunk({}, "stop")]))
    with client.messages.stream(model="oai-model", max_tokens=50, messages=user("one"),
                                thinking={"type": "enabled", "budget_tokens": 1024}) as st:
        first = st.get_final_message()
    blocks = [b.model_dump(exclude_none=True) for b in first.content]
    assert blocks[0]["type"] == "thinking"
    assert blocks[0]["signature"].startswith("txr1.")
    history = [{"role": "user", "content": "one"},
               {"role": "assistant", "content": blocks},
               {"role": "user", "content": "two"}]
    fake.push(raw_stream(frames(text_events("anthropic continues", thinking="mine"))))
    with client.messages.stream(model="claude-sonnet-4-6", max_tokens=50, messages=history,
                                thinking={"type": "enabled", "budget_tokens": 1024}) as st:
        second = st.get_final_message()
    sent = fake.requests[-1].body
    assert sent["messages"][1]["content"] == [{"type": "text", "text": "oai says hi"}]
    # ...and back: the Anthropic-signed block goes to the openai-chat backend too.
    history += [{"role": "assistant",
                 "content": [b.model_dump(exclude_none=True) for b in second.content]},
                {"role": "user", "content": "three"}]
    oai.push(sse([chunk({"role": "assistant", "content": "back on oai"}), chunk({}, "stop")]))
    with client.messages.stream(model="oai-model", max_tokens=50, messages=history) as st:
        assert st.get_final_text() == "back on oai"
    assert "EqQBCkYIBRgCKkDsig" not in json.dumps(oai.requests[-1].body)


def open_stream(relay: Relay, rcvbuf: int | None = None) -> socket.socket:
    s = socket.socket()
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", relay.port))
    body = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 100, "stream": True,
                       "messages": user()}).encode()
    s.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: " + DEMO_KEY.encode()
              + b"\r\ncontent-type: application/json\r\ncontent-length: "
              + str(len(body)).encode() + b"\r\n\r\n" + body)
    return s


def test_slow_client_stalls_the_upstream(relay: Relay, fake: FakeAnthropic) -> None:
    """A client that stops reading: the upstream's writes stall instead of the relay buffering."""
    sent = Sent()
    fake.push(endless_deltas(sent, limit=1 << 30))
    s = open_stream(relay, rcvbuf=16384)
    assert s.recv(4096)
    deadline = time.monotonic() + 10
    last, stable_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        if sent.bytes != last:
            last, stable_since = sent.bytes, time.monotonic()
        elif time.monotonic() - stable_since > 1.0:
            break
    assert time.monotonic() < deadline, "the upstream never stalled"
    assert sent.bytes < 32 * 1024 * 1024, f"upstream sent {sent.bytes} bytes unread"
    s.close()
    deadline = time.monotonic() + 10
    while sent.disconnected_at is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sent.disconnected_at is not None, "the upstream kept its connection to nobody"


def test_client_disconnect_closes_the_upstream(relay: Relay, fake: FakeAnthropic) -> None:
    sent = Sent()
    fake.push(endless_deltas(sent))
    s = open_stream(relay)
    assert s.recv(65536)
    while sent.bytes < 1_000_000:
        s.recv(1 << 20)
    s.close()
    deadline = time.monotonic() + 10
    while sent.disconnected_at is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sent.disconnected_at is not None, "the upstream kept streaming to nobody"
    assert not sent.finished


def test_upstream_frames_match_exactly_in_one_event_per_write(
        client: anthropic.Anthropic, fake: FakeAnthropic) -> None:
    events = text_events("one frame per write", pieces=6)
    fake.push(raw_stream(frames(events), pieces=len(events)))
    got, _ = raw_stream_bytes(client, model="claude-sonnet-4-6", max_tokens=10,
                              messages=user())
    assert split_frames(got)[1:] == [frame(e) for e in events[1:]]


def test_a_stage_filter_rewrites_pass_through_events(
        fake: FakeAnthropic, tmp_path_factory: pytest.TempPathFactory) -> None:
    """tool-hygiene's filter on a pass-through stream: the events it changes are encoded
    again, the others still arrive as the upstream framed them."""
    cfg = config_text(
        providers=[{"name": "ant", "kind": "anthropic", "base_url": fake.url}],
        models=[{"id": "claude-sonnet-4-6", "provider": "ant", "patterns": ["claude-*"]}],
        pipeline=[{"type": "auth"}, {"type": "model-map"}, {"type": "tool-hygiene"},
                  {"type": "translate"}])
    r = start_relay(tmp_path_factory.mktemp("anthropic-filter"), cfg)
    read = {"name": "Read", "description": "Read a file", "input_schema": {
        "type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}
    try:
        c = anthropic.Anthropic(base_url=r.url, api_key=DEMO_KEY, max_retries=0)
        text = 'Reading.<tool_call>{"name": "Read", "arguments": {"path": "/x"}}</tool_call>'
        fake.push(raw_stream(frames(text_events(text, pieces=4))))
        with c.messages.stream(model="claude-sonnet-4-6", max_tokens=50, messages=user(),
                               tools=[read]) as st:  # type: ignore[list-item]
            message = st.get_final_message()
        uses = [b for b in message.content if b.type == "tool_use"]
        assert [(u.name, u.input) for u in uses] == [("Read", {"path": "/x"})]
        assert message.stop_reason == "tool_use"
        fake.push(json_answer(message_json(text)))
        folded = c.messages.create(model="claude-sonnet-4-6", max_tokens=50,
                                   messages=user(), tools=[read])  # type: ignore[list-item]
        assert [(b.name, b.input) for b in folded.content if b.type == "tool_use"] == [
            ("Read", {"path": "/x"})]                  # the filter applies without streaming
        plain_events = text_events("plain words", pieces=2)
        fake.push(raw_stream(frames(plain_events)))
        got, _ = raw_stream_bytes(c, model="claude-sonnet-4-6", max_tokens=10,
                                  messages=user(), tools=[read])
        parsed = [json.loads(f.split(b"data: ", 1)[1]) for f in split_frames(got)]
        assert parsed[1:] == plain_events[1:]
    finally:
        r.stop()
