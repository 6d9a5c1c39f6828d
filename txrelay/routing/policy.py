# -*- test-case-name: tests.routing.test_policy -*-
"""
Which target to try next, whether a failure is worth another attempt, and how long to wait
before it. Pure functions: randomness and time come in as arguments.
"""

from __future__ import annotations

import email.utils
import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import attrs

from txrelay.protocol.errors import RelayError


@attrs.frozen
class Target:
    """One place a model is served: a provider and the model id it is asked for."""

    #: The bounded name breakers, metrics and logs use (``provider/model`` by default).
    name: str
    provider: str
    upstream_model: str
    #: Lower is tried first; targets of equal priority share the load by ``weight``.
    priority: int = 0
    weight: float = 1.0


def is_retryable(error: RelayError) -> bool:
    """
    Whether ``error`` (raised before the client's response was committed) may be retried
    on another target or key: connection failures, 429, 5xx, overload and timeouts. A
    request the upstream refused as invalid (4xx other than 408/429) is not.
    """
    return error.status in (408, 429) or error.status >= 500


def counts_against_target(error: RelayError) -> bool:
    """Whether ``error`` is a sign of an unhealthy target (a breaker failure): not a 429,
    which is a key's rate limit and cools that key instead."""
    return is_retryable(error) and error.status != 429 and error.type != "rate_limit_error"


def header(headers: Iterable[tuple[str, str]] | Mapping[str, str], name: str) -> str | None:
    """The value of header ``name`` (case-insensitive) in a header list or mapping."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    for key, value in items:
        if key.lower() == name:
            return value
    return None


def parse_retry_after(value: str | None, now: float) -> float | None:
    """
    Seconds to wait from a ``retry-after`` value: delay-seconds (fractions accepted) or an
    HTTP date (relative to ``now``, wall-clock). ``None`` when absent or unreadable; never
    negative.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:  # pragma: no cover - older Pythons returned None
            return None
        seconds = when.timestamp() - now
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


def retry_after_of(error: RelayError, now: float) -> float | None:
    """The wait ``error`` asks for: ``retry-after-ms`` (OpenAI's), else ``retry-after``."""
    millis = header(error.headers, "retry-after-ms")
    if millis is not None:
        parsed = parse_retry_after(millis, now)
        if parsed is not None:
            return parsed / 1000
    return parse_retry_after(header(error.headers, "retry-after"), now)


@attrs.frozen
class Backoff:
    """Exponential backoff with full jitter: attempt ``n`` waits up to ``base * 2**(n-1)``."""

    base: float = 0.25
    cap: float = 4.0

    def delay(self, retry: int, rand: Callable[[], float]) -> float:
        """The wait before retry number ``retry`` (1 for the first retry)."""
        ceiling = min(self.cap, self.base * 2.0 ** max(0, retry - 1))
        return ceiling * rand()


def order_targets(targets: Sequence[Target], rand: Callable[[], float],
                  preferred: str | None = None) -> list[Target]:
    """
    The order to try ``targets`` in: by priority, each priority's targets in a random
    order weighted by ``weight`` (a weighted draw without replacement), the ``preferred``
    one (cache affinity) first when it is among them.
    """
    if len(targets) == 1:  # the usual route: the same single draw, no sort
        rand()
        return [targets[0]]

    def draw(t: Target) -> float:
        # Efraimidis-Spirakis: sorting by u ** (1 / w) draws without replacement by weight.
        u = min(max(rand(), 1e-12), 1.0)
        return -(u ** (1.0 / t.weight)) if t.weight > 0 else 0.0

    keyed = sorted(((t.priority, draw(t), i, t) for i, t in enumerate(targets)),
                   key=lambda k: (k[0], k[1], k[2]))
    order = [k[3] for k in keyed]
    if preferred is not None:
        for i, t in enumerate(order):
            if t.name == preferred:
                order.insert(0, order.pop(i))
                break
    return order


@attrs.frozen
class RetryPolicy:
    """How hard one request tries before it answers with the last error."""

    #: Upstream attempts at most (targets and retries of one target together).
    attempts: int = 1
    backoff: Backoff = Backoff()
    #: A ``retry-after`` longer than this is not waited for: another target is tried, or
    #: the client gets the error with the upstream's ``retry-after``.
    max_retry_after: float = 30.0


def next_wait(policy: RetryPolicy, retry: int, same_target: bool, retry_after: float | None,
              rand: Callable[[], float]) -> float | None:
    """
    The wait before retry number ``retry``: none when moving to a target not tried yet;
    else the jittered backoff, or the upstream's ``retry-after`` when that is longer.
    ``None``: the ``retry-after`` is past ``max_retry_after``, so do not retry that target.
    """
    if not same_target:
        return 0.0
    wait = policy.backoff.delay(retry, rand)
    if retry_after is not None:
        if retry_after > policy.max_retry_after:
            return None
        wait = max(wait, retry_after)
    return wait


@attrs.frozen
class Attempt:
    """One upstream attempt of a request: where it went and how it ended."""

    target: str
    #: The pool key's name, when the provider has a pool.
    key: str | None
    #: ``served``, or the Anthropic error type it failed with, or ``skipped`` (the request
    #: was not fit for the target's capabilities).
    outcome: str
