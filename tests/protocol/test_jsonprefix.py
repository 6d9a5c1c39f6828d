"""The incremental JSON-prefix checker and tool-argument repair (R-S10, R-O28)."""

from __future__ import annotations

import itertools
import json
from typing import Any

import jiter
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.protocol.strategies import json_objects, json_values
from txrelay.protocol.jsonprefix import JSONPrefixChecker, json_completion, repair_json_object


@st.composite
def formatted(draw: st.DrawFn, values: st.SearchStrategy[Any]) -> tuple[Any, str]:
    value = draw(values)
    style = draw(st.sampled_from(["compact", "spaced", "indent", "ascii"]))
    if style == "compact":
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    elif style == "spaced":
        text = json.dumps(value, ensure_ascii=False)
    elif style == "indent":
        text = json.dumps(value, indent=2, ensure_ascii=False)
    else:
        text = json.dumps(value)
    pad = draw(st.sampled_from(["", " ", "\n  ", "\t"]))
    return value, pad + text + draw(st.sampled_from(["", " ", "\n"]))


def feed_all(checker: JSONPrefixChecker, pieces: list[str]) -> str:
    return "".join(checker.feed(p) for p in pieces)


def pieces_of(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts})
    return [text[a:b] for a, b in itertools.pairwise([0, *points, len(text)])]


@settings(max_examples=300, deadline=None)
@given(doc=formatted(json_values), cuts=st.lists(st.integers(0, 10_000), max_size=8))
def test_any_json_document_is_forwarded_whole(doc: tuple[Any, str], cuts: list[int]) -> None:
    value, text = doc
    checker = JSONPrefixChecker(require_object=False)
    out = feed_all(checker, pieces_of(text, cuts))
    assert checker.valid
    assert checker.complete
    assert json.loads(out + checker.closing_suffix()) == value
    assert out + checker.closing_suffix() == text.strip()


@settings(max_examples=200, deadline=None)
@given(doc=formatted(json_objects), cuts=st.lists(st.integers(0, 10_000), max_size=6))
def test_every_cut_is_a_valid_prefix(doc: tuple[Any, str], cuts: list[int]) -> None:
    """At every cut the forwarded text is a prefix the SDK's parser accepts and we can close."""
    _, text = doc
    for cut in range(len(text) + 1):
        checker = JSONPrefixChecker()
        out = feed_all(checker, pieces_of(text[:cut], cuts))
        assert checker.valid
        assert text.strip().startswith(out)
        if out:
            jiter.from_json(out.encode(), partial_mode=True)
            closed = json.loads(out + checker.closing_suffix())
            assert isinstance(closed, dict)
        else:
            assert checker.closing_suffix() == ""


@pytest.mark.parametrize(
    ("text", "forwarded"),
    [
        ("{'a': 1}", "{"),
        ('{"a": 1,}', '{"a": 1'),
        ('{"a" 1}', '{"a" '),
        ('{"a": [1, 2,]}', '{"a": [1, 2'),
        ('{"a": 01}', '{"a": 0'),
        ('{"a": True}', '{"a": '),
        ('{"a": "\\x"}', '{"a": "'),
        ('{"a": -}', '{"a": '),
        ('{"a": 1.}', '{"a": '),
        ('{"a": nul}', '{"a": '),
        ("[1, 2]", ""),
        ('"text"', ""),
        ("```json\n{}\n```", ""),
        ('{"a": 1]', '{"a": 1'),
        ("{}}", "{}"),
    ],
)
def test_invalid_text_is_detected(text: str, forwarded: str) -> None:
    checker = JSONPrefixChecker()
    out = checker.feed(text)
    if text == "{}}":  # trailing junk after a complete value is not an error, just dropped
        assert checker.valid
        assert checker.complete
    else:
        assert not checker.valid
    assert out == forwarded
    assert checker.feed("more") == ""


def test_leading_whitespace_never_forwarded() -> None:
    checker = JSONPrefixChecker()
    assert checker.feed("  \n") == ""
    assert not checker.started
    assert checker.feed(" {") == "{"
    assert checker.started


