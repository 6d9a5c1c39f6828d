"""The phrase automaton: leftmost-longest replacement, split-invariance, bounded hold-back."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from txrelay.protocol.phrases import MAX_REPEAT, Phrase, PhraseError, PhraseSet


def oracle(phrases: list[Phrase], text: str) -> str:
    """Leftmost-longest replacement by brute force, with Python's ``re`` as the judge."""
    compiled = []
    for p in phrases:
        source = p.text if p.pattern else re.escape(p.text)
        compiled.append(re.compile(source, re.IGNORECASE if p.ignore_case else 0))
    longest = PhraseSet.compile(phrases).longest
    out, i = [], 0
    while i < len(text):
        best: tuple[int, int] | None = None
        for index, rx in enumerate(compiled):
            for n in range(min(longest, len(text) - i), 0, -1):
                if rx.fullmatch(text, i, i + n):
                    if best is None or n > best[0]:
                        best = (n, index)
                    break
        if best is None:
            out.append(text[i])
            i += 1
        else:
            out.append(phrases[best[1]].replace)
            i += best[0]
    return "".join(out)


def streamed(ps: PhraseSet, pieces: list[str]) -> tuple[str, int]:
    """The text of ``pieces`` fed one by one, and the most characters ever held."""
    scanner = ps.scanner()
    out, most = [], 0
    for piece in pieces:
        out.append(scanner.feed(piece))
        most = max(most, scanner.held)
    out.append(scanner.finish())
    return "".join(out), most


def test_literals_case_and_patterns() -> None:
    ps = PhraseSet.compile([
        Phrase("DeepSeek", "the assistant", ignore_case=True),
        Phrase(r"GPT-[45]o?", "a model", pattern=True),
        Phrase("OpenAI"),
    ])
    text = "I am DEEPSEEK, not GPT-4o or GPT-5 by OpenAI; deepseeker"
    assert ps.apply(text) == "I am the assistant, not a model or a model by ; the assistanter"
    assert ps.longest == 8


def test_longest_match_wins_then_first_configured() -> None:
    ps = PhraseSet.compile([Phrase("ab", "1"), Phrase("abc", "2"), Phrase("abc", "3")])
    assert ps.apply("abcab abd") == "21 1d"


def test_leftmost_match_wins_over_a_longer_later_one() -> None:
    ps = PhraseSet.compile([Phrase("bcdef", "X"), Phrase("ab", "Y")])
    assert ps.apply("abcdef") == "Ycdef"


def test_a_pending_match_waits_for_a_longer_one_then_resumes() -> None:
    ps = PhraseSet.compile([Phrase("ab", "<ab>"), Phrase("a[ab]{0,5}z", "<z>", pattern=True),
                            Phrase("cd", "<cd>")])
    assert ps.apply("abacd") == "<ab>a<cd>"
    assert ps.apply("abz") == "<z>"
    scanner = ps.scanner()
    assert scanner.feed("ab") == ""  # "ab" could still grow into "ab…z"
    assert scanner.held == 2
    assert scanner.feed("x") == "<ab>x"


def test_matches_never_span_a_finish() -> None:
    ps = PhraseSet.compile([Phrase("Qwen", "Q")])
    scanner = ps.scanner()
    assert scanner.feed("Qw") == ""
    assert scanner.finish() == "Qw"
    assert scanner.feed("en") == "en"


def test_classes_shorthands_and_escapes() -> None:
    ps = PhraseSet.compile([Phrase(r"v\d{1,2}\.\d", "vN", pattern=True),
                            Phrase(r"[^a-z ]{3}", "#", pattern=True),
                            Phrase(r"x\sy", "_", pattern=True)])
    assert ps.apply("v3.1 and v12.0 x y abc") == "vN and vN _ abc"
    assert ps.apply("ABCD") == "#D"


@pytest.mark.parametrize(("source", "complaint"), [
    ("a*", "unbounded"), ("a+", "unbounded"), ("(ab)", "not supported"), ("a|b", "not supported"),
    ("a{0,99}", f"n <= {MAX_REPEAT}"), ("a{3,1}", "m <= n"), ("a{x}", "numbers"),
    ("[ab", "without ']'"), ("?a", "must follow"), ("\\q", "unknown escape"), ("a?", "empty"),
    ("[z-a]", "backwards"), ("a\\", "backslash at the end"),
])
def test_bad_patterns_are_named(source: str, complaint: str) -> None:
    with pytest.raises(PhraseError, match=re.escape(complaint)):
        PhraseSet.compile([Phrase(source, pattern=True)])


