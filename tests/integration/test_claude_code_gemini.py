"""
Claude Code itself, headless, through the real relay's ``gemini`` kind in front of the strict
fake Gemini (a Gemini 3 model, so every tool call of the current turn must come back with
its thought signature): it writes a file with Write, runs Bash on it and answers, with no
API error and no fallback to non-streaming.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakegemini import (
    FakeGemini,
    GeminiHandler,
    Recorded,
    call_part,
    chunk,
    sse,
    text_chunks,
    usage,
)
from tests.integration.test_claude_code import claude_binary, run_claude
from tests.relayproc import DEMO_KEY, config_text, start_relay

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KEY = "AIza-claude-code-gemini"


def scripted(fake: FakeGemini, workdir: Path) -> Any:
    """The fake model: Write a file, then run Bash on it, then answer."""
    target = workdir / "hello.txt"

    def respond(h: GeminiHandler, rec: Recorded) -> None:
        body = rec.body
        tools = {d["name"] for t in body.get("tools") or ()
                 for d in t.get("functionDeclarations") or ()}
        done = sum(1 for c in body["contents"] for p in c["parts"] if "functionResponse" in p)
        if not {"Write", "Bash"} <= tools:
            sse(text_chunks("A helper answer."))(h, rec)
            return
        if done == 0:
            signature = "c2lnbmVkLXdyaXRl"
            part = call_part("Write", {"file_path": str(target),
                                       "content": "hello from txrelay\n"}, signature=signature)
            chunks = [chunk({"text": "Planning the file.", "thought": True}),
                      chunk({"text": "I'll write the file."}),
                      chunk(part, finish="STOP", usage=usage(900, 30, thoughts=12))]
        elif done == 1:
            signature = "c2lnbmVkLWJhc2g="
            part = call_part("Bash", {"command": f"cat {target} && echo bash-ran-ok",
                                      "description": "Show the file"}, signature=signature)
            chunks = [chunk(part, finish="STOP", usage=usage(950, 20))]
        else:
            seen = "bash-ran-ok" in json.dumps(body["contents"][-1])
            sse(text_chunks("Done: the file says hello." if seen else "Bash output missing.",
                            signature="c2lnbmVkLWVuZA=="))(h, rec)
            return
        fake.issued_signatures.add(signature)
        sse(chunks)(h, rec)

    return respond


@pytest.fixture()
def fake() -> Iterator[FakeGemini]:
    f = FakeGemini(api_key=KEY).start()
    yield f
    f.stop()


def test_claude_code_writes_runs_and_answers_through_gemini(tmp: Path, fake: FakeGemini) -> None:
    binary = claude_binary()
    workdir, home = tmp / "work", tmp / "home"
    workdir.mkdir()
    home.mkdir()
    fake.default = scripted(fake, workdir)
    cfg = config_text(
        providers=[{"name": "gemini", "kind": "gemini", "base_url": fake.ai_studio_url,
                    "api_key": {"env": "TXRELAY_TEST_GEMINI_KEY"}}],
        models=[{"id": "gemini-3-pro-preview", "provider": "gemini", "patterns": ["*"],
                 "upstream_model": "gemini-3-pro-preview", "max_tokens": 32000}],
    )
    (tmp / "relay").mkdir()
    relay = start_relay(tmp / "relay", cfg, env={"TXRELAY_TEST_GEMINI_KEY": KEY})
    debug = tmp / "debug.log"
    try:
        result = run_claude(binary, relay.url, workdir, home, debug,
                            "Create hello.txt with a greeting, then show it with Bash.")
    finally:
        relay.stop()
    log = debug.read_text() if debug.exists() else ""
    rejected = [r.rejected for r in fake.model_requests if r.rejected]
    context = f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-2000:]}\n" \
              f"debug:\n{log[-4000:]}\nrelay:\n{relay.log()[-3000:]}\nrejected: {rejected}"
    assert result.returncode == 0, context
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    final = events[-1]
    assert final["type"] == "result" and final["is_error"] is False, context
    assert "Done: the file says hello." in final["result"], context
    assert (workdir / "hello.txt").read_text() == "hello from txrelay\n"
    assert "falling back to non-streaming" not in log, context
    assert "API error" not in log and "Error streaming" not in log, context
    assert rejected == [], context
    tool_uses = [b for e in events if e["type"] == "assistant"
                 for b in e["message"]["content"] if b["type"] == "tool_use"]
    assert [b.get("name") for b in tool_uses] == ["Write", "Bash"], context
    generate = [r for r in fake.model_requests if r.rpc != "countTokens"]
    assert all(r.rpc == "streamGenerateContent" for r in generate), "a non-streaming retry"
    main_loop = [r for r in generate if r.body.get("tools")]
    assert len(main_loop) >= 3
    # The last step's history carried both signatures back on their own calls.
    last = main_loop[-1].body["contents"]
    signed = [p["thoughtSignature"] for c in last for p in c["parts"]
              if "functionCall" in p and "thoughtSignature" in p]
    assert signed == ["c2lnbmVkLXdyaXRl", "c2lnbmVkLWJhc2g="], json.dumps(last)[:3000]
    assert all(DEMO_KEY not in json.dumps(r.headers) for r in fake.requests)
    assert all(r.headers.get("x-goog-api-key") == KEY for r in fake.model_requests)
