"""
Claude Code itself, run headless through the real relay in front of a scripted fake
Chat Completions upstream: it must write a file with Write, run a command with Bash and
answer, with no API error and no fallback to non-streaming (claude-code.md §3, §6).

Claude Code is installed from npm into a cache directory on first use (set
``TXRELAY_CLAUDE_BIN`` to use another binary). Outside CI a machine without npm skips this
test; in CI (``CI=true``) it fails instead, so a missing tool can never pass silently.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakeupstream import FakeOpenAI, Handler, Recorded, sse, text_stream, tool_stream
from tests.relayproc import DEMO_KEY, config_text, start_relay

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLAUDE_CODE_VERSION = "2.1.197"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "txrelay-tests"


def claude_binary() -> str:
    explicit = os.environ.get("TXRELAY_CLAUDE_BIN")
    if explicit:
        return explicit
    prefix = CACHE / f"claude-code-{CLAUDE_CODE_VERSION}"
    binary = prefix / "node_modules" / ".bin" / "claude"
    if binary.exists():
        return str(binary)
    npm = shutil.which("npm")
    if npm is None:
        if os.environ.get("CI"):
            pytest.fail("npm is needed to install Claude Code for the end-to-end test")
        pytest.skip("npm is not installed; the Claude Code end-to-end test needs it")
    prefix.mkdir(parents=True, exist_ok=True)
    subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(prefix),
                    f"@anthropic-ai/claude-code@{CLAUDE_CODE_VERSION}"],
                   check=True, capture_output=True, timeout=600)
    return str(binary)


def scripted(workdir: Path) -> Any:
    """The fake model: Write a file, then run Bash on it, then answer."""
    target = workdir / "hello.txt"

    def respond(h: Handler, rec: Recorded) -> None:
        body = rec.body
        tools = {t["function"]["name"] for t in body.get("tools") or ()}
        done = sum(1 for m in body["messages"] if m["role"] == "tool")
        if not {"Write", "Bash"} <= tools:
            sse(text_stream("A helper answer."))(h, rec)
        elif done == 0:
            args = json.dumps({"file_path": str(target), "content": "hello from txrelay\n"})
            sse(tool_stream("Write", args, pieces=12, text="I'll write the file."))(h, rec)
        elif done == 1:
            args = json.dumps({"command": f"cat {target} && echo bash-ran-ok",
                               "description": "Show the file"})
            sse(tool_stream("Bash", args, call_id="call_bash", pieces=6))(h, rec)
        else:
            last = body["messages"][-1]
            seen = "bash-ran-ok" in json.dumps(last)
            sse(text_stream("Done: the file says hello." if seen else "Bash output missing."))(
                h, rec)

    return respond


def run_claude(binary: str, base_url: str, workdir: Path, home: Path, debug: Path,
               prompt: str) -> subprocess.CompletedProcess[str]:
    """``claude -p`` headless and offline against ``base_url`` (claude-code.md §3)."""
    env = {
        "HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SHELL": "/bin/bash",
        "TERM": "dumb", "ANTHROPIC_BASE_URL": base_url, "ANTHROPIC_API_KEY": DEMO_KEY,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1", "DISABLE_ERROR_REPORTING": "1",
        "CLAUDE_CODE_MAX_RETRIES": "1",
    }
    return subprocess.run(
        [binary, "-p", prompt, "--output-format", "stream-json", "--verbose",
         "--max-turns", "6", "--no-session-persistence", "--strict-mcp-config",
         "--allowedTools", "Bash,Read,Write,Edit", "--debug-file", str(debug)],
        cwd=workdir, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=240, check=False,
    )


@pytest.fixture()
def fake() -> Iterator[FakeOpenAI]:
    f = FakeOpenAI().start()
    yield f
    f.stop()


def test_claude_code_writes_runs_and_answers(tmp: Path, fake: FakeOpenAI) -> None:
    binary = claude_binary()
    workdir = tmp / "work"
    workdir.mkdir()
    home = tmp / "home"
    home.mkdir()
    fake.default = scripted(workdir)
    cfg = config_text(
        providers=[{"name": "up", "kind": "openai-chat", "base_url": fake.url,
                    "options": {"dialect": "generic"}}],
        models=[{"id": "fake-model", "provider": "up", "patterns": ["*"]}],
    )
    (tmp / "relay").mkdir()
    relay = start_relay(tmp / "relay", cfg)
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
    # No API error and no silent fallback to non-streaming (claude-code.md §6, key point 1).
    assert "falling back to non-streaming" not in log, context
    assert "API error" not in log and "Error streaming" not in log, context
    main_loop = [r for r in fake.requests if r.body.get("tools")]
    assert len(main_loop) >= 3
    tool_uses = [b for e in events if e["type"] == "assistant"
                 for b in e["message"]["content"] if b["type"] == "tool_use"]
    assert [b.get("name") for b in tool_uses] == ["Write", "Bash"], context + json.dumps(tool_uses)
    assert all(r.body.get("stream") is True for r in fake.requests), "a non-streaming retry"
    # The upstream never saw the client's key or Anthropic headers.
    assert all(DEMO_KEY not in json.dumps(r.headers) for r in fake.requests)


def test_claude_code_works_out_of_the_box_on_the_demo_backend(tmp: Path) -> None:
    """The README's promise: Claude Code against a freshly started demo relay just works."""
    binary = claude_binary()
    workdir, home = tmp / "work", tmp / "home"
    workdir.mkdir()
    home.mkdir()
    (tmp / "relay").mkdir()
    relay = start_relay(tmp / "relay", config_text())  # demo backend, every claude-* name
    target = workdir / "note.txt"
    debug = tmp / "debug.log"
    try:
        result = run_claude(binary, relay.url, workdir, home, debug,
                            f"Please use the Write tool to create {target}")
    finally:
        relay.stop()
    log = debug.read_text() if debug.exists() else ""
    context = f"stdout:\n{result.stdout[-3000:]}\ndebug:\n{log[-3000:]}"
    assert result.returncode == 0, context
    final = json.loads(result.stdout.strip().splitlines()[-1])
    assert final["is_error"] is False and "Write tool returned" in final["result"], context
    assert target.read_text() == "Hello from the txrelay demo model.\n"
    assert "falling back to non-streaming" not in log and "API error" not in log, context
