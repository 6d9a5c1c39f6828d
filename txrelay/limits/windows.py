# -*- test-case-name: tests.stages.test_limits_pure -*-
"""
Per-minute limits as sliding windows built from two fixed-window counters.

A fixed window (one counter per minute) lets twice the limit through around a minute
boundary. Weighting the previous window's count by how much of it still overlaps the last
``length`` seconds smooths that out, and needs only what every store does atomically: a
counter per window number (``increment`` with a ``limit``). The counter of the current
window may take ``capacity()`` more; the previous window's counter no longer grows, so N
relays that read it and increment the current one with that limit enforce one limit.

It is an approximation that takes the previous minute's count as spread evenly: no calendar
minute ever holds more than the limit, and the long-run rate is the limit, but a burst at the
end of one minute followed by one at the start of the next can put more than the limit (never
twice it) into some 60 seconds.
"""

from __future__ import annotations

import math

import attrs


@attrs.frozen
class Window:
    """Where ``now`` falls among windows of ``length`` seconds (counted from the epoch)."""

    index: int
    #: Seconds since the current window began.
    elapsed: float
    length: float

    @classmethod
    def at(cls, now: float, length: float) -> Window:
        """The window holding ``now``."""
        index = math.floor(now / length)
        return cls(index, now - index * length, length)

    @property
    def start(self) -> float:
        """When this window began (epoch seconds)."""
        return self.index * self.length

    @property
    def prev_weight(self) -> float:
        """The share of the previous window still inside the last ``length`` seconds."""
        return max(0.0, 1.0 - self.elapsed / self.length)


def carried(prev: int, window: Window) -> int:
    """The part of the previous window's count still counted now (rounded up)."""
    if prev <= 0:
        return 0
    # The epsilon keeps an exact product (3 * 0.5 = 1.5000000000000002) from rounding up.
    return math.ceil(prev * window.prev_weight - 1e-9)


def capacity(limit: int, prev: int, window: Window) -> int:
    """How much the current window's counter may hold now (never negative)."""
    return max(0, limit - carried(prev, window))


def remaining(limit: int, prev: int, cur: int, window: Window) -> int:
    """What is left of ``limit`` now, with ``cur`` in the current window."""
    return max(0, capacity(limit, prev, window) - cur)


def wait_for(limit: int, prev: int, cur: int, amount: int, window: Window) -> float | None:
    """
    Seconds until ``amount`` (at least 1) more would fit, if nothing else is counted
    meanwhile; ``None`` when it never fits (``amount`` is larger than ``limit``).
    """
    amount = max(1, amount)
    if amount > limit:
        return None
    length, elapsed = window.length, window.elapsed
    room = limit - cur - amount
    if room >= 0:
        # Fits once the previous window's weighted count has decayed to ``room``.
        if prev <= room:
            return 0.0
        return max(0.0, length * (1.0 - room / prev) - elapsed)
    # Not in this window: the current count becomes the previous one and decays.
    later = length * (1.0 - (limit - amount) / cur) if cur > 0 else 0.0
    return (length - elapsed) + max(0.0, later)


def replenished_at(prev: int, cur: int, window: Window) -> float:
    """When nothing counted so far counts any more (the ``-reset`` header's moment)."""
    if cur > 0:
        return window.start + 2 * window.length
    if prev > 0:
        return window.start + window.length
    return window.start + window.elapsed
