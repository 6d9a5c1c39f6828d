"""The Python examples in README "Writing a stage" run as written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import attrs
from twisted.internet.defer import succeed

from txrelay.lazyplugin import LazyStageFactory
from txrelay.protocol.anthropic import InputMessage, MessagesRequest
from txrelay.testing import text_reply, tool_reply

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
SECTION = README[README.index("## Writing a stage"):README.index("## Running under systemd")]
BLOCKS = re.findall(r"```python\n(.*?)```", SECTION, re.S)


def add_results(req: MessagesRequest, message: Any, results: list[str]) -> MessagesRequest:
    calls = [b for b in message["content"] if b["type"] == "tool_use"]
    return attrs.evolve(req, messages=[
        *req.messages, InputMessage("assistant", message["content"]),
        InputMessage("user", [{"type": "tool_result", "tool_use_id": c["id"], "content": r}
                              for c, r in zip(calls, results, strict=True)])])


def fake_search(calls: list[dict[str, Any]]) -> Any:
    return succeed([f"results for {c['input']['query']}" for c in calls])


def test_the_stage_examples_run() -> None:
    assert len(BLOCKS) == 4
    namespace: dict[str, Any] = {"add_results": add_results, "fake_search": fake_search,
                                 "tool_reply": tool_reply, "text_reply": text_reply}
    for block in BLOCKS:
        exec(compile(block, "README.md", "exec"), namespace)
    namespace["test_shout"]()
    namespace["test_search_stage"]()
    lazy = namespace["shout"]  # the lazy form names its module, it does not import it
    assert isinstance(lazy, LazyStageFactory)
    assert (lazy.type_name, lazy.builder) == ("shout", "shoutimpl:build_shout")
