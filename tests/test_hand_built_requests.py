"""Token estimation and the demo model take any JSON in block fields (a stage may build one)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from txrelay.protocol.anthropic import InputMessage, MessagesRequest
from txrelay.protocol.demo import demo_events
from txrelay.protocol.tokens import estimate_input_tokens

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=8)
KINDS = ["text", "image", "document", "tool_use", "tool_result", "thinking", "search_result",
         "hologram"]
FIELDS = ["text", "source", "content", "input", "name", "thinking", "data", "tool_use_id",
          "is_error", "id"]
blocks = st.builds(
    lambda kind, fields: {"type": kind, **fields},
    st.sampled_from(KINDS), st.dictionaries(st.sampled_from(FIELDS), values, max_size=4),
)
schemas = st.dictionaries(st.sampled_from(["type", "properties", "required", "enum", "const"]),
                          values, max_size=4)


@settings(max_examples=300, deadline=None)
@given(st.lists(blocks, min_size=1, max_size=4), st.lists(schemas, max_size=2),
       st.sampled_from([None, {"type": "any"}, {"type": "tool", "name": 5}, {"type": "none"}]))
def test_wrong_field_types_never_crash(content: list[dict[str, Any]],
                                       schemas: list[dict[str, Any]],
                                       choice: dict[str, Any] | None) -> None:
    tools = [{"name": f"tool{i}", "input_schema": s} for i, s in enumerate(schemas)]
    req = MessagesRequest(model="m", max_tokens=50, tool_choice=choice, tools=tools or None,
                          messages=[InputMessage("assistant", content),
                                    InputMessage("user", content)],
                          system=[{"type": "text", "text": 5}])  # type: ignore[list-item]
    assert estimate_input_tokens(req) >= 1
    events = demo_events(req, model="m", message_id="msg_1", input_tokens=1)
    assert events[-1]["type"] == "message_stop"
