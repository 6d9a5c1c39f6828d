"""
Throughput of the identity-guard phrase filter (``txrelay.protocol.phrases``) on ordinary
and pathological text, fed in small pieces as a stream would be.

``.venv/bin/python bench/phrases.py [--chars N]`` prints characters per second for each
input at two sizes, on an automaton warmed up on the input first (its DFA states are built
lazily and memoised), and cold (a fresh automaton). Linear time shows as the same rate at
both sizes: a quadratic or backtracking matcher would slow down by the size ratio on the
near-miss inputs. The random input keeps creating new DFA states, so it runs at about the
speed of the uncached NFA steps. Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from txrelay.protocol.phrases import Phrase, PhraseSet

PHRASES = [
    Phrase("DeepSeek", "the assistant", ignore_case=True),
    Phrase("deepseek-ai", "", ignore_case=True),
    Phrase("Qwen", "the assistant"),
    Phrase(r"GPT-[345]\.?5?", "a model", pattern=True),
    Phrase(r"[Vv]\d{1,2}\.?\d?", "", pattern=True),
    # near-miss bait: a long literal and a bounded pattern sharing a long run of one letter
    Phrase("a" * 63 + "b", "X"),
    Phrase(r"a{1,64}c", "Y", pattern=True),
]

#: Broad classes with long repetitions keep many partial matches alive on ordinary text: the
#: costly kind of phrase set (cost per character grows with the live partial matches).
BROAD = [
    Phrase(r"[a-z]{1,32} model [a-z0-9]{1,16}", "", pattern=True),
    Phrase(r"[ab]{1,64}[ab]{0,64}c", "", pattern=True),
    Phrase(r"a[ab]{0,60}b{3}c", "", pattern=True),  # on random a/b: a new DFA state per char
]

PROSE = ("The quick brown fox answers questions about Python, Twisted and streaming APIs; "
         "it was built by a team and runs on a server. ")


def inputs(n: int) -> dict[str, Callable[[], str]]:
    return {
        "prose, no matches": lambda: (PROSE * (n // len(PROSE) + 1))[:n],
        "prose, a match per 100 chars": lambda: (
            (PROSE[:88] + "I am DeepSeek") * (n // 101 + 1))[:n],
        "near misses: 'a' * n (every char starts two phrases)": lambda: "a" * n,
        "near misses: 'a'*63 + 'x', repeated": lambda: (("a" * 63 + "x") * (n // 64 + 1))[:n],
        "near misses: 'DeepSee' + 'x', repeated": lambda: (
            ("DeepSeex" * (n // 8 + 1))[:n]),
        "random over the phrases' letters": lambda: "".join(
            random.Random(7).choices("aaaaabcDeEpPsSkGT-34V1.", k=n)),
        "random a/b": lambda: "".join(random.Random(7).choices("ab", k=n)),
    }


def run(ps: PhraseSet, text: str, piece: int) -> tuple[float, int]:
    scanner = ps.scanner()
    most = 0
    start = time.perf_counter()
    for i in range(0, len(text), piece):
        scanner.feed(text[i:i + piece])
        most = max(most, scanner.held)
    scanner.finish()
    return time.perf_counter() - start, most


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chars", type=int, default=200_000, help="the larger input size")
    parser.add_argument("--piece", type=int, default=7, help="characters per delta")
    args = parser.parse_args()
    sizes = (args.chars // 10, args.chars)
    print(f"deltas of {args.piece} chars; rates on a warmed-up automaton at two sizes, and cold")
    print(f"{'input':52} " + " ".join(f"{f'warm, {s:,} chars':>19}" for s in sizes)
          + f" {'cold, ' + format(sizes[1], ',') + ' chars':>19}  max held")
    for phrases, label, scale in ((PHRASES, "identity phrases", 1),
                                  (BROAD, "broad classes, inputs a tenth as long", 10)):
        ps = PhraseSet.compile(phrases)
        print(f"\n{label}: {len(phrases)} phrases, {len(ps.tests)} automaton positions, "
              f"longest match {ps.longest} (most a stream is held: {ps.longest - 1})")
        sizes = (args.chars // 10 // scale, args.chars // scale)
        for name, make in inputs(args.chars).items():
            if phrases is BROAD and not name.startswith(("prose", "random")):
                continue
            text = make()[:sizes[1]]
            warm = PhraseSet.compile(phrases)
            run(warm, text[:sizes[0]], args.piece)
            rates, most = [], 0
            for size in sizes:
                seconds, held = run(warm, text[:size], args.piece)
                most = max(most, held)
                rates.append(size / seconds)
            seconds, _ = run(PhraseSet.compile(phrases), text, args.piece)
            rates.append(len(text) / seconds)
            print(f"{name:52} " + " ".join(f"{r / 1e6:11.4f} Mchar/s" for r in rates)
                  + f"  {most:8}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
