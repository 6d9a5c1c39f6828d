"""
Claude Code through the tool-intercept stage (issue 10, item 10).

Claude Code's own ``WebSearch`` and ``WebFetch`` are client tools: the stage must hand them
to the model untouched, as ordinary function tools, and the model's call must reach Claude
Code as an ordinary ``tool_use`` that Claude Code runs itself. Claude Code's WebSearch tool
then asks the API for a search with Anthropic's ``web_search`` server tool, which this relay
runs against a fake SearXNG server: both halves of the stage in one session.

Installs Claude Code as :mod:`tests.integration.test_claude_code` does (and skips or fails
the same way when npm is missing).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakeupstream import FakeOpenAI, Handler, Recorded, sse, text_stream, tool_stream
from tests.fakeweb import FakeSite, searxng
from tests.integration.test_claude_code import claude_binary
from tests.relayproc import DEMO_KEY, config_text, start_relay

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FOUND = "Twisted relays stream with backpressure."


def _tool_names(body: dict[str, Any]) -> set[str]:
    return {t["function"]["name"] for t in body.get("tools") or ()}


def scripted(seen: list[dict[str, Any]]) -> Any:
    """
    The fake model. Main loop: call WebSearch, then answer. Claude Code's search request
    (the relay offers its ``web_search`` server tool as a function): call it, then answer
    with what the relay's search result said.
    """

    def respond(h: Handler, rec: Recorded) -> None:
        body = rec.body
        seen.append(body)
        tools = _tool_names(body)
        results = [m for m in body["messages"] if m["role"] == "tool"]
        if "web_search" in tools:
            if not results:
                sse(tool_stream("web_search", json.dumps({"query": "txrelay backpressure"}),
                                call_id="call_search"))(h, rec)
            else:
                said = FOUND if FOUND in json.dumps(results) else "nothing found"
                sse(text_stream(f"Search result: {said}"))(h, rec)
        elif "WebSearch" in tools:
            if not results:
                sse(tool_stream("WebSearch", json.dumps({"query": "txrelay backpressure"}),
                                call_id="call_cc"))(h, rec)
            else:
                sse(text_stream("Done: searched the web."))(h, rec)
        else:
            sse(text_stream("A helper answer."))(h, rec)

    return respond


@pytest.fixture()
def fake() -> Iterator[FakeOpenAI]:
    f = FakeOpenAI().start()
    yield f
    f.stop()


@pytest.fixture()
def searx() -> Iterator[FakeSite]:
    site = FakeSite("127.0.0.1", {"/search": searxng([
        {"url": "https://relay.example/notes", "title": "Relay notes", "content": FOUND},
    ])}).start()
    yield site
    site.stop()


def test_claude_codes_web_tools_pass_through_and_its_search_runs_in_the_relay(
        tmp: Path, fake: FakeOpenAI, searx: FakeSite) -> None:
    binary = claude_binary()
    workdir, home = tmp / "work", tmp / "home"
    workdir.mkdir()
    home.mkdir()
    seen: list[dict[str, Any]] = []
    fake.default = scripted(seen)
    options = {"search": {"provider": "searxng", "url": searx.url, "timeout": 5}}
    cfg = config_text(
        providers=[{"name": "up", "kind": "openai-chat", "base_url": fake.url,
                    "options": {"dialect": "generic"}}],
        models=[{"id": "fake-model", "provider": "up", "patterns": ["*"]}],
        pipeline=[{"type": "auth"}, {"type": "tool-intercept", "options": options},
                  {"type": "model-map"}, {"type": "translate"}],
    )
    (tmp / "relay").mkdir()
    relay = start_relay(tmp / "relay", cfg)
    debug = tmp / "debug.log"
    env = {
        "HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SHELL": "/bin/bash",
        "TERM": "dumb", "ANTHROPIC_BASE_URL": relay.url, "ANTHROPIC_API_KEY": DEMO_KEY,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1", "DISABLE_ERROR_REPORTING": "1",
        "CLAUDE_CODE_MAX_RETRIES": "1",
    }
    try:
        result = subprocess.run(
            [binary, "-p", "Search the web for txrelay backpressure.", "--output-format",
             "stream-json", "--verbose", "--max-turns", "4", "--no-session-persistence",
             "--strict-mcp-config", "--allowedTools", "WebSearch,WebFetch",
             "--debug-file", str(debug)],
            cwd=workdir, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=240, check=False,
        )
    finally:
        relay.stop()
    log = debug.read_text() if debug.exists() else ""
    context = f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-2000:]}\n" \
              f"debug:\n{log[-3000:]}\nrelay:\n{relay.log()[-3000:]}"
    assert result.returncode == 0, context
    # Claude Code's own web tools reached the model as ordinary function tools, untouched.
    main = [b for b in seen if "WebSearch" in _tool_names(b)]
    assert main, context
    assert {"WebSearch", "WebFetch"} <= _tool_names(main[0]), context
    assert "web_search" not in _tool_names(main[0]), context
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    tool_uses = [b for e in events if e["type"] == "assistant"
                 for b in e["message"]["content"] if b["type"] == "tool_use"]
    assert [b["name"] for b in tool_uses] == ["WebSearch"], context
    # Its WebSearch tool asked the relay for a server-tool search, which the relay ran.
    searches = [b for b in seen if "web_search" in _tool_names(b)]
    assert len(searches) == 2, context  # the call, then the continuation with the result
    assert FOUND in json.dumps(searches[1]["messages"]), context
    results = [b for e in events if e["type"] == "user"
               for b in (e["message"]["content"] if isinstance(e["message"]["content"], list)
                         else []) if b.get("type") == "tool_result"]
    assert results and FOUND in json.dumps(results), context
    final = events[-1]
    assert final["type"] == "result" and final["is_error"] is False, context
    assert "Done: searched the web." in final["result"], context
