# -*- test-case-name: tests.ledger.test_prices -*-
"""
Prices per model, from the configuration's ``[[prices]]`` tables (shared by the ledger's
spend and any budget that counts money).

Each entry names a model by glob and gives USD per million tokens::

    [[prices]]
    model = "claude-sonnet-*"
    input = 3.0
    output = 15.0
    cache_read = 0.30        # default: input * 0.1
    cache_write = 3.75    # default: input * 1.25

A request is priced by the first entry whose glob matches, trying its configured model id,
then the upstream model it was served by, then the name the client asked for.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

#: Anthropic's ratios of cache reads and cache writes (5-minute) to the input price.
CACHE_READ_RATIO = 0.1
CACHE_WRITE_RATIO = 1.25


@attrs.frozen
class Price:
    """One ``[[prices]]`` entry: USD per million tokens for the models matching ``model``."""

    model: str
    input: float = 0.0
    output: float = 0.0
    cache_read: float | None = None
    cache_write: float | None = None

    def cost(self, usage: Mapping[str, Any]) -> float:
        """The USD cost of ``usage`` (Anthropic usage field names; missing counts are 0)."""
        return self._micro(usage) / 1_000_000

    def micro_cost(self, usage: Mapping[str, Any]) -> int:
        """The cost of ``usage`` in whole micro-dollars (µ$, rounded): integers a store can
        add atomically (the ``limits`` stage's spend budgets)."""
        return round(self._micro(usage))

    def _micro(self, usage: Mapping[str, Any]) -> float:
        # USD per million tokens x tokens is already µ$.
        cache_read = (self.input * CACHE_READ_RATIO if self.cache_read is None
                      else self.cache_read)
        cache_write = (self.input * CACHE_WRITE_RATIO if self.cache_write is None
                       else self.cache_write)
        return (tokens(usage, "input_tokens") * self.input
                + tokens(usage, "output_tokens") * self.output
                + tokens(usage, "cache_read_input_tokens") * cache_read
                + tokens(usage, "cache_creation_input_tokens") * cache_write)


def tokens(usage: Mapping[str, Any], field: str) -> int:
    """A token count of ``usage`` (0 when absent or not a count)."""
    value = usage.get(field)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


@attrs.frozen
class PriceTable:
    """The configured prices, looked up by model name."""

    prices: tuple[Price, ...] = ()

    def find(self, *names: str | None) -> Price | None:
        """The price of the first of ``names`` that an entry matches (entries in order)."""
        for name in names:
            if not name:
                continue
            for price in self.prices:
                if fnmatch.fnmatchcase(name, price.model):
                    return price
        return None

    def cost(self, usage: Mapping[str, Any] | None, *names: str | None) -> float | None:
        """The USD cost of ``usage`` for the first priced of ``names``; None if unpriced."""
        if not usage:
            return None
        price = self.find(*names)
        return None if price is None else price.cost(usage)


def price_problems(prices: Iterable[Price], where: str = "prices") -> list[str]:
    """Problems of the ``[[prices]]`` entries, each with its key path."""
    problems: list[str] = []
    seen: set[str] = set()
    for i, p in enumerate(prices):
        if not p.model:
            problems.append(f"{where}[{i}].model: must name a model or a glob")
        elif p.model in seen:
            problems.append(f"{where}[{i}].model: {p.model!r} is priced twice")
        seen.add(p.model)
        for field in ("input", "output", "cache_read", "cache_write"):
            value = getattr(p, field)
            if value is not None and not 0 <= value < 1_000_000:
                problems.append(f"{where}[{i}].{field}: must be a price in USD per million "
                                "tokens, at least 0")
    return problems
