"""
The stage toolkit on the real relay: a plugin stage that splices two upstream calls into one
client stream, a plugin filter that fails mid-stream, and stdlib log lines of the protocol
package showing up in the relay's output (twistd and ``txrelay serve``).
"""

from __future__ import annotations

import http.client
import json
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest

from tests.fakeupstream import FakeOpenAI, Responder, json_response, sse, text_stream
from tests.relayproc import DEMO_KEY, Relay, config_text, start_relay

pytestmark = pytest.mark.integration

TOOLKIT_PLUGIN = '''
"""Three operator stages built on txrelay.toolkit."""
import attrs
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer

from txrelay.interfaces import IStageFactory
from txrelay.protocol.anthropic import InputMessage
from txrelay.toolkit import call_again, splice


def prompt(exchange):
    req = exchange.request
    return req.messages[-1].content if req is not None else ""


class Twice:
    """With "twice" in the prompt: answer, work a while, ask the model to go on, splice."""

    def __init__(self, reactor, ping_interval):
        self.reactor = reactor
        self.ping_interval = ping_interval

    async def __call__(self, exchange, proceed):
        reply = await proceed(exchange)
        if exchange.operation != "messages" or "twice" not in str(prompt(exchange)):
            return reply

        async def next_call(outcome):
            if outcome.number > 1:
                return None
            await deferLater(self.reactor, 0.7, lambda: None)
            req = exchange.require_request()
            said = "".join(b["text"] for b in outcome.blocks("text"))
            more = attrs.evolve(req, messages=[
                *req.messages, InputMessage("assistant", said),
                InputMessage("user", "go on")])
            return await call_again(proceed, exchange.with_request(more))

        return reply.with_stream(splice(reply.stream, next_call, reactor=self.reactor,
                                        ping_interval=self.ping_interval))


log = Logger()


class Ledger:
    """Logs every stream's end, as a usage ledger would record it."""

    async def __call__(self, exchange, proceed):
        reply = await proceed(exchange)

        def record(end):
            log.info("ledger request={rid} outcome={outcome} output_tokens={tokens}",
                     rid=exchange.request_id, outcome=end.outcome,
                     tokens=end.usage.get("output_tokens"))

        return reply.on_end(record)


class Fragile:
    """With "break" in the prompt: a filter that fails on the first text delta."""

    async def __call__(self, exchange, proceed):
        reply = await proceed(exchange)
        if "break" not in str(prompt(exchange)):
            return reply

        class Boom:
            def feed(self, event):
                if event["type"] == "content_block_delta":
                    raise ZeroDivisionError("the filter's own bug")
                return [event]

            def finish(self):
                return []

        return reply.with_filter(Boom())


@implementer(IPlugin, IStageFactory)
@attrs.frozen
class TwiceFactory:
    type_name: str = "twice"
    options_type: type = None

    def build(self, options, services):
        return Twice(services.reactor, services.config.server.ping_interval)


@implementer(IPlugin, IStageFactory)
@attrs.frozen
class FragileFactory:
    type_name: str = "fragile"
    options_type: type = None

    def build(self, options, services):
        return Fragile()


@implementer(IPlugin, IStageFactory)
@attrs.frozen
class LedgerFactory:
    type_name: str = "ledger"
    options_type: type = None

    def build(self, options, services):
        return Ledger()


twice = TwiceFactory()
ledger = LedgerFactory()
fragile = FragileFactory()
'''


