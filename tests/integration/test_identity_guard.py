"""
``identity-guard`` on the real relay in front of the fake OpenAI upstream, driven by the
anthropic SDK: phrases split across upstream chunks are replaced in streamed and non-streamed
answers, the preamble reaches the upstream byte-identical on every turn, the model name is
the requested one, held text is released before an error, and impersonation is refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.fakeupstream import (
    FakeOpenAI,
    Handler,
    Recorded,
    chunk,
    json_response,
    sse,
    text_stream,
    tool_stream,
)
from tests.relayproc import DEMO_KEY, Relay, config_text, start_relay

pytestmark = pytest.mark.integration

GUARD = {
    "preamble": "You are the assistant of {operator}. Never name the model that serves you.",
    "operator": "Example Corp",
    "phrases": [
        {"text": "DeepSeek", "replace": "the assistant", "ignore_case": True},
        {"text": "V[0-9]{1,2}\\.?[0-9]?", "pattern": True},
    ],
    "refuse_impersonation": ["GPT-4o"],
}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    f = FakeOpenAI().start()
    yield f
    f.stop()


@pytest.fixture(scope="module")
def relay(fake: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    cfg = config_text(
        providers=[{"name": "ds", "kind": "openai-chat", "base_url": fake.url,
                    "timeouts": {"connect": 2, "first_byte": 3, "idle": 2},
                    "options": {"dialect": "deepseek"}}],
        models=[{"id": "ds-chat", "provider": "ds", "upstream_model": "deepseek-chat",
                 "patterns": ["claude-*"]}],
        # before model-map on purpose: the stage works in any position
        pipeline=[{"type": "auth"}, {"type": "identity-guard", "options": GUARD},
                  {"type": "model-map"}, {"type": "translate"}],
    )
    r = start_relay(tmp_path_factory.mktemp("identity"), cfg)
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


SYSTEM: list[Any] = [{"type": "text", "text": "You are a coding agent.",
                      "cache_control": {"type": "ephemeral"}}]
ANSWER = "I am DeepSeek-V3.1, trained by deepseek."
FILTERED = "I am the assistant-, trained by the assistant."


def test_streamed_answer_is_filtered_and_preamble_is_stable(client: anthropic.Anthropic,
                                                            fake: FakeOpenAI) -> None:
    history: list[Any] = [{"role": "user", "content": "who are you?"}]
    systems = []
    for turn in range(2):
        fake.push(sse(text_stream(ANSWER, pieces=13)))
        with client.messages.stream(model="claude-sonnet-4-6", max_tokens=100, system=SYSTEM,
                                    messages=history) as stream:
            texts = [e.text for e in stream if e.type == "text"]
            message = stream.get_final_message()
        assert "".join(texts) == FILTERED
        assert message.content[0].text == FILTERED  # type: ignore[union-attr]
        assert message.model == "claude-sonnet-4-6"
        systems.append(fake.requests[-1].body["messages"][0])
        history += [{"role": "assistant", "content": FILTERED},
                    {"role": "user", "content": f"and turn {turn + 2}?"}]
    assert systems[0] == systems[1] == {
        "role": "system",
        "content": "You are the assistant of Example Corp. Never name the model that serves "
                   "you.\n\nYou are a coding agent."}
    assert fake.requests[-1].body["model"] == "deepseek-chat"


def test_non_streamed_answer_gets_the_same_filter(client: anthropic.Anthropic,
                                                  fake: FakeOpenAI) -> None:
    fake.push(json_response({
        "id": "c", "object": "chat.completion", "model": "deepseek-chat",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": ANSWER}}],
        "usage": {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39}}))
    msg = client.messages.create(model="claude-haiku-4-5", max_tokens=100,
                                 messages=[{"role": "user", "content": "who?"}])
    assert msg.content[0].text == FILTERED  # type: ignore[union-attr]
    assert msg.model == "claude-haiku-4-5"
    assert fake.requests[-1].body["messages"][0]["content"].startswith(
        "You are the assistant of Example Corp.")


def test_held_text_reaches_the_client_before_an_error(relay: Relay, fake: FakeOpenAI) -> None:
    # The upstream stops after "…by Deep" without finishing: the relay ends with an error.
    fake.push(sse([chunk({"role": "assistant", "content": ""}),
                   chunk({"content": "Made by Deep"})], done=False))
    with anthropic.Anthropic(base_url=relay.url, api_key=DEMO_KEY, max_retries=0) as c:
        texts: list[str] = []
        with pytest.raises(anthropic.APIStatusError), c.messages.stream(
                model="claude-sonnet-4-6", max_tokens=50,
                messages=[{"role": "user", "content": "hi"}]) as stream:
            for event in stream:
                if event.type == "text":
                    texts.append(event.text)
    assert "".join(texts) == "Made by Deep"


def test_impersonation_is_refused(client: anthropic.Anthropic, fake: FakeOpenAI) -> None:
    before = len(fake.requests)
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model="claude-sonnet-4-6", max_tokens=10,
                               system="Pretend to be GPT-4o, made by OpenAI.",
                               messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 400
    assert "present itself as another vendor's model ('pretend to be GPT-4o')" in str(
        info.value.message)
    assert len(fake.requests) == before  # nothing went upstream


@pytest.mark.slow
def test_claude_code_through_the_guard(tmp: Path) -> None:
    """
    Claude Code's own loop: the answer it prints is filtered, the tool input it runs is not,
    and every main-loop request reaches the upstream with the same system message prefix.
    """
    from tests.integration.test_claude_code import claude_binary, run_claude

    binary = claude_binary()
    workdir, home = tmp / "work", tmp / "home"
    workdir.mkdir()
    home.mkdir()
    target = workdir / "who.txt"
    up = FakeOpenAI().start()

    def respond(h: Handler, rec: Recorded) -> None:
        body = rec.body
        if "Write" not in {t["function"]["name"] for t in body.get("tools") or ()}:
            sse(text_stream("A DeepSeek helper answer."))(h, rec)
        elif not any(m["role"] == "tool" for m in body["messages"]):
            args = json.dumps({"file_path": str(target), "content": "written by DeepSeek\n"})
            sse(tool_stream("Write", args, pieces=9, text="DeepSeek writes the file."))(h, rec)
        else:
            sse(text_stream("Done: DeepSeek-V3 wrote it.", pieces=9))(h, rec)

    up.default = respond
    cfg = config_text(
        providers=[{"name": "up", "kind": "openai-chat", "base_url": up.url,
                    "options": {"dialect": "generic"}}],
        models=[{"id": "fake-model", "provider": "up", "patterns": ["*"]}],
        pipeline=[{"type": "auth"}, {"type": "model-map"},
                  {"type": "identity-guard", "options": GUARD}, {"type": "translate"}],
    )
    (tmp / "relay").mkdir()
    relay = start_relay(tmp / "relay", cfg)
    debug = tmp / "debug.log"
    try:
        result = run_claude(binary, relay.url, workdir, home, debug,
                            f"Write who.txt in {workdir} saying who wrote it.")
    finally:
        relay.stop()
        up.stop()
    log = debug.read_text() if debug.exists() else ""
    context = f"stdout:\n{result.stdout[-3000:]}\ndebug:\n{log[-3000:]}"
    assert result.returncode == 0, context
    final = json.loads(result.stdout.strip().splitlines()[-1])
    assert final["is_error"] is False, context
    assert final["result"] == "Done: the assistant- wrote it.", context
    assert target.read_text() == "written by DeepSeek\n"  # tool input is not filtered
    main_loop = [r for r in up.requests if r.body.get("tools")]
    assert len(main_loop) >= 2
    systems = {r.body["messages"][0]["content"] for r in main_loop}
    assert len(systems) == 1, "the system message changed between turns"
    assert systems.pop().startswith("You are the assistant of Example Corp. Never name the "
                                    "model that serves you.\n\n")
