"""
The Chat translator's chunk template (``ChatStreamTranslator._learn``): chunks that differ
from the last plain text chunk only in their content string skip the full JSON parse, and
give exactly the events the full parse gives, whatever the bytes, however the reads split.
"""

from __future__ import annotations

import itertools
import json
from itertools import pairwise
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from txrelay.protocol.events import Event
from txrelay.protocol.openai import ChatStreamTranslator, OpenAIDialect
from txrelay.protocol.sse import encode_events


class _Parsed(ChatStreamTranslator):
    """Every chunk through the full parse."""

    _TEMPLATES = False


def translate(cls: type[ChatStreamTranslator], reads: list[bytes],
              dialect: OpenAIDialect | None = None) -> tuple[list[Event], Any]:
    ids = itertools.count(1)
    sigs = itertools.count(1)
    t = cls(model="claude-test", input_tokens=10, dialect=dialect or OpenAIDialect(),
            message_id="msg_test", id_factory=lambda: f"toolu_{next(ids):04d}",
            signature_factory=lambda: f"txr1.oai.sig{next(sigs)}")
    out = t.start()
    for read in reads:
        out += t.feed(read)
    out += t.finish()
    return out, t


def split(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(body), *(c % (len(body) + 1) for c in cuts)})
    return [body[a:b] for a, b in pairwise(points)] or [body]


def same(body: bytes, cuts: list[int], dialect: OpenAIDialect | None = None) -> Any:
    """The events with and without templates are the same, as are their bytes."""
    reads = split(body, cuts)
    ours, translator = translate(ChatStreamTranslator, reads, dialect)
    theirs, _ = translate(_Parsed, reads, dialect)
    assert ours == theirs
    assert encode_events(ours) == encode_events(theirs)
    return translator


_HEAD = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1741570283,
         "model": "m", "system_fingerprint": "fp_1"}

_LAYOUTS = st.sampled_from(["orjson", "json", "json-ascii"])


def dump(obj: Any, layout: str) -> bytes:
    if layout == "orjson":
        try:
            return orjson.dumps(obj)
        except TypeError:  # a lone surrogate
            layout = "json"
    return json.dumps(obj, ensure_ascii=layout == "json-ascii").encode("utf-8", "surrogatepass")


def chunk(content: Any, **choice: Any) -> dict[str, Any]:
    return {**_HEAD, "choices": [{"index": 0, "delta": {"content": content}, "logprobs": None,
                                  "finish_reason": None, **choice}], "usage": None}


_TEXT = st.text(alphabet=st.sampled_from('ab "\\/\n\t\x00\x01\x1fé😀\u2028\ud800{}[],:'),
                max_size=8)
#: Raw bytes in the content string's place: valid string bodies and all kinds of others.
_RAW = st.one_of(
    st.sampled_from([b"", b"x", b'\\"', b"\\\\", b"\\", b'a\\\\"', b'a","role":"user',
                     b'a"},"x":{"content":"b', b"\\u0041", b"\\ud800", b"\\ud83d\\ude00",
                     b"\\/", b"\\q", b"\x00", b"\n", b"\xff", b"\xc3", b"\xc3\xa9",
                     b'"', b'a" ', b" ", b"\\n\\t", b'a","content":"b']),
    st.binary(max_size=6),
)


@st.composite
def events(draw: st.DrawFn) -> bytes:
    """One SSE event: a chunk of the template's layout, perturbed or not, or something else."""
    layout = draw(_LAYOUTS)
    kind = draw(st.sampled_from(["text", "text", "text", "raw", "raw", "role", "finish",
                                 "usage", "nonce", "created", "spaced", "other", "done"]))
    if kind == "text":
        data = dump(chunk(draw(_TEXT)), layout)
    elif kind == "raw":
        template = dump(chunk("\x00"), layout)
        marker = b'"\\u0000"'
        assert template.count(marker) == 1
        data = template.replace(marker, b'"' + draw(_RAW) + b'"')
    elif kind == "role":
        c = chunk(draw(_TEXT))
        c["choices"][0]["delta"] = {"role": "assistant", "content": draw(_TEXT)}
        data = dump(c, layout)
    elif kind == "finish":
        data = dump(chunk(draw(_TEXT), finish_reason=draw(st.sampled_from(["stop", None]))),
                    layout)
    elif kind == "usage":
        c = chunk(draw(_TEXT))
        c["usage"] = {"prompt_tokens": 1, "completion_tokens": 2}
        data = dump(c, layout)
    elif kind == "nonce":
        data = dump({**chunk(draw(_TEXT)), "obfuscation": draw(_TEXT)}, layout)
    elif kind == "created":
        data = dump({**chunk(draw(_TEXT)), "created": draw(st.integers(0, 99))}, layout)
    elif kind == "spaced":
        data = dump(chunk(draw(_TEXT)), "json").replace(b'"content": ', b'"content" :\t ')
    elif kind == "other":
        data = draw(st.sampled_from([
            b'{"choices":[{"index":0,"delta":{"content":"x","content":"y"}}]}',
            b'{"x":{"content":"a"},"choices":[{"index":0,"delta":{"content":"a"}}]}',
            b'{"choices":[{"index":0,"delta":{"reasoning_content":"t"}}]}',
            b'{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c",'
            b'"function":{"name":"f","arguments":"{}"}}]}}]}',
            b"{", b"[1]", b" ", b"",
        ]))
    else:
        data = b"[DONE]"
    return b"data: " + data + b"\n\n"


