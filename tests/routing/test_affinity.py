"""Which conversation a request belongs to."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from txrelay.protocol.anthropic import request_from_json
from txrelay.routing.affinity import affinity_key


def req(**body: Any) -> Any:
    full = {"model": "m", "max_tokens": 10,
            "messages": [{"role": "user", "content": "hello"}], **body}
    return request_from_json(full)


def test_session_header_then_user_id_then_prefix() -> None:
    r = req(metadata={"user_id": "u1"})
    by_session = affinity_key({"x-claude-code-session-id": "s1"}, r)
    assert by_session == affinity_key({"x-claude-code-session-id": "s1"}, req())
    assert by_session != affinity_key({"x-claude-code-session-id": "s2"}, r)
    by_user = affinity_key({}, r)
    assert by_user is not None and by_user.startswith("user:") and "u1" not in by_user
    assert affinity_key({}, req()) is not None
    assert affinity_key({}, req()).startswith("prefix:")  # type: ignore[union-attr]


def test_the_prefix_survives_later_turns_and_moved_cache_markers() -> None:
    tools = [{"name": "t", "description": "d", "input_schema": {"type": "object"}}]
    first = req(system="be brief", tools=tools, messages=[
        {"role": "user", "content": [{"type": "text", "text": "hi",
                                      "cache_control": {"type": "ephemeral"}}]}])
    later = req(system="be brief", tools=tools, messages=[
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "more"}])
    assert affinity_key({}, first) == affinity_key({}, later)
    other = req(system="be verbose", tools=tools, messages=[
        {"role": "user", "content": "hi"}])
    assert affinity_key({}, other) != affinity_key({}, later)


@given(st.text(min_size=1, max_size=60))
def test_client_input_never_becomes_a_key_as_it_is(session: str) -> None:
    key = affinity_key({"x-claude-code-session-id": session}, req())
    if session.strip():
        assert key is not None and key.startswith("session:") and len(key) == 40
