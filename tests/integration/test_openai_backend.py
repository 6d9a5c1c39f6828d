"""
The openai-chat backend end to end: the real relay (twistd) in front of a fake Chat
Completions server on loopback, with the official anthropic SDK as the client.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from tests.fakeupstream import (
    FakeOpenAI,
    Sent,
    chunk,
    endless,
    json_response,
    sse,
    stall,
    text_stream,
)
from tests.relayproc import DEMO_KEY, Relay, config_text, start_relay

pytestmark = pytest.mark.integration

READ = {"name": "Read", "description": "Read a file", "input_schema": {
    "type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    f = FakeOpenAI().start()
    yield f
    f.stop()


@pytest.fixture(scope="module")
def relay(fake: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    cfg = config_text(
        server={"ping_interval": 0.5},
        providers=[{"name": "up", "kind": "openai-chat", "base_url": fake.url,
                    "api_key": {"env": "TXRELAY_TEST_UPSTREAM_KEY"},
                    "timeouts": {"connect": 2, "first_byte": 3, "idle": 2},
                    "options": {"dialect": "openai"}},
                   {"name": "dead", "kind": "openai-chat", "base_url": "http://127.0.0.1:9/v1"}],
        models=[{"id": "claude-sonnet-4-6", "provider": "up", "upstream_model": "gpt-fake",
                 "max_tokens": 4096, "patterns": ["claude-*"]},
                {"id": "dead-model", "provider": "dead"}],
    )
    r = start_relay(tmp_path_factory.mktemp("openai"), cfg,
                    env={"TXRELAY_TEST_UPSTREAM_KEY": "sk-upstream-secret"})
    yield r
    r.stop()


@pytest.fixture()
def client(relay: Relay) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=relay.url, api_key=DEMO_KEY, max_retries=0) as c:
        yield c


@pytest.fixture(autouse=True)
def clean_script(fake: FakeOpenAI) -> Iterator[None]:
    fake.script.clear()
    yield
    fake.script.clear()


def user(text: str = "hi") -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def test_text_stream_and_upstream_request(client: anthropic.Anthropic, fake: FakeOpenAI) -> None:
    fake.push(sse(text_stream("Hello there, friend.", pieces=5)))
    with client.messages.stream(model="claude-sonnet-4-6", max_tokens=100000,
                                system="Be brief.", messages=user("greet me"),
                                extra_headers={"anthropic-beta": "x-1"}) as stream:
        kinds = [e.type for e in stream]
        message = stream.get_final_message()
    assert message.content[0].text == "Hello there, friend."  # type: ignore[union-attr]
    assert message.model == "claude-sonnet-4-6" and message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 7
    assert message.usage.cache_read_input_tokens == 60 and message.usage.input_tokens == 40
    assert kinds.count("text") >= 4
    sent = fake.requests[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == "Bearer sk-upstream-secret"
    assert not any(h.startswith(("anthropic-", "x-stainless", "x-api-key")) for h in sent.headers)
    assert DEMO_KEY not in json.dumps(sent.headers)
    body = sent.body
    assert body["model"] == "gpt-fake"
    assert body["max_completion_tokens"] == 4096  # clamped to the model's max_tokens
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}


def test_non_streaming(client: anthropic.Anthropic, fake: FakeOpenAI) -> None:
    fake.push(json_response({
        "id": "c", "object": "chat.completion", "choices": [{
            "index": 0, "finish_reason": "tool_calls",
            "message": {"role": "assistant", "content": "Reading.",
                        "tool_calls": [{"id": "call_1", "type": "function", "function": {
                            "name": "Read", "arguments": "{'path': 'a.py'}"}}]}}],
        "usage": {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39}}))
    msg = client.messages.create(model="claude-sonnet-4-6", max_tokens=100, tools=[READ],
                                 messages=user("read a.py"))
    assert fake.requests[-1].body["stream"] is False
    assert [b.type for b in msg.content] == ["text", "tool_use"]
    assert msg.content[1].input == {"path": "a.py"}  # type: ignore[union-attr]  (repaired)
    assert msg.stop_reason == "tool_use" and msg.usage.output_tokens == 9


def test_parallel_tool_calls_round_trip(client: anthropic.Anthropic, fake: FakeOpenAI) -> None:
    chunks: list[dict[str, Any] | str] = [
        chunk({"role": "assistant", "content": None}),
        chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                               "function": {"name": "Read", "arguments": '{"pa'}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "call_2", "type": "function",
                               "function": {"name": "Read", "arguments": '{"path": "b'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'th": "a.py"}'}}]}),
        chunk({"tool_calls": [{"index": 1, "function": {"arguments": '.py"}'}}]}),
        chunk({}, "stop"),  # Q8: tool calls with finish_reason stop
    ]
    fake.push(sse(chunks))
    with client.messages.stream(model="claude-sonnet-4-6", max_tokens=100, tools=[READ],
                                messages=user("read both")) as stream:
        msg = stream.get_final_message()
    calls = [b for b in msg.content if b.type == "tool_use"]
    assert [c.input for c in calls] == [{"path": "a.py"}, {"path": "b.py"}]
    assert msg.stop_reason == "tool_use"
    assert len({c.id for c in calls}) == 2 and all(c.id.startswith("toolu_") for c in calls)
    fake.push(sse(text_stream("Both read.")))
    history = [
        *user("read both"),
        {"role": "assistant", "content": [c.model_dump(exclude_none=True) for c in calls]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": calls[0].id, "content": "A"},
            {"type": "tool_result", "tool_use_id": calls[1].id, "content": "B",
             "is_error": True},
            {"type": "text", "text": "now summarise"}]},
    ]
    final = client.messages.create(model="claude-sonnet-4-6", max_tokens=100, tools=[READ],
                                   messages=history, stream=True)
    assert [e.type for e in final][-1] == "message_stop"
    sent = fake.requests[-1].body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "tool", "user"]
    assert sent[2] == {"role": "tool", "tool_call_id": calls[0].id, "content": "A"}
    assert sent[3]["content"].startswith("Error: ")


def test_reasoning_becomes_signed_thinking(client: anthropic.Anthropic,
                                           fake: FakeOpenAI) -> None:
    fake.push(sse([chunk({"role": "assistant", "content": ""}),
                   chunk({"reasoning_content": "Let me think."}),
                   chunk({"content": "\n\n"}), chunk({"content": "Answer."}),
                   chunk({}, "stop")]))
    msg = client.messages.create(model="claude-sonnet-4-6", max_tokens=100,
                                 messages=user(), stream=True)
    events = list(msg)
    starts = [e.content_block.type for e in events if e.type == "content_block_start"]
    assert starts == ["thinking", "text"]
    sig = [e.delta.signature for e in events
           if e.type == "content_block_delta" and e.delta.type == "signature_delta"]
    assert len(sig) == 1 and sig[0].startswith("txr1.oai.")


@pytest.mark.parametrize("status, body, headers, want_status, want_type, fragment", [
    (429, {"error": {"message": "Rate limit reached", "type": "requests"}},
     {"retry-after": "3"}, 429, "rate_limit_error", "Rate limit"),
    (503, {"error": {"message": "The server is overloaded"}}, {}, 529, "overloaded_error",
     "overloaded"),
    (400, {"error": {"message": "This model's maximum context length is 8192 tokens. However, "
                                "you requested 9000 tokens", "code": "context_length_exceeded"}},
     {}, 400, "invalid_request_error", "prompt is too long"),
    (401, {"error": {"message": "Incorrect API key provided: sk-upstr***"}}, {}, 401,
     "authentication_error", "upstream credential"),
    (500, "<html>bad gateway</html>", {}, 500, "api_error", "up:"),
    (402, {"error": {"code": 402, "message": "Insufficient credits"}}, {}, 402,
     "billing_error", "credits"),
])
def test_upstream_errors_before_commit(client: anthropic.Anthropic, fake: FakeOpenAI,
                                       status: int, body: Any, headers: dict[str, str],
                                       want_status: int, want_type: str, fragment: str) -> None:
    for stream in (True, False):
        raw = body.encode() if isinstance(body, str) else None
        fake.push(json_response(body, status=status, headers=headers, raw=raw))
        with pytest.raises(anthropic.APIStatusError) as info:
            client.messages.create(model="claude-sonnet-4-6", max_tokens=10, messages=user(),
                                   stream=stream)  # type: ignore[call-overload]
        err = info.value
        assert err.status_code == want_status, err.body
        assert err.body["error"]["type"] == want_type  # type: ignore[index]
        assert fragment in err.body["error"]["message"]  # type: ignore[index]
        assert "sk-upstream-secret" not in str(err.body)
        if status == 429:
            assert err.response.headers["retry-after"] == "3"


def test_connection_refused(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.create(model="dead-model", max_tokens=10, messages=user(), stream=True)
    assert info.value.status_code == 502
    assert "upstream connection failed" in info.value.body["error"]["message"]  # type: ignore[index]


def test_error_inside_200_before_content_is_an_http_error(client: anthropic.Anthropic,
                                                          fake: FakeOpenAI) -> None:
    # R-X9: llama.cpp / OpenRouter report immediate failures as 200 + an error event.
    fake.push(sse([{"error": {"message": "the request exceeds the available context size",
                              "type": "exceed_context_size_error", "code": 400}}], done=False))
    with pytest.raises(anthropic.BadRequestError, match="prompt is too long"):
        client.messages.create(model="claude-sonnet-4-6", max_tokens=10, messages=user(),
                               stream=True)


def test_error_after_commit_is_an_error_event(relay: Relay, fake: FakeOpenAI) -> None:
    fake.push(sse([chunk({"role": "assistant", "content": ""}), chunk({"content": "partial"}),
                   {"error": {"message": "The server had an error", "type": "server_error"}}],
                  done=False))
    frames = raw_stream(relay, {"model": "claude-sonnet-4-6", "max_tokens": 10,
                                "messages": user(), "stream": True})
    names = [f[0] for f in frames]
    assert names[0] == "message_start" and names[-1] == "error"
    assert "message_stop" not in names and "message_delta" not in names


def test_truncated_upstream_is_an_error_not_an_answer(relay: Relay, fake: FakeOpenAI) -> None:
    fake.push(sse([chunk({"role": "assistant", "content": ""}), chunk({"content": "cut"})],
                  done=False))
    names = [f[0] for f in raw_stream(relay, {"model": "claude-sonnet-4-6", "max_tokens": 10,
                                              "messages": user(), "stream": True})]
    assert names[-1] == "error" and "message_stop" not in names


def test_pings_while_the_upstream_is_slow(relay: Relay, fake: FakeOpenAI) -> None:
    # Slow response headers: the relay commits after ping_interval (0.5 s) and pings.
    fake.push(stall(1.6, sse(text_stream("late"))))
    frames = raw_stream(relay, {"model": "claude-sonnet-4-6", "max_tokens": 10,
                                "messages": user(), "stream": True})
    names = [f[0] for f in frames]
    first_content = names.index("content_block_start")
    assert names[0] == "message_start"
    assert names[:first_content].count("ping") >= 3
    assert names[-1] == "message_stop"


def test_idle_upstream_body_times_out(relay: Relay, fake: FakeOpenAI) -> None:
    fake.push(sse([chunk({"role": "assistant", "content": ""}), chunk({"content": "a"}),
                   ": then silence"], delay=2.6, done=False))
    frames = raw_stream(relay, {"model": "claude-sonnet-4-6", "max_tokens": 10,
                                "messages": user(), "stream": True})
    assert frames[-1][0] == "error"
    assert frames[-1][1]["error"]["type"] == "timeout_error"


def test_slow_first_byte_times_out(client: anthropic.Anthropic, fake: FakeOpenAI) -> None:
    fake.push(stall(4, json_response({})))
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.create(model="claude-sonnet-4-6", max_tokens=10, messages=user())
    assert info.value.status_code == 504


def raw_stream(relay: Relay, body: dict[str, Any], *, read_limit: int | None = None
               ) -> list[tuple[str, Any]]:
    """POST a streaming request over a raw socket; the frames as (event, data)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=30)
    conn.request("POST", "/v1/messages", body=json.dumps(body),
                 headers={"x-api-key": DEMO_KEY, "content-type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    text = resp.read().decode()
    conn.close()
    frames = []
    for frame in text.split("\n\n"):
        if frame.strip():
            event, data = frame.split("\n")
            frames.append((event.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return frames


def open_stream(relay: Relay, rcvbuf: int | None = None) -> socket.socket:
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", relay.port))
    body = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 10, "stream": True,
                       "messages": user()}).encode()
    s.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: " + DEMO_KEY.encode()
              + b"\r\ncontent-type: application/json\r\ncontent-length: "
              + str(len(body)).encode() + b"\r\n\r\n" + body)
    return s


def test_client_disconnect_cancels_the_upstream(relay: Relay, fake: FakeOpenAI) -> None:
    sent = Sent()
    fake.push(endless(sent))
    s = open_stream(relay)
    assert s.recv(65536)
    while sent.bytes < 1_000_000:
        s.recv(1 << 20)
    first_connection = fake.requests[-1].connection
    s.close()
    closed_at = time.monotonic()
    deadline = closed_at + 10
    while sent.disconnected_at is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sent.disconnected_at is not None, "the upstream kept streaming to nobody"
    assert not sent.finished
    # The half-read upstream connection is never reused for the next request.
    fake.push(sse(text_stream("fresh")))
    c = anthropic.Anthropic(base_url=relay.url, api_key=DEMO_KEY, max_retries=0)
    with c.messages.stream(model="claude-sonnet-4-6", max_tokens=10, messages=user()) as st:
        assert st.get_final_text() == "fresh"
    assert fake.requests[-1].connection != first_connection


@pytest.mark.slow
def test_slow_client_keeps_relay_memory_flat(relay: Relay, fake: FakeOpenAI) -> None:
    """A 1 GiB stream to a client reading ~1 MB/s: the upstream is paused, RSS stays flat."""
    sent = Sent()
    fake.push(endless(sent, limit=1 << 30))
    before = relay.rss_kib()
    s = open_stream(relay, rcvbuf=32768)
    received = 0
    peak = before
    started = time.monotonic()
    while time.monotonic() - started < 6:
        received += len(s.recv(16384))
        time.sleep(0.016)
        peak = max(peak, relay.rss_kib())
    s.close()
    growth_mib = (peak - before) / 1024
    # A buffering relay takes the upstream's whole output (hundreds of MB in 6 s).
    assert sent.bytes < 64 * 1024 * 1024, f"upstream sent {sent.bytes} bytes"
    assert growth_mib < 48, f"relay RSS grew by {growth_mib:.1f} MiB"
    assert received > 1_000_000


def test_upstream_cookies_never_persist(client: anthropic.Anthropic, fake: FakeOpenAI) -> None:
    """Cookies one upstream answer sets must not ride along on other clients' requests."""
    answer = {"choices": [{"index": 0, "finish_reason": "stop",
                           "message": {"role": "assistant", "content": "ok"}}]}
    fake.push(json_response(answer, headers={"set-cookie": "session=secret; Path=/"}),
              json_response(answer))
    for _ in range(2):
        client.messages.create(model="claude-sonnet-4-6", max_tokens=10, messages=user())
    assert "cookie" not in fake.requests[-1].headers
