"""The sans-IO half of tool-intercept: matching, domain rules, history rewriting."""

from __future__ import annotations

import pytest

from txrelay.protocol.anthropic import InputMessage, request_from_json
from txrelay.protocol.errors import RelayError
from txrelay.stages.toolintercept.servertools import (
    ServerTool,
    conversation_text,
    decode_content,
    domain_matches,
    encode_content,
    error_result_block,
    rewrite_messages,
    server_tools,
    tool_kind,
    url_in_text,
)


@pytest.mark.parametrize(("tool", "kind"), [
    ({"type": "web_search_20250305", "name": "web_search"}, "web_search"),
    ({"type": "web_search_20260318", "name": "web_search"}, "web_search"),
    ({"type": "web_fetch_20250910", "name": "web_fetch"}, "web_fetch"),
    ({"name": "WebSearch", "input_schema": {}}, None),      # Claude Code's client tool
    ({"name": "web_search", "input_schema": {}}, None),     # a custom tool of that name
    ({"type": "custom", "name": "web_search", "input_schema": {}}, None),
    ({"type": "web_search_20250305", "name": "search"}, None),
    ({"type": "bash_20250124", "name": "bash"}, None),
])
def test_the_matcher_is_exact(tool: dict[str, object], kind: str | None) -> None:
    assert tool_kind(tool) == kind


@pytest.mark.parametrize(("url", "rule", "hit"), [
    ("https://example.com/x", "example.com", True),
    ("https://docs.example.com/x", "example.com", True),
    ("https://notexample.com/x", "example.com", False),
    ("https://example.com.evil.net/", "example.com", False),
    ("https://EXAMPLE.com./x", "example.com", True),
    ("https://example.com/docs/a", "example.com/docs", True),
    ("https://example.com/blog", "example.com/docs", False),
    ("not a url", "example.com", False),
])
def test_domain_rules(url: str, rule: str, hit: bool) -> None:
    assert domain_matches(url, rule) is hit


def test_options_are_checked() -> None:
    def parse(tool: dict[str, object]) -> list[ServerTool]:
        return server_tools(request_from_json({"model": "m", "max_tokens": 1, "tools": [tool],
                                               "messages": [{"role": "user", "content": "x"}]}))

    (tool,) = parse({"type": "web_search_20250305", "name": "web_search", "max_uses": 2,
                     "allowed_domains": ["Example.com"],
                     "user_location": {"type": "approximate", "country": "DE"}})
    assert tool.max_uses == 2 and tool.allowed_domains == ("example.com",)
    assert tool.user_location == {"type": "approximate", "country": "DE"}
    for bad, message in [({"max_uses": 0}, "max_uses"), ({"allowed_domains": "x"}, "domain"),
                         ({"user_location": "Berlin"}, "user_location")]:
        with pytest.raises(RelayError, match=message):
            parse({"type": "web_search_20250305", "name": "web_search", **bad})


def test_encrypted_content_round_trips_and_foreign_ciphertext_is_left() -> None:
    assert decode_content(encode_content("héllo")) == "héllo"
    assert decode_content("EqgfCioIARgBIiQ3YTAw") is None
    assert decode_content("txr1.%%%") is None


def test_error_codes_are_the_sdks() -> None:
    with pytest.raises(ValueError):
        error_result_block("web_search", "srvtoolu_1", "url_not_allowed")
    assert error_result_block("web_fetch", "s", "url_not_allowed")["content"] == {
        "type": "web_fetch_tool_result_error", "error_code": "url_not_allowed"}


def test_rewrite_splits_turns_and_merges_results_into_the_next_user_message() -> None:
    names = {"web_search": ServerTool("web_search", "web_search", "web_search_20250305")}
    assistant = InputMessage("assistant", [
        {"type": "text", "text": "Let me look."},
        {"type": "server_tool_use", "id": "s1", "name": "web_search", "input": {"query": "q"}},
        {"type": "tool_use", "id": "c1", "name": "Read", "input": {}},
        {"type": "web_search_tool_result", "tool_use_id": "s1", "content": {
            "type": "web_search_tool_result_error", "error_code": "unavailable"}},
    ])
    user = InputMessage("user", [{"type": "tool_result", "tool_use_id": "c1", "content": "ok"}])
    out = rewrite_messages([InputMessage("user", "hi"), assistant, user], names)
    assert [m.role for m in out] == ["user", "assistant", "user"]
    assert [b["type"] for b in out[1].blocks()] == ["text", "tool_use", "tool_use"]
    results = out[2].blocks()
    assert [b["tool_use_id"] for b in results] == ["s1", "c1"]
    assert results[0]["is_error"] is True and "unavailable" in results[0]["content"]


def test_urls_the_model_wrote_are_not_context() -> None:
    request = request_from_json({"model": "m", "max_tokens": 1, "messages": [
        {"role": "user", "content": "see https://user.example/a"},
        {"role": "assistant", "content": [{"type": "text", "text": "https://model.example/"}]},
        {"role": "user", "content": "go on"}]})
    turn = [{"type": "server_tool_use", "id": "s", "name": "web_fetch",
             "input": {"url": "https://model.example/b"}},
            {"type": "web_search_tool_result", "tool_use_id": "s2", "content": [
                {"type": "web_search_result", "url": "https://found.example/c", "title": "t",
                 "encrypted_content": encode_content("x")}]}]
    text = conversation_text(request, turn)
    assert "https://user.example/a" in text and "https://found.example/c" in text
    assert "model.example" not in text


@pytest.mark.parametrize(("url", "text", "found"), [
    ("https://a.example/page", "see https://a.example/page.", True),
    ("https://a.example/page", '{"text": "https://a.example/page"}', True),
    ("https://a.example/p", "see https://a.example/page", False),
    ("https://a.example", "see https://a.example.evil.net/", False),
    ("https://a.example/", "see https://a.example today", True),
    ("https://a.example/page", "nothing here", False),
    ("https://a.example/x?y=1", "(https://a.example/x?y=1)", True),
])
def test_url_in_text_matches_whole_urls(url: str, text: str, found: bool) -> None:
    assert url_in_text(url, text) is found
