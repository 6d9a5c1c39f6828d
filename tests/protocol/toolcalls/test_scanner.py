"""Tool calls written as text, found in streamed text blocks (the scanner and the filter)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from tests.protocol.strategies import json_objects
from tests.protocol.toolcalls.helpers import (
    STYLES,
    TOOLS,
    fold,
    no_space,
    normalise,
    render,
    run_filter,
    text_stream,
)
from txrelay.protocol.toolcalls.arguments import ToolSet
from txrelay.protocol.toolcalls.markers import MARKERS, HermesBody
from txrelay.protocol.toolcalls.scanner import Calls, CallScanner, Text, longest_marker

LONGEST = longest_marker(MARKERS)
SAMPLE = {"path": "/etc/hosts"}


def scan(text: str, step: int | None = None, tools: list[dict[str, Any]] | None = None,
         **kwargs: Any) -> list[Text | Calls]:
    s = CallScanner(ToolSet.from_tools(TOOLS if tools is None else tools), **kwargs)
    step = step or max(1, len(text))
    out = [p for i in range(0, len(text), step) for p in s.feed(text[i:i + step])]
    out += s.end()
    merged: list[Text | Calls] = []
    for p in out:
        if isinstance(p, Text) and merged and isinstance(merged[-1], Text):
            merged[-1] = Text(merged[-1].text + p.text)
        else:
            merged.append(p)
    return merged


def calls_of(pieces: list[Text | Calls]) -> list[tuple[str, dict[str, Any]]]:
    return [(c.name, c.input) for p in pieces if isinstance(p, Calls) for c in p.calls]


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("step", [None, 1, 2, 7])
def test_each_format_becomes_a_call_with_text_around_it(style: str, step: int | None) -> None:
    text = "Let me read it.\n" + render(style, "Read", SAMPLE) + "\nThat was it."
    pieces = scan(text, step)
    assert pieces[0] == Text("Let me read it.\n")
    assert calls_of(pieces) == [("Read", SAMPLE)]
    assert pieces[-1] == Text("\nThat was it.")


@pytest.mark.parametrize("text", [
    '{"name": "Read", "arguments": {"path": "/etc/hosts"}}',
    '\n  {"name": "Read", "parameters": {"path": "/etc/hosts"}}\n',
    '{"type": "function", "name": "Read", "parameters": {"path": "/etc/hosts"}}',
])
def test_bare_json_that_is_the_whole_block_is_a_call(text: str) -> None:
    for step in (None, 1, 5):
        pieces = scan(text, step)
        assert [p.format for p in pieces if isinstance(p, Calls)] == ["bare-json"]
        assert pieces == [pieces[0]] and calls_of(pieces) == [("Read", SAMPLE)]


@pytest.mark.parametrize("text", [
    '{"name": "Read", "arguments": {"path": "/x"}} is what you would send',
    'Send {"name": "Read", "arguments": {"path": "/x"}}',
    '{"name": "Read", "arguments": {"path": "/x"}, "answer": 42}',  # a key calls lack
    '{"name": "Write", "arguments": {"path": "/x"}}',  # not an offered tool
    '{"name": "Read"',  # never completed
])
def test_bare_json_that_is_not_the_whole_block_stays_text(text: str) -> None:
    for step in (None, 1, 4):
        assert scan(text, step) == [Text(text)]


@pytest.mark.parametrize("text", [
    "<tool_call>{\"name\": \"Write\", \"arguments\": {}}</tool_call>",  # not offered
    "<tool_call>{\"name\": \"Read\", \"arguments\": {\"path\": 5}}</tool_call>",  # schema
    "<tool_call>{\"name\": \"Read\", \"arguments\": {}}</tool_call>",  # required missing
    "<tool_call>just prose</tool_call>",
    "[TOOL_CALLS] is a marker Mistral uses",
    "[TOOL_CALLS]Read then [ARGS]",
    "<|python_tag|>brave_search.call(query=\"x\")",
    "<|python_tag|>{\"name\": \"Read\", \"parameters\": {\"path\": \"/x\"",  # truncated
    "<tool_call>{\"name\": \"Read\", \"arguments\": {\"path\": \"/x",  # cut by max_tokens
])
def test_what_is_not_a_valid_call_of_an_offered_tool_stays_text(text: str) -> None:
    for step in (None, 1, 3):
        assert scan(text, step) == [Text(text)]


def test_invalid_arguments_pass_when_asked() -> None:
    s = CallScanner(ToolSet.from_tools(TOOLS, accept_invalid=True))
    out = s.feed('<tool_call>{"name": "Read", "arguments": {"path": 5}}</tool_call>') + s.end()
    assert len(out) == 1 and calls_of(out) == [("Read", {"path": 5})]


def test_arguments_repaired_with_json_repair() -> None:
    text = "<tool_call>{'name': 'Read', 'arguments': {'path': '/etc/hosts',}}</tool_call>"
    assert calls_of(scan(text)) == [("Read", SAMPLE)]
    text = '<tool_call>{"name": "Read", "arguments": "{\\"path\\": \\"/etc/hosts\\""}</tool_call>'
    assert calls_of(scan(text)) == [("Read", SAMPLE)]


def test_hermes_without_close_tag_at_block_end() -> None:
    text = '<tool_call>\n{"name": "Read", "arguments": {"path": "/etc/hosts"}}\n'
    assert calls_of(scan(text, 3)) == [("Read", SAMPLE)]


@pytest.mark.parametrize("step", [None, 1, 3])
def test_hermes_close_tag_inside_arguments_is_argument_text(step: int | None) -> None:
    args = {"content": "ends with </tool_call> and \\\" quotes"}
    text = render("hermes", "do_thing", args) + " after"
    pieces = scan(text, step)
    assert calls_of(pieces) == [("do_thing", args)] and pieces[-1] == Text(" after")


@pytest.mark.parametrize("step", [None, 1, 3])
def test_hermes_json_then_something_else_ends_the_call(step: int | None) -> None:
    call = '<tool_call>{"name": "Read", "arguments": {"path": "/etc/hosts"}}'
    pieces = scan(call + "\n</tool_X more", step)
    assert calls_of(pieces) == [("Read", SAMPLE)] and pieces[-1] == Text("\n</tool_X more")
    pieces = scan(call + "Now.", step)
    assert calls_of(pieces) == [("Read", SAMPLE)] and pieces[-1] == Text("Now.")


def test_hermes_broken_json_ends_at_the_close_tag_and_is_repaired() -> None:
    text = '<tool_call>{"name": "Read", "arguments": {"path": "/etc/hosts"}</tool_call>ok'
    for step in (None, 1, 4):
        pieces = scan(text, step)
        assert calls_of(pieces) == [("Read", SAMPLE)] and pieces[-1] == Text("ok")


@pytest.mark.parametrize("step", [None, 1, 3])
def test_mistral_call_id_and_consecutive_calls(step: int | None) -> None:
    text = ('[TOOL_CALLS]Read[CALL_ID]a1B2c3D4e[ARGS]{"path": "/etc/hosts"}'
            '[TOOL_CALLS]do_thing[ARGS]{}')
    assert calls_of(scan(text, step)) == [("Read", SAMPLE), ("do_thing", {})]
    bad = "[TOOL_CALLS]Read[ARG]{}"
    assert scan(bad, step) == [Text(bad)]


def test_several_calls_in_one_block_and_in_one_list() -> None:
    text = (render("hermes", "Read", SAMPLE) + "\n" + render("hermes", "do_thing", {"a": 1})
            + "\n\n")
    pieces = scan(text, 2)
    assert calls_of(pieces) == [("Read", SAMPLE), ("do_thing", {"a": 1})]
    assert all(isinstance(p, Calls) for p in pieces)  # whitespace between calls dropped
    text = '[TOOL_CALLS][{"name": "Read", "arguments": {"path": "/etc/hosts"}}, ' \
           '{"name": "do_thing", "arguments": {}}]'
    assert calls_of(scan(text, 5)) == [("Read", SAMPLE), ("do_thing", {})]


def test_only_configured_formats_and_offered_tools() -> None:
    text = render("llama", "Read", SAMPLE)
    assert scan(text, formats=["hermes"]) == [Text(text)]
    assert scan(text, tools=[]) == [Text(text)]
    assert scan('{"name": "Read", "arguments": {"path": "/x"}}', formats=["hermes"]) \
        == [Text('{"name": "Read", "arguments": {"path": "/x"}}')]


def test_a_false_marker_is_released_and_the_rest_scanned_again() -> None:
    text = "<tool_call>oops " + render("hermes", "Read", SAMPLE)
    pieces = scan(text, 4)
    assert pieces[0] == Text("<tool_call>oops ")
    assert calls_of(pieces) == [("Read", SAMPLE)]


def test_whitespace_only_block_passes_unchanged() -> None:
    assert scan(" \n ", 1) == [Text(" \n ")]
    assert scan("") == []


def test_hermes_close_tag_split_anywhere() -> None:
    body = '{"name": "Read", "arguments": {"path": "/etc/hosts"}}</tool_call>tail'
    for cut in range(len(body) + 1):
        h = HermesBody()
        end = h.feed(body[:cut])
        if end < 0:
            end = cut + h.feed(body[cut:])
        assert body[end:] == "tail", cut
        assert h.calls() == [("Read", SAMPLE)], cut


# hypothesis

MARKER_CHARS = "ab <>[]|{}/_\"\n" + "tool_calTOLCASpyhnag"
plain_texts = st.text(alphabet=MARKER_CHARS + "xyz.,é", max_size=40).filter(
    lambda t: not any(m in t for m in MARKERS.values()))
call_args = json_objects | st.builds(lambda t: {"content": t}, st.sampled_from(
    ["</tool_call>", "x</tool_call>y", "<tool_call>{}", "[TOOL_CALLS]", '"}]']))


def cuts(text: str) -> st.SearchStrategy[list[str]]:
    return st.lists(st.integers(0, len(text)), max_size=12).map(
        lambda points: split_at(text, points))


def split_at(text: str, points: list[int]) -> list[str]:
    bounds = [0, *sorted(points), len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


@st.composite
def texts_with_calls(draw: st.DrawFn) -> tuple[str, list[tuple[str, dict[str, Any]]]]:
    parts: list[str] = []
    calls: list[tuple[str, dict[str, Any]]] = []
    texts = [""]  # runs of adjacent text parts
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.booleans()):
            parts.append(draw(plain_texts))
            texts[-1] += parts[-1]
        else:
            args = draw(call_args)
            calls.append(("do_thing", args))
            parts.append(render(draw(st.sampled_from(STYLES)), "do_thing", args))
            texts.append("")
    # Text next to text must not make a marker.
    assume(not any(m in t for t in texts for m in MARKERS.values()))
    return "".join(parts), calls


@given(data=st.data(), sample=texts_with_calls())
def test_any_split_gives_the_same_events_and_the_calls_written(
        data: st.DataObject, sample: tuple[str, list[tuple[str, dict[str, Any]]]]) -> None:
    text, calls = sample
    deltas = data.draw(cuts(text))
    whole = normalise(run_filter(text_stream([text])))
    split = normalise(run_filter(text_stream(deltas)))
    assert split == whole
    message = fold(split)
    got = [(b["name"], b["input"]) for b in message["content"] if b["type"] == "tool_use"]
    if not (text.lstrip().startswith("{") and not calls):
        assert got == calls
    texts = "".join(b["text"] for b in message["content"] if b["type"] == "text")
    if got == calls:
        expected = text
        for style in STYLES:
            for name, args in calls:
                expected = expected.replace(render(style, name, args), "")
        assert no_space(texts) == no_space(expected)
    assert message["stop_reason"] == ("tool_use" if got else "end_turn")
    assert all(b["text"].strip() for b in message["content"] if b["type"] == "text"
               ) or not got


@given(data=st.data(), text=plain_texts)
def test_plain_text_passes_unchanged_and_is_held_no_longer_than_a_marker_prefix(
        data: st.DataObject, text: str) -> None:
    assume(not text.lstrip().startswith("{"))
    deltas = data.draw(cuts(text))
    s = CallScanner(ToolSet.from_tools(TOOLS))
    released, fed = "", ""
    for d in deltas:
        released += "".join(p.text for p in s.feed(d) if isinstance(p, Text))
        fed += d
        assert released + fed[len(released):] == fed  # released is a prefix of what came
        if fed.strip():
            assert s.held == len(fed) - len(released) <= LONGEST - 1
    released += "".join(p.text for p in s.end() if isinstance(p, Text))
    assert released == text
    out = run_filter(text_stream(deltas))
    assert fold(out) == fold(text_stream(deltas))  # the same message, event for event folded


@given(args=call_args, deltas_at=st.lists(st.integers(0, 300), max_size=8))
def test_a_bare_json_block_split_anywhere(args: dict[str, Any], deltas_at: list[int]) -> None:
    import json

    text = json.dumps({"name": "do_thing", "arguments": args})
    out = fold(run_filter(text_stream(split_at(text, [p % (len(text) + 1) for p in deltas_at]))))
    assert [(b["type"], b.get("input")) for b in out["content"]] == [("tool_use", args)]



def test_rejections_name_the_problem_without_quoting_arguments() -> None:
    s = CallScanner(ToolSet.from_tools(TOOLS))
    s.feed('<tool_call>{"name": "Read", "arguments": {"path": ["s3cr3t-value"]}}</tool_call>')
    s.end()
    assert s.rejections == ["the arguments of Read do not match its input_schema "
                            "(type at $.path)"]


def test_unfinished_calls_at_block_end_are_text_as_they_came() -> None:
    text = "<tool_call>{" * 50 + "[TOOL_CALLS][{" * 50
    for step in (None, 1, 7):
        assert scan(text, step) == [Text(text)]
    s = CallScanner(ToolSet.from_tools(TOOLS))
    s.feed("<|python_tag|>" + '{"name": "Read", "parameters": {"path": "/x"')
    assert s.end() == [Text('<|python_tag|>{"name": "Read", "parameters": {"path": "/x"')]
    assert s.rejections == ["llama tool call not finished by the block's end"]
