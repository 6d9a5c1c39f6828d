# -*- test-case-name: tests.stages.test_limits_pure -*-
"""
The ``anthropic-ratelimit-*`` response headers (anthropic-messages.md §2.2).

For each of ``requests``, ``input-tokens`` and ``output-tokens``: ``-limit``, ``-remaining``
and ``-reset`` (RFC 3339: when the limit is fully replenished). When a key's own limit and
its groups' limits both apply, the headers show the one with the least left. ``tokens-*``
is the more restrictive of the input and output token limits, as Anthropic reports it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

import attrs

from txrelay.limits.periods import rfc3339

Dimension = Literal["requests", "input-tokens", "output-tokens"]
DIMENSIONS: tuple[Dimension, ...] = ("requests", "input-tokens", "output-tokens")


@attrs.frozen
class Reading:
    """One limit's state after a request was counted (or refused)."""

    dimension: Dimension
    limit: int
    remaining: int
    #: When it is fully replenished (epoch seconds).
    reset: float


def tightest(readings: Iterable[Reading]) -> Reading | None:
    """The reading with the least left (the smaller limit on a tie)."""
    return min(readings, key=lambda r: (r.remaining, r.limit), default=None)


def ratelimit_headers(readings: Iterable[Reading]) -> list[tuple[str, str]]:
    """The ``anthropic-ratelimit-*`` headers for ``readings`` (none for no readings)."""
    by_dimension: dict[str, list[Reading]] = {}
    for r in readings:
        by_dimension.setdefault(r.dimension, []).append(r)
    out: list[tuple[str, str]] = []
    chosen: dict[str, Reading] = {}
    for dimension in DIMENSIONS:
        best = tightest(by_dimension.get(dimension, ()))
        if best is not None:
            chosen[dimension] = best
            out += _triple(dimension, best)
    tokens = tightest(r for d, r in chosen.items() if d != "requests")
    if tokens is not None:
        out += _triple("tokens", tokens)
    return out


def _triple(name: str, r: Reading) -> list[tuple[str, str]]:
    prefix = f"anthropic-ratelimit-{name}"
    return [(f"{prefix}-limit", str(r.limit)), (f"{prefix}-remaining", str(r.remaining)),
            (f"{prefix}-reset", rfc3339(r.reset))]


def retry_after(seconds: float) -> str:
    """A ``retry-after`` value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds - 1e-9)))
