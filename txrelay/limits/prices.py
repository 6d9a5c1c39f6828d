# -*- test-case-name: tests.stages.test_limits_pure -*-
"""
Model prices and what a request's usage cost, in whole micro-dollars (µ$).

Prices are US dollars per million tokens, so ``tokens x price`` is already µ$; counting in
integers lets the store add spend atomically. When a model's cache prices are not given
they follow Anthropic's ratios: a cache read costs 0.1 x input, a cache write 1.25 x input.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

CACHE_READ_RATIO = 0.1
CACHE_WRITE_RATIO = 1.25


@attrs.frozen
class ModelPrice:
    """Dollars per million tokens for the models whose name matches ``model`` (a glob)."""

    model: str
    input: float = 0.0
    output: float = 0.0
    cache_read: float | None = None
    cache_write: float | None = None

    def cost(self, usage: Mapping[str, Any]) -> int:
        """What ``usage`` (an Anthropic ``usage`` object) cost, in µ$ (rounded)."""
        read = self.input * CACHE_READ_RATIO if self.cache_read is None else self.cache_read
        write = self.input * CACHE_WRITE_RATIO if self.cache_write is None else self.cache_write
        total = (tokens(usage, "input_tokens") * self.input
                 + tokens(usage, "output_tokens") * self.output
                 + tokens(usage, "cache_read_input_tokens") * read
                 + tokens(usage, "cache_creation_input_tokens") * write)
        return round(total)


def tokens(usage: Mapping[str, Any], field: str) -> int:
    """A token count of ``usage`` (0 when absent or not a count)."""
    value = usage.get(field)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def total_tokens(usage: Mapping[str, Any]) -> int:
    """Every token ``usage`` counts: input, cache reads and writes, and output."""
    return sum(tokens(usage, f) for f in ("input_tokens", "output_tokens",
                                           "cache_read_input_tokens",
                                           "cache_creation_input_tokens"))


def window_input_tokens(usage: Mapping[str, Any]) -> int:
    """
    The input tokens an input-tokens-per-minute limit counts: fresh input and cache writes;
    cache reads are not counted, as with Anthropic's own limits.
    """
    return tokens(usage, "input_tokens") + tokens(usage, "cache_creation_input_tokens")


@attrs.frozen
class PriceTable:
    """Prices in the order given: the first whose glob matches a name wins."""

    prices: tuple[ModelPrice, ...] = ()

    def find(self, names: Iterable[str | None]) -> ModelPrice | None:
        """The price of the first of ``names`` (requested name, model id…) that has one."""
        for name in names:
            if not name:
                continue
            for price in self.prices:
                if fnmatch.fnmatchcase(name, price.model):
                    return price
        return None


def dollars(micro: int) -> str:
    """µ$ as a dollar amount for messages: ``$12.35``, ``$0.0005`` below a cent."""
    amount = micro / 1_000_000
    return f"${amount:,.2f}" if amount >= 0.01 or amount == 0 else f"${amount:.6f}".rstrip("0")