def completion(text: str) -> Responder:
    return json_response({
        "id": "c", "object": "chat.completion", "choices": [{
            "index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 7, "total_tokens": 107}})


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    f = FakeOpenAI().start()
    yield f
    f.stop()


def fake_config(fake: FakeOpenAI, **kwargs: object) -> str:
    return config_text(
        providers=[{"name": "up", "kind": "openai-chat", "base_url": fake.url,
                    "options": {"dialect": "openai"}}],
        models=[{"id": "claude-sonnet-4-6", "provider": "up", "upstream_model": "gpt-fake",
                 "patterns": ["claude-*"]}],
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def relay(fake: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    tmp = tmp_path_factory.mktemp("toolkit")
    plugins = tmp / "site" / "txrelay" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "toolkit_stages.py").write_text(textwrap.dedent(TOOLKIT_PLUGIN))
    cfg = fake_config(fake, server={"ping_interval": 0.5}, pipeline=[
        {"type": "auth"}, {"type": "ledger"}, {"type": "fragile", "name": "my-fragile-filter"},
        {"type": "twice"},
        {"type": "model-map"}, {"type": "translate"}])
    r = start_relay(tmp, cfg, env={"PYTHONPATH": str(tmp / "site")})
    yield r
    r.stop()


@pytest.fixture()
def client(relay: Relay) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=relay.url, api_key=DEMO_KEY, max_retries=0) as c:
        yield c


def test_a_plugin_stage_splices_two_calls_into_one_stream(
        client: anthropic.Anthropic, fake: FakeOpenAI, relay: Relay) -> None:
    for streamed in (True, False):
        fake.script.clear()
        if streamed:
            fake.push(sse(text_stream("First part.")), sse(text_stream("Second part.")))
        else:
            fake.push(completion("First part."), completion("Second part."))
        before = len(fake.requests)
        kwargs = dict(model="claude-sonnet-4-6", max_tokens=100,
                      messages=[{"role": "user", "content": "say it twice"}])
        if streamed:
            with client.messages.stream(**kwargs) as s:  # type: ignore[arg-type]
                kinds = [e.type for e in s]
                msg = s.get_final_message()
                rid = s.response.headers["request-id"]
            assert kinds.count("message_start") == 1 and kinds.count("message_stop") == 1
        else:
            raw = client.messages.with_raw_response.create(**kwargs)  # type: ignore[arg-type]
            msg, rid = raw.parse(), raw.headers["request-id"]
        assert [b.text for b in msg.content] == ["First part.", "Second part."]  # type: ignore[union-attr]
        assert msg.usage.output_tokens == 14  # 7 per call, summed
        assert msg.stop_reason == "end_turn"
        second = fake.requests[before + 1].body["messages"]
        assert second[-2:] == [{"role": "assistant", "content": "First part."},
                               {"role": "user", "content": "go on"}]
        assert len(fake.requests) == before + 2
        assert ledger_lines(relay, rid) == ["outcome=complete output_tokens=14"]


def ledger_lines(relay: Relay, rid: str) -> list[str]:
    deadline = time.monotonic() + 5
    while True:
        lines = [line.split(f"ledger request={rid} ", 1)[1]
                 for line in relay.log().splitlines() if f"ledger request={rid} " in line]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_the_end_hook_sees_a_client_that_leaves(relay: Relay, fake: FakeOpenAI) -> None:
    fake.script.clear()
    fake.push(sse(text_stream("word " * 200, pieces=100), delay=0.03))
    conn = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=10)
    conn.request("POST", "/v1/messages", body=json.dumps({
        "model": "claude-sonnet-4-6", "max_tokens": 50, "stream": True,
        "messages": [{"role": "user", "content": "leave early"}]}),
        headers={"x-api-key": DEMO_KEY, "content-type": "application/json"})
    resp = conn.getresponse()
    rid = resp.getheader("request-id")
    assert b"message_start" in resp.read1(200)
    conn.close()
    assert ledger_lines(relay, rid) == ["outcome=stopped output_tokens=1"]
    time.sleep(0.3)
    assert len(ledger_lines(relay, rid)) == 1


def test_a_filter_that_fails_mid_stream_ends_the_stream_blaming_its_stage(
        relay: Relay) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=10)
    conn.request("POST", "/v1/messages", body=json.dumps({
        "model": "claude-sonnet-4-6", "max_tokens": 50, "stream": True,
        "messages": [{"role": "user", "content": "break it"}]}),
        headers={"x-api-key": DEMO_KEY, "content-type": "application/json"})
    resp = conn.getresponse()
    rid = resp.getheader("request-id")
    body = resp.read().decode()
    frames = [f for f in body.split("\n\n") if f.strip()]
    assert frames[0].startswith("event: message_start")
    last = frames[-1]
    assert last.startswith("event: error")
    error = json.loads(last.split("data: ", 1)[1])["error"]
    assert error == {"type": "api_error", "message":
                     f"stage 'my-fragile-filter' failed while filtering the stream "
                     f"(request {rid})"}
    assert "ZeroDivisionError" not in body
    log = relay.log()
    assert f"stage 'my-fragile-filter' failed while filtering the stream (request {rid})" in log
    assert "ZeroDivisionError: the filter's own bug" in log  # the traceback, in the log only
    assert "ended unexpectedly" not in body
    assert ledger_lines(relay, rid) == ["outcome=error output_tokens=1"]


def test_a_failing_filter_on_a_non_streaming_request_is_a_500_naming_its_stage(
        client: anthropic.Anthropic, fake: FakeOpenAI) -> None:
    fake.script.clear()
    fake.push(completion("Some text."))
    with pytest.raises(anthropic.InternalServerError) as info:
        client.messages.create(model="claude-sonnet-4-6", max_tokens=50,
                               messages=[{"role": "user", "content": "break it"}])
    rid = info.value.response.headers["request-id"]
    assert info.value.body == {  # type: ignore[comparison-overlap]
        "type": "error", "request_id": rid, "error": {
            "type": "api_error",
            "message": f"stage 'my-fragile-filter' failed while filtering the stream "
                       f"(request {rid})"}}


SERVER_TOOL = {"type": "web_search_20250305", "name": "web_search"}


@pytest.mark.parametrize("serve", [False, True], ids=["twistd", "txrelay-serve"])
def test_protocol_log_lines_reach_the_relay_output(fake: FakeOpenAI, tmp: Path,
                                                   serve: bool) -> None:
    relay = start_relay(tmp, fake_config(fake), serve=serve)
    try:
        c = anthropic.Anthropic(base_url=relay.url, api_key=DEMO_KEY, max_retries=0)
        with c, c.messages.stream(model="claude-sonnet-4-6", max_tokens=20,
                                  tools=[SERVER_TOOL],  # type: ignore[list-item]
                                  messages=[{"role": "user", "content": "search"}]) as s:
            s.get_final_message()
    finally:
        relay.stop()
    log = relay.log()
    assert "[txrelay.protocol.openai.tools#info] dropping tool 'web_search' of type " \
           "'web_search_20250305': not available on this upstream" in log
