"""The SSE parser (R-X15) and encoder (R-X16), split at every boundary."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from txrelay.protocol.sse import SSEEvent, SSEParser, encode_event, encode_events


def parse_in_pieces(data: bytes, cuts: list[int]) -> list[SSEEvent]:
    parser = SSEParser()
    out: list[SSEEvent] = []
    last = 0
    for cut in sorted(set(cuts)):
        out += parser.feed(data[last:cut])
        last = cut
    out += parser.feed(data[last:])
    out += parser.finish()
    return out


STREAM = (
    b"\xef\xbb\xbf: leading comment\r\n"
    b"data: {\"a\": 1}\r\n\r\n"
    b"event: custom\ndata: line one\ndata: line two\n\n"
    b": keep-alive\n\n"
    b"data:no-space\r\r"
    b"data: \xe2\x9c\x93 unicode \xf0\x9f\x98\x80\n\n"
    b"error: {\"message\": \"old llama.cpp\"}\n\n"
    b"proxy error: backend died\n"
    b"data: [DONE]"
)

EXPECTED = [
    SSEEvent(None, b'{"a": 1}'),
    SSEEvent("custom", b"line one\nline two"),
    SSEEvent(None, b"no-space"),
    SSEEvent(None, "✓ unicode 😀".encode()),
    SSEEvent(None, b"", (("error", '{"message": "old llama.cpp"}'),)),
    SSEEvent(None, b"[DONE]", (("proxy error", "backend died"),)),
]


def test_whole_stream() -> None:
    assert parse_in_pieces(STREAM, []) == EXPECTED


def test_every_single_split_point() -> None:
    for cut in range(len(STREAM) + 1):
        assert parse_in_pieces(STREAM, [cut]) == EXPECTED, cut


def test_byte_by_byte() -> None:
    assert parse_in_pieces(STREAM, list(range(len(STREAM)))) == EXPECTED


@given(st.lists(st.integers(0, len(STREAM)), max_size=20))
def test_any_splits(cuts: list[int]) -> None:
    assert parse_in_pieces(STREAM, cuts) == EXPECTED


def test_unicode_line_separators_do_not_end_lines() -> None:
    data = 'data: a\u2028b\u0085c\n\n'.encode()
    assert parse_in_pieces(data, []) == [SSEEvent(None, "a\u2028b\u0085c".encode())]


def test_crlf_split_between_cr_and_lf_is_one_line_end() -> None:
    data = b"data: x\r\n\r\ndata: y\r\n\r\n"
    for cut in range(len(data) + 1):
        assert parse_in_pieces(data, [cut]) == [SSEEvent(None, b"x"), SSEEvent(None, b"y")]


events_st = st.lists(
    st.fixed_dictionaries({
        "type": st.sampled_from(["message_start", "content_block_delta", "ping"]),
        "text": st.text(),
    }),
    max_size=8,
)


@given(events_st, st.lists(st.integers(0, 4000), max_size=10))
def test_encoder_round_trip(events: list[dict[str, str]], cuts: list[int]) -> None:
    data = encode_events(events)
    parsed = parse_in_pieces(data, [c for c in cuts if c <= len(data)])
    assert [(e.event, json.loads(e.data)) for e in parsed] == [(e["type"], e) for e in events]
    for e in events:
        frame = encode_event(e)
        assert frame.count(b"\n") == 3  # event line, one data line, blank line


@settings(max_examples=300, deadline=None)
@given(
    prefix=st.sampled_from([b"", b"data: a\n\n", b"event: x\n", b"data: a\n", b": c\n", b"da"]),
    body=st.lists(st.sampled_from([b"data: ", b"data:", b"event: e", b"x", b"{}", b"\n", b"\r",
                                   b"\r\n", b" ", b":"]), max_size=8).map(b"".join),
)
def test_one_event_fast_path_matches_the_line_machinery(prefix: bytes, body: bytes) -> None:
    # Fed whole after ``prefix``, a read shaped like one ``data:`` event may take the fast
    # path; fed a byte at a time it never does. Both must give the same events.
    for chunk in (body, body + b"\n\n", b"data: " + body + b"\n\n"):
        whole = SSEParser()
        got = whole.feed(prefix) + whole.feed(chunk) + whole.finish()
        slow = SSEParser()
        want = slow.feed(prefix)
        for i in range(len(chunk)):
            want += slow.feed(chunk[i:i + 1])
        want += slow.finish()
        assert got == want, (prefix, chunk)


def test_one_event_read() -> None:
    parser = SSEParser()
    assert parser.feed(b'data: {"a":1}\n\n') == [SSEEvent(None, b'{"a":1}')]
    assert parser.feed(b"data: \n\n") == [SSEEvent(None, b"")]
    assert parser.feed(b"data: x\n\n") == [SSEEvent(None, b"x")]
    assert parser.finish() == []


def _frame(event: dict[str, object]) -> bytes:
    """encode_event as it was written before its frame heads were cached."""
    return (b"event: " + str(event["type"]).encode("ascii") + b"\ndata: "
            + json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e),
                        min_size=1, max_size=6), max_size=80))
def test_frame_heads_cached_or_not(kinds: list[str]) -> None:
    """Known types, new ones, more than the cache keeps: the same frames."""
    for kind in [*kinds, "content_block_delta", *kinds]:
        event = {"type": kind, "n": 1}
        assert encode_event(event) == _frame(event)


def test_frame_heads_of_bad_types_fail_as_before() -> None:
    """A type that is not ASCII text fails the same way whether or not it was seen."""
    for _ in range(2):
        with pytest.raises(UnicodeEncodeError):
            encode_event({"type": "é"})
        with pytest.raises(AttributeError):
            encode_event({"type": 3})
