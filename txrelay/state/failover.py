# -*- test-case-name: tests.state.test_failover -*-
"""
Keeping the relay serving while its shared store (Redis) is unreachable.

:class:`FailoverStore` sends every operation to the primary store and pings it every
``probe_interval`` seconds. When an operation or a ping raises
:class:`~txrelay.state.interfaces.StoreUnavailable`, it marks the primary down (logging it
once) and marks it up again when a ping answers (logging that once too). While it is down:

* ``on_unavailable = "open"``: operations go to an in-process
  :class:`~txrelay.state.memory.MemoryStore`, so limits still hold per relay (each relay
  enforces the whole limit on its own share of the traffic) and nothing is refused;
* ``on_unavailable = "closed"``: operations raise ``StoreUnavailable`` at once. A caller
  must then refuse the request rather than guess: answer Anthropic's ``overloaded_error``
  (529, or 503 ``api_error`` where the request cannot be retried elsewhere) with a message
  saying the shared limits cannot be checked, and never a 429 (nothing was exceeded).

Nothing is copied between the two: counters and slots taken in-process during an outage are
forgotten when Redis is back (a slot released meanwhile expires there by its ttl).

The condition is reported to ``health`` (``GET /health/ready`` detail ``state``; with
"closed", readiness turns 503 while the primary is down), counted for metrics
(:func:`register_metrics`: ``txrelay_state_store_up``, ``txrelay_state_store_failures_total``)
and logged.
"""

from __future__ import annotations

import datetime
from collections.abc import Awaitable, Iterator, Mapping
from typing import Any, Literal

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from txrelay.state.interfaces import Counted, IStateStore, StoreUnavailable
from txrelay.state.memory import MemoryStore

log = Logger(namespace="txrelay.state")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


@implementer(IStateStore)
@attrs.define(eq=False)
class FailoverStore:
    """The primary store, and in-process state (or refusal) while it is unreachable."""

    primary: Any
    reactor: Any
    health: Any = None
    on_unavailable: Literal["open", "closed"] = "open"
    probe_interval: float = 2.0
    #: Where the primary is, for logs and readiness (never with a password).
    where: str = ""
    fallback: Any = attrs.Factory(MemoryStore)
    name: str = "redis"
    up: bool = attrs.field(default=True, init=False)
    #: Operations the primary failed (a metric).
    failures: int = attrs.field(default=0, init=False)
    _since: str = attrs.field(factory=_now, init=False)
    _last_error: str | None = attrs.field(default=None, init=False)
    _probe: Any = attrs.field(default=None, init=False)
    _closed: bool = attrs.field(default=False, init=False)

    def start(self) -> None:
        """Check the primary now (the first report), then every ``probe_interval``."""
        self._report()
        self._probe = self.reactor.callLater(0, self._run_probe)

    def _report(self) -> None:
        if self.health is None:
            return
        serving = (self.primary.name if self.up
                   else "memory" if self.on_unavailable == "open" else "none")
        detail = {"kind": self.primary.name, "where": self.where, "up": self.up,
                  "on_unavailable": self.on_unavailable, "serving_from": serving,
                  "since": self._since, "failures": self.failures}
        if self._last_error is not None and not self.up:
            detail["error"] = self._last_error
        self.health.report("state", detail,
                           ready=self.up or self.on_unavailable == "open")

    def _down(self, error: StoreUnavailable) -> None:
        self.failures += 1
        self._last_error = str(error)
        if not self.up:
            return
        self.up, self._since = False, _now()
        if self.on_unavailable == "open":
            log.warn("state store {where} is unavailable ({error}): serving under "
                     "in-process state (limits hold per relay) until it answers again",
                     where=self.where, error=str(error))
        else:
            log.error("state store {where} is unavailable ({error}): refusing what needs "
                      "it (state.on_unavailable = \"closed\") until it answers again",
                      where=self.where, error=str(error))
        self._report()
        self._schedule_probe()

    def _schedule_probe(self) -> None:
        if self._closed or (self._probe is not None and self._probe.active()):
            return
        self._probe = self.reactor.callLater(self.probe_interval, self._run_probe)

    def _run_probe(self) -> None:
        self._probe = None

        async def probe() -> None:
            try:
                await self.primary.ping()
            except StoreUnavailable as e:
                self._down(e)  # logs only the first time
                self._report()
                self._schedule_probe()
                return
            if not self.up:
                self.up, self._since, self._last_error = True, _now(), None
                log.info("state store {where} answers again: shared state in use",
                         where=self.where)
            self._report()
            self._schedule_probe()  # a quiet relay notices an outage too

        if not self._closed:
            Deferred.fromCoroutine(probe()).addErrback(
                lambda f: log.failure("probing the state store failed", f))

    async def _do(self, method: str, *args: Any) -> Any:
        if self.up:
            try:
                return await getattr(self.primary, method)(*args)
            except StoreUnavailable as e:
                self._down(e)
                if self.on_unavailable == "closed":
                    raise
        elif self.on_unavailable == "closed":
            raise StoreUnavailable(f"state store {self.where} is unavailable "
                                   f"(since {self._since})")
        return await getattr(self.fallback, method)(*args)

    def increment(self, key: str, amount: int, ttl: float,
                  limit: int | None = None) -> Awaitable[Counted]:
        return self._do("increment", key, amount, ttl, limit)

    def get_count(self, key: str) -> Awaitable[int]:
        return self._do("get_count", key)

    def acquire(self, key: str, holder: str, limit: int, ttl: float) -> Awaitable[bool]:
        return self._do("acquire", key, holder, limit, ttl)

    def release(self, key: str, holder: str) -> Awaitable[None]:
        return self._do("release", key, holder)

    def holders(self, key: str) -> Awaitable[int]:
        return self._do("holders", key)

    def get(self, key: str) -> Awaitable[bytes | None]:
        return self._do("get", key)

    def set(self, key: str, value: bytes, ttl: float | None = None) -> Awaitable[None]:
        return self._do("set", key, value, ttl)

    def delete(self, key: str) -> Awaitable[None]:
        return self._do("delete", key)

    def hash_set(self, key: str, field: str, value: bytes) -> Awaitable[None]:
        return self._do("hash_set", key, field, value)

    def hash_delete(self, key: str, field: str) -> Awaitable[None]:
        return self._do("hash_delete", key, field)

    def hash_all(self, key: str) -> Awaitable[Mapping[str, bytes]]:
        return self._do("hash_all", key)

    def ping(self) -> Awaitable[None]:
        return self._do("ping")

    async def close(self) -> None:
        self._closed = True
        if self._probe is not None and self._probe.active():
            self._probe.cancel()
        await self.primary.close()
        await self.fallback.close()


def register_metrics(registry: Any, store: Any) -> None:
    """
    Export ``store``'s condition in ``registry``: ``txrelay_state_store_up`` (1/0, label
    ``store``: memory or redis) and ``txrelay_state_store_failures_total``.
    """
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    class Collector:
        def collect(self) -> Iterator[Any]:
            up = GaugeMetricFamily("txrelay_state_store_up", "1 while the shared state "
                                   "store answers, 0 while it is unreachable.",
                                   labels=["store"])
            up.add_metric([store.name], 1.0 if getattr(store, "up", True) else 0.0)
            yield up
            failed = CounterMetricFamily("txrelay_state_store_failures",
                                         "State store operations that failed (timeouts, "
                                         "lost connections, errors).", labels=["store"])
            failed.add_metric([store.name], float(getattr(store, "failures", 0)))
            yield failed

    registry.register(Collector())

