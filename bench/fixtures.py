"""
Synthetic request bodies and canned upstream answers for the benchmark.

Everything here is generated from a fixed seed: no real prompt is copied. The Claude-Code-shaped
body has the *shape and size* described in shared/clients/claude-code.md §4 (three system text
blocks, a ``role: "system"`` message after the first user message, two dozen tools with JSON
schemas, several tool turns, about 80 KB), filled with pseudo-English.

``python bench/fixtures.py OUTDIR`` writes:

* ``upstream/json/v1/chat/completions``: a non-streaming Chat Completions answer;
* ``upstream/stream/v1/chat/completions``: a streamed text answer (~200 chunks, usage, [DONE]);
* ``upstream/jsonstream/v1/chat/completions``: the JSON answer's text as a short stream (for
  relays that always stream upstream);
* ``upstream/tool/v1/chat/completions``: a streamed Write-style tool call (~50 fragments);
* ``bodies/{small,cc}-{json,stream}.{anthropic,chat}.json``: the request bodies, as sent to the
  relay (Anthropic Messages) and directly upstream (Chat Completions).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

SEED = 20250219
CREATED = 1741570283
UPSTREAM_MODEL = "bench-upstream-model"
STREAM_CHUNKS = 200
TOOL_FRAGMENTS = 50

_WORD_TEXT = (
    "the a an of to in for on with by from as at is are be can will should must may file "
    "files code change test tests run build module function class method value values list "
    "task tasks agent tool tools user request response result results error errors path "
    "directory project repository branch commit review check search read write edit create "
    "update delete keep use prefer avoid when before after always never only each every "
    "small large short long clear simple careful exact current new old local remote output "
    "input command commands shell process session context prompt reply answer question "
    "work step steps plan note notes summary detail details option options default setting "
    "settings config schema field fields type types string number boolean array object "
    "line lines block blocks text data state status report reason time limit start stop"
)
_WORDS = tuple(_WORD_TEXT.split())


def _sentence(rng: random.Random, lo: int = 6, hi: int = 18) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(lo, hi))]
    return words[0].capitalize() + " " + " ".join(words[1:]) + "."


def _text(rng: random.Random, chars: int) -> str:
    """Pseudo-English paragraphs of about ``chars`` characters."""
    out: list[str] = []
    size = 0
    while size < chars:
        para = " ".join(_sentence(rng) for _ in range(rng.randint(3, 7)))
        out.append(para)
        size += len(para) + 2
    return "\n\n".join(out)[:chars]


# ── the Claude-Code-shaped request ──────────────────────────────────────────────────────────

_TOOL_NAMES = (
    "Agent", "Bash", "CronCreate", "CronDelete", "CronList", "Edit", "EnterWorktree",
    "ExitWorktree", "NotebookEdit", "Read", "ReportFindings", "ScheduleWakeup", "SendMessage",
    "Skill", "TaskCreate", "TaskGet", "TaskList", "TaskOutput", "TaskStop", "TaskUpdate",
    "WebFetch", "WebSearch", "Workflow", "Write",
)


def _schema(rng: random.Random, n_props: int, desc_chars: int) -> dict[str, Any]:
    props: dict[str, Any] = {}
    kinds = ("string", "number", "boolean", "integer", "array", "object")
    for i in range(n_props):
        kind = kinds[(i + rng.randint(0, 5)) % len(kinds)] if i else "string"
        prop: dict[str, Any] = {"type": kind, "description": _text(rng, desc_chars)}
        if kind == "array":
            prop["items"] = {"type": "string"}
        elif kind == "object":
            prop["properties"] = {"name": {"type": "string"}, "value": {"type": "string"}}
            prop["additionalProperties"] = False
        props[f"{rng.choice(_WORDS)}_{rng.choice(_WORDS)}_{i}"] = prop
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": props,
        "required": list(props)[:1],
        "additionalProperties": False,
    }


def _tools(rng: random.Random) -> list[dict[str, Any]]:
    tools = []
    for name in _TOOL_NAMES:
        # Workflow is the giant one (~21 KB); the rest share ~43 KB.
        desc_chars = 18_000 if name == "Workflow" else rng.randint(700, 1_150)
        n_props = 8 if name == "Workflow" else rng.randint(2, 6)
        tools.append({
            "name": name,
            "description": _text(rng, desc_chars),
            "input_schema": _schema(rng, n_props, 120 if name != "Workflow" else 300),
        })
    return tools


def _read_result(rng: random.Random, lines: int) -> str:
    return "\n".join(
        f"{i:>6}\t{'    ' * rng.randint(0, 3)}{_sentence(rng, 3, 9)}" for i in range(1, lines + 1)
    )


def claude_code_body(model: str, stream: bool) -> dict[str, Any]:
    """A synthetic request of the shape and size of a Claude Code main-loop turn (~80 KB)."""
    rng = random.Random(SEED)
    system = [
        {"type": "text", "text": "x-anthropic-billing-header: cc_version=9.9.999.bch; "
                                 "cc_entrypoint=sdk-cli;"},
        {"type": "text", "text": "You are a benchmark agent, built on a synthetic SDK.",
         "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": _text(rng, 5_700), "cache_control": {"type": "ephemeral"}},
    ]
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": [
            {"type": "text", "text": "<system-reminder>\n" + _text(rng, 400)
                                     + "\n</system-reminder>"},
            {"type": "text", "text": _text(rng, 300)},
        ]},
        {"role": "system", "content": _text(rng, 6_200)},
    ]
    turns = [("Read", 40), ("Bash", 15), ("Read", 30), ("Edit", 5)]
    for i, (tool, lines) in enumerate(turns):
        tid = f"toolu_bench{i:02d}{rng.randrange(16**12):012x}"
        messages.append({"role": "assistant", "content": [
            {"type": "text", "text": _sentence(rng)},
            {"type": "tool_use", "id": tid, "name": tool,
             "input": {"file_path": f"/work/project/src/module_{i}.py", "limit": 200}},
        ]})
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": tid, "content": _read_result(rng, lines)},
        ]})
    messages[-1]["content"][-1]["cache_control"] = {"type": "ephemeral"}
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "system": system,
        "tools": _tools(rng),
        "metadata": {"user_id": json.dumps({"device_id": "0" * 64, "account_uuid": "",
                                            "session_id": "00000000-0000-4000-8000-000000000000"})},
        "max_tokens": 32000,
        "thinking": {"type": "adaptive"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "high"},
        "stream": stream,
    }
    return body


def small_body(model: str, stream: bool) -> dict[str, Any]:
    """A small request: one short user message."""
    return {
        "model": model,
        "max_tokens": 256,
        "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
        "stream": stream,
    }


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "\n\n".join(b.get("text", "") for b in content if b.get("type") == "text")


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The equivalent Chat Completions body (what a client calling the upstream would send)."""
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        messages.append({"role": "system", "content": _content_text(system)})
    for m in body["messages"]:
        content = m["content"]
        if m["role"] == "system":
            messages.append({"role": "system", "content": _content_text(content)})
        elif m["role"] == "assistant":
            blocks = content if isinstance(content, list) else [{"type": "text", "text": content}]
            msg: dict[str, Any] = {"role": "assistant", "content": _content_text(blocks) or None}
            calls = [{"id": b["id"], "type": "function",
                      "function": {"name": b["name"], "arguments": json.dumps(b["input"])}}
                     for b in blocks if b["type"] == "tool_use"]
            if calls:
                msg["tool_calls"] = calls
            messages.append(msg)
        else:
            blocks = content if isinstance(content, list) else [{"type": "text", "text": content}]
            for b in blocks:
                if b["type"] == "tool_result":
                    messages.append({"role": "tool", "tool_call_id": b["tool_use_id"],
                                     "content": _content_text(b["content"])})
            text = _content_text(blocks)
            if text:
                messages.append({"role": "user", "content": text})
    chat: dict[str, Any] = {
        "model": UPSTREAM_MODEL,
        "messages": messages,
        "max_completion_tokens": body["max_tokens"],
        "stream": body["stream"],
    }
    if body.get("tools"):
        chat["tools"] = [{"type": "function", "function": {
            "name": t["name"], "description": t["description"],
            "parameters": {k: v for k, v in t["input_schema"].items() if k != "$schema"},
        }} for t in body["tools"]]
    if body["stream"]:
        chat["stream_options"] = {"include_usage": True}
    return chat