def test_raw_control_characters_in_strings_are_escaped() -> None:
    checker = JSONPrefixChecker()
    out = checker.feed('{"a": "x\ny\tz\x01"}')
    assert out == '{"a": "x\\ny\\tz\\u0001"}'
    assert json.loads(out) == {"a": "x\ny\tz\x01"}


@pytest.mark.parametrize(
    ("pieces", "forwarded", "suffix", "value"),
    [
        (['{"a": "b\\', "n"], '{"a": "b\\n', '"}', {"a": "b\n"}),
        (['{"a": "b\\u00'], '{"a": "b', '"}', {"a": "b"}),
        (['{"a": 1', "2"], '{"a": ', "12}", {"a": 12}),
        (['{"a": tr'], '{"a": ', "true}", {"a": True}),
        (['{"a": 1, '], '{"a": 1', "}", {"a": 1}),
        (['{"a": [1, '], '{"a": [1', "]}", {"a": [1]}),
        (['{"a":'], '{"a":', "null}", {"a": None}),
        (['{"a"'], '{"a"', ":null}", {"a": None}),
        (['{"a'], '{"a', '":null}', {"a": None}),
        (['{"a": 1e'], '{"a": ', "1e0}", {"a": 1.0}),
        (['{"a": -'], '{"a": ', "-0}", {"a": 0}),
    ],
)
def test_held_tokens_and_closing_suffix(
    pieces: list[str], forwarded: str, suffix: str, value: dict[str, Any]
) -> None:
    checker = JSONPrefixChecker()
    assert feed_all(checker, pieces) == forwarded
    assert checker.closing_suffix() == suffix
    assert json.loads(forwarded + suffix) == value


def test_closing_suffix_of_invalid_text_raises() -> None:
    checker = JSONPrefixChecker()
    checker.feed("{'")
    with pytest.raises(ValueError, match="not a valid JSON prefix"):
        checker.closing_suffix()


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("", {}),
        ("   ", {}),
        ('{"a": 1}', {"a": 1}),
        ("{'a': 1}", {"a": 1}),
        ('```json\n{"a": 1}\n```', {"a": 1}),
        ("```\n{}\n```", {}),
        ('{"a": 1} trailing words', {"a": 1}),
        ('{"a":1}{"b":2}', {"a": 1}),
        ("{'a':1}{'b':2}", {"a": 1}),
        ('{"a": True, "b": False, "c": None}', {"a": True, "b": False, "c": None}),
        ('{"a": "unclosed', {"a": "unclosed"}),
        ('{"a": [1, 2', {"a": [1, 2]}),
        ("[1, 2]", {"value": [1, 2]}),
        ("42", {"value": 42}),
        ('"s"', {"value": "s"}),
        ("null", {"value": None}),
        ("not json at all", {"_invalid_arguments": "not json at all"}),
    ],
)
def test_r_o28_repair_json_object(raw: str, value: dict[str, Any]) -> None:
    assert repair_json_object(raw) == value


@given(st.text(max_size=60))
@settings(max_examples=200, deadline=None)
def test_r_o28_repair_always_returns_an_object(raw: str) -> None:
    assert isinstance(repair_json_object(raw), dict)


@pytest.mark.parametrize(
    ("prefix", "value", "suffix"),
    [
        ("", {"a": 1}, '{"a":1}'),
        ("{", {"a": 1}, '"a":1}'),
        ('{"a": ', {"a": True}, "true}"),
        ('{"a": "x', {"a": "xy"}, 'y"}'),
        ('{"k": "\\u00e9"', {"k": "é", "b": 1}, ',"b":1}'),
        ('{"k": "a\\/b"', {"k": "a/b", "j": 1}, None),
        ('{"a": 2', {"a": 1}, None),
    ],
)
def test_json_completion(prefix: str, value: dict[str, Any], suffix: str | None) -> None:
    assert json_completion(prefix, value) == suffix
    if suffix is not None:
        assert json.loads(prefix + suffix) == value
