"""
Validation writes a request body once: the nesting check writes ``tools`` on its own and the
token estimate reuses that length. Both give what the whole-body check and a second
``dumps`` of the tools gave (the old code, kept here as the reference).
"""

from __future__ import annotations

from typing import Any

import attrs
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.conftest import examples
from tests.fuzz.strategies import SURROGATES, deep, encode, json_value, requests
from txrelay.protocol import validate
from txrelay.protocol.anthropic import parse_request
from txrelay.protocol.errors import RelayError
from txrelay.protocol.tokens import (
    _CHARS_PER_TOKEN,
    _PER_MESSAGE,
    _block_chars,
    _json_len,
    estimate_input_tokens,
)

SETTINGS = settings(max_examples=examples(300), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def old_too_deep_path(body: Any) -> str | None:
    """The nesting check before: the whole body written at once, else the walk."""
    wrapped: Any = body
    for _ in range(validate._WRAP):
        wrapped = [wrapped]
    try:
        orjson.dumps(wrapped)
        return None
    except TypeError:
        return validate._walk(body)


def old_estimate(req: Any) -> int:
    """estimate_input_tokens before: the tools written once more to count them."""
    chars = len(req.system_text())
    flat = 0
    for msg in req.messages:
        flat += _PER_MESSAGE
        if isinstance(msg.content, str):
            chars += len(msg.content)
            continue
        for block in msg.content:
            if isinstance(block, dict):
                c, f = _block_chars(block)
                chars, flat = chars + c, flat + f
    if req.tools:
        chars += _json_len(req.tools)
    return max(1, int(chars / _CHARS_PER_TOKEN + 0.999) + flat)


nested = st.integers(1, 140).flatmap(
    lambda n: st.sampled_from(["list", "dict"]).map(lambda kind: deep(n, kind=kind)))
odd_leaf = st.one_of(json_value, st.text(SURROGATES, min_size=1, max_size=3),
                     st.integers(-(2**70), 2**70), nested)
tool_values = st.lists(st.fixed_dictionaries(
    {"name": st.just("t"), "input_schema": st.dictionaries(st.text(max_size=3), odd_leaf,
                                                           max_size=3)}), max_size=3)
bodies = st.fixed_dictionaries(
    {"model": st.just("m"), "max_tokens": st.just(1),
     "messages": st.just([{"role": "user", "content": "hi"}])},
    optional={"tools": st.one_of(tool_values, odd_leaf), "metadata": odd_leaf,
              "x": odd_leaf})


@SETTINGS
@given(bodies)
def test_nesting_check_matches_the_whole_body_check(body: dict[str, Any]) -> None:
    assert validate._nesting(body) == old_too_deep_path(body)
    known = validate.validated_tools_length(body.get("tools"))
    if known is not None:
        assert known == len(orjson.dumps(body["tools"]))


@SETTINGS
@given(bodies)
def test_validation_answers_as_before(body: dict[str, Any]) -> None:
    def answer(check: Any) -> tuple[int, str] | None:
        original = validate._nesting
        validate._nesting = check
        try:
            validate.validate_request(body)
        except RelayError as e:
            return e.status, e.message
        finally:
            validate._nesting = original
        return None

    assert answer(validate._nesting) == answer(old_too_deep_path)


@SETTINGS
@given(requests)
def test_estimate_matches_a_second_dump(body: dict[str, Any]) -> None:
    req = parse_request(encode(body))
    assert estimate_input_tokens(req) == old_estimate(req)
    if req.tools:
        known = validate.validated_tools_length(req.tools)
        # Not known when the body holds what orjson cannot write (lone surrogates).
        assert known is None or known == len(orjson.dumps(req.tools))
        # A stage that offers other tools replaces them: the estimate counts the new ones.
        other = attrs.evolve(req, tools=[*req.tools, {"name": "extra", "input_schema": {}}])
        assert validate.validated_tools_length(other.tools) is None
        assert estimate_input_tokens(other) == old_estimate(other)


def test_a_later_validation_forgets_the_earlier_tools() -> None:
    first = parse_request(encode({"model": "m", "max_tokens": 1, "messages": [
        {"role": "user", "content": "hi"}], "tools": [{"name": "a", "input_schema": {}}]}))
    assert validate.validated_tools_length(first.tools) == len(orjson.dumps(first.tools))
    parse_request(encode({"model": "m", "max_tokens": 1,
                          "messages": [{"role": "user", "content": "hi"}]}))
    assert validate.validated_tools_length(first.tools) is None
    assert estimate_input_tokens(first) == old_estimate(first)