# ── canned upstream answers ─────────────────────────────────────────────────────────────────

def _chunk(cid: str, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": cid, "object": "chat.completion.chunk", "created": CREATED,
        "model": UPSTREAM_MODEL, "system_fingerprint": "fp_bench0001",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        "usage": None,
    }


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0,
                                          "rejected_prediction_tokens": 0}}


def _sse(chunks: list[dict[str, Any]]) -> bytes:
    out = [b"data: " + json.dumps(c, separators=(",", ":")).encode() + b"\n\n" for c in chunks]
    out.append(b"data: [DONE]\n\n")
    return b"".join(out)


def _split_words(rng: random.Random, n: int) -> list[str]:
    """``n`` content fragments of one to three words each, like model tokens."""
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 3))) + " "
            for _ in range(n)]


def json_answer() -> tuple[bytes, str]:
    """A non-streaming completion and its text."""
    text = "Hello! This is a short benchmark answer from the canned upstream."
    body = {
        "id": "chatcmpl-benchjson", "object": "chat.completion", "created": CREATED,
        "model": UPSTREAM_MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text,
                                             "refusal": None, "annotations": []},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": _usage(25, 14), "service_tier": "default", "system_fingerprint": "fp_bench0001",
    }
    return json.dumps(body, separators=(",", ":")).encode(), text


