"""
Issue 7.11 and issue 8 item 1 (stream half) end to end: the real relay in front of a fake
Chat Completions server that cuts its streams or sends chunks of the wrong shape. The client
(the official anthropic SDK, or a raw socket once the stream is committed) always gets an
Anthropic-shaped error naming the problem, never a complete-looking answer or our own 500.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from tests.fakeupstream import FakeOpenAI, chunk, sse
from tests.relayproc import DEMO_KEY, Relay, config_text, start_relay

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    f = FakeOpenAI().start()
    yield f
    f.stop()


@pytest.fixture(scope="module")
def relay(fake: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    cfg = config_text(
        providers=[{"name": "up", "kind": "openai-chat", "base_url": fake.url,
                    "options": {"dialect": "generic"}}],
        models=[{"id": "claude-sonnet-4-6", "provider": "up", "patterns": ["claude-*"]}],
    )
    r = start_relay(tmp_path_factory.mktemp("hostile"), cfg)
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


BODY = {"model": "claude-sonnet-4-6", "max_tokens": 50, "stream": True,
        "messages": [{"role": "user", "content": "hi"}]}


def frames(relay: Relay) -> list[tuple[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=30)
    conn.request("POST", "/v1/messages", body=json.dumps(BODY),
                 headers={"x-api-key": DEMO_KEY, "content-type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    text = resp.read().decode()
    conn.close()
    out = []
    for frame in text.split("\n\n"):
        if frame.strip():
            event, data = frame.split("\n")
            out.append((event.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


def test_done_without_finish_reason_is_an_error_not_an_answer(relay: Relay,
                                                                fake: FakeOpenAI) -> None:
    fake.push(sse([chunk({"role": "assistant", "content": ""}), chunk({"content": "Short"})]))
    got = frames(relay)
    names = [name for name, _ in got]
    assert names[0] == "message_start" and names[-1] == "error"
    assert "message_stop" not in names
    assert "without a finish reason" in got[-1][1]["error"]["message"]


def test_open_tool_arguments_at_done_are_an_error(relay: Relay, fake: FakeOpenAI) -> None:
    call = {"index": 0, "id": "call_1", "type": "function",
            "function": {"name": "Write", "arguments": '{"file_path": "/tmp/a", "content": "de'}}
    fake.push(sse([chunk({"role": "assistant", "content": None, "tool_calls": [call]})]))
    got = frames(relay)
    assert got[-1][0] == "error"
    assert "in the middle of a tool call's arguments" in got[-1][1]["error"]["message"]
    assert "message_stop" not in [name for name, _ in got]


@pytest.mark.parametrize(("line", "problem"), [
    ('data: {"choices": 5}', "'choices' is not a list"),
    ('data: {"choices": [{"index": 0, "delta": "text"}]}', "'delta' is not an object"),
    ("data: " + "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('data: {"choices": [], "usage": ' + "9" * 5000 + "}", "invalid JSON"),
])
def test_hostile_first_chunk_is_a_502(client: anthropic.Anthropic, fake: FakeOpenAI,
                                      line: str, problem: str) -> None:
    fake.push(sse([line]))
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.create(model="claude-sonnet-4-6", max_tokens=50, stream=True,
                               messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 502
    message = info.value.body["error"]["message"]  # type: ignore[index]
    assert problem in message
    assert "internal relay error" not in message
