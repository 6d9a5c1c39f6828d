# -*- test-case-name: tests.state.test_store_contract -*-
"""The in-process :class:`~txrelay.state.interfaces.IStateStore`: one relay's own state."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import attrs
from zope.interface import implementer

from txrelay.state.interfaces import Counted, IStateStore


@implementer(IStateStore)
@attrs.define(eq=False)
class MemoryStore:
    """
    State kept in this process's dictionaries. Expired entries are dropped when touched and
    by an occasional sweep, so memory stays bounded by what is live.

    :ivar clock: seconds, wall-clock (``time.time``) by default; tests pass a fake.
    """

    clock: Callable[[], float] = time.time
    name: str = "memory"
    #: Sweep expired entries every this many writes.
    sweep_every: int = 4096
    _values: dict[str, tuple[object, float | None]] = attrs.field(factory=dict, init=False)
    _writes: int = attrs.field(default=0, init=False)

    def _live(self, key: str) -> object | None:
        entry = self._values.get(key)
        if entry is None:
            return None
        value, expires = entry
        if expires is not None and expires <= self.clock():
            del self._values[key]
            return None
        return value

    def _wrote(self) -> None:
        self._writes += 1
        if self._writes % self.sweep_every == 0:
            now = self.clock()
            for key in [k for k, (_, exp) in self._values.items()
                        if exp is not None and exp <= now]:
                del self._values[key]

    async def increment(self, key: str, amount: int, ttl: float,
                        limit: int | None = None) -> Counted:
        now = self.clock()
        entry = self._values.get(key)
        expires: float | None
        if entry is None or (entry[1] is not None and entry[1] <= now):
            current, expires = 0, now + ttl
        else:
            current, expires = int(entry[0]), entry[1]  # type: ignore[call-overload]
        remaining = None if expires is None else max(0.0, expires - now)
        if limit is not None and current + amount > limit:
            return Counted(False, current, remaining)
        self._values[key] = (current + amount, expires)
        self._wrote()
        return Counted(True, current + amount, remaining)

    async def get_count(self, key: str) -> int:
        value = self._live(key)
        return int(value) if isinstance(value, int) else 0

    def _slots(self, key: str) -> dict[str, float]:
        now = self.clock()
        slots = self._live(key)
        if not isinstance(slots, dict):
            slots = {}
            self._values[key] = (slots, None)
        for holder in [h for h, exp in slots.items() if exp <= now]:
            del slots[holder]
        return slots

    async def acquire(self, key: str, holder: str, limit: int, ttl: float) -> bool:
        slots = self._slots(key)
        if holder not in slots and len(slots) >= limit:
            return False
        slots[holder] = self.clock() + ttl
        self._wrote()
        return True

    async def release(self, key: str, holder: str) -> None:
        self._slots(key).pop(holder, None)

    async def holders(self, key: str) -> int:
        return len(self._slots(key))

    async def get(self, key: str) -> bytes | None:
        value = self._live(key)
        return value if isinstance(value, bytes) else None

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        self._values[key] = (value, None if ttl is None else self.clock() + ttl)
        self._wrote()

    async def delete(self, key: str) -> None:
        self._values.pop(key, None)

    def _hash(self, key: str) -> dict[str, bytes]:
        value = self._live(key)
        if not isinstance(value, dict):
            value = {}
            self._values[key] = (value, None)
        return value

    async def hash_set(self, key: str, field: str, value: bytes) -> None:
        self._hash(key)[field] = value

    async def hash_delete(self, key: str, field: str) -> None:
        self._hash(key).pop(field, None)

    async def hash_all(self, key: str) -> Mapping[str, bytes]:
        return dict(self._hash(key))

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._values.clear()