def text_stream(fragments: list[str], cid: str) -> bytes:
    """A streamed text answer: role chunk, one chunk per fragment, finish, usage, [DONE]."""
    chunks = [_chunk(cid, {"role": "assistant", "content": ""})]
    chunks += [_chunk(cid, {"content": f}) for f in fragments]
    chunks.append(_chunk(cid, {}, "stop"))
    usage = {"id": cid, "object": "chat.completion.chunk", "created": CREATED,
             "model": UPSTREAM_MODEL, "system_fingerprint": "fp_bench0001", "choices": [],
             "usage": _usage(1200, len(fragments))}
    chunks.append(usage)
    return _sse(chunks)


def tool_stream(rng: random.Random) -> bytes:
    """A streamed Write-style tool call whose arguments arrive in ~50 fragments."""
    cid = "chatcmpl-benchtool"
    content = "\n".join(_sentence(rng, 4, 10) for _ in range(30))
    args = json.dumps({"file_path": "/work/project/src/generated.py", "content": content})
    step = -(-len(args) // TOOL_FRAGMENTS)
    pieces = [args[i:i + step] for i in range(0, len(args), step)]
    chunks = [_chunk(cid, {"role": "assistant", "content": None})]
    chunks.append(_chunk(cid, {"tool_calls": [{
        "index": 0, "id": "call_bench0123456789abcdef", "type": "function",
        "function": {"name": "Write", "arguments": ""}}]}))
    chunks += [_chunk(cid, {"tool_calls": [{"index": 0, "function": {"arguments": p}}]})
               for p in pieces]
    chunks.append(_chunk(cid, {}, "tool_calls"))
    chunks.append({"id": cid, "object": "chat.completion.chunk", "created": CREATED,
                   "model": UPSTREAM_MODEL, "system_fingerprint": "fp_bench0001",
                   "choices": [], "usage": _usage(1200, 180)})
    return _sse(chunks)


def write_all(out: Path) -> dict[str, Any]:
    """Write every fixture under ``out``; return a summary (sizes, chunk counts)."""
    rng = random.Random(SEED + 1)
    up = out / "upstream"
    answer, answer_text = json_answer()
    stream = text_stream(_split_words(rng, STREAM_CHUNKS), "chatcmpl-benchstream")
    words = answer_text.split(" ")
    short = text_stream([w + " " for w in words[:-1]] + [words[-1]], "chatcmpl-benchshort")
    tool = tool_stream(rng)
    files = {"json": answer, "stream": stream, "jsonstream": short, "tool": tool}
    for prefix, data in files.items():
        path = up / prefix / "v1" / "chat"
        path.mkdir(parents=True, exist_ok=True)
        (path / "completions").write_bytes(data)
    bodies = out / "bodies"
    bodies.mkdir(parents=True, exist_ok=True)
    sizes: dict[str, int] = {}
    for kind, make in (("small", small_body), ("cc", claude_code_body)):
        for mode, stream_flag, model in (("json", False, "bench-json"),
                                         ("stream", True, "bench-stream"),
                                         ("tool", True, "bench-tool")):
            if kind == "cc" and mode == "tool":
                continue
            body = make(model, stream_flag)
            a = json.dumps(body, separators=(",", ":")).encode()
            c = json.dumps(to_chat(body), separators=(",", ":")).encode()
            (bodies / f"{kind}-{mode}.anthropic.json").write_bytes(a)
            (bodies / f"{kind}-{mode}.chat.json").write_bytes(c)
            sizes[f"{kind}-{mode}.anthropic"] = len(a)
            sizes[f"{kind}-{mode}.chat"] = len(c)
    return {
        "upstream_bytes": {k: len(v) for k, v in files.items()},
        "stream_chunks": STREAM_CHUNKS,
        "body_bytes": sizes,
        "answer_text": answer_text,
    }


def main(argv: list[str]) -> int:
    """Entry point: ``fixtures.py OUTDIR``."""
    if len(argv) != 2:
        print("usage: fixtures.py OUTDIR", file=sys.stderr)
        return 2
    print(json.dumps(write_all(Path(argv[1])), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