def test_too_long_a_phrase_is_refused() -> None:
    with pytest.raises(PhraseError, match="at most 256"):
        PhraseSet.compile([Phrase("[ab]{64}" * 5, pattern=True)])


def test_empty_literal_is_refused() -> None:
    with pytest.raises(PhraseError, match="empty"):
        PhraseSet.compile([Phrase("")])


def test_find_reports_the_first_match() -> None:
    ps = PhraseSet.compile([Phrase("gemini", ignore_case=True), Phrase("gpt")])
    assert ps.find("you are gpt and Gemini") == 1
    assert ps.find("nothing") is None


# hypothesis

ALPHABET = "abAB-"
atoms = st.sampled_from(["a", "b", "A", "-", "[ab]", "[^a]", ".", "\\-", "[a-b]"])
quantifiers = st.sampled_from(["", "", "?", "{2}", "{1,3}", "{0,2}"])
patterns = st.lists(st.tuples(atoms, quantifiers).map("".join), min_size=1, max_size=4).map(
    "".join)
phrase = st.one_of(
    st.builds(Phrase, st.text(ALPHABET, min_size=1, max_size=5), st.sampled_from(["", "X", "YY"]),
              st.booleans()),
    st.builds(Phrase, patterns, st.sampled_from(["", "Z"]), st.booleans(), st.just(True)),
)
phrase_sets = st.lists(phrase, min_size=1, max_size=5)


def compiled(phrases: list[Phrase]) -> PhraseSet:
    try:
        return PhraseSet.compile(phrases)
    except PhraseError:
        assume(False)
        raise


@st.composite
def split(draw: st.DrawFn, text: str) -> list[str]:
    cuts = sorted(draw(st.sets(st.integers(0, len(text)), max_size=len(text) + 1)))
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=300, deadline=None)
@given(phrase_sets, st.text(ALPHABET + "x", max_size=40))
def test_apply_is_leftmost_longest(phrases: list[Phrase], text: str) -> None:
    ps = compiled(phrases)
    assert ps.apply(text) == oracle(phrases, text)


@settings(max_examples=300, deadline=None)
@given(phrase_sets, st.text(ALPHABET + "x", max_size=60), st.data())
def test_any_split_gives_the_same_text_and_holds_little(
        phrases: list[Phrase], text: str, data: st.DataObject) -> None:
    ps = compiled(phrases)
    pieces = data.draw(split(text))
    out, most = streamed(ps, pieces)
    assert out == ps.apply(text)
    assert most <= ps.longest - 1


def test_pathological_near_matches_hold_at_most_longest_minus_one() -> None:
    ps = PhraseSet.compile([Phrase("a" * 40 + "b", "X"), Phrase("a{1,20}c", "Y", pattern=True)])
    text = "a" * 5000
    out, most = streamed(ps, list(text))
    assert out == text and most == ps.longest - 1


@settings(max_examples=100, deadline=None)
@given(phrase_sets, st.text(ALPHABET + "x", max_size=60), st.data())
def test_a_memo_that_keeps_starting_over_changes_nothing(
        phrases: list[Phrase], text: str, data: st.DataObject) -> None:
    from unittest import mock

    ps = compiled(phrases)
    with mock.patch("txrelay.protocol.phrases.MAX_STATES", 2), \
            mock.patch("txrelay.protocol.phrases.MAX_STEPS", 3):
        out, most = streamed(ps, data.draw(split(text)))
    assert out == oracle(phrases, text)
    assert most <= ps.longest - 1


def test_memo_stays_bounded_on_text_that_keeps_making_states() -> None:
    import random

    from txrelay.protocol import phrases as module

    ps = PhraseSet.compile([Phrase("[ab]{1,30}c", "X", pattern=True), Phrase("a" * 20, "Y")])
    text = "".join(random.Random(3).choices("aab", k=50_000))
    assert ps.apply(text) == text.replace("a" * 20, "Y")  # no 'c': only the literal matches
    assert len(ps._states) <= module.MAX_STATES and len(ps._steps) <= module.MAX_STEPS
