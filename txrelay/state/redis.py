# -*- test-case-name: tests.state.test_store_contract -*-
"""
The Redis :class:`~txrelay.state.interfaces.IStateStore`, over txredisapi (Twisted-native).

Every operation is one command or one Lua script (``EVALSHA``, falling back to ``EVAL`` when
the server answers ``NOSCRIPT``), so it is atomic on the server and N relays sharing one
Redis enforce one limit. Slot expiry uses the server's clock (``TIME`` inside the script),
so relays whose clocks differ still agree. Every call is bounded by ``timeout``: a hung or
unreachable server raises :class:`~txrelay.state.interfaces.StoreUnavailable` instead of
holding a request, and every client-library error is mapped to it. Lost connections are
re-established in the background (txredisapi's ``ClientService`` with backoff).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.logger import ILogObserver, LogEvent, Logger, LogLevel, globalLogPublisher
from zope.interface import implementer

from txrelay.config import TLSConfig
from txrelay.state.interfaces import Counted, IStateStore, StoreUnavailable

#: ``KEYS[1]`` counter; ``ARGV`` amount, ttl in ms, limit ('' for none).
#: Returns {allowed, value, ttl in ms (-1: none)}.
INCREMENT = b"""
local pttl = redis.call('PTTL', KEYS[1])
local current = 0
if pttl ~= -2 then current = tonumber(redis.call('GET', KEYS[1])) or 0 end
local amount = tonumber(ARGV[1])
if ARGV[3] ~= '' and current + amount > tonumber(ARGV[3]) then
  if pttl == -2 then pttl = tonumber(ARGV[2]) end
  return {0, current, pttl}
end
local value = redis.call('INCRBY', KEYS[1], amount)
if pttl == -2 then
  pttl = tonumber(ARGV[2])
  redis.call('PEXPIRE', KEYS[1], pttl)
