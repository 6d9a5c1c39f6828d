"""
Claude Code itself through the ``anthropic`` pass-through kind: the real relay in front of a
scripted fake Anthropic upstream. It must write a file with Write, run Bash and answer, with
no API error and no non-streaming fallback; the upstream sees Claude Code's request as it
was sent (but for the model, the stripped beta and field) and never the client's key.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakeanthropic import FakeAnthropic, frames, raw_stream, text_events
from tests.fakeupstream import Handler, Recorded
from tests.integration.test_claude_code import claude_binary, run_claude
from tests.relayproc import DEMO_KEY, config_text, start_relay

pytestmark = [pytest.mark.integration, pytest.mark.slow]

UPSTREAM_KEY = "sk-ant-upstream-for-claude-code"
SIGNATURE = "EqQBCkYIBRgCKkDfakeAnthropicSignature"


def scripted(workdir: Path) -> Any:
    """The fake Claude: Write a file, then run Bash on it, then answer."""
    target = workdir / "hello.txt"

    def respond(h: Handler, rec: Recorded) -> None:
        body = rec.body
        tools = {t.get("name") for t in body.get("tools") or ()}
        results = [b for m in body["messages"] if m["role"] == "user"
                   and isinstance(m["content"], list)
                   for b in m["content"] if b.get("type") == "tool_result"]
        if not {"Write", "Bash"} <= tools:
            events = text_events("A helper answer.")
        elif not results:
            events = text_events("I'll write the file.", thinking="Write first.",
                                 signature=SIGNATURE, tool={
                                     "id": "toolu_01WriteAAAAAAAAAAAAAAAA", "name": "Write",
                                     "input": {"file_path": str(target),
                                               "content": "hello from txrelay\n"}})
        elif len(results) == 1:
            events = text_events("Now Bash.", tool={
                "id": "toolu_01BashBBBBBBBBBBBBBBBBB", "name": "Bash",
                "input": {"command": f"cat {target} && echo bash-ran-ok",
                          "description": "Show the file"}})
        else:
            seen = "bash-ran-ok" in json.dumps(results[-1])
            events = text_events("Done: the file says hello." if seen else "Bash output missing.")
        if not body.get("stream"):
            raise AssertionError("Claude Code fell back to a non-streaming request")
        raw_stream(frames(events), pieces=5)(h, rec)

    return respond


@pytest.fixture()
def fake() -> Iterator[FakeAnthropic]:
    f = FakeAnthropic().start()
    yield f
    f.stop()


def test_claude_code_through_the_anthropic_kind(tmp: Path, fake: FakeAnthropic) -> None:
    binary = claude_binary()
    workdir, home = tmp / "work", tmp / "home"
    workdir.mkdir()
    home.mkdir()
    fake.default = scripted(workdir)
    cfg = config_text(
        providers=[{"name": "ant", "kind": "anthropic", "base_url": fake.url,
                    "api_key": {"env": "TXRELAY_TEST_ANT_KEY"},
                    "options": {"strip_betas": ["context-management-2025-06-27"],
                                "strip_fields": ["context_management"]}}],
        models=[{"id": "claude-opus-4-8", "provider": "ant", "upstream_model": "claude-up",
                 "patterns": ["*"]}],
    )
    (tmp / "relay").mkdir()
    relay = start_relay(tmp / "relay", cfg, env={"TXRELAY_TEST_ANT_KEY": UPSTREAM_KEY})
    debug = tmp / "debug.log"
    try:
        result = run_claude(binary, relay.url, workdir, home, debug,
                            "Create hello.txt with a greeting, then show it with Bash.")
    finally:
        relay.stop()
    log = debug.read_text() if debug.exists() else ""
    context = f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-2000:]}\n" \
              f"debug:\n{log[-4000:]}\nrelay:\n{relay.log()[-3000:]}"
    assert result.returncode == 0, context
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    final = events[-1]
    assert final["type"] == "result" and final["is_error"] is False, context
    assert "Done: the file says hello." in final["result"], context
    assert (workdir / "hello.txt").read_text() == "hello from txrelay\n"
    assert "falling back to non-streaming" not in log, context
    assert "API error" not in log and "Error streaming" not in log, context
    main = [r for r in fake.requests if r.body and r.body.get("tools")]
    assert len(main) >= 3, context
    for r in fake.requests:
        assert r.headers["x-api-key"] == UPSTREAM_KEY
        assert DEMO_KEY not in json.dumps(r.headers)
        assert r.body["model"] == "claude-up"
        assert "context_management" not in r.body
        assert "context-management-2025-06-27" not in r.headers.get("anthropic-beta", "")
    first = main[0]
    assert first.headers["anthropic-version"] == "2023-06-01"
    assert "claude-code-20250219" in first.headers["anthropic-beta"]
    assert first.path == "/v1/messages?beta=true"
    # Anthropic's own thinking signature came back verbatim on the next turn.
    assert SIGNATURE in json.dumps(main[1].body["messages"])
