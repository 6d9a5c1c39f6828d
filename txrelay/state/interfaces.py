# -*- test-case-name: tests.state.test_store_contract -*-
"""
The state store contract (issue 12.5).

Everything the fleet features share goes through these few operations. Each is atomic on
its own (a Redis implementation runs each as one Lua script or one command), so N relays
sharing one store enforce one limit. Keys are plain strings chosen by the callers
(``limits:rpm:alice:29451183``); an implementation adds its own namespace prefix.

Every method returns an awaitable. An implementation that cannot reach its server raises
:class:`StoreUnavailable` (never a client-library exception), so callers can choose between
failing open and failing closed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping

import attrs
from zope.interface import Attribute, Interface


class StoreUnavailable(Exception):
    """The store's server cannot be reached or did not answer in time."""


@attrs.frozen
class Counted:
    """
    The outcome of :meth:`IStateStore.increment`.

    :ivar allowed: whether the amount was added (always true without a ``limit``).
    :ivar value: the counter after the call (unchanged when refused).
    :ivar ttl: seconds until the counter expires (``None``: it does not expire).
    """

    allowed: bool
    value: int
    ttl: float | None


class IStateStore(Interface):
    """Atomic counters, expiring slots and small records shared by every relay."""

    name = Attribute("A short name for logs and metrics: ``memory``, ``redis``.")

    def increment(key: str, amount: int, ttl: float,
                  limit: int | None = None) -> Awaitable[Counted]:
        """
        Add ``amount`` (may be 0 or negative) to the counter ``key``, unless a ``limit`` is
        given and the result would exceed it. A counter that does not exist starts at 0 and
        expires ``ttl`` seconds after it was created (a later increment does not extend it),
        which makes ``key`` + a window number a fixed-window counter.
        """

    def get_count(key: str) -> Awaitable[int]:
        """The counter ``key`` (0 when absent or expired)."""

    def acquire(key: str, holder: str, limit: int, ttl: float) -> Awaitable[bool]:
        """
        Take a slot of the set ``key`` for ``holder`` if fewer than ``limit`` unexpired
        holders have one; a holder that already has one renews it (always allowed). A slot
        expires ``ttl`` seconds after it was taken or renewed, so a crashed relay's slots
        come back by themselves. Whether ``holder`` now holds a slot.
        """

    def release(key: str, holder: str) -> Awaitable[None]:
        """Give back ``holder``'s slot of ``key`` (nothing if it holds none)."""

    def holders(key: str) -> Awaitable[int]:
        """How many unexpired slots of ``key`` are taken."""

    def get(key: str) -> Awaitable[bytes | None]:
        """The value stored at ``key``, or ``None``."""

    def set(key: str, value: bytes, ttl: float | None = None) -> Awaitable[None]:
        """Store ``value`` at ``key``, expiring after ``ttl`` seconds (``None``: never)."""

    def delete(key: str) -> Awaitable[None]:
        """Remove ``key`` (a value, a counter, a slot set or a hash)."""

    def hash_set(key: str, field: str, value: bytes) -> Awaitable[None]:
        """Set ``field`` of the hash ``key`` (records that never expire: managed keys)."""

    def hash_delete(key: str, field: str) -> Awaitable[None]:
        """Remove ``field`` from the hash ``key``."""

    def hash_all(key: str) -> Awaitable[Mapping[str, bytes]]:
        """Every field of the hash ``key`` (empty when absent)."""

    def ping() -> Awaitable[None]:
        """Return when the store answers; raise :class:`StoreUnavailable` otherwise."""

    def close() -> Awaitable[None]:
        """Release connections and timers; the store is not used afterwards."""
