# -*- test-case-name: tests.protocol.test_phrases -*-
"""
Find and replace configured phrases in text that arrives in pieces (sans-IO).

A phrase is a literal (optionally case-insensitive) or a *bounded pattern*: literal
characters, character classes (``[a-z0-9]``, ``[^ ]``, ``.``, ``\\d``, ``\\s``, ``\\w``) and
the quantifiers ``?`` and ``{m}``/``{m,n}`` (``n`` at most :data:`MAX_REPEAT`); no ``*``,
``+``, groups, alternation or backreferences (list several phrases instead). Every phrase
therefore has a longest possible match, and the longest of the set is what a stream is ever
delayed by.

The whole phrase set is compiled into **one** automaton: a Thompson NFA over character
predicates (a chain of positions per phrase), run Pike-VM style with one thread per position
(the earliest start wins it) and a fresh scan of the held text after each replacement. A
scanner's state is the live positions with their ages plus the complete matches waiting for
a longer or an earlier one; ages are bounded by the longest match, so there are finitely
many states, and each step (state, character) → (state, what to release) is memoised: a DFA
built lazily, as RE2 does, with a bounded memo that starts over when full. A step costs one
dict lookup once seen and at most one move per automaton position the first time, never
backtracking: linear time on any input (a character is re-scanned only while held, after a
replacement, so at most ``longest`` times).

``pyahocorasick`` was considered: it covers only literals (no classes or bounded repetition,
and case folding would have to rewrite the text), and although its search iterator can
resume on the next chunk, it reports a match only where it ends and does not expose the live
partial matches, so neither what to hold back nor a leftmost-longest choice can be decided
from it.

Matching is leftmost-longest and non-overlapping: scanning left to right, at the first
position where any phrase matches the longest match wins (the first configured phrase on a
tie), is replaced, and scanning resumes after it. :class:`PhraseScanner` makes the same
decisions whatever the pieces the text arrives in, and holds back only the characters that
could still begin a match: at most ``longest match - 1`` of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import attrs

#: The largest ``n`` allowed in ``{m,n}``.
MAX_REPEAT = 64
#: The longest match a phrase may have (it bounds how long a stream may be held back).
MAX_PHRASE_LENGTH = 256

CharTest = Callable[[str], bool]
#: How many characters' start positions a phrase set remembers.
_FIRST_CACHE = 4096
#: Bounds on a phrase set's memo of DFA states and steps (a few MiB at most); past either
#: the memo starts over, so memory stays bounded and time linear on any input.
MAX_STATES = 4096
MAX_STATE_ITEMS = 65536
MAX_STEPS = 32768


class PhraseError(ValueError):
    """A phrase that cannot be compiled; the message says what is wrong and where."""


@attrs.frozen
class Phrase:
    """
    One phrase to find and what replaces it.

    :ivar text: the literal (or the pattern, with ``pattern=True``).
    :ivar replace: what a match becomes (``""`` removes it).
    :ivar ignore_case: match letters in either case.
    :ivar pattern: ``text`` is a bounded pattern (see the module docstring).
    """

    text: str
    replace: str = ""
    ignore_case: bool = False
    pattern: bool = False


@attrs.frozen
class _Atom:
    """One character test with its repetition bounds."""

    test: CharTest
    low: int
    high: int


def _cased(ch: str) -> frozenset[str]:
    return frozenset(c for c in (ch, ch.lower(), ch.upper(), ch.swapcase()) if len(c) == 1)


def _shorthand(ch: str) -> CharTest | None:
    if ch == "d":
        return str.isdigit
    if ch == "s":
        return str.isspace
    if ch == "w":
        return lambda c: c.isalnum() or c == "_"
    return None


def _set_test(chars: frozenset[str], ranges: tuple[tuple[str, str], ...],
              tests: tuple[CharTest, ...], negated: bool) -> CharTest:
    if not ranges and not tests and not negated:
        return chars.__contains__

    def test(c: str) -> bool:
        hit = c in chars or any(lo <= c <= hi for lo, hi in ranges) or any(t(c) for t in tests)
        return hit != negated

    return test


class _Parser:
    def __init__(self, source: str, ignore_case: bool) -> None:
        self.s = source
        self.i = 0
        self.ignore_case = ignore_case

    def fail(self, what: str) -> PhraseError:
        return PhraseError(f"pattern {self.s!r}, at offset {self.i}: {what}")

    def atoms(self) -> list[_Atom]:
        out: list[_Atom] = []
        while self.i < len(self.s):
            test = self.atom()
            low, high = self.quantifier()
            out.append(_Atom(test, low, high))
        return out

    def literal(self, ch: str) -> CharTest:
        chars = _cased(ch) if self.ignore_case else frozenset(ch)
        return chars.__contains__

    def atom(self) -> CharTest:
        ch = self.s[self.i]
        self.i += 1
        if ch == "\\":
            return self.escape(in_class=False)
        if ch == "[":
            return self.char_class()
        if ch == ".":
            return lambda c: c != "\n"
        if ch in "*+":
            raise self.fail(f"{ch!r} is unbounded; use {{m,n}} with n <= {MAX_REPEAT}")
        if ch in "?{}":
            raise self.fail(f"{ch!r} must follow a character or a class")
        if ch in "()|^$":
            raise self.fail(f"{ch!r} is not supported (no groups, alternation or anchors: "
                            "list several phrases instead; escape it with a backslash)")
        if ch == "]":
            raise self.fail("']' without '['")
        return self.literal(ch)

    def escape(self, *, in_class: bool) -> CharTest:
        if self.i >= len(self.s):
            raise self.fail("a backslash at the end")
        ch = self.s[self.i]
        self.i += 1
        short = _shorthand(ch)
        if short is not None:
            return short
        if ch.isalnum():
            raise self.fail(f"unknown escape \\{ch} (known: \\d, \\s, \\w)")
        return self.literal(ch) if not in_class else frozenset(ch).__contains__

    def char_class(self) -> CharTest:
        negated = self.s.startswith("^", self.i)
        if negated:
            self.i += 1
        chars: set[str] = set()
        ranges: list[tuple[str, str]] = []
        tests: list[CharTest] = []
        first = True
        while True:
            if self.i >= len(self.s):
                raise self.fail("'[' without ']'")
            ch = self.s[self.i]
            if ch == "]" and not first:
                self.i += 1
                break
            first = False
            self.i += 1
            if ch == "\\":
                if self.i >= len(self.s):
                    raise self.fail("a backslash at the end")
                esc = self.s[self.i]
                short = _shorthand(esc)
                if short is not None:
                    self.i += 1
                    tests.append(short)
                    continue
                if esc.isalnum():
                    raise self.fail(f"unknown escape \\{esc} (known: \\d, \\s, \\w)")
                self.i += 1
                ch = esc
            if (self.s.startswith("-", self.i) and self.i + 1 < len(self.s)
                    and self.s[self.i + 1] != "]"):
                hi = self.s[self.i + 1]
                self.i += 2
                if hi == "\\":
                    if self.i >= len(self.s):
                        raise self.fail("a backslash at the end")
                    hi = self.s[self.i]
                    self.i += 1
                if hi < ch:
                    raise self.fail(f"range {ch}-{hi} is backwards")
                ranges.append((ch, hi))
                if self.ignore_case:
                    ranges += [(ch.lower(), hi.lower()), (ch.upper(), hi.upper())]
                continue
            chars |= _cased(ch) if self.ignore_case else {ch}
        return _set_test(frozenset(chars), tuple(ranges), tuple(tests), negated)

    def quantifier(self) -> tuple[int, int]:
        if self.i >= len(self.s):
            return 1, 1
        ch = self.s[self.i]
        if ch == "?":
            self.i += 1
            return 0, 1
        if ch in "*+":
            raise self.fail(f"{ch!r} is unbounded; use {{m,n}} with n <= {MAX_REPEAT}")
        if ch != "{":
            return 1, 1
        end = self.s.find("}", self.i)
        if end < 0:
            raise self.fail("'{' without '}'")
        body = self.s[self.i + 1:end]
        low_s, comma, high_s = body.partition(",")
        if not low_s.isdigit() or (comma and not high_s.isdigit()):
            raise self.fail(f"{{{body}}} is not {{m}} or {{m,n}} with numbers m <= n")
        low, high = int(low_s), int(high_s) if comma else int(low_s)
        if low > high or high > MAX_REPEAT or high == 0:
            raise self.fail(f"{{{body}}} needs 0 <= m <= n, 1 <= n <= {MAX_REPEAT}")
        self.i = end + 1
        return low, high


def parse_phrase(phrase: Phrase) -> list[_Atom]:
    """The atoms of ``phrase``; raise :class:`PhraseError` for an empty or unbounded one."""
    if phrase.pattern:
        atoms = _Parser(phrase.text, phrase.ignore_case).atoms()
    else:
        parser = _Parser(phrase.text, phrase.ignore_case)
        atoms = [_Atom(parser.literal(c), 1, 1) for c in phrase.text]
    if not atoms or all(a.low == 0 for a in atoms):
        raise PhraseError(f"phrase {phrase.text!r} can match empty text")
    longest = sum(a.high for a in atoms)
    if longest > MAX_PHRASE_LENGTH:
        raise PhraseError(f"phrase {phrase.text!r} can match {longest} characters; "
                          f"at most {MAX_PHRASE_LENGTH} are allowed")
    return atoms


#: A scanner's state: the live partial matches ``(position, age)`` and the complete matches
#: waiting for a longer or an earlier one ``(start age, end age, phrase)``; an age counts
#: characters back from the scan point. Every state is finite, so the states form a DFA.
State = tuple[frozenset[tuple[int, int]], frozenset[tuple[int, int, int]]]
#: What one step does to the held text: ``(plain, matched, phrase)`` — release ``plain``
#: characters as they are, then replace the next ``matched`` with the phrase's replacement
#: (``phrase`` -1: nothing to replace).
Ops = tuple[tuple[int, int, int], ...]

_EMPTY: State = (frozenset(), frozenset())
_PLAIN: Ops = ((1, 0, -1),)


@attrs.frozen
class PhraseSet:
    """
    A compiled phrase set: one automaton for all phrases. Immutable to its users and shared;
    each text is scanned by its own :class:`PhraseScanner` (:meth:`scanner`).

    The NFA: positions are numbered across the whole set. ``tests[p]`` is the character test
    that moves position ``p`` to ``p + 1``; ``closure[p]`` are the positions reachable from
    ``p`` without consuming (optional repetitions skipped); ``accepts[p]`` is the index of
    the phrase a match ending at ``p`` belongs to, or -1. The scanner's steps over it are
    memoised as a lazily built DFA (bounded by :data:`MAX_STATES`, :data:`MAX_STATE_ITEMS`
    and :data:`MAX_STEPS`; past them the memo starts over).
    """

    phrases: tuple[Phrase, ...]
    tests: tuple[CharTest | None, ...]
    closure: tuple[tuple[int, ...], ...]
    accepts: tuple[int, ...]
    starts: tuple[int, ...]
    longest: int
    _first: dict[str, tuple[int, ...]] = attrs.field(factory=dict, eq=False, repr=False)
    _steps: dict[tuple[State, str], tuple[State | None, Ops]] = attrs.field(
        factory=dict, eq=False, repr=False)
    _states: dict[State, State] = attrs.field(factory=dict, eq=False, repr=False)
    #: Threads and waiting matches held by the memoised states, together.
    _items: list[int] = attrs.field(factory=lambda: [0], eq=False, repr=False)

    @classmethod
    def compile(cls, phrases: Iterable[Phrase]) -> PhraseSet:
        """Compile ``phrases`` (raise :class:`PhraseError` naming a bad one)."""
        phrases = tuple(phrases)
        tests: list[CharTest | None] = []
        skips: list[list[int]] = []
        accepts: list[int] = []
        entry: list[int] = []
        longest = 0
        for index, phrase in enumerate(phrases):
            atoms = parse_phrase(phrase)
            longest = max(longest, sum(a.high for a in atoms))
            entry.append(len(tests))
            for atom in atoms:
                first = len(tests)
                for k in range(atom.high):
                    tests.append(atom.test)
                    skips.append([])
                    accepts.append(-1)
                    if k >= atom.low:  # an optional copy: may be skipped to the atom's end
                        skips[first + k].append(first + atom.high)
            tests.append(None)  # the accepting position
            skips.append([])
            accepts.append(index)
        closure: list[tuple[int, ...]] = []
        for p in range(len(tests)):
            seen = [p]
            todo = [p]
            while todo:
                for q in skips[todo.pop()]:
                    if q not in seen:
                        seen.append(q)
                        todo.append(q)
            closure.append(tuple(sorted(seen)))
        starts = tuple(sorted({q for e in entry for q in closure[e]}))
        return cls(phrases, tuple(tests), tuple(closure), tuple(accepts), starts, longest)

    def starting(self, ch: str) -> tuple[int, ...]:
        """The start positions whose first test accepts ``ch`` (memoised per character)."""
        cache = self._first
        found = cache.get(ch)
        if found is None:
            tests = self.tests
            found = tuple(p for p in self.starts if tests[p] is not None
                          and tests[p](ch))  # type: ignore[misc]
            if len(cache) < _FIRST_CACHE:
                cache[ch] = found
        return found

    def step(self, state: State, ch: str) -> tuple[State | None, Ops]:
        """
        The state after ``ch`` and what to do with the held text (memoised). A ``None``
        state means a match was replaced: the text held after it is to be scanned afresh
        (matches do not overlap, and scanning resumes after a replaced one).
        """
        key = (state, ch)
        found = self._steps.get(key)
        if found is not None:
            return found
        tests, closure, accepts = self.tests, self.closure, self.accepts
        threads, waiting = state
        # One thread per position, the earliest start winning: a later start there can
        # only ever match where the earlier one does, and loses to it (leftmost), unless a
        # replacement cuts the earlier one off, and then the rest is scanned afresh anyway.
        moved: dict[int, int] = {}
        for p, age in threads:
            if tests[p](ch):  # type: ignore[misc]  # live positions always have a test
                for q in closure[p + 1]:
                    if moved.get(q, 0) <= age:
                        moved[q] = age + 1
        for p in self.starting(ch):
            for q in closure[p + 1]:
                moved.setdefault(q, 1)
        ends = {age + 1: (end + 1, phrase) for age, end, phrase in waiting}
        live: dict[int, int] = {}
        for q, age in moved.items():
            phrase = accepts[q]
            if phrase < 0:
                live[q] = age
                continue
            best = ends.get(age)  # a match ending here (end age 0): longer than any before
            if best is None or best[0] > 0 or phrase < best[1]:
                ends[age] = (0, phrase)
        held = 1 + max(max((a for _, a in threads), default=0),
                       max((a for a, _, _ in waiting), default=0))
        if (len(self._steps) >= MAX_STEPS or len(self._states) >= MAX_STATES
                or self._items[0] >= MAX_STATE_ITEMS):
            self._steps.clear()
            self._states.clear()
            self._items[0] = 0
        result = self._settle(held, live, ends)
        self._steps[key] = result
        return result

    def final(self, state: State) -> tuple[State | None, Ops]:
        """What to do with the held text when the text ends in ``state`` (as :meth:`step`)."""
        threads, waiting = state
        held = max([a for _, a in threads] + [a for a, _, _ in waiting], default=0)
        return self._settle(held, {}, {a: (e, p) for a, e, p in waiting})

    def _settle(self, held: int, live: dict[int, int],
                ends: dict[int, tuple[int, int]]) -> tuple[State | None, Ops]:
        """Release what no live partial match can change any more (ages: larger = earlier)."""
        earliest_live = max(live.values(), default=0)
        if ends:
            age = max(ends)
            if age > earliest_live:  # nothing live starts at or before it: it wins
                end, phrase = ends[age]
                return None, ((held - age, age - end, phrase),)
        ops: Ops = ((held - earliest_live, 0, -1),) if held > earliest_live else ()
        state: State = (frozenset(live.items()),
                        frozenset((a, e, p) for a, (e, p) in ends.items()))
        known = self._states.get(state)
        if known is None:
            self._states[state] = known = state
            self._items[0] += len(state[0]) + len(state[1])
        return known, ops

    def scanner(self) -> PhraseScanner:
        """A scanner for one text (one content block)."""
        return PhraseScanner(self)

    def apply(self, text: str) -> str:
        """``text`` with every match replaced (what a stream of it becomes)."""
        scanner = self.scanner()
        return scanner.feed(text) + scanner.finish()

    def find(self, text: str) -> int | None:
        """The index of the phrase of the first match in ``text``, or ``None``."""
        scanner = self.scanner()
        scanner.feed(text)
        scanner.finish()
        return scanner.found[0] if scanner.found else None


@attrs.define(eq=False)
class PhraseScanner:
    """
    Replaces a :class:`PhraseSet`'s phrases in one text fed in pieces.

    :meth:`feed` returns the text that is settled; :meth:`finish` (the text is over) returns
    the rest. :attr:`held` is what is held back: never more than ``longest - 1`` characters.
    """

    phrases: PhraseSet
    #: Text received but not yet returned (it could begin a match).
    _buffer: str = ""
    _state: State = _EMPTY
    #: The phrase index of every match replaced so far, in order.
    found: list[int] = attrs.Factory(list)

    @property
    def held(self) -> int:
        """How many characters are held back now."""
        return len(self._buffer)

    def feed(self, text: str) -> str:
        """Scan ``text``; return what can be sent now (matches already replaced)."""
        out: list[str] = []
        self._scan(text, out)
        return "".join(out)

    def finish(self) -> str:
        """The text is over: return everything held (matches replaced); reset for reuse."""
        out: list[str] = []
        while True:
            state, ops = self.phrases.final(self._state)
            rest = self._apply(ops, self._buffer, out)
            self._state, self._buffer = _EMPTY, ""
            if state is not None:
                return "".join(out)
            self._scan(rest, out)  # what followed a replaced match, afresh

    def _scan(self, text: str, out: list[str]) -> None:
        ps = self.phrases
        starting, step = ps.starting, ps.step
        state, buffer = self._state, self._buffer
        todo = [(text, 0)]  # (text, offset): a stack, so rescans need no recursion
        while todo:
            chars, i = todo.pop()
            n = len(chars)
            while i < n:
                ch = chars[i]
                i += 1
                if state is _EMPTY and not starting(ch):
                    out.append(ch)  # nothing pending and nothing starts here: settled
                    continue
                new, ops = step(state, ch)
                buffer += ch
                if ops:
                    buffer = self._apply(ops, buffer, out)
                if new is None:  # a match was replaced: scan what followed it afresh
                    todo.append((chars, i))
                    todo.append((buffer, 0))
                    state, buffer = _EMPTY, ""
                    break
                state = new if new[0] or new[1] else _EMPTY
        self._state, self._buffer = state, buffer

    def _apply(self, ops: Ops, buffer: str, out: list[str]) -> str:
        replacements = self.phrases.phrases
        for plain, matched, phrase in ops:
            if plain:
                out.append(buffer[:plain])
            if phrase >= 0:
                out.append(replacements[phrase].replace)
                self.found.append(phrase)
            buffer = buffer[plain + matched:]
        return buffer


def compile_phrases(phrases: Sequence[Phrase]) -> PhraseSet | None:
    """``PhraseSet.compile(phrases)``, or ``None`` for no phrases."""
    return PhraseSet.compile(phrases) if phrases else None
