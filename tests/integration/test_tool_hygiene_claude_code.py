"""
Claude Code through the tool-hygiene stage: the fake upstream's model writes its Write call
as Hermes text (as Qwen served without a tool parser does); Claude Code still runs its tool.

Installs Claude Code as :mod:`tests.integration.test_claude_code` does (and skips or fails
the same way when npm is missing).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakeupstream import FakeOpenAI, Handler, Recorded, sse, text_stream
from tests.integration.test_claude_code import claude_binary, run_claude
from tests.relayproc import config_text, start_relay

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def scripted(target: Path) -> Any:
    """The fake model: a Write call written as text, then an answer."""

    def respond(h: Handler, rec: Recorded) -> None:
        body = rec.body
        tools = {t["function"]["name"] for t in body.get("tools") or ()}
        done = sum(1 for m in body["messages"] if m["role"] == "tool")
        if "Write" not in tools:
            sse(text_stream("A helper answer."))(h, rec)
        elif done == 0:
            call = json.dumps({"name": "Write", "arguments": {
                "file_path": str(target), "content": "written from text\n"}})
            sse(text_stream(f"I'll write it.\n<tool_call>\n{call}\n</tool_call>",
                            pieces=15))(h, rec)
        else:
            seen = "interrupted" not in json.dumps(body["messages"][-1])
            sse(text_stream("Done: file written." if seen else "The call failed."))(h, rec)

    return respond


@pytest.fixture()
def fake() -> Iterator[FakeOpenAI]:
    f = FakeOpenAI().start()
    yield f
    f.stop()


def test_a_text_written_tool_call_runs_claude_codes_tool(tmp: Path, fake: FakeOpenAI) -> None:
    binary = claude_binary()
    workdir, home = tmp / "work", tmp / "home"
    workdir.mkdir()
    home.mkdir()
    target = workdir / "from-text.txt"
    fake.default = scripted(target)
    cfg = config_text(
        providers=[{"name": "up", "kind": "openai-chat", "base_url": fake.url,
                    "options": {"dialect": "generic"}}],
        models=[{"id": "fake-model", "provider": "up", "patterns": ["*"]}],
        pipeline=[{"type": "auth"}, {"type": "model-map"}, {"type": "tool-hygiene"},
                  {"type": "translate"}],
    )
    (tmp / "relay").mkdir()
    relay = start_relay(tmp / "relay", cfg)
    debug = tmp / "debug.log"
    try:
        result = run_claude(binary, relay.url, workdir, home, debug,
                            f"Write a file at {target}.")
    finally:
        relay.stop()
    log = debug.read_text() if debug.exists() else ""
    context = f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-2000:]}\n" \
              f"debug:\n{log[-3000:]}\nrelay:\n{relay.log()[-3000:]}"
    assert result.returncode == 0, context
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    tool_uses = [b for e in events if e["type"] == "assistant"
                 for b in e["message"]["content"] if b["type"] == "tool_use"]
    assert [b["name"] for b in tool_uses] == ["Write"], context
    assert target.read_text() == "written from text\n", context
    final = events[-1]
    assert final["type"] == "result" and final["is_error"] is False, context
    assert "Done: file written." in final["result"], context
    assert "<tool_call>" not in json.dumps(events), context
