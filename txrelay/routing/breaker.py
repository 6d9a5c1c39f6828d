# -*- test-case-name: tests.routing.test_breaker -*-
"""
The circuit breaker of one target, as a pure state machine over a small record.

``closed`` (no record): requests flow; failures are counted in fixed windows, and
``failures`` of them within one window open the breaker. ``open`` (``now < until``):
requests skip the target. ``half_open`` (``now >= until``): one probe request is let
through (the caller takes the one probe slot); its success closes the breaker, its failure
opens it again for another ``cooldown``.

The record is what the state store keeps (JSON), so every relay of a fleet sees one breaker.
"""

from __future__ import annotations

import json
from typing import Literal

import attrs

State = Literal["closed", "open", "half_open"]


@attrs.frozen
class BreakerPolicy:
    """When a target's breaker opens and how long it stays open."""

    enabled: bool = True
    #: Failures within one ``window`` that open the breaker.
    failures: int = 5
    window: float = 30.0
    #: Seconds an open breaker waits before it lets one probe through.
    cooldown: float = 30.0


@attrs.frozen
class BreakerRecord:
    """An opened breaker: since when, and until when no request is sent."""

    opened_at: float
    until: float
    #: How many times in a row it opened (a failed probe opens it again).
    trips: int = 1

    def encode(self) -> bytes:
        """The record as the store keeps it."""
        return json.dumps({"opened_at": self.opened_at, "until": self.until,
                           "trips": self.trips}).encode()

    @classmethod
    def decode(cls, raw: bytes) -> BreakerRecord | None:
        """The record in ``raw``, or ``None`` when it is not one (treated as closed)."""
        try:
            data = json.loads(raw)
            return cls(float(data["opened_at"]), float(data["until"]),
                       int(data.get("trips", 1)))
        except (ValueError, TypeError, KeyError):
            return None


def state_of(record: BreakerRecord | None, now: float) -> State:
    """The breaker's state at ``now``."""
    if record is None:
        return "closed"
    return "open" if now < record.until else "half_open"


def window_of(now: float, policy: BreakerPolicy) -> int:
    """The number of the failure-counting window ``now`` falls in."""
    return int(now // policy.window)


def should_open(failures_in_window: int, policy: BreakerPolicy) -> bool:
    """Whether a closed breaker opens after this many failures in the current window."""
    return policy.enabled and failures_in_window >= policy.failures


def opened(now: float, policy: BreakerPolicy, previous: BreakerRecord | None = None
           ) -> BreakerRecord:
    """The record of a breaker opening at ``now`` (again, after a failed probe)."""
    trips = previous.trips + 1 if previous is not None else 1
    return BreakerRecord(now, now + policy.cooldown, trips)