@settings(max_examples=400, deadline=None)
@given(st.lists(events(), max_size=14), st.lists(st.integers(0, 1 << 16), max_size=6),
       st.booleans())
def test_templates_give_the_events_of_the_full_parse(
        body: list[bytes], cuts: list[int], think_tags: bool) -> None:
    """Every stream, every split: with and without templates, the same events."""
    opening = b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
    same(opening + b"".join(body), cuts, OpenAIDialect(think_tags=think_tags))


@settings(max_examples=200, deadline=None)
@given(st.lists(_RAW, min_size=1, max_size=8), _LAYOUTS, st.lists(st.integers(0, 4096)))
def test_any_bytes_in_the_content_string_place(raws: list[bytes], layout: str,
                                               cuts: list[int]) -> None:
    """After a template was learnt, whatever stands where the string was."""
    template = dump(chunk("\x00"), layout)
    first = template.replace(b'"\\u0000"', b'"Hello"')
    body = [first, first] + [template.replace(b'"\\u0000"', b'"' + r + b'"') for r in raws]
    t = same(b"".join(b"data: " + b + b"\n\n" for b in body), cuts)
    assert t._template is not None


def test_the_template_is_learnt_and_used() -> None:
    """The common chunk: learnt from the first plain text chunk, then the parse is skipped."""
    body = [orjson.dumps(chunk(text)) for text in ("Hi", " there", ' "q"', "\\")]
    calls: list[Any] = []

    class Counting(ChatStreamTranslator):
        __slots__ = ()

        def _plain_text(self, c: Any, out: Any) -> Any:
            calls.append(c)
            return super()._plain_text(c, out)

    t = Counting(model="m", input_tokens=1, dialect=OpenAIDialect())
    t.start()
    t.feed(b"data: " + body[0] + b"\n\n")
    assert t._template is None  # the first delta opens the block (the general path)
    t.feed(b"data: " + body[1] + b"\n\n")
    assert t._template is not None
    prefix, suffix, _ = t._template
    assert prefix.endswith(b'"content":"') and suffix.startswith(b'"},"logprobs"')
    calls.clear()
    out = t.feed(b"".join(b"data: " + b + b"\n\n" for b in body[2:]))
    assert calls == []
    assert [e["delta"]["text"] for e in out] == [' "q"', "\\"]


def test_no_template_when_the_chunks_differ_elsewhere() -> None:
    """A per-chunk nonce: a few attempts, then no more (the full parse for every chunk)."""
    t = ChatStreamTranslator(model="m", input_tokens=1, dialect=OpenAIDialect())
    t.start()
    for n in range(10):
        t.feed(b"data: " + orjson.dumps({**chunk(f"w{n}"), "obfuscation": "x" * n}) + b"\n\n")
    assert t._learning == 0  # three attempts, each chunk's template fitting only itself
    out, _ = translate(ChatStreamTranslator, [b"data: " + orjson.dumps(
        {**chunk("a"), "obfuscation": "xyz"}) + b"\n\n"] * 3)
    assert [e["delta"]["text"] for e in out if e["type"] == "content_block_delta"] == ["a"] * 3


def test_a_content_key_elsewhere_is_not_taken_for_the_delta() -> None:
    """A ``"content"`` key before the delta's, with the same string: the probe tells them apart."""
    first = b'{"x":{"content":"a"},"choices":[{"index":0,"delta":{"content":"a"}}]}'
    later = b'{"x":{"content":"b"},"choices":[{"index":0,"delta":{"content":"a"}}]}'
    body = b"".join(b"data: " + c + b"\n\n" for c in (first, first, later, later))
    t = same(body, [])
    assert t._template is not None and t._template[0].endswith(b'"delta":{"content":"')


def test_no_template_from_a_large_chunk() -> None:
    """A template lives as long as the stream: none is learnt from a chunk over 2 KiB."""
    big = b"data: " + orjson.dumps({**chunk("a"), "pad": "p" * 2048}) + b"\n\n"
    t = ChatStreamTranslator(model="m", input_tokens=1, dialect=OpenAIDialect())
    t.start()
    t.feed(big * 3)
    assert t._template is None and t._learning == 3
