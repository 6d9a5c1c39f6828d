"""
Model capabilities end to end: the real relay in front of the demo backend and the fake
Chat Completions server, with the official anthropic SDK as the client. What a model cannot
take is a 400 naming it, and the upstream never sees the request.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from tests.fakeupstream import FakeOpenAI, sse, text_stream
from tests.relayproc import DEMO_KEY, Relay, config_text, start_relay

pytestmark = pytest.mark.integration

PNG = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
PDF = {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}
IMAGE_TURN: list[Any] = [{"role": "user", "content": "hi"},
                         {"role": "assistant", "content": "hello"},
                         {"role": "user", "content": [{"type": "image", "source": PNG},
                                                      {"type": "text", "text": "what?"}]}]


def message(info: pytest.ExceptionInfo[anthropic.BadRequestError]) -> str:
    """The error message the relay sent."""
    body: Any = info.value.body
    return str(body["error"]["message"])


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    f = FakeOpenAI().start()
    yield f
    f.stop()


@pytest.fixture(scope="module")
def relay(fake: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    cfg = config_text(
        providers=[{"name": "deepseek", "kind": "openai-chat", "base_url": fake.url,
                    "options": {"dialect": "deepseek"}},
                   {"name": "demo", "kind": "demo"}],
        models=[
            # The deepseek preset: no images, no PDFs.
            {"id": "deepseek-chat", "provider": "deepseek", "max_tokens": 8192},
            {"id": "strict-chat", "provider": "deepseek", "upstream_model": "deepseek-chat",
             "capabilities": {"vision": True, "max_output_tokens": 4096,
                              "clamp_max_tokens": False},
             "options": {"supports_images": True}},
            {"id": "tiny-window", "provider": "deepseek", "upstream_model": "deepseek-chat",
             "capabilities": {"context_window": 50}},
            {"id": "demo-text", "provider": "demo",
             "capabilities": {"vision": False, "documents": False, "tools": False}},
        ],
    )
    r = start_relay(tmp_path_factory.mktemp("capabilities"), cfg)
    yield r
    r.stop()


@pytest.fixture()
def client(relay: Relay) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=relay.url, api_key=DEMO_KEY, max_retries=0) as c:
        yield c


@pytest.mark.parametrize("stream", [False, True])
def test_an_image_to_a_model_without_vision_never_reaches_the_upstream(
        client: anthropic.Anthropic, fake: FakeOpenAI, stream: bool) -> None:
    before = len(fake.requests)
    with pytest.raises(anthropic.BadRequestError) as info:
        if stream:
            with client.messages.stream(model="deepseek-chat", max_tokens=100,
                                        messages=IMAGE_TURN) as s:
                s.get_final_message()
        else:
            client.messages.create(model="deepseek-chat", max_tokens=100, messages=IMAGE_TURN)
    assert info.value.status_code == 400
    assert info.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert message(info) == (
        "model 'deepseek-chat' does not accept images (messages.2.content.0)")
    assert len(fake.requests) == before


def test_count_tokens_is_refused_the_same_way(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.count_tokens(model="deepseek-chat", messages=[
            {"role": "user", "content": [{"type": "document", "source": PDF}]}])
    assert "model 'deepseek-chat' does not accept PDF documents (messages.0.content.0)" \
        in message(info)


def test_max_tokens_clamped_or_refused(client: anthropic.Anthropic, fake: FakeOpenAI) -> None:
    fake.push(sse(text_stream("Fine.")))
    with client.messages.stream(model="deepseek-chat", max_tokens=20000,
                                messages=[{"role": "user", "content": "hi"}]) as s:
        msg = s.get_final_message()
    assert msg.content[0].text == "Fine."  # type: ignore[union-attr]
    assert fake.requests[-1].body["max_tokens"] == 8192
    before = len(fake.requests)
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model="strict-chat", max_tokens=20000,
                               messages=[{"role": "user", "content": "hi"}])
    assert message(info) == (
        "max_tokens: 20000 > 4096, which is the maximum allowed number of output tokens "
        "for strict-chat")
    assert len(fake.requests) == before
    # An override: this model takes images, so the image goes up as an image_url part.
    fake.push(sse(text_stream("A pixel.")))
    with client.messages.stream(model="strict-chat", max_tokens=100, messages=IMAGE_TURN) as s:
        s.get_final_message()
    parts = fake.requests[-1].body["messages"][-1]["content"]
    assert parts[0]["type"] == "image_url"


def test_the_context_window_is_checked_before_the_upstream(
        client: anthropic.Anthropic, fake: FakeOpenAI) -> None:
    before = len(fake.requests)
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model="tiny-window", max_tokens=10,
                               messages=[{"role": "user", "content": "many words " * 200}])
    assert message(info).startswith("prompt is too long: ")
    assert message(info).endswith(" tokens > 50 maximum")
    assert len(fake.requests) == before


def test_the_demo_backend_is_held_to_the_same_table(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model="demo-text", max_tokens=100, messages=IMAGE_TURN)
    assert message(info) == (
        "model 'demo-text' does not accept images (messages.2.content.0)")
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(
            model="demo-text", max_tokens=100, messages=[{"role": "user", "content": "hi"}],
            tools=[{"name": "Read", "input_schema": {"type": "object"}}])
    assert message(info) == ("model 'demo-text' does not accept tools (tools)")
    ok = client.messages.create(model="demo-text", max_tokens=100,
                                messages=[{"role": "user", "content": "hi"}])
    assert ok.stop_reason is not None


def test_models_api_reflects_the_table(client: anthropic.Anthropic) -> None:
    listed = {m.id: m for m in client.models.list()}
    deepseek = listed["deepseek-chat"]
    assert deepseek.max_tokens == 8192
    assert deepseek.capabilities is not None
    assert deepseek.capabilities.image_input.supported is False
    assert deepseek.capabilities.pdf_input.supported is False
    strict = client.models.retrieve("strict-chat")
    assert strict.max_tokens == 4096
    assert strict.capabilities is not None and strict.capabilities.image_input.supported
