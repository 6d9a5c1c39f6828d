# -*- test-case-name: tests.state.test_keys -*-
"""
Client keys an operator manages without a restart (issue 12.7), kept in the shared store.

``txrelay keys add|disable|enable|rotate|list`` write one hash, :data:`KEYS_HASH` (key
name → JSON :class:`ManagedKey`: the SHA-256 of the key, never the key, its state, when it
was created and rotated, its groups and allowed models). Every relay keeps a local copy
(:class:`ManagedKeys`), refreshed every ``refresh`` seconds (5 by default) and on a miss,
so authenticating a request needs no round trip to Redis on the hot path. A disabled or
rotated key stops working on every relay within one refresh period; a new key works within
a second (a miss re-reads a copy older than that), within a refresh period at most.
While Redis is unreachable the last copy stays in use.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal, TextIO

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from txrelay.state.interfaces import StoreUnavailable

log = Logger(namespace="txrelay.keys")

#: The hash of managed keys in the store (under the store's prefix).
KEYS_HASH = "keys:managed"
#: What every managed key starts with (so a leaked one is recognisable).
KEY_PREFIX = "txr-"


@attrs.frozen
class ManagedKey:
    """One managed key's record (what the store holds, as JSON)."""

    name: str
    sha256: str
    state: Literal["active", "disabled"] = "active"
    created: str = ""
    rotated: str | None = None
    groups: tuple[str, ...] = ()
    #: Model names or globs this key may use; empty: any.
    models: tuple[str, ...] = ()

    def to_json(self) -> bytes:
        """The record as the store keeps it."""
        return json.dumps({"sha256": self.sha256, "state": self.state,
                           "created": self.created, "rotated": self.rotated,
                           "groups": list(self.groups), "models": list(self.models)},
                          sort_keys=True).encode()

    @classmethod
    def from_json(cls, name: str, raw: bytes) -> ManagedKey:
        """Parse a record; raise ValueError when it is not one."""
        try:
            d = json.loads(raw)
            key = cls(name, str(d["sha256"]), d.get("state", "active"), d.get("created", ""),
                      d.get("rotated"), tuple(d.get("groups", ())),
                      tuple(d.get("models", ())))
            bytes.fromhex(key.sha256)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"managed key {name!r}: not a key record ({e})") from None
        if key.state not in ("active", "disabled") or len(key.sha256) != 64:
            raise ValueError(f"managed key {name!r}: not a key record")
        return key


@attrs.frozen
class KeyInfo:
    """
    The authenticated key, as the ``auth`` stage leaves it in ``exchange.state["key"]`` for
    the stages after it (limits, quotas, the usage ledger):

    :ivar name: the key's name (also ``exchange.client``).
    :ivar source: ``"config"`` (``[[keys]]`` in the file) or ``"managed"`` (the store).
    :ivar groups: the groups the key belongs to (limits per group); may be empty.
    :ivar models: the models (names or globs) it may use; empty means any. The ``auth``
        stage does not enforce it (it runs before the model is resolved): the limits
        stage answers a model outside it with 403 ``permission_error``.
    """

    name: str
    source: Literal["config", "managed"] = "config"
    groups: tuple[str, ...] = ()
    models: tuple[str, ...] = ()


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def new_key() -> str:
    """A new random client key (256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def digest_of(key: str) -> str:
    """The SHA-256 hex digest a record holds for ``key``."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


# -- the operator's commands (txrelay keys …) -------------------------------------------


async def load_keys(store: Any) -> dict[str, ManagedKey]:
    """Every managed key record in ``store`` (records that do not parse are skipped)."""
    out: dict[str, ManagedKey] = {}
    for name, raw in (await store.hash_all(KEYS_HASH)).items():
        try:
            out[name] = ManagedKey.from_json(name, raw)
        except ValueError as e:
            log.warn("{problem}: ignored", problem=str(e))
    return out


async def add_key(store: Any, name: str, groups: tuple[str, ...] = (),
                  models: tuple[str, ...] = ()) -> tuple[ManagedKey, str]:
    """Create ``name`` with a new random key; the record and the key (shown once)."""
    if name in await load_keys(store):
        raise ValueError(f"a managed key named {name!r} exists (rotate or disable it)")
    key = new_key()
    record = ManagedKey(name, digest_of(key), "active", _now(), None, groups, models)
    await store.hash_set(KEYS_HASH, name, record.to_json())
    return record, key


async def _change(store: Any, name: str, change: Callable[[ManagedKey], ManagedKey]
                  ) -> ManagedKey:
    keys = await load_keys(store)
    if name not in keys:
        raise ValueError(f"no managed key named {name!r}")
    record = change(keys[name])
    await store.hash_set(KEYS_HASH, name, record.to_json())
    return record


