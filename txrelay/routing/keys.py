# -*- test-case-name: tests.routing.test_keys -*-
"""
Upstream key pools: a provider's ``api_keys``, one of which each attempt uses.

The router picks a key per attempt (:meth:`KeyPool.choose`, sans-IO over the cooling times
the state store keeps) and makes it current with :func:`using_key` while it calls the
backend; the backends' credential hooks send :meth:`KeyPool.current`. A key the upstream
rate-limited (429) cools down for its ``retry-after`` while the others serve.

Only key *names* are ever logged or used as metric labels.
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

#: How long a key cools after a 429 that gave no ``retry-after``.
DEFAULT_COOLDOWN = 5.0
#: The longest cool-down a ``retry-after`` can ask for.
MAX_COOLDOWN = 3600.0

#: (provider, key name) of the attempt running in this context.
_current: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "txrelay_upstream_key", default=None)


@attrs.frozen
class PoolKey:
    """One upstream key: its name (for logs and metrics) and its value (never logged)."""

    name: str
    value: str = attrs.field(repr=False)


@attrs.frozen
class KeyPool:
    """The keys of one provider."""

    provider: str
    keys: tuple[PoolKey, ...]

    @classmethod
    def of(cls, provider: Any) -> KeyPool | None:
        """The pool of a :class:`~txrelay.config.ProviderConfig` with ``api_keys``, else
        ``None``."""
        names = provider.api_key_names()
        if not names:
            return None
        return cls(provider.name, tuple(PoolKey(n, s.value)
                                        for n, s in zip(names, provider.api_keys,
                                                        strict=True)))

    @property
    def names(self) -> tuple[str, ...]:
        """The key names, in configuration order."""
        return tuple(k.name for k in self.keys)

    def current(self) -> str:
        """The value of the key the running attempt uses (the first key outside one)."""
        chosen = _current.get()
        if chosen is not None and chosen[0] == self.provider:
            for k in self.keys:
                if k.name == chosen[1]:
                    return k.value
        return self.keys[0].value if self.keys else ""

    def choose(self, cooling: Mapping[str, float], now: float, rand: Callable[[], float],
               preferred: str | None = None, exclude: Sequence[str] = ()) -> str | None:
        """
        The name of a key to use at ``now``: ``preferred`` (affinity) when it is not
        cooling, else one of the others drawn at random; ``None`` when every key cools.
        """
        ready = [k.name for k in self.keys
                 if cooling.get(k.name, 0.0) <= now and k.name not in exclude]
        if not ready:
            return None
        if preferred in ready:
            return preferred
        return ready[min(int(rand() * len(ready)), len(ready) - 1)]

    def soonest(self, cooling: Mapping[str, float], now: float) -> float:
        """Seconds until the first cooling key is usable again (0 when one is already)."""
        return max(0.0, min((cooling.get(k.name, 0.0) for k in self.keys), default=0.0) - now)


def cooldown_for(retry_after: float | None) -> float:
    """How long a rate-limited key cools: its ``retry-after``, bounded."""
    if retry_after is None:
        return DEFAULT_COOLDOWN
    return min(max(retry_after, 0.0), MAX_COOLDOWN)


def decode_cooling(raw: Mapping[str, bytes]) -> dict[str, float]:
    """Key name → cooling-until (wall clock), from the store's hash; bad fields dropped."""
    out: dict[str, float] = {}
    for name, value in raw.items():
        try:
            out[name] = float(json.loads(value)["until"])
        except (ValueError, TypeError, KeyError):
            continue
    return out


def encode_cooling(until: float) -> bytes:
    """A cooling-until field as the store keeps it."""
    return json.dumps({"until": until}).encode()


class using_key:
    """Make ``provider``'s key ``name`` current for the backend call inside the block."""

    # A class rather than @contextmanager: entered on every upstream attempt, and a
    # generator-based manager costs three extra calls each time.

    __slots__ = ("_token", "_value")

    def __init__(self, provider: str, name: str | None) -> None:
        self._value = (provider, name) if name is not None else None

    def __enter__(self) -> None:
        self._token = _current.set(self._value)

    def __exit__(self, *exc: object) -> None:
        _current.reset(self._token)
