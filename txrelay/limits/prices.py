# -*- test-case-name: tests.stages.test_limits_pure -*-
"""
Token counts and money for the budgets. Prices are the ledger's ``[[prices]]`` entries
(:mod:`txrelay.ledger.prices`), spent in whole micro-dollars (µ$,
:meth:`~txrelay.ledger.prices.Price.micro_cost`) so the store adds spend atomically.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# One price model for the ledger's spend and the budgets: the ``[[prices]]`` entries.
from txrelay.ledger.prices import Price as ModelPrice
from txrelay.ledger.prices import PriceTable, tokens

__all__ = ["ModelPrice", "PriceTable", "dollars", "tokens", "total_tokens",
           "window_input_tokens"]


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


def dollars(micro: int) -> str:
    """µ$ as a dollar amount for messages: ``$12.35``, ``$0.0005`` below a cent."""
    amount = micro / 1_000_000
    return f"${amount:,.2f}" if amount >= 0.01 or amount == 0 else f"${amount:.6f}".rstrip("0")
