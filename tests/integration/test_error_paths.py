"""
A reply that fails after the upstream answered, against the real relay (7.3): the client
gets a clean 500 and the upstream stream is abandoned at once, not read into memory.
"""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import anthropic
import pytest

from tests.fakeupstream import FakeOpenAI, Sent, endless
from tests.relayproc import DEMO_KEY, config_text, start_relay

pytestmark = pytest.mark.integration

BAD_HEADER_PLUGIN = '''
"""A stage whose reply carries a header value that is not latin-1."""
from twisted.plugin import IPlugin
from zope.interface import implementer
from txrelay.interfaces import IStageFactory


class BadHeader:
    async def __call__(self, exchange, proceed):
        reply = await proceed(exchange)
        reply.headers.append(("x-note", "snow \\u2603"))
        return reply


@implementer(IPlugin, IStageFactory)
class BadHeaderFactory:
    type_name = "bad-header"
    options_type = None

    def build(self, options, services):
        return BadHeader()


bad_header = BadHeaderFactory()
'''


def test_a_stream_whose_reply_header_fails_abandons_the_upstream(tmp: Path) -> None:
    plugins = tmp / "site" / "txrelay" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "bad_header_stage.py").write_text(textwrap.dedent(BAD_HEADER_PLUGIN))
    fake = FakeOpenAI().start()
    sent = Sent()
    fake.push(endless(sent, limit=64 << 20))
    cfg = config_text(
        providers=[{"name": "up", "kind": "openai-chat", "base_url": fake.url,
                    "options": {"dialect": "openai"}}],
        models=[{"id": "claude-sonnet-4-6", "provider": "up", "upstream_model": "gpt-fake"}],
        pipeline=[{"type": "auth"}, {"type": "bad-header"}, {"type": "model-map"},
                  {"type": "translate"}])
    relay = start_relay(tmp, cfg, env={"PYTHONPATH": str(tmp / "site")})
    try:
        client = anthropic.Anthropic(base_url=relay.url, api_key=DEMO_KEY, max_retries=0)
        with pytest.raises(anthropic.InternalServerError) as info:
            client.messages.create(model="claude-sonnet-4-6", max_tokens=10, stream=True,
                                   messages=[{"role": "user", "content": "hi"}],
                                   timeout=30)
        assert info.value.status_code == 500
        assert "internal relay error" in info.value.message
        deadline = time.monotonic() + 10
        while sent.disconnected_at is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sent.disconnected_at is not None, "the upstream kept streaming to nobody"
        assert not sent.finished
    finally:
        relay.stop()
        fake.stop()
    assert "UnicodeEncodeError" in relay.log()  # logged with its traceback, for the operator