async def set_state(store: Any, name: str,
                    state: Literal["active", "disabled"]) -> ManagedKey:
    """Disable or enable ``name``."""
    return await _change(store, name, lambda k: attrs.evolve(k, state=state))


async def rotate_key(store: Any, name: str) -> tuple[ManagedKey, str]:
    """Give ``name`` a new random key (the old one stops working); the record and key."""
    key = new_key()
    record = await _change(store, name, lambda k: attrs.evolve(
        k, sha256=digest_of(key), rotated=_now()))
    return record, key


async def remove_key(store: Any, name: str) -> None:
    """Delete ``name``'s record."""
    if name not in await load_keys(store):
        raise ValueError(f"no managed key named {name!r}")
    await store.hash_delete(KEYS_HASH, name)


# -- the relay's local copy --------------------------------------------------------------


@attrs.define(eq=False)
class ManagedKeys:
    """
    This relay's copy of the managed keys, by digest.

    :meth:`lookup` answers synchronously from the copy (the header-time check needs that);
    :meth:`resolve` refreshes first when the copy is older than ``miss_refresh`` seconds, so
    a key added a moment ago works within ``miss_refresh`` while a stream of unknown keys
    costs at most one read of the store per ``miss_refresh`` (a time-bounded negative
    cache).
    """

    store: Any
    reactor: Any
    refresh: float = 5.0
    miss_refresh: float = 1.0
    #: Names that are ``[[keys]]`` in the file: a managed record of that name is ignored.
    reserved: frozenset[str] = frozenset()
    clock: Callable[[], float] = time.monotonic
    _by_digest: dict[bytes, ManagedKey] = attrs.field(factory=dict, init=False)
    _loaded: float | None = attrs.field(default=None, init=False)
    _loading: bool = attrs.field(default=False, init=False)
    _waiters: list[Deferred[None]] = attrs.field(factory=list, init=False)
    _loop: Any = attrs.field(default=None, init=False)
    _failing: bool = attrs.field(default=False, init=False)

    def start(self) -> None:
        """Load now and every ``refresh`` seconds."""
        from twisted.internet.task import LoopingCall

        if self._loop is None:
            self._loop = LoopingCall(self.reload)
            self._loop.clock = self.reactor
            self._loop.start(self.refresh, now=True).addErrback(
                lambda f: log.failure("refreshing managed keys stopped", f))

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def reload(self) -> Deferred[None]:
        """Read the store again; callers during a read share it. Never fails."""
        waiting: Deferred[None] = Deferred()
        self._waiters.append(waiting)
        if not self._loading:
            self._loading = True
            Deferred.fromCoroutine(self._load()).addBoth(self._finished)
        return waiting

    def _finished(self, result: object) -> None:
        self._loading = False
        waiters, self._waiters = self._waiters, []
        if isinstance(result, Failure):
            log.failure("refreshing managed keys failed", result)
        for w in waiters:
            w.callback(None)

    async def _load(self) -> None:
        # Straight from the primary: a failover store's in-process stand-in has no keys.
        source = getattr(self.store, "primary", self.store)
        try:
            keys = await load_keys(source)
        except StoreUnavailable as e:
            if not self._failing:
                self._failing = True
                log.warn("cannot refresh managed keys ({error}): the last copy stays in use "
                         "({count} key(s))", error=str(e), count=len(self._by_digest))
            return
        if self._failing:
            self._failing = False
            log.info("managed keys refreshed again")
        by_digest: dict[bytes, ManagedKey] = {}
        for key in keys.values():
            if key.name in self.reserved:
                continue
            by_digest[bytes.fromhex(key.sha256)] = key
        self._by_digest, self._loaded = by_digest, self.clock()

    @property
    def fresh(self) -> bool:
        """Whether the copy was read within ``miss_refresh`` seconds (a miss is final)."""
        return self._loaded is not None and self.clock() - self._loaded < self.miss_refresh

    def lookup(self, digest: bytes) -> ManagedKey | None:
        """The record for ``digest`` in the local copy (no I/O)."""
        return self._by_digest.get(digest)

    async def resolve(self, digest: bytes) -> ManagedKey | None:
        """The record for ``digest``, reading the store first on a miss with a stale copy."""
        found = self._by_digest.get(digest)
        if found is None and not self.fresh:
            await self.reload()
            found = self._by_digest.get(digest)
        return found


_shared: dict[int, tuple[Any, ManagedKeys]] = {}


def shared_managed_keys(store: Any, reactor: Any, refresh: float,
                        reserved: frozenset[str]) -> ManagedKeys:
    """
    The one :class:`ManagedKeys` of ``store`` in this process (started on first use): it
    lives as long as the store, across reloads, which only update the reserved names.
    """
    entry = _shared.get(id(store))
    if entry is not None and entry[0] is store:
        keys = entry[1]
        keys.reserved = reserved
        return keys
    keys = ManagedKeys(store, reactor, refresh=refresh, reserved=reserved)
    _shared[id(store)] = (store, keys)
    keys.start()
    # Stop reading before the drain closes the store.
    reactor.addSystemEventTrigger("before", "shutdown", keys.stop)
    return keys