end
return {1, value, pttl}
"""

#: The server's clock in ms, inside a script.
_NOW = b"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

#: ``KEYS[1]`` slot set (member: holder, score: expiry in ms); ``ARGV`` holder, limit,
#: ttl in ms. Purges expired slots, counts, adds or renews: 1 when the holder has a slot.
ACQUIRE = _NOW + b"""
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local ttl = tonumber(ARGV[3])
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
"""

#: ``KEYS[1]`` slot set: how many slots have not expired.
HOLDERS = _NOW + b"""
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
"""


@implementer(ILogObserver)
def _warnings_only(event: LogEvent) -> None:
    level = event.get("log_level")
    if level is not None and level >= LogLevel.warn:
        globalLogPublisher(event)


def _sha(script: bytes) -> str:
    return hashlib.sha1(script).hexdigest()


_SHAS = {script: _sha(script) for script in (INCREMENT, ACQUIRE, HOLDERS)}


@attrs.frozen
class RedisAddress:
    """Where the server is: ``redis://[user@]host:port/db`` (``rediss://`` for TLS)."""

    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    username: str | None = None
    tls: bool = False

    @classmethod
    def from_url(cls, url: str) -> RedisAddress:
        """Parse ``url``; raise ValueError naming what is wrong."""
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError("must start with redis:// or rediss://")
        if parts.password is not None:
            raise ValueError("holds a password: give it as state.password (env, file or "
                             "credential) instead")
        path = parts.path.strip("/")
        try:
            db = int(path) if path else 0
            port = parts.port or 6379
        except ValueError:
            raise ValueError("the port and the database must be numbers") from None
        return cls(parts.hostname or "127.0.0.1", port, db,
                   unquote(parts.username) if parts.username else None,
                   parts.scheme == "rediss")

    def __str__(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://{self.host}:{self.port}/{self.db}"


@implementer(IStateStore)
@attrs.define(eq=False)
class RedisStore:
    """
    State in a Redis server, under the key namespace ``prefix``.

    :ivar timeout: seconds any one operation may take, waiting for a connection included.
    """

    address: RedisAddress
    reactor: Any
    password: str | None = attrs.field(default=None, repr=False)
    prefix: str = "txrelay:"
    timeout: float = 0.25
    connect_timeout: float = 2.0
    poolsize: int = 4
    name: str = "redis"
    #: For ``rediss://``: the trust and client certificate (``[state.tls]``).
    tls: TLSConfig = attrs.Factory(TLSConfig)
    _client: Any = attrs.field(default=None, init=False)
    #: Why the last TLS handshake was refused, until a connection works again.
    _tls_problem: str | None = attrs.field(default=None, init=False)
    _ever_connected: bool = attrs.field(default=False, init=False)

    def connect(self) -> RedisStore:
        """Start connecting (in the background; operations wait for it up to ``timeout``)."""
        import txredisapi
        from twisted.application.internet import ClientService

        # Each pool slot's ClientService logs every reconnection attempt at info level; the
        # failover store logs the outage once instead, so keep only its warnings.
        saved = ClientService.__dict__.get("_log")
        if saved is not None:
            ClientService._log = Logger(namespace="txrelay.state.redis",
                                        observer=_warnings_only)
        try:
            self._client = txredisapi.lazyConnectionPool(
                self.address.host, self.address.port, dbid=self.address.db or None,
                poolsize=self.poolsize, reconnect=True, charset=None, password=self.password,
                username=self.address.username, ssl_context_factory=self._tls(),
                connectTimeout=self.connect_timeout, replyTimeout=self.timeout,
                convertNumbers=False)
        finally:
            if saved is not None:
                ClientService._log = saved
        factory = self._client._factory
        # Come back soon after an outage: the default backoff grows to 10 s.
        factory.initialDelay, factory.maxDelay = 0.2, 2.0
        return self

    def _tls(self) -> Any:
        """
        For rediss://: the relay's fail-closed verification (txrelay.upstream.tls) of the
        server's certificate, against ``tls.ca_file`` or the system's CAs, for the URL's
        host. txredisapi's own ``True`` would not verify it, and Twisted's
        ``optionsForClientTLS`` accepts a certificate without subjectAltName for any host.
        """
        if not self.address.tls:
            return False
        from txrelay.upstream.tls import strict_creator

        return strict_creator(self.tls, self.address.host, self._refused)

    def _refused(self, problem: str) -> None:
        self._tls_problem = problem

    async def _call(self, method: str, *args: Any, passing: tuple[type[Exception], ...] = (),
                    **kwargs: Any) -> Any:
        if self._client is None:
            raise StoreUnavailable(f"{self.address}: not connected (closed)")
        factory = self._client._factory
        if factory.size:
            self._ever_connected = True
            self._tls_problem = None
        elif self._tls_problem is not None:
            # The handshake was refused: say why at once (retrying cannot change it soon).
            raise StoreUnavailable(f"{self.address}: {self._tls_problem}")
        elif self._ever_connected:
            # Known to be down: answer at once instead of waiting out the timeout.
            raise StoreUnavailable(f"{self.address}: connection lost, reconnecting")
        try:
            d: Deferred[Any] = getattr(self._client, method)(*args, **kwargs)
            d.addTimeout(self.timeout, self.reactor)
            return await d
        except (CancelledError, DeferredTimeout):
            raise StoreUnavailable(f"{self.address}: no answer within {self.timeout}s") \
                from None
        except passing:
            raise
        except Exception as e:
            if type(e).__name__ == "TimeoutError":  # txredisapi's reply timeout
                raise StoreUnavailable(f"{self.address}: no answer within {self.timeout}s") \
                    from None  # txredisapi's errors, connection errors, protocol errors
            raise StoreUnavailable(f"{self.address}: {type(e).__name__}: {e}") from None

    async def _script(self, script: bytes, key: str, *args: Any) -> Any:
        from txredisapi import ScriptDoesNotExist

        keys = [self.prefix + key]
        try:
            return await self._call("evalsha", _SHAS[script], keys, list(args),
                                    passing=(ScriptDoesNotExist,))
        except ScriptDoesNotExist:  # NOSCRIPT: a new (or flushed) server; EVAL caches it
            return await self._call("execute_command", "EVAL", script, 1, *keys, *args)

    async def increment(self, key: str, amount: int, ttl: float,
                        limit: int | None = None) -> Counted:
        allowed, value, pttl = await self._script(
            INCREMENT, key, int(amount), max(1, math.ceil(ttl * 1000)),
            "" if limit is None else int(limit))
        return Counted(bool(allowed), int(value), None if pttl < 0 else pttl / 1000)

    async def get_count(self, key: str) -> int:
        value = await self._call("execute_command", "GET", self.prefix + key)
        try:
            return int(value) if value is not None else 0
        except ValueError:
            return 0

    async def acquire(self, key: str, holder: str, limit: int, ttl: float) -> bool:
        got = await self._script(ACQUIRE, key, holder, int(limit),
                                 max(1, math.ceil(ttl * 1000)))
        return bool(got)

    async def release(self, key: str, holder: str) -> None:
        await self._call("execute_command", "ZREM", self.prefix + key, holder)

    async def holders(self, key: str) -> int:
        return int(await self._script(HOLDERS, key))

    async def get(self, key: str) -> bytes | None:
        value = await self._call("execute_command", "GET", self.prefix + key)
        return bytes(value) if value is not None else None

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        extra: tuple[Any, ...] = () if ttl is None else ("PX", max(1, math.ceil(ttl * 1000)))
        await self._call("execute_command", "SET", self.prefix + key, value, *extra)

    async def delete(self, key: str) -> None:
        await self._call("execute_command", "DEL", self.prefix + key)

    async def hash_set(self, key: str, field: str, value: bytes) -> None:
        await self._call("execute_command", "HSET", self.prefix + key, field, value)

    async def hash_delete(self, key: str, field: str) -> None:
        await self._call("execute_command", "HDEL", self.prefix + key, field)

    async def hash_all(self, key: str) -> Mapping[str, bytes]:
        flat = await self._call("execute_command", "HGETALL", self.prefix + key)
        return {bytes(f).decode("utf-8", "replace"): bytes(v)
                for f, v in zip(flat[::2], flat[1::2], strict=True)}

    async def ping(self) -> None:
        await self._call("execute_command", "PING")

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            # A pool that never connected has nothing to release.
            with contextlib.suppress(Exception):
                await client.disconnect()