def key_table(keys: Mapping[str, ManagedKey]) -> str:
    """The ``txrelay keys list`` table (never a key or its digest)."""
    rows = [("NAME", "STATE", "CREATED", "ROTATED", "GROUPS", "MODELS")]
    for name in sorted(keys):
        k = keys[name]
        rows.append((name, k.state, k.created, k.rotated or "-", ",".join(k.groups) or "-",
                     ",".join(k.models) or "any"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


# -- txrelay keys ------------------------------------------------------------------------

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


def keys_command(cfg: Any, args: Any, out: TextIO, err: TextIO) -> int:
    """Run ``txrelay keys ACTION`` against ``cfg``'s ``[state]`` (a Redis server)."""
    if cfg.state.kind != "redis":
        print("txrelay keys: managed keys live in the shared store: set [state] kind = "
              "\"redis\" in the configuration (every relay reads them from there)", file=err)
        return 2
    name = getattr(args, "name", None)
    if name is not None and args.action == "add":
        if not _NAME.match(name):
            print(f"txrelay keys: {name!r} is not a key name (letters, digits, . _ @ -; "
                  "at most 64)", file=err)
            return 2
        if name in {k.name for k in cfg.keys}:
            print(f"txrelay keys: {name!r} is a [[keys]] entry of the configuration file; "
                  "choose another name", file=err)
            return 2
    from twisted.internet import reactor

    from txrelay.state.build import redis_store

    # One command, patient enough for a server across a network.
    state = attrs.evolve(cfg.state, timeout=max(cfg.state.timeout, 5.0))
    outcome: list[int] = []

    async def work() -> int:
        store = redis_store(state, reactor)
        try:
            return await _act(store, args, out)
        except ValueError as e:
            print(f"txrelay keys: {e}", file=err)
            return 1
        except StoreUnavailable as e:
            print(f"txrelay keys: the state store is unavailable: {e}", file=err)
            return 1
        finally:
            await store.close()

    def failed(f: Failure) -> None:
        outcome.append(1)
        print(f"txrelay keys: {f.getErrorMessage()}", file=err)

    def go() -> None:
        d = Deferred.fromCoroutine(work())
        d.addCallbacks(outcome.append, failed)
        d.addBoth(lambda _: r.stop())

    r: Any = reactor
    r.callWhenRunning(go)
    r.run(installSignalHandlers=False)
    return outcome[0] if outcome else 1


async def _act(store: Any, args: Any, out: TextIO) -> int:
    action = args.action
    if action == "add":
        record, key = await add_key(store, args.name, tuple(args.group), tuple(args.models))
        print(key, file=out)
        print(f"# added managed key {record.name!r}; the key is shown only this once", file=out)
    elif action == "rotate":
        record, key = await rotate_key(store, args.name)
        print(key, file=out)
        print(f"# rotated {record.name!r}: the previous key stops working on every relay "
              "within its refresh period; this one is shown only once", file=out)
    elif action in ("disable", "enable"):
        record = await set_state(store, args.name,
                                 "disabled" if action == "disable" else "active")
        print(f"{record.name}: {record.state}", file=out)
    elif action == "remove":
        await remove_key(store, args.name)
        print(f"{args.name}: removed", file=out)
    else:
        keys = await load_keys(store)
        if getattr(args, "json", False):
            print(json.dumps([{"name": k.name, "state": k.state, "created": k.created,
                               "rotated": k.rotated, "groups": list(k.groups),
                               "models": list(k.models)}
                              for _, k in sorted(keys.items())], indent=2), file=out)
        else:
            print(key_table(keys), file=out)
    return 0


def add_keys_parser(sub: Any) -> None:
    """The ``keys`` subcommand's arguments (``sub``: the ``txrelay`` subparsers)."""
    keys = sub.add_parser("keys", help="manage client keys in the shared store ([state])")
    keys.add_argument("--config", "-c", default="relay.toml", help="TOML configuration file")
    actions = keys.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="create a key and print it (once)")
    add.add_argument("name")
    add.add_argument("--group", action="append", default=[],
                     help="a group of keys it belongs to (repeatable)")
    add.add_argument("--models", nargs="+", default=[],
                     help="the models (names or globs) it may use; default any")
    for action, text in (("disable", "stop admitting the key (on every relay within the "
                          "refresh period)"), ("enable", "admit a disabled key again"),
                         ("rotate", "replace the key with a new one and print it (once)"),
                         ("remove", "delete the key's record")):
        actions.add_parser(action, help=text).add_argument("name")
    ls = actions.add_parser("list", help="names, states, dates, groups (never the keys)")
    ls.add_argument("--json", action="store_true", help="as JSON")
